/**
 * The PostgreSQL the bench measures against, and every SQL the driver itself runs: reset between
 * phases, bulk loads, latency percentiles. The relay and the floor run their own SQL in their
 * own processes.
 */
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { startEmbeddedPostgres } from '../../src/db/embeddedPostgres.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { Database } from '../../src/db/schema.js';
import { ensurePendingShardIndexes } from '../../src/db/shardIndex.js';
import { postmasterOf, processCpuMs, processTreeCpuMs } from './processCpu.js';

/** A reading of PostgreSQL's CPU: the whole server's, or per process of the bench (see below). */
export interface PostgresCpuReading {
  readonly totalMs: number;
  readonly byPid?: ReadonlyMap<number, number>;
}

/**
 * The database the bench creates on a DATABASE_URL server, so it never truncates real data.
 * SHARDRELAY_BENCH_DATABASE names another one, so that two benches can share one server without
 * truncating each other's tables.
 */
const BENCH_DATABASE = benchDatabaseName(process.env.SHARDRELAY_BENCH_DATABASE);

function benchDatabaseName(given: string | undefined): string {
  if (!given) return 'shardrelay_bench';
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(given))
    throw new Error(`SHARDRELAY_BENCH_DATABASE=${given}: use a lower-case SQL identifier`);
  return given;
}
export const BENCH_TOPIC = 'bench.event';

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/** Refuses any address but this machine's loopback: the bench talks to 127.0.0.1 only. */
export function assertLoopback(url: string, name: string): void {
  const host = new URL(url).hostname;
  if (!LOOPBACK.has(host)) {
    throw new Error(`${name} points at ${host}; the bench talks to 127.0.0.1 only (use a local server)`);
  }
}

export interface Percentiles {
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
}

export class BenchDatabase {
  readonly #pool: pg.Pool;
  readonly db: Kysely<Database>;
  readonly #postmasterPid: number | undefined;

  private constructor(
    readonly url: string,
    readonly kind: 'embedded' | 'DATABASE_URL',
    readonly serverVersion: string,
    pool: pg.Pool,
    postmasterPid: number | undefined,
    readonly stopServer: () => Promise<void>,
  ) {
    this.#pool = pool;
    this.db = createDatabase(pool);
    this.#postmasterPid = postmasterPid;
  }

  /**
   * DATABASE_URL's server (a database `shardrelay_bench` on it, created if missing), else an
   * embedded PostgreSQL started for this run. Migrates to the latest schema and sets the shard
   * count the bench asks for.
   */
  static async open(databaseUrl: string | undefined, shards: number): Promise<BenchDatabase> {
    let url: string;
    let kind: 'embedded' | 'DATABASE_URL';
    let stopServer = async () => {};
    if (databaseUrl) {
      assertLoopback(databaseUrl, 'DATABASE_URL');
      url = await ensureBenchDatabase(databaseUrl);
      kind = 'DATABASE_URL';
    } else {
      const embedded = await startEmbeddedPostgres();
      url = embedded.url;
      kind = 'embedded';
      stopServer = () => embedded.stop();
    }
    const pool = createPool({ connectionString: url, max: 4, applicationName: 'shardrelay-bench-driver' });
    try {
      const { rows } = await pool.query<{ version: string; pid: number }>(
        `SELECT current_setting('server_version') AS version, pg_backend_pid() AS pid`,
      );
      const row = rows[0];
      if (!row) throw new Error('no answer to the version query');
      const database = new BenchDatabase(url, kind, row.version, pool, postmasterOf(row.pid), stopServer);
      await migrateToLatest(database.db);
      await database.#setShardCount(shards);
      return database;
    } catch (error) {
      await pool.end().catch(() => {});
      await stopServer();
      throw error;
    }
  }

  async #setShardCount(shards: number): Promise<void> {
    const { rows } = await this.#pool.query<{ n: number }>(
      'SELECT shard_count AS n FROM shardrelay.shard_config',
    );
    if (rows[0]?.n === shards) return;
    await this.#pool.query('SELECT shardrelay.set_shard_count($1)', [shards]);
    // The relay builds the index for a new count in the background; build it now so that no
    // phase runs without it.
    await ensurePendingShardIndexes(this.db, shards);
  }

  /**
   * CPU of PostgreSQL so far (`postgresCpuSpentMs` takes the difference of two readings).
   *
   * Embedded server: the whole server, all its processes (it serves nothing else). A DATABASE_URL
   * server may serve other work too, so there only the processes that work for the bench count: the
   * backends connected to the bench's database and the server's background processes (WAL writer,
   * checkpointer, ...), by pid. Why: on this project's shared 2-core machine other databases' tests
   * made the whole-server figure of the same phase 16.0 ms per 1,000 rows in one run and 37.6 in
   * the next (sql-floor-narrow, load average 4-20), which made the "× floor by CPU" column useless.
   * Not counted: a bench backend that ends inside the window (the phases keep their connections).
   */
  async postgresCpuReading(): Promise<PostgresCpuReading> {
    if (this.#postmasterPid === undefined) return { totalMs: Number.NaN };
    if (this.kind !== 'DATABASE_URL') return { totalMs: processTreeCpuMs(this.#postmasterPid) };
    const { rows } = await this.#pool.query<{ pid: number }>(
      'SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL',
    );
    const byPid = new Map<number, number>();
    for (const { pid } of rows) {
      const ms = processCpuMs(pid);
      if (ms !== undefined) byPid.set(pid, ms);
    }
    return { totalMs: Number.NaN, byPid };
  }

  /** PostgreSQL CPU between two readings, ms (see postgresCpuReading); NaN when unknown. */
  static postgresCpuSpentMs(from: PostgresCpuReading, to: PostgresCpuReading): number {
    if (!from.byPid || !to.byPid) return to.totalMs - from.totalMs;
    let ms = 0;
    for (const [pid, now] of to.byPid) ms += now - (from.byPid.get(pid) ?? 0);
    return ms;
  }

  /** Whether PostgreSQL's CPU is that of the bench's processes on a shared DATABASE_URL server. */
  get postgresCpuIsShared(): boolean {
    return this.kind === 'DATABASE_URL';
  }

  /**
   * Empties the outbox, progress and pg-boss job tables, vacuums and checkpoints, so every phase
   * starts from the same state: ids from 1 (the same shard spread), no dead tuples, no WAL debt
   * from the previous phase landing in this one's checkpoint.
   */
  async reset(): Promise<void> {
    await this.#pool.query(
      'TRUNCATE shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress RESTART IDENTITY',
    );
    // The physical-limit floor's table (floorProcess.ts, mode narrow): the narrow shape of the
    // issue that asked for it, with the same partial expression index as the outbox's claims.
    await this.#pool.query(`
      CREATE TABLE IF NOT EXISTS bench_narrow (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL,
        status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now(),
        sent_at timestamptz)`);
    const { rows: count } = await this.#pool.query<{ n: number }>(
      'SELECT shard_count AS n FROM shardrelay.shard_config',
    );
    const n = count[0]?.n ?? 8;
    await this.#pool.query(
      `CREATE INDEX IF NOT EXISTS bench_narrow_pending_mod${n} ON bench_narrow ((id % ${n}), id) WHERE status = 'pending'`,
    );
    await this.#pool.query('TRUNCATE bench_narrow RESTART IDENTITY');
    const { rows } = await this.#pool.query<{ name: string }>(
      `SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables
        WHERE schemaname = 'pgboss' AND tablename IN ('job', 'archive')`,
    );
    // pg-boss's job table is partitioned by queue; truncating the parent empties every partition.
    if (rows.length > 0) await this.#pool.query(`TRUNCATE ${rows.map((r) => r.name).join(', ')}`);
    await this.#pool.query(
      'VACUUM (ANALYZE) shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress, bench_narrow',
    );
    // Needs superuser or pg_checkpoint; without it phases are only a little noisier.
    await this.#pool.query('CHECKPOINT').catch(() => {});
  }

  /**
   * Inserts `rows` pending rows (the shape of src/synthetic.ts: `{ n, padding }`, about
   * `payloadBytes` of JSON) and analyzes them in ONE transaction, so they all become visible, with
   * their statistics, at the same instant.
   * `beforeCommit` runs with the rows written but not yet visible: the place to start a clock
   * without counting the load itself.
   */
  async loadBacklog(rows: number, payloadBytes: number, beforeCommit?: () => Promise<void>): Promise<void> {
    const client = await this.#pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(insertRowsSql(), [rows, padding(payloadBytes)]);
      // Statistics for the rows just written, in the same transaction (ANALYZE counts the rows its
      // own transaction inserted), so the backlog is planned as the large table it is. Without
      // them the planner believes the just-truncated table is empty and claims with a bitmap scan
      // that reads and sorts every pending row of the shard for each batch of 1,000 (measured:
      // 30-40 ms per claim at 25,000 pending rows per shard, instead of about 2 ms).
      await client.query('ANALYZE shardrelay.outbox');
      await beforeCommit?.();
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    } finally {
      client.release();
    }
  }

  /** The same backlog in the narrow table of the physical-limit floor. */
  async loadNarrowBacklog(rows: number, payloadBytes: number): Promise<void> {
    const client = await this.#pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(
        `INSERT INTO bench_narrow (payload)
         SELECT jsonb_build_object('n', g, 'padding', $2::text) FROM generate_series(1, $1::int) AS g`,
        [rows, padding(payloadBytes)],
      );
      await client.query('ANALYZE bench_narrow');
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    } finally {
      client.release();
    }
  }

  async narrowPending(): Promise<number> {
    const { rows } = await this.#pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM bench_narrow WHERE status = 'pending'`,
    );
    return Number(rows[0]?.n ?? 0);
  }

  /** pg_total_relation_size (heap, indexes, TOAST) of the outbox and of the sent record, bytes. */
  async relationSizes(): Promise<{ outbox: number; sentEvent: number }> {
    const { rows } = await this.#pool.query<{ outbox: string; sent_event: string }>(
      `SELECT pg_total_relation_size('shardrelay.outbox') AS outbox,
              pg_total_relation_size('shardrelay.sent_event') AS sent_event`,
    );
    return { outbox: Number(rows[0]?.outbox ?? 0), sentEvent: Number(rows[0]?.sent_event ?? 0) };
  }

  /** created_at → sent_at of the sent rows with `fromId < id <= toId`, ms. */
  latencyOfIds(fromId: number, toId: number): Promise<Percentiles | null> {
    return this.#latency('id > $1 AND id <= $2', [fromId, toId]);
  }

  /**
   * The same for rows created in a time window (epoch ms): with several connections inserting at
   * once, id order is not commit order, so a window of time is the exact selection.
   */
  latencyOfCreated(fromMs: number, toMs: number): Promise<Percentiles | null> {
    return this.#latency(
      'created_at >= to_timestamp($1 / 1000.0) AND created_at < to_timestamp($2 / 1000.0)',
      [fromMs, toMs],
    );
  }

  async #latency(where: string, values: unknown[]): Promise<Percentiles | null> {
    const { rows } = await this.#pool.query<{ p: number[] | null }>(
      `SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                (ORDER BY extract(epoch FROM sent_at - created_at) * 1000) AS p
         FROM shardrelay.sent_event
        WHERE ${where}`,
      values,
    );
    const p = rows[0]?.p;
    if (!p) return null;
    return { p50: p[0] ?? Number.NaN, p95: p[1] ?? Number.NaN, p99: p[2] ?? Number.NaN };
  }

  /** Rows not yet sent, by status; a benchmark run must end with pending = dead = 0. */
  async statusCounts(): Promise<Record<string, number>> {
    const rows = await this.db
      .selectFrom('shardrelay.outbox')
      .select(['status', sql<string>`count(*)`.as('n')])
      .groupBy('status')
      .execute();
    return Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
  }

  /** A connection of its own, for a load generator. */
  async newClient(): Promise<pg.Client> {
    const client = new pg.Client({ connectionString: this.url, application_name: 'shardrelay-bench-load' });
    client.on('error', () => {}); // an error surfaces on the next query; the listener keeps the process alive
    await client.connect();
    return client;
  }

  async close(): Promise<void> {
    await this.db.destroy().catch(() => {});
    await this.stopServer();
  }
}

/** `$1` rows of about `$2`-padded payload, one statement, one NOTIFY (statement-level trigger). */
export function insertRowsSql(): string {
  return `INSERT INTO shardrelay.outbox (topic, payload)
          SELECT '${BENCH_TOPIC}', jsonb_build_object('n', g, 'padding', $2::text)
            FROM generate_series(1, $1::int) AS g`;
}

/** The padding that makes `{ n, padding }` about `payloadBytes` of JSON, as src/synthetic.ts does. */
export function padding(payloadBytes: number): string {
  return 'x'.repeat(Math.max(0, payloadBytes - 40));
}

async function ensureBenchDatabase(serverUrl: string): Promise<string> {
  const admin = new pg.Client({ connectionString: serverUrl, application_name: 'shardrelay-bench-setup' });
  await admin.connect();
  try {
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [BENCH_DATABASE]);
    if (!rowCount) {
      await admin.query(`CREATE DATABASE ${BENCH_DATABASE}`).catch((error: unknown) => {
        throw new Error(
          `cannot create database ${BENCH_DATABASE} on the DATABASE_URL server (${String(error)}); ` +
            `create it once (createdb ${BENCH_DATABASE}) or grant CREATEDB; the bench truncates its tables, ` +
            'so it never runs in the database DATABASE_URL names',
        );
      });
    }
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${BENCH_DATABASE}`;
  return url.toString();
}
