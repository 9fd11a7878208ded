/**
 * The real-time batch with and without its transaction-control statements pipelined
 * (src/db/deferringClient.ts), in the same run, alternating: one real-time row inserted, then one
 * real-time batch of the relay (`deliverBatch`, null sink) on its shard; the wall time of the batch
 * and of insert → sent_at. Optionally while a batch-lane drain keeps the cores busy
 * (`--busy <rows>`: the relay's batch lane, in this process, drains that many rows meanwhile).
 *
 *   DATABASE_URL=... npx tsx bench/studies/realtimeRoundTrips.ts [--rows 300] [--busy 200000]
 *
 * The database must be migrated and is truncated: use a database of its own.
 */
import { performance } from 'node:perf_hooks';
import os from 'node:os';
import { sql, type Kysely } from 'kysely';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { Database } from '../../src/db/schema.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { deliverBatch } from '../../src/relay/deliverBatch.js';
import { CLAIM_SESSION_SETTINGS } from '../../src/relay/claims.js';
import { createNullSink } from '../../src/sinks/nullSink.js';

interface Sample {
  readonly batchMs: number;
  readonly sentMs: number;
}

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};

function pct(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const v = sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? Number.NaN;
  return Math.round(v * 100) / 100;
}

function lanePool(url: string, lane: 'realtime' | 'batch', defer: boolean, max: number): Kysely<Database> {
  return createDatabase(
    createPool({
      connectionString: url,
      max,
      applicationName: `bench-${lane}${defer ? '-deferring' : ''}`,
      deferTransactionControl: defer,
      settings: {
        ...CLAIM_SESSION_SETTINGS,
        ...(lane === 'realtime' ? { synchronous_commit: 'off' } : {}),
        'shardrelay.sent_record': 'on',
        'shardrelay.replica': 'bench',
        'shardrelay.sink': 'null',
      },
    }),
  );
}

async function main(): Promise<void> {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('set DATABASE_URL to a database of its own');
  const rows = arg('--rows', 300);
  const busy = arg('--busy', 0);
  const admin = createDatabase(createPool({ connectionString: url, max: 2, applicationName: 'bench-setup' }));
  await migrateToLatest(admin);
  await sql`TRUNCATE shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress`.execute(admin);
  const shardCount = Number(
    (await sql<{ n: number }>`SELECT shard_count AS n FROM shardrelay.shard_config`.execute(admin)).rows[0]
      ?.n,
  );
  const sink = createNullSink();
  await sink.start();
  const settings = {
    lanePredicate: DEFAULT_LANE_PREDICATE,
    batchSize: 100,
    retry: { maxAttempts: 10, baseMs: 1000, capMs: 300_000 },
    sendTimeoutMs: 10_000,
  };
  const plain = lanePool(url, 'realtime', false, 1);
  const deferring = lanePool(url, 'realtime', true, 1);

  // The busy load: the batch lane draining a backlog on every shard, 2 batches at a time.
  let draining = false;
  let drained = 0;
  const batchDb = lanePool(url, 'batch', false, 2);
  const drain = (async () => {
    if (busy <= 0) return;
    await sql`INSERT INTO shardrelay.outbox (topic, payload, lane)
      SELECT 'bench.batch', jsonb_build_object('n', i, 'padding', repeat('x', 160)), 'batch'
        FROM generate_series(1, ${busy}::int) AS i`.execute(admin);
    await sql`VACUUM ANALYZE shardrelay.outbox`.execute(admin);
    draining = true;
    const worker = async (first: number) => {
      for (let shard = first; draining; shard = (shard + 2) % shardCount) {
        const r = await deliverBatch(batchDb, sink, shard, shardCount, 'batch', {
          ...settings,
          batchSize: 1000,
        });
        drained += r.claimed;
      }
    };
    await Promise.all([worker(0), worker(1)]);
  })();
  if (busy > 0) while (!draining) await new Promise((r) => setTimeout(r, 50));

  const samples: Record<'plain' | 'deferring', Sample[]> = { plain: [], deferring: [] };
  for (let i = 0; i < rows * 2; i++) {
    const kind = i % 2 === 0 ? 'plain' : 'deferring';
    const db = kind === 'plain' ? plain : deferring;
    const inserted = await sql<{ id: string }>`INSERT INTO shardrelay.outbox (topic, payload, lane)
      VALUES ('bench.realtime', '{}', 'realtime') RETURNING id::text AS id`.execute(admin);
    const id = inserted.rows[0]?.id as string;
    const started = performance.now();
    const result = await deliverBatch(
      db,
      sink,
      Number(BigInt(id) % BigInt(shardCount)),
      shardCount,
      'realtime',
      settings,
    );
    const batchMs = performance.now() - started;
    if (result.sent !== 1) throw new Error(`batch of ${kind} sent ${result.sent} rows`);
    const sent = await sql<{ ms: number }>`SELECT extract(epoch FROM sent_at - created_at) * 1000 AS ms
      FROM shardrelay.sent_event WHERE id = ${id}::bigint`.execute(admin);
    samples[kind].push({ batchMs, sentMs: Number(sent.rows[0]?.ms) });
    await new Promise((r) => setTimeout(r, 5));
  }
  draining = false;
  await drain;

  const line = (kind: 'plain' | 'deferring') => {
    const s = samples[kind];
    const b = s.map((x) => x.batchMs);
    const e = s.map((x) => x.sentMs);
    return `| ${kind === 'plain' ? 'six round trips (before)' : 'three round trips (deferring client)'} | ${s.length} | ${pct(b, 0.5)} / ${pct(b, 0.95)} / ${pct(b, 0.99)} | ${pct(e, 0.5)} / ${pct(e, 0.95)} / ${pct(e, 0.99)} |`;
  };
  console.log(
    [
      `load average ${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(
          ' ',
        )}; ${busy > 0 ? `batch lane draining meanwhile (${drained} rows sent)` : 'no other relay load'}`,
      '| real-time batch | batches | deliverBatch ms p50 / p95 / p99 | insert → sent_at ms p50 / p95 / p99 |',
      '| --- | ---: | ---: | ---: |',
      line('plain'),
      line('deferring'),
    ].join('\n'),
  );
  await Promise.all([plain.destroy(), deferring.destroy(), batchDb.destroy(), admin.destroy(), sink.close()]);
}

await main();
