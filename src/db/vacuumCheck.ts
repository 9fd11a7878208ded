import { sql, type Kysely } from 'kysely';
import type { Database } from './schema.js';

/**
 * Why the outbox would never be vacuumed, or undefined when autovacuum covers it.
 *
 * Every sent row leaves a dead row version (the claim's UPDATE), and every pruned row another
 * (its DELETE). Without vacuum they are never reclaimed: the table and its claim index grow by the
 * rows sent, and PostgreSQL's cost per row keeps rising. Measured with the bench's 10-minute soak
 * on a server with autovacuum off (12,000 rows/s, sent rows pruned after 30 s): 6 million dead
 * rows and a 2 GB table after 3 minutes, PostgreSQL CPU per 1,000 rows 71 → 157 ms, throughput
 * down 45%. The relay cannot fix that setting, but it can say so at start.
 */
export async function outboxVacuumProblem(db: Kysely<Database>): Promise<string | undefined> {
  // The table option as PostgreSQL reads it: stored as written (`off`, `false`, `0` ...).
  const { rows } = await sql<{ server: string; table: boolean }>`
    SELECT current_setting('autovacuum') AS server,
           coalesce((SELECT option_value::boolean
                       FROM pg_class, pg_options_to_table(reloptions)
                      WHERE oid = 'shardrelay.outbox'::regclass AND option_name = 'autovacuum_enabled'),
                    true) AS table`.execute(db);
  const row = rows[0];
  if (row?.server === 'off')
    return 'autovacuum is off on this PostgreSQL server: the outbox is never vacuumed and bloats by every row sent';
  if (row?.table === false)
    return 'autovacuum is disabled for shardrelay.outbox (autovacuum_enabled = false): it bloats by every row sent';
  return undefined;
}
