/**
 * The SQL floor: the physical limit the relay is judged against. A bare loop, no relay code:
 * each of `connections` workers owns a disjoint set of shards and, for each, repeats one
 * transaction — the relay's own claim query (claimBatch, the same SQL, index and locks), then
 * ONE UPDATE marking the claimed rows sent — until its shards have no pending row left.
 *
 * What the relay adds on top of this is exactly what the benchmark wants to price: the sink call,
 * the completion policy, the per-row outcome UPDATE with the shard progress upsert, scheduling,
 * LISTEN wake-ups and the second lane. It runs in a child process like the relay, so its client
 * CPU and RSS are measured the same way.
 */
import { sql, type Kysely } from 'kysely';
import { createDatabase, createPool } from '../src/db/connection.js';
import type { Database } from '../src/db/schema.js';
import { DEFAULT_LANE_PREDICATE } from '../src/lanes/lanePredicate.js';
import { CLAIM_SESSION_SETTINGS, claimBatch } from '../src/relay/claims.js';
import { readShardConfig } from '../src/relay/shardConfig.js';
import { processUsage, serveRequests, type BenchResponse, type FloorStart } from './ipc.js';

let db: Kysely<Database> | undefined;
let settings: FloorStart | undefined;
let sent = 0;
let batches = 0;
let firstBatchAt = 0;
let lastBatchAt = 0;

/** One claim + mark-sent transaction; returns the number of rows it marked. */
async function claimAndMark(
  database: Kysely<Database>,
  shard: number,
  shardCount: number,
  batchSize: number,
): Promise<number> {
  const started = Date.now();
  const marked = await database.transaction().execute(async (trx) => {
    const rows = await claimBatch(trx, {
      shard,
      shardCount,
      lane: 'batch',
      lanePredicate: DEFAULT_LANE_PREDICATE,
      batchSize,
    });
    if (rows.length === 0) return 0;
    await sql`
      UPDATE shardrelay.outbox
         SET status = 'sent', sent_at = clock_timestamp(), attempts = attempts + 1
       WHERE id = ANY(${rows.map((r) => r.id)}::bigint[])`.execute(trx);
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

async function runFloor(): Promise<BenchResponse> {
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
      await db?.destroy();
      db = undefined;
      return { kind: 'stopped' };
    default:
      throw new Error(`the floor process does not handle ${request.kind}`);
  }
});
