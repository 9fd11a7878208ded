import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';

/**
 * The relay's own VACUUM of its queue tables, by one replica at a time, on a plan that depends on
 * whether autovacuum works here (`vacuumPlan`, from db/vacuumCheck.ts's answer).
 *
 * Why at all: every row sent leaves a dead tuple in the outbox (its DELETE), every pruned record
 * another in the sent record, and a claim's index scan walks the dead entries ahead of its shard's
 * live rows in the pending index, visiting the heap for each until a vacuum removes them.
 * - Autovacuum off: nothing else would ever vacuum them, and a queue table that is never vacuumed
 *   decays within minutes (db/vacuumCheck.ts); both are vacuumed every period.
 * - Autovacuum on: it visits a database at most once per `autovacuum_naptime` (1 min by default); at
 *   10,300 rows/s a minute leaves ~600,000 dead rows (`n_dead_tup` was 448,000 right after an
 *   autovacuum of the outbox). Measured in the bench's soaks on the embedded PostgreSQL 18 (10,300
 *   rows/s offered on 2 cores; bench/RESULTS.md, twelfth session): one 1,000-row claim took 155-224
 *   ms before its first row and touched 17,600 buffers; over 11 minutes without this vacuum
 *   PostgreSQL spent 153-169 ms of CPU per 1,000 rows, the outbox grew from 244 to 316 MB and a
 *   minute's lag reached 11,353 rows; over 9 minutes with it, 103-123 ms, 46-64 MB and 878 rows. So
 *   the outbox alone is vacuumed between autovacuum's visits, once it holds 50,000 dead rows (an
 *   idle or slow outbox costs one statistics read per period), without truncation: that takes an
 *   ACCESS EXCLUSIVE lock, which would stop claims and inserts every 10 s, and autovacuum gives an
 *   emptied tail back anyway.
 *
 * `SKIP_LOCKED`: when autovacuum or another replica's vacuum is at a table, this period skips it.
 * One replica at a time: a session-level try-lock. VACUUM takes SHARE UPDATE EXCLUSIVE, which no
 * claim, insert or delete conflicts with. It needs the role that owns the tables (or MAINTAIN on
 * them, PostgreSQL 17+): without it PostgreSQL would skip them with a warning every period, so the
 * relay checks once and says so.
 */
export interface VacuumPlan {
  readonly tables: readonly RelayTable[];
  /** A table with fewer dead rows (the statistics' `n_dead_tup`) is left alone this period. */
  readonly minDeadRows: number;
  /** Whether VACUUM may give an emptied tail of the file back (an ACCESS EXCLUSIVE lock). */
  readonly truncate: boolean;
}

type RelayTable = 'shardrelay.outbox' | 'shardrelay.sent_event';

/** What the relay vacuums itself: see the module comment. */
export function vacuumPlan(autovacuumWorks: boolean): VacuumPlan {
  return autovacuumWorks
    ? { tables: ['shardrelay.outbox'], minDeadRows: 50_000, truncate: false }
    : { tables: ['shardrelay.outbox', 'shardrelay.sent_event'], minDeadRows: 0, truncate: true };
}

export interface RelayVacuumOptions {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly plan: VacuumPlan;
  /** Period; default 10 s. */
  readonly intervalMs?: number;
}

export type VacuumRound = 'vacuumed' | 'few dead rows' | 'busy' | 'not allowed';

/** Shared with the previous release's pruner, which vacuumed under the same lock. */
const LOCK_KEY = 'shardrelay.self_vacuum';

export class RelayVacuum {
  readonly #options: RelayVacuumOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<VacuumRound> | undefined;
  #stopped = false;
  #allowed: boolean | undefined;

  constructor(options: RelayVacuumOptions) {
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
  async vacuumOnce(): Promise<VacuumRound> {
    const { db, plan } = this.#options;
    this.#allowed ??= await this.#mayVacuum();
    if (!this.#allowed) return 'not allowed';
    const due = plan.minDeadRows === 0 ? plan.tables : await this.#tablesWithDeadRows();
    if (due.length === 0) return 'few dead rows';
    return db.connection().execute(async (session) => {
      const { rows } = await sql<{ locked: boolean }>`
        SELECT pg_try_advisory_lock(hashtext(${LOCK_KEY})) AS locked`.execute(session);
      if (!rows[0]?.locked) return 'busy';
      try {
        const options = plan.truncate ? 'SKIP_LOCKED' : 'SKIP_LOCKED, TRUNCATE false';
        // Table names from the fixed RelayTable list, never from input.
        for (const table of due) await sql.raw(`VACUUM (${options}) ${table}`).execute(session);
        return 'vacuumed';
      } finally {
        await sql`SELECT pg_advisory_unlock(hashtext(${LOCK_KEY}))`.execute(session);
      }
    });
  }

  async #tablesWithDeadRows(): Promise<RelayTable[]> {
    const { db, plan } = this.#options;
    const { rows } = await sql<{ table: RelayTable }>`
      SELECT t.name AS table FROM unnest(${plan.tables}::text[]) AS t(name)
        JOIN pg_stat_user_tables s ON s.relid = t.name::regclass
       WHERE s.n_dead_tup >= ${plan.minDeadRows}`.execute(db);
    return rows.map((r) => r.table);
  }

  async #mayVacuum(): Promise<boolean> {
    const { db, plan, logger } = this.#options;
    const { rows } = await sql<{ allowed: boolean }>`
      SELECT coalesce(bool_and(
               pg_has_role(c.relowner, 'USAGE')
               OR CASE WHEN current_setting('server_version_num')::int >= 170000
                       THEN has_table_privilege(c.oid, 'MAINTAIN') ELSE false END), false) AS allowed
        FROM unnest(${plan.tables}::text[]) AS t(name)
        JOIN pg_class c ON c.oid = t.name::regclass`.execute(db);
    const allowed = rows[0]?.allowed === true;
    if (!allowed) {
      logger.info(
        {
          tables: plan.tables,
          fix: 'run the relay as the role that ran `shardrelay migrate`, or GRANT MAINTAIN ON these tables (PostgreSQL 17+)',
        },
        'the relay’s role may not VACUUM its tables; their dead rows wait for autovacuum',
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
          this.#options.logger.warn(
            { err: toError(error).message },
            'vacuum of the relay’s tables failed; retrying',
          );
          return 'busy' as const;
        })
        .finally(() => this.#arm());
    }, this.#options.intervalMs ?? 10_000);
    this.#timer.unref();
  }
}
