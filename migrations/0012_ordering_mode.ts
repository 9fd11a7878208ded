import { readFile } from 'node:fs/promises';
import { sql, type Kysely } from 'kysely';

/** `sql/` at the package root: `../sql/` from `migrations/` in the source tree and from `dist/migrations`. */
const SQL_DIR = new URL('../sql/', import.meta.url);

/**
 * The ordering mode in the database. With `--ordering key` a keyed row lives in shard
 * `key_hash(key) % N`, otherwise in `id % N` (src/db/shardIndex.ts `shardExpression`). Until now only
 * the relays knew which, so the views and `shardrelay status` counted every row in `id % N`, wrong
 * for keyed rows with ordering on; and nothing stopped two replicas from running different modes,
 * which puts one key's rows in two shards owned by two replicas.
 *
 * - `shardrelay.ordering_mode`: one row, the mode the replica set runs. A relay records its mode
 *   there when it starts and refuses to start when replicas of the other mode run
 *   (src/relay/orderingMode.ts). A table of its own rather than a column of shard_config: adding a
 *   column to shard_config needs its ACCESS EXCLUSIVE lock, which waits for every open transaction
 *   that inserted into the outbox (the insert trigger reads shard_config) and, while it waits,
 *   holds up every new insert; creating a table locks nothing anyone uses.
 *   Starts as 'off': the previous release has no ordering, so every replica of it runs 'off'.
 * - `shardrelay.shard_of(id, key, shard_count, mode)`: the shard rule of the claim in SQL, for the
 *   views and for an operator. A one-expression SQL function, IMMUTABLE, so the planner inlines it
 *   (no call per row).
 * - The views that count rows per shard compute the shard with it under the recorded mode:
 *   `shardrelay.shards` (gains a last column, `ordering`), `shardrelay.events`, and the function
 *   `shardrelay.pending_summary` that `shardrelay.lag` and `shardrelay.health` read.
 *
 * Safe on a populated outbox while replicas of the previous release run: no table is altered and
 * no row rewritten; CREATE OR REPLACE of two views and one function takes locks only on those.
 * The earlier migrations that installed sql/shards.sql and sql/events.sql now read frozen copies of
 * the text they installed (sql/frozen/), since today's files read the table created here.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE TABLE shardrelay.ordering_mode (
      singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
      mode       text NOT NULL CHECK (mode IN ('off', 'key')),
      changed_at timestamptz,
      changed_by text
    )`.execute(db);
  await sql`INSERT INTO shardrelay.ordering_mode (mode) VALUES ('off')`.execute(db);
  await sql`
    COMMENT ON TABLE shardrelay.ordering_mode IS
      'The ordering mode the relay replicas run (--ordering); written by a relay at start. changed_at/changed_by: the last change (NULL: set by migration 0012).'
  `.execute(db);

  await sql`
    CREATE FUNCTION shardrelay.shard_of(id bigint, key text, shard_count integer, mode text)
    RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
      SELECT ((CASE WHEN mode = 'key' AND key IS NOT NULL THEN shardrelay.key_hash(key) ELSE id END)
              % shard_count)::integer
    $$`.execute(db);

  // As in 0004, with the shard of each row under the recorded mode. The mode is one row joined in,
  // read once per call; with ordering on, each keyed pending row costs one MD5. Measured with
  // 200,000 pending rows, half of them keyed (1,000 keys), SELECT * FROM shardrelay.lag, fastest of
  // 7, two rounds interleaved, load average 25-28 on 2 cores: off 229 and 383 ms, key 513 and
  // 858 ms (about 2x). The view is read by the observer every 5 s; the claims pay nothing for it.
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.pending_summary(at timestamptz)
    RETURNS TABLE (shard integer, lane text, pending_rows bigint, due_rows bigint,
                   oldest_created_at timestamptz, oldest_due_created_at timestamptz, due_since timestamptz)
    LANGUAGE sql STABLE ROWS 16 SET enable_sort = off SET jit = off AS $$
      SELECT shardrelay.shard_of(o.id, o.key, c.shard_count, m.mode),
             CASE WHEN shardrelay.is_realtime(o) THEN 'realtime' ELSE 'batch' END,
             count(*),
             count(*) FILTER (WHERE o.available_at <= at),
             min(o.created_at),
             min(o.created_at) FILTER (WHERE o.available_at <= at),
             min(greatest(o.created_at, o.available_at)) FILTER (WHERE o.available_at <= at)
        FROM shardrelay.outbox AS o, shardrelay.shard_config AS c, shardrelay.ordering_mode AS m
       WHERE o.status = 'pending' AND NOT o.canary
       GROUP BY 1, 2
    $$`.execute(db);

  for (const view of ['shards', 'events'])
    await sql.raw(await readFile(new URL(`${view}.sql`, SQL_DIR), 'utf8')).execute(db);
}
