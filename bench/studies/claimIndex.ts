/**
 * Does the claim need an index per shard count? Times the relay's claim over a pending backlog
 * with the `((id % N), id) WHERE status = 'pending'` indexes, with plain partial indexes on `(id)`,
 * and with no pending index at all. The figures in src/db/shardIndex.ts come from this script.
 *
 * Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx bench/studies/claimIndex.ts [rows]
 *
 * Fair on a busy machine: all variants run against the same backlog, interleaved batch by batch,
 * so they share the load, the cache and the dead tuples. Every index exists at once; each variant
 * writes the claim so that only its own index can serve it (`(id + 0) % N` matches no expression
 * index; `(status = 'pending') IS TRUE` implies no partial index). Otherwise the claim is the
 * relay's (relay/claims.ts), and a drain batch is completed by the relay's completeBatch.
 *
 * It creates a database of its own on that server (dropped at the end), talks to 127.0.0.1 only,
 * and prints a table plus one JSON line.
 */
import { sql, type Kysely, type Transaction } from 'kysely';
import pg from 'pg';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { Database, Lane } from '../../src/db/schema.js';
import { ensurePendingShardIndexes, pendingShardIndexSql } from '../../src/db/shardIndex.js';
import { DEFAULT_LANE_PREDICATE, laneFilter } from '../../src/lanes/lanePredicate.js';
import { completeBatch } from '../../src/relay/claims.js';
import { assertLoopback } from '../harness/database.js';

const ROWS = Number(process.argv[2] ?? 500_000);
const N = 16;
const REALTIME_EVERY = 100; // 1% of the backlog is real-time
const SAMPLES = 30;
const DRAIN_BATCHES = 30; // per variant, of 1000 rows
const INSERT_ROWS = 200_000;

type Variant = 'modIndex' | 'plainIndex' | 'noIndex';
const VARIANTS: readonly Variant[] = ['modIndex', 'plainIndex', 'noIndex'];
const LABEL: Record<Variant, string> = {
  modIndex: 'index ((id % 16), id) WHERE pending',
  plainIndex: 'plain partial index (id) WHERE pending',
  noIndex: 'no pending index (primary key only)',
};

const adminUrl = process.env.DATABASE_URL;
if (!adminUrl) throw new Error('set DATABASE_URL to a PostgreSQL on 127.0.0.1');
assertLoopback(adminUrl, 'DATABASE_URL');
const name = `shardrelay_bench_claim_index_${process.pid}`;
const url = new URL(adminUrl);
url.pathname = `/${name}`;

const median = (values: readonly number[]) =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;
const round = (v: number, digits = 2) => Math.round(v * 10 ** digits) / 10 ** digits;

/** The relay's claim, with the shard filter and the pending filter written per variant. */
function claim(trx: Transaction<Database>, variant: Variant, shard: number, lane: Lane, batchSize: number) {
  const n = sql.lit(N);
  const shardOf = variant === 'modIndex' ? sql`id % ${n}` : sql`(id + 0) % ${n}`;
  return trx
    .selectFrom('shardrelay.outbox')
    .select(['id', 'event_id', 'topic', 'payload', 'headers', 'lane', 'created_at', 'attempts'])
    .where(
      variant === 'noIndex' ? sql<boolean>`(status = 'pending') IS TRUE` : sql<boolean>`status = 'pending'`,
    )
    .where('available_at', '<=', sql<Date>`now()`)
    .where(shardOf, '=', sql.lit(shard))
    .where(laneFilter(DEFAULT_LANE_PREDICATE, lane))
    .orderBy('id')
    .limit(batchSize)
    .forUpdate()
    .skipLocked();
}

class RollBack extends Error {}

/** ms of one claim in a transaction that is rolled back (the backlog stays as it is). */
async function claimOnce(db: Kysely<Database>, variant: Variant, shard: number, lane: Lane, size: number) {
  let ms = 0;
  await db
    .transaction()
    .execute(async (trx) => {
      const started = performance.now();
      await claim(trx, variant, shard, lane, size).execute();
      ms = performance.now() - started;
      throw new RollBack();
    })
    .catch((error: unknown) => {
      if (!(error instanceof RollBack)) throw error;
    });
  return ms;
}

/** ms of claim + mark sent + commit of one batch of 1000. */
async function drainOnce(db: Kysely<Database>, variant: Variant, shard: number) {
  const started = performance.now();
  const rows = await db.transaction().execute(async (trx) => {
    const claimed = await claim(trx, variant, shard, 'batch', 1000).execute();
    await completeBatch(trx, {
      shard,
      lane: 'batch',
      completions: claimed.map((m) => ({ id: m.id, status: 'sent' as const })),
      batchMs: 0,
    });
    return claimed.length;
  });
  return { ms: performance.now() - started, rows };
}

async function planOf(db: Kysely<Database>, variant: Variant, lane: Lane): Promise<string> {
  const compiled = await db
    .transaction()
    .execute(async (trx) => claim(trx, variant, 3, lane, 1000).compile());
  const { rows } = await sql<{ 'QUERY PLAN': string }>`EXPLAIN ${sql.raw(
    compiled.sql.replace(/\$(\d+)/g, (_, i: string) => {
      const value = compiled.parameters[Number(i) - 1];
      return typeof value === 'string' ? `'${value.replace(/'/g, "''")}'` : String(value);
    }),
  )}`.execute(db);
  return (
    rows
      .map((r) => r['QUERY PLAN'])
      .join(' ')
      .match(/(Index Scan|Bitmap Index Scan|Index Only Scan|Seq Scan)[^(]*/)?.[0]
      ?.trim() ?? '?'
  );
}

async function main(): Promise<void> {
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const pool = createPool({ connectionString: url.toString(), max: 2, applicationName: 'bench-claim-index' });
  const db = createDatabase(pool);
  try {
    await migrateToLatest(db);
    // Only the indexes each variant needs (the schema starts with those of 8 shards).
    await sql`DROP INDEX shardrelay.outbox_pending_mod8, shardrelay.outbox_pending_realtime_mod8`.execute(db);
    await sql`
      INSERT INTO shardrelay.outbox (topic, payload, lane)
      SELECT 'bench.index', jsonb_build_object('n', n, 'padding', repeat('x', 160)),
             CASE WHEN n % ${REALTIME_EVERY} = 0 THEN 'realtime' ELSE 'batch' END
        FROM generate_series(1, ${ROWS}) AS n`.execute(db);
    await sql`VACUUM ANALYZE shardrelay.outbox`.execute(db);
    const built = performance.now();
    await ensurePendingShardIndexes(db, N); // the count in shard_config stays 8: nothing is dropped
    const buildSeconds = round((performance.now() - built) / 1000);
    await sql`CREATE INDEX outbox_plain_pending ON shardrelay.outbox (id) WHERE status = 'pending'`.execute(
      db,
    );
    await sql`CREATE INDEX outbox_plain_pending_rt ON shardrelay.outbox (id)
                WHERE status = 'pending' AND lane = 'realtime'`.execute(db);
    await sql`ANALYZE shardrelay.outbox`.execute(db);

    const samples = new Map<string, number[]>();
    const add = (key: string, ms: number) => samples.set(key, [...(samples.get(key) ?? []), ms]);
    for (let i = 0; i < SAMPLES; i++) {
      for (const variant of VARIANTS) {
        const shard = i % N;
        add(`${variant}/batch1000`, await claimOnce(db, variant, shard, 'batch', 1000));
        add(`${variant}/batch100`, await claimOnce(db, variant, shard, 'batch', 100));
        add(`${variant}/realtime100`, await claimOnce(db, variant, shard, 'realtime', 100));
      }
    }
    // Each variant drains its own shards, interleaved batch by batch.
    const drainShards: Record<Variant, number[]> = {
      modIndex: [0, 1, 2, 3, 4],
      plainIndex: [5, 6, 7, 8, 9],
      noIndex: [10, 11, 12, 13, 14],
    };
    const drained = new Map<Variant, { ms: number; rows: number }>();
    for (let i = 0; i < DRAIN_BATCHES; i++) {
      for (const variant of VARIANTS) {
        const shards = drainShards[variant];
        const r = await drainOnce(db, variant, shards[i % shards.length] as number);
        const sum = drained.get(variant) ?? { ms: 0, rows: 0 };
        drained.set(variant, { ms: sum.ms + r.ms, rows: sum.rows + r.rows });
      }
    }

    const results = [];
    console.log(
      `${ROWS} pending rows (1% real-time), N = ${N}; claim = median ms of ${SAMPLES} (rolled back); ` +
        `drain = claim 1000 + mark sent + commit, ${DRAIN_BATCHES} batches, one connection`,
    );
    for (const variant of VARIANTS) {
      const d = drained.get(variant) ?? { ms: NaN, rows: 0 };
      const row = {
        variant,
        plans: { batch: await planOf(db, variant, 'batch'), realtime: await planOf(db, variant, 'realtime') },
        claimBatch1000Ms: round(median(samples.get(`${variant}/batch1000`) ?? [])),
        claimBatch100Ms: round(median(samples.get(`${variant}/batch100`) ?? [])),
        claimRealtime100Ms: round(median(samples.get(`${variant}/realtime100`) ?? [])),
        drainRowsPerSecond: Math.round(d.rows / (d.ms / 1000)),
      };
      results.push(row);
      console.log(
        `${LABEL[variant].padEnd(42)} claim 1000: ${String(row.claimBatch1000Ms).padStart(6)} ms  claim 100: ` +
          `${String(row.claimBatch100Ms).padStart(5)} ms  real-time 100: ${String(row.claimRealtime100Ms).padStart(7)} ms  ` +
          `drain ${String(row.drainRowsPerSecond).padStart(6)} rows/s   (${row.plans.batch}; ${row.plans.realtime})`,
      );
    }
    console.log(`building both mod-${N} indexes CONCURRENTLY over ${ROWS} rows: ${buildSeconds} s`);

    // What indexes of earlier counts cost the application: insert rate with one count's pending
    // indexes against three counts' (alternated, best of two each).
    await sql`DROP INDEX shardrelay.outbox_plain_pending, shardrelay.outbox_plain_pending_rt`.execute(db);
    const others = [...pendingShardIndexSql(8), ...pendingShardIndexSql(5)];
    const insertRate = async () => {
      await sql`TRUNCATE shardrelay.outbox`.execute(db);
      const started = performance.now();
      await sql`
        INSERT INTO shardrelay.outbox (topic, payload)
        SELECT 'bench.index', jsonb_build_object('n', n, 'padding', repeat('x', 160))
          FROM generate_series(1, ${INSERT_ROWS}) AS n`.execute(db);
      return Math.round(INSERT_ROWS / ((performance.now() - started) / 1000));
    };
    const rates = { oneCount: 0, threeCounts: 0 };
    for (let round = 0; round < 2; round++) {
      for (const statement of others) await sql.raw(statement).execute(db);
      rates.threeCounts = Math.max(rates.threeCounts, await insertRate());
      for (const statement of others) {
        const index = /IF NOT EXISTS (\w+)/.exec(statement)?.[1] as string;
        await sql.raw(`DROP INDEX shardrelay.${index}`).execute(db);
      }
      rates.oneCount = Math.max(rates.oneCount, await insertRate());
    }
    console.log(
      `insert rate (INSERT ... SELECT of ${INSERT_ROWS} rows, best of 2): ${rates.oneCount} rows/s with the ` +
        `pending indexes of one count, ${rates.threeCounts} rows/s with those of three counts`,
    );
    console.log(JSON.stringify({ rows: ROWS, shardCount: N, buildSeconds, results, insertRate: rates }));
  } finally {
    await db.destroy();
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}

await main();
