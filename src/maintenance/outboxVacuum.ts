import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';

/**
 * VACUUM of the outbox between autovacuum's visits, by one replica at a time.
 *
 * Why: every row sent leaves a dead tuple (its DELETE), and a claim's index scan walks the dead
 * entries ahead of its shard's live rows in the pending index, visiting the heap for each until a
 * vacuum removes them. Autovacuum visits a database at most once per `autovacuum_naptime` (1 min by
 * default): at 10,300 rows/s a minute leaves ~600,000 dead rows (`n_dead_tup` was 448,000 right
 * after an autovacuum of the outbox). Measured in the bench's soaks on the embedded PostgreSQL 18
 * (autovacuum on, 10,300 rows/s offered on 2 cores; bench/RESULTS.md, twelfth session): one
 * 1,000-row claim took 155-224 ms before its first row and touched 17,600 buffers; over 11 minutes
 * without this vacuum PostgreSQL spent 153-169 ms of CPU per 1,000 rows, the outbox grew from 244 to
 * 316 MB and a minute's lag reached 11,353 rows; over 9 minutes with it, 103-123 ms, 46-64 MB and
 * 878 rows.
 *
 * - Only when the outbox holds at least `minDeadRows` dead rows (the statistics' `n_dead_tup`), so
 *   an idle or slow outbox costs one statistics read per period and no vacuum.
 * - `SKIP_LOCKED`: when autovacuum (or another replica's vacuum) is at it, this period is skipped.
 * - `TRUNCATE false`: no ACCESS EXCLUSIVE lock at the end, which would stop claims and inserts for
 *   its duration every 10 s; autovacuum still gives an emptied tail back.
 * - One replica at a time: a session-level try-lock, as the sent record's pruner's vacuum.
 * - Needs the role that owns the outbox (or MAINTAIN on it, PostgreSQL 17+): without it PostgreSQL
 *   would skip the table with a warning every period, so the relay checks once and says so.
 * Takes SHARE UPDATE EXCLUSIVE, which no claim, insert or delete conflicts with.
 */
export interface OutboxVacuumOptions {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  /** Period; default 10 s. */
  readonly intervalMs?: number;
  /** Dead rows below which a period does nothing; default 50,000. */
  readonly minDeadRows?: number;
}

export type OutboxVacuumRound = 'vacuumed' | 'few dead rows' | 'busy' | 'not allowed';

export class OutboxVacuum {
  readonly #options: OutboxVacuumOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<OutboxVacuumRound> | undefined;
  #stopped = false;
  #allowed: boolean | undefined;

  constructor(options: OutboxVacuumOptions) {
    this.#options = options;
  }

  start(): void {
    this.#stopped = false;
    this.#arm();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running?.catch(() => {});
  }

  /** One period now (tests call it directly). */
  async vacuumOnce(): Promise<OutboxVacuumRound> {
    const { db } = this.#options;
    this.#allowed ??= await this.#mayVacuum();
    if (!this.#allowed) return 'not allowed';
    const { rows } = await sql<{ dead: string | null }>`
      SELECT n_dead_tup AS dead FROM pg_stat_user_tables
       WHERE relid = 'shardrelay.outbox'::regclass`.execute(db);
    if (Number(rows[0]?.dead ?? 0) < (this.#options.minDeadRows ?? 50_000)) return 'few dead rows';
    return db.connection().execute(async (session) => {
      const { rows: lock } = await sql<{ locked: boolean }>`
        SELECT pg_try_advisory_lock(hashtext('shardrelay.outbox_vacuum')) AS locked`.execute(session);
      if (!lock[0]?.locked) return 'busy';
      try {
        await sql`VACUUM (SKIP_LOCKED, TRUNCATE false) shardrelay.outbox`.execute(session);
        return 'vacuumed';
      } finally {
        await sql`SELECT pg_advisory_unlock(hashtext('shardrelay.outbox_vacuum'))`.execute(session);
      }
    });
  }

  async #mayVacuum(): Promise<boolean> {
    const { rows } = await sql<{ allowed: boolean }>`
      SELECT pg_has_role(c.relowner, 'USAGE')
             OR CASE WHEN current_setting('server_version_num')::int >= 170000
                     THEN has_table_privilege(c.oid, 'MAINTAIN') ELSE false END AS allowed
        FROM pg_class c WHERE c.oid = 'shardrelay.outbox'::regclass`.execute(this.#options.db);
    const allowed = rows[0]?.allowed === true;
    if (!allowed) {
      this.#options.logger.info(
        {
          fix: 'run the relay as the role that ran `shardrelay migrate`, or GRANT MAINTAIN ON shardrelay.outbox (PostgreSQL 17+)',
        },
        'the relay’s role may not VACUUM shardrelay.outbox; its dead rows wait for autovacuum, once a minute at most',
      );
    }
    return allowed;
  }

  #arm(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#running = this.vacuumOnce();
      void this.#running
        .catch((error: unknown) => {
          this.#options.logger.warn({ err: toError(error).message }, 'vacuum of the outbox failed; retrying');
          return 'busy' as const;
        })
        .finally(() => this.#arm());
    }, this.#options.intervalMs ?? 10_000);
    this.#timer.unref();
  }
}
