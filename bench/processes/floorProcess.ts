/**
 * The SQL floors: the limits the relay is judged against. Bare loops, no relay code: each of
 * `connections` workers owns a disjoint set of shards and, for each, repeats one transaction until
 * its shards have no pending row left:
 *
 * - `outbox` (phase sql-floor, the same-schema floor): the relay's own claim query (claimBatch, the
 *   same SQL, index and locks) on shardrelay.outbox, then ONE statement with the relay's
 *   completion effect: DELETE the rows and write their sent record (migrations/0007).
 * - `narrow` (phase sql-floor-narrow, the physical limit): the same claim shape on a narrow table
 *   (id, payload, status, created_at, sent_at) with the same partial expression index, then DELETE.
 *   It stands for the machine, not for shardrelay's schema.
 * - `pgboss-insert` (phase pgboss-insert): no claim; pg-boss's own insert() of the same number of
 *   rows with the same payload, batch size and connections: the bound of relay → pg-boss.
 *
 * What the relay adds on top of the outbox floor is exactly what the benchmark wants to price: the
 * sink call, the completion policy, the progress and rollup upserts, scheduling, LISTEN wake-ups
 * and the second lane. It runs in a child process like the relay, so its client CPU and RSS are
 * measured the same way.
 */
import { randomBytes } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import PgBoss from 'pg-boss';
import { createDatabase, createPool } from '../../src/db/connection.js';
import type { Database } from '../../src/db/schema.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { CLAIM_SESSION_SETTINGS, claimBatch } from '../../src/relay/claims.js';
import { readShardConfig } from '../../src/relay/shardConfig.js';
import { BENCH_TOPIC } from '../harness/database.js';
import { processUsage, serveRequests, type BenchResponse, type FloorStart } from '../harness/ipc.js';

let db: Kysely<Database> | undefined;
let settings: FloorStart | undefined;
let sent = 0;
let batches = 0;
let firstBatchAt = 0;
let lastBatchAt = 0;

/** One claim + complete transaction; returns the number of rows it completed. */
async function claimAndMark(
  database: Kysely<Database>,
  shard: number,
  shardCount: number,
  batchSize: number,
): Promise<number> {
  const started = Date.now();
  const marked = await database.transaction().execute(async (trx) => {
    if (settings?.mode === 'narrow') {
      const { rows } = await sql<{ id: string }>`
        SELECT id, payload FROM bench_narrow
         WHERE status = 'pending' AND id % ${sql.lit(shardCount)} = ${sql.lit(shard)}
         ORDER BY id LIMIT ${sql.lit(batchSize)} FOR UPDATE SKIP LOCKED`.execute(trx);
      if (rows.length === 0) return 0;
      await sql`DELETE FROM bench_narrow WHERE id = ANY(${rows.map((r) => r.id)}::bigint[])`.execute(trx);
      return rows.length;
    }
    const rows = await claimBatch(trx, {
      shard,
      shardCount,
      lane: 'batch',
      lanePredicate: DEFAULT_LANE_PREDICATE,
      batchSize,
    });
    if (rows.length === 0) return 0;
    await sql`
      WITH gone AS (
        DELETE FROM shardrelay.outbox WHERE id = ANY(${rows.map((r) => r.id)}::bigint[])
        RETURNING event_id, id, topic, key, lane, attempts, created_at
      )
      INSERT INTO shardrelay.sent_event (event_id, id, topic, key, shard, lane, attempts, created_at, sent_at, replica, sink)
      SELECT event_id, id, topic, key, ${shard}::int, lane, attempts + 1, created_at, clock_timestamp(), 'floor', 'null'
        FROM gone`.execute(trx);
    return rows.length;
  });
  if (marked > 0) {
    if (firstBatchAt === 0) firstBatchAt = started;
    lastBatchAt = Date.now();
    batches++;
    sent += marked;
  }
  return marked;
}

/** A worker drains its shards round-robin, dropping each once a claim comes back empty. */
async function worker(
  database: Kysely<Database>,
  shards: number[],
  shardCount: number,
  batchSize: number,
): Promise<void> {
  let open = shards;
  while (open.length > 0) {
    const next: number[] = [];
    for (const shard of open) {
      const marked = await claimAndMark(database, shard, shardCount, batchSize);
      if (marked > 0) next.push(shard);
    }
    open = next;
  }
}

/** UUIDv7 like shardrelay.uuid_v7(): the relay's pg-boss jobs carry such ids (the outbox default). */
function uuidV7(): string {
  const bytes = randomBytes(16);
  bytes.writeUIntBE(Date.now(), 0, 6);
  bytes[6] = ((bytes[6] as number) & 0x0f) | 0x70;
  bytes[8] = ((bytes[8] as number) & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

let boss: PgBoss | undefined;

/** pg-boss's insert() of `rows` jobs shaped like the pg-boss sink's, batchSize per call, connections at once. */
async function runPgBossInsert(): Promise<BenchResponse> {
  if (!boss || !settings) throw new Error('startFloor first');
  const b = boss;
  const total = settings.rows ?? 0;
  const { batchSize } = settings;
  const padding = 'x'.repeat(Math.max(0, (settings.payloadBytes ?? 200) - 40));
  let next = 0;
  const startedAt = Date.now();
  const worker = async () => {
    while (next < total) {
      const from = next;
      const n = Math.min(batchSize, total - from);
      next += n;
      const time = new Date().toISOString();
      const jobs = Array.from({ length: n }, (_, k) => {
        const id = uuidV7();
        return {
          id,
          name: BENCH_TOPIC,
          data: { id, type: BENCH_TOPIC, time, data: { n: from + k, padding } },
        };
      });
      const batchStarted = Date.now();
      await b.insert(jobs);
      if (firstBatchAt === 0) firstBatchAt = batchStarted;
      lastBatchAt = Date.now();
      batches++;
      sent += n;
    }
  };
  await Promise.all(Array.from({ length: settings.connections }, () => worker()));
  return { kind: 'floorRun', rows: total, startedAt, finishedAt: lastBatchAt || Date.now() };
}

async function runFloor(): Promise<BenchResponse> {
  if (settings?.mode === 'pgboss-insert') return runPgBossInsert();
  if (!db || !settings) throw new Error('startFloor first');
  const database = db;
  const { shardCount } = await readShardConfig(database);
  const workers = Math.min(settings.connections, shardCount);
  const shardsOf = Array.from({ length: workers }, (_, w) =>
    Array.from({ length: shardCount }, (_, s) => s).filter((s) => s % workers === w),
  );
  const { batchSize } = settings;
  const before = sent;
  const startedAt = Date.now();
  await Promise.all(shardsOf.map((shards) => worker(database, shards, shardCount, batchSize)));
  return { kind: 'floorRun', rows: sent - before, startedAt, finishedAt: lastBatchAt || Date.now() };
}

serveRequests(async (request) => {
  switch (request.kind) {
    case 'startFloor': {
      settings = request;
      if (request.mode === 'pgboss-insert') {
        if (boss) return { kind: 'ready' };
        boss = new PgBoss({
          connectionString: request.databaseUrl,
          max: request.connections,
          supervise: false,
          schedule: false,
          migrate: true,
          application_name: 'shardrelay-bench-pgboss',
        });
        boss.on('error', () => {});
        await boss.start();
        await boss.createQueue(BENCH_TOPIC);
        return { kind: 'ready' };
      }
      const floorPool = createPool({
        connectionString: request.databaseUrl,
        max: request.connections,
        applicationName: 'shardrelay-bench-floor',
        // The relay's claim connections run with these; the floor claims the same way.
        settings: CLAIM_SESSION_SETTINGS,
      });
      db = createDatabase(floorPool);
      // Open every connection before the clock starts, as the relay has by the time rows arrive.
      const clients = await Promise.all(
        Array.from({ length: request.connections }, () => floorPool.connect()),
      );
      for (const client of clients) client.release();
      return { kind: 'ready' };
    }
    case 'runFloor':
      return runFloor();
    case 'usage':
      return {
        kind: 'usage',
        ...processUsage(),
        sent,
        batches,
        retried: 0,
        dead: 0,
        firstBatchAt,
        lastBatchAt,
        errors: [],
      };
    case 'stop':
      await boss?.stop({ graceful: false, wait: true, close: true });
      boss = undefined;
      await db?.destroy();
      db = undefined;
      return { kind: 'stopped' };
    default:
      throw new Error(`the floor process does not handle ${request.kind}`);
  }
});
