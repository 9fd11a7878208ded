import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { sql, type Kysely } from 'kysely';
import { createDatabase, createPool } from '../../src/db/connection.js';
import type { Database } from '../../src/db/schema.js';

/**
 * The lane scenario: a batch backlog drains while real-time rows arrive at a steady rate. The relay
 * runs as its own OS process (the real CLI), the producer here, so the two never share an event
 * loop. Latency is end to end: created_at (the producer's commit) to sent_at (after the confirm).
 */
export interface LaneScenarioOptions {
  readonly databaseUrl: string;
  readonly backlogRows: number;
  readonly realtimePerSecond: number;
  readonly durationSeconds: number;
  /** Extra `shardrelay run` flags, e.g. ['--sink', 'null']. */
  readonly relayArgs?: readonly string[];
  readonly payloadBytes?: number;
}

export interface LatencySummary {
  readonly count: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
}

export interface LaneScenarioResult {
  readonly realtimeSent: number;
  readonly realtimeEnqueued: number;
  /** Latency of real-time rows created while the batch backlog was still draining (all of them when there is none). */
  readonly realtimeLatencyMs: LatencySummary;
  /** Latency of all real-time rows of the run. */
  readonly realtimeLatencyAllMs: LatencySummary;
  readonly batchRows: number;
  readonly batchDrainSeconds: number | null;
  readonly batchRowsPerSecond: number | null;
}

const ENTRY = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

/** Polls `check`; gives up at the timeout, or at once when the relay exited (`exited()` says how). */
async function until(
  check: () => Promise<boolean>,
  timeoutMs: number,
  what: string,
  exited: () => string | undefined = () => undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    const exit = exited();
    if (exit !== undefined) throw new Error(`the relay exited (${exit}) while waiting for ${what}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function latency(db: Kysely<Database>, createdBefore: Date | null): Promise<LatencySummary> {
  const row = await db
    .selectFrom('shardrelay.sent_event')
    .select([
      sql<number>`count(*)::int`.as('count'),
      sql<number[] | null>`percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM sent_at - created_at) * 1000)`.as('p'),
      sql<number | null>`max(extract(epoch FROM sent_at - created_at) * 1000)`.as('max'),
    ])
    .where('lane', '=', 'realtime')
    .where('topic', '=', 'bench.realtime')
    .$if(createdBefore !== null, (q) => q.where('created_at', '<', createdBefore as Date))
    .executeTakeFirstOrThrow();
  const round = (v: unknown) => Math.round(Number(v ?? 0) * 10) / 10;
  return {
    count: row.count,
    p50: round(row.p?.[0]),
    p95: round(row.p?.[1]),
    p99: round(row.p?.[2]),
    max: round(row.max),
  };
}

export async function runLaneScenario(options: LaneScenarioOptions): Promise<LaneScenarioResult> {
  const pool = createPool({
    connectionString: options.databaseUrl,
    max: 3,
    applicationName: 'bench-producer',
  });
  const db = createDatabase(pool);
  let relay: ChildProcess | undefined;
  try {
    await sql`TRUNCATE shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress`.execute(db);

    relay = spawn(
      process.execPath,
      ['--import', 'tsx', ENTRY, 'run', ...(options.relayArgs ?? ['--sink', 'null'])],
      {
        env: { ...process.env, DATABASE_URL: options.databaseUrl, SHARDRELAY_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'inherit', 'inherit'],
      },
    );
    let exit: string | undefined;
    const exited = new Promise<number | null>((resolve) =>
      relay?.on('exit', (code, signal) => {
        exit = `${code ?? signal}`;
        resolve(code);
      }),
    );
    const relayExit = () => exit;
    // Ready = a real-time probe row went through end to end (worker thread, LISTEN, sink).
    await sql`INSERT INTO shardrelay.outbox (topic, payload, lane) VALUES ('bench.probe', '{}', 'realtime')`.execute(
      db,
    );
    await until(
      async () =>
        !(await db
          .selectFrom('shardrelay.outbox')
          .select('id')
          .where('topic', '=', 'bench.probe')
          .where('status', '=', 'pending')
          .executeTakeFirst()),
      // The relay compiles its TypeScript as it starts (tsx), twice (the worker thread): on a
      // loaded 2-core machine (load average 30) that alone took 80 s.
      240_000,
      'the relay to deliver a real-time probe',
      relayExit,
    );
    // The backlog is written now, in one transaction, and the clock starts at its commit: written
    // before the relay started, the batch lane could drain part of it while the real-time thread
    // was still starting (tsx compiles it), and that part counted as drained inside the window.
    if (options.backlogRows > 0) {
      const padding = 'x'.repeat(Math.max(0, (options.payloadBytes ?? 200) - 40));
      await db.transaction().execute(async (trx) => {
        await sql`
          INSERT INTO shardrelay.outbox (topic, payload, lane)
          SELECT 'bench.batch', jsonb_build_object('n', i, 'padding', ${padding}::text), 'batch'
            FROM generate_series(1, ${options.backlogRows}::int) AS i`.execute(trx);
        // Statistics of the backlog, counted in its own transaction, so that the claims are planned
        // for the large table it is (see bench/harness/database.ts, loadBacklog).
        await sql`ANALYZE shardrelay.outbox`.execute(trx);
      });
    }
    const started = Date.now();

    let batchDrainedAt: number | null = options.backlogRows === 0 ? started : null;
    const watchBatch = (async () => {
      while (batchDrainedAt === null && exit === undefined && Date.now() - started < 600_000) {
        const pending = await db
          .selectFrom('shardrelay.outbox')
          .select('id')
          .where('status', '=', 'pending')
          .where('lane', '=', 'batch')
          .limit(1)
          .executeTakeFirst();
        if (!pending) batchDrainedAt = Date.now();
        else await new Promise((r) => setTimeout(r, 50));
      }
    })();

    // Steady arrivals at absolute times, so a slow insert does not lower the offered rate.
    const total = Math.round(options.realtimePerSecond * options.durationSeconds);
    const interval = 1000 / Math.max(options.realtimePerSecond, 1e-9);
    for (let i = 0; i < total; i++) {
      const due = started + i * interval;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      await sql`INSERT INTO shardrelay.outbox (topic, payload, lane)
                VALUES ('bench.realtime', ${JSON.stringify({ i })}::jsonb, 'realtime')`.execute(db);
    }
    await until(
      async () =>
        !(await db
          .selectFrom('shardrelay.outbox')
          .select('id')
          .where('lane', '=', 'realtime')
          .where('status', '=', 'pending')
          .limit(1)
          .executeTakeFirst()),
      60_000,
      'every real-time row to be sent',
      relayExit,
    );
    await watchBatch;

    relay.kill('SIGTERM');
    await exited;
    relay = undefined;

    const realtimeSent = (
      await sql<{ n: number }>`SELECT count(*)::int AS n FROM shardrelay.sent_event
        WHERE topic = 'bench.realtime'`.execute(db)
    ).rows[0]?.n as number;
    const drainSeconds = batchDrainedAt === null ? null : (batchDrainedAt - started) / 1000;
    return {
      realtimeEnqueued: total,
      realtimeSent,
      realtimeLatencyMs: await latency(
        db,
        options.backlogRows > 0 && batchDrainedAt !== null ? new Date(batchDrainedAt) : null,
      ),
      realtimeLatencyAllMs: await latency(db, null),
      batchRows: options.backlogRows,
      batchDrainSeconds: drainSeconds,
      batchRowsPerSecond:
        options.backlogRows > 0 && drainSeconds ? Math.round(options.backlogRows / drainSeconds) : null,
    };
  } finally {
    relay?.kill('SIGKILL');
    await db.destroy();
  }
}
