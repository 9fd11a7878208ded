/**
 * Every observer view answers in under 50 ms with 1,000,000 outbox rows, and the timings are
 * printed. The outbox is shaped like a busy week kept for retention: 1,000,000 rows of which 1%
 * pending (the backlog of the moment), 0.5% dead, the rest sent; with the per-minute rollups and
 * samples of the last two days and the hourly rollups of the week, as the relay's observer and
 * shardrelay.maintain() leave them.
 *
 * The budget is checked against the fastest of 7 runs (what the query costs, without the time the
 * machine spent on other processes) and printed beside the median. SHARDRELAY_VIEW_BUDGET_MS
 * changes it, e.g. on a slow CI machine.
 *
 * A second table shows what the backlog costs: the views that count pending rows (lag, health and
 * shards) read every pending row, so they are timed again with 200,000 rows pending. Printed only.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const VIEWS = [
  'lag',
  'throughput_minute',
  'volume_hourly',
  'latency',
  'dead_letters',
  'canaries',
  'health',
  'replicas',
  'shards',
] as const;
const BUDGET_MS = Number(process.env.SHARDRELAY_VIEW_BUDGET_MS ?? 50);
const RUNS = 7;

async function time(client: pg.Client, view: string): Promise<{ min: number; median: number; rows: number }> {
  const sample: number[] = [];
  let rows = 0;
  await client.query(`SELECT * FROM shardrelay.${view}`); // warm the cache and the catalog
  for (let i = 0; i < RUNS; i++) {
    const started = performance.now();
    rows = (await client.query(`SELECT * FROM shardrelay.${view}`)).rowCount ?? 0;
    sample.push(performance.now() - started);
  }
  sample.sort((a, b) => a - b);
  return { min: sample[0] as number, median: sample[Math.floor(RUNS / 2)] as number, rows };
}

function table(title: string, timings: Map<string, { min: number; median: number; rows: number }>): string {
  const lines = [title, 'view                fastest   median   rows'];
  for (const [view, t] of timings) {
    lines.push(
      `${view.padEnd(18)} ${t.min.toFixed(1).padStart(8)} ms ${t.median.toFixed(1).padStart(6)} ms ${String(t.rows).padStart(6)}`,
    );
  }
  return lines.join('\n');
}

describe('view timings on 1,000,000 outbox rows', { timeout: 180_000 }, () => {
  let t: TestDatabase;
  let client: pg.Client;

  before(async () => {
    t = await createTestDatabase('view_timings');
    client = new pg.Client(t.url);
    await client.connect();
    const started = performance.now();
    // One statement for the rows. Building speed only, not reading: the insert trigger only wakes
    // relays (none here), so it is skipped, and the table is unlogged (no WAL for a million rows).
    await client.query('ALTER TABLE shardrelay.outbox DISABLE TRIGGER outbox_notify_insert');
    await client.query('ALTER TABLE shardrelay.outbox SET UNLOGGED');
    await client.query(`
      INSERT INTO shardrelay.outbox (topic, payload, lane, created_at, available_at, status, sent_at, attempts, last_error)
      SELECT CASE WHEN g % 3 = 0 THEN 'invoices.issued' ELSE 'orders.created' END,
             '{"n": 1}'::jsonb,
             CASE WHEN g % 10 = 0 THEN 'realtime' ELSE 'batch' END,
             now() - (1000000 - g) * interval '600 ms',
             now() - (1000000 - g) * interval '600 ms',
             CASE WHEN g > 990000 THEN 'pending' WHEN g % 200 = 7 THEN 'dead' ELSE 'sent' END,
             CASE WHEN g <= 990000 AND g % 200 <> 7 THEN now() - (1000000 - g) * interval '600 ms' + interval '40 ms' END,
             CASE WHEN g % 200 = 7 THEN 10 ELSE 1 END,
             CASE WHEN g % 200 = 7 THEN 'gave up after 10 attempts: broker returned ' || (g % 7) END
        FROM generate_series(1, 1000000) AS g`);
    await client.query('ALTER TABLE shardrelay.outbox ENABLE TRIGGER outbox_notify_insert');
    // Two days of minutes and a week of hours for 8 shards x 2 lanes; samples; leases.
    await client.query(`
      INSERT INTO shardrelay.rollup_minute (minute, shard, lane, batches, sent, failed, dead, latency_ms_sum, latency_ms_max, latency_buckets)
      SELECT m, s, l, 10, 100, 1, 1, 4000, 90, shardrelay.latency_histogram(ARRAY[3, 7, 20, 40, 40, 40, 60, 90]::float8[])
        FROM generate_series(date_trunc('minute', now()) - interval '2 days', date_trunc('minute', now()), interval '1 minute') AS m,
             generate_series(0, 7) AS s, (VALUES ('realtime'), ('batch')) AS x(l)`);
    await client.query(`
      INSERT INTO shardrelay.rollup_hour (hour, shard, lane, batches, sent, failed, dead, latency_ms_sum, latency_ms_max, latency_buckets)
      SELECT h, s, l, 600, 6000, 60, 60, 240000, 90, shardrelay.latency_histogram(ARRAY[3, 7, 20, 40, 40, 40, 60, 90]::float8[])
        FROM generate_series(date_trunc('hour', now()) - interval '8 days', date_trunc('hour', now()) - interval '1 hour', interval '1 hour') AS h,
             generate_series(0, 7) AS s, (VALUES ('realtime'), ('batch')) AS x(l)`);
    await client.query(`
      INSERT INTO shardrelay.produced_minute (minute, max_id, reserved_ids, sampled_at)
      SELECT m, 1000000 - 100 * (count(*) OVER (ORDER BY m DESC) - 1), 2, m
        FROM generate_series(date_trunc('minute', now()) - interval '2 days', date_trunc('minute', now()), interval '1 minute') AS m`);
    await client.query(`
      INSERT INTO shardrelay.produced_hour (hour, max_id, reserved_ids)
      SELECT h, 700000 - 6000 * (count(*) OVER (ORDER BY h DESC) - 1), 120
        FROM generate_series(date_trunc('hour', now()) - interval '8 days', date_trunc('hour', now()) - interval '1 hour', interval '1 hour') AS h`);
    await client.query(`
      INSERT INTO shardrelay.lag_minute (minute, shard, lane, pending_min, pending_max, pending_last, sampled_at)
      SELECT m, s, l, 500, 800, 600, m
        FROM generate_series(date_trunc('minute', now()) - interval '1 day', date_trunc('minute', now()), interval '1 minute') AS m,
             generate_series(0, 7) AS s, (VALUES ('realtime'), ('batch')) AS x(l)`);
    await client.query(`
      INSERT INTO shardrelay.replica (instance, replica_id, hostname, pid, lease_timeout_seconds, generation)
      VALUES ('00000000-0000-0000-0000-000000000001', 'relay-a', 'host-a', 1, 10, 1)`);
    await client.query(`
      INSERT INTO shardrelay.shard_lease (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
      SELECT 1, s, 'relay-a', '00000000-0000-0000-0000-000000000001', now(), now(), now() + interval '1 hour'
        FROM generate_series(0, 7) AS s`);
    await client.query('VACUUM ANALYZE');
    console.log(`# dataset built in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  });

  after(async () => {
    await client?.end();
    await t?.close();
  });

  it(`every view answers in under ${BUDGET_MS} ms`, async () => {
    const counts = await client.query<{ status: string; n: string }>(
      'SELECT status, count(*) AS n FROM shardrelay.outbox GROUP BY status ORDER BY status',
    );
    const timings = new Map<string, { min: number; median: number; rows: number }>();
    for (const view of VIEWS) timings.set(view, await time(client, view));
    console.log(
      table(`# 1,000,000 outbox rows (${counts.rows.map((r) => `${r.n} ${r.status}`).join(', ')})`, timings),
    );
    const slow = [...timings]
      .filter(([, t]) => t.min >= BUDGET_MS)
      .map(([view, t]) => `${view} ${t.min.toFixed(1)} ms`);
    assert.deepEqual(slow, [], `views slower than ${BUDGET_MS} ms`);
  });

  it('prints what a 200,000-row backlog costs the views that count pending rows', async () => {
    await client.query(`
      UPDATE shardrelay.outbox SET status = 'pending', sent_at = NULL
       WHERE id > 800000 AND status = 'sent'`);
    await client.query('VACUUM ANALYZE shardrelay.outbox');
    const timings = new Map<string, { min: number; median: number; rows: number }>();
    for (const view of ['lag', 'health', 'shards']) timings.set(view, await time(client, view));
    const pending = await client.query<{ n: string }>(
      "SELECT count(*) AS n FROM shardrelay.outbox WHERE status = 'pending'",
    );
    console.log(table(`# the same with ${pending.rows[0]?.n} rows pending`, timings));
  });
});
