/**
 * The SQL views against a dataset whose every figure is worked out by hand below.
 *
 * The clock: views read shardrelay.now() and the completer stamps with shardrelay.clock(); both
 * return the session setting `shardrelay.now` when a transaction sets it (`at(T, ...)` here). Rows
 * get explicit ids (OVERRIDING SYSTEM VALUE) so their shard (id % 8) is known, and explicit
 * created_at / available_at. Rollups are written by the real completer (completeBatch) under a set
 * clock, so the test also proves what the completion statement records.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database } from '../../src/db/schema.js';
import { parseLanePredicate, DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { silentLogger, type Logger } from '../../src/logger.js';
import { syncLaneFunction } from '../../src/observability/lanes.js';
import { completeBatch, type Completion } from '../../src/relay/claims.js';
import { canaryLaneInputs } from '../../src/observability/canary.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const T = '2030-01-01 12:10:30+00';
const seconds = (s: number) => `(timestamptz '${T}' - interval '${s} seconds')`;

/** Runs `work` in a transaction whose clock (shardrelay.now) reads `now`. */
function at<R>(
  db: Kysely<Database>,
  now: string,
  work: (trx: Transaction<Database>) => Promise<R>,
): Promise<R> {
  return db.transaction().execute(async (trx) => {
    await sql`SELECT set_config('shardrelay.now', ${now}, true)`.execute(trx);
    return work(trx);
  });
}

async function view<R>(db: Kysely<Database>, name: string, now = T, order = ''): Promise<R[]> {
  return at(
    db,
    now,
    async (trx) => (await sql.raw<R>(`SELECT * FROM shardrelay.${name} ${order}`).execute(trx)).rows,
  );
}

interface Row {
  id: number;
  status?: 'pending' | 'sent' | 'dead';
  lane?: 'realtime' | 'batch';
  topic?: string;
  /** SQL timestamptz expressions. */
  created: string;
  available?: string;
  sentAt?: string;
  error?: string;
  canary?: boolean;
}

async function insertRows(db: Kysely<Database>, rows: readonly Row[]): Promise<void> {
  for (const r of rows) {
    await sql`
      INSERT INTO shardrelay.outbox
        (id, topic, payload, lane, created_at, available_at, status, sent_at, last_error, canary)
      OVERRIDING SYSTEM VALUE
      VALUES (${r.id}, ${r.topic ?? 'orders'}, '{}'::jsonb, ${r.lane ?? 'batch'}, ${sql.raw(r.created)},
              ${sql.raw(r.available ?? r.created)}, ${r.status ?? 'pending'},
              ${sql.raw(r.sentAt ?? 'NULL')}, ${r.error ?? null}, ${r.canary ?? false})`.execute(db);
  }
}

/** Pending rows created `latencyMs` before `completedAt`, then completed there by completeBatch. */
async function complete(
  db: Kysely<Database>,
  completedAt: string,
  shard: number,
  lane: 'realtime' | 'batch',
  rows: readonly {
    id: number;
    latencyMs: number;
    outcome?: Completion['status'];
    canary?: boolean;
    topic?: string;
  }[],
): Promise<void> {
  await insertRows(
    db,
    rows.map((r) => ({
      id: r.id,
      lane,
      topic: r.topic ?? 'orders',
      created: `(timestamptz '${completedAt}' - interval '${r.latencyMs} milliseconds')`,
      canary: r.canary ?? false,
    })),
  );
  const completions: Completion[] = rows.map((r) =>
    r.outcome === 'dead'
      ? { id: String(r.id), status: 'dead', error: 'permanent: schema 7 rejected' }
      : r.outcome === 'pending'
        ? { id: String(r.id), status: 'pending', retryInMs: 600_000, error: 'broker busy' }
        : { id: String(r.id), status: 'sent' },
  );
  await at(db, completedAt, (trx) => completeBatch(trx, { shard, lane, completions, batchMs: 3 }));
}

/** A logger that turns a warning into a test failure. */
const failOnWarn = Object.assign(Object.create(silentLogger) as Logger, {
  warn: (fields: unknown, message?: string) => assert.fail(`${message}: ${JSON.stringify(fields)}`),
});

const ids = (first: number, count: number) => Array.from({ length: count }, (_, k) => first + 8 * k);

describe('observer SQL views on a known dataset', () => {
  let t: TestDatabase;

  before(async () => {
    t = await createTestDatabase('views');
    const db = t.db;
    // Lag: pending rows of shards 0, 1, 5 and 6 (id % 8), a canary that must not count.
    await insertRows(db, [
      { id: 1_000_000, created: seconds(100) },
      { id: 1_000_008, created: seconds(50), available: `(timestamptz '${T}' + interval '60 seconds')` },
      { id: 1_000_016, created: seconds(5), lane: 'realtime' },
      { id: 1_000_001, created: seconds(30), available: seconds(10) },
      { id: 1_000_002, created: seconds(500), lane: 'realtime', canary: true },
      ...ids(1_000_005, 40).map((id) => ({ id, created: seconds(20) })),
      ...ids(2_000_006, 5).map((id) => ({ id, created: seconds(20) })),
      // Shard 3: one sent row and dead letters (two of them differ only in numbers).
      { id: 1_000_003, created: seconds(40), status: 'sent', sentAt: seconds(39) },
      {
        id: 1_000_011,
        created: seconds(3600),
        status: 'dead',
        error: 'gave up after 10 attempts: http 503 from :8080',
      },
      {
        id: 1_000_019,
        created: seconds(60),
        status: 'dead',
        error: 'gave up after 12 attempts: http 503 from :8080',
      },
      { id: 1_000_027, created: seconds(120), status: 'dead', error: 'permanent: unroutable' },
      {
        id: 1_000_035,
        created: seconds(10),
        status: 'dead',
        error: 'permanent: unroutable',
        topic: 'invoices',
      },
      { id: 1_000_043, created: seconds(15), status: 'dead', error: 'permanent: no queue', canary: true },
    ] satisfies Row[]);

    // Rollups through the real completer. Real-time, shard 1: an old batch outside the latency
    // window, then 10 rows over two minutes (latencies 12 .. 180 ms) plus a canary (9999 ms).
    await complete(db, '2030-01-01 12:03:10+00', 1, 'realtime', [{ id: 3_000_089, latencyMs: 5000 }]);
    await complete(db, '2030-01-01 12:09:00+00', 1, 'realtime', [
      ...[12, 15, 20, 30, 35, 40].map((latencyMs, k) => ({ id: 3_000_001 + 8 * k, latencyMs })),
      { id: 3_000_081, latencyMs: 9999, canary: true },
    ]);
    await complete(
      db,
      '2030-01-01 12:10:05+00',
      1,
      'realtime',
      [45, 48, 150, 180].map((latencyMs, k) => ({ id: 3_000_049 + 8 * k, latencyMs })),
    );
    // Batch, shard 2: four sent (1 to 4 s), one retried in 10 minutes, one dead.
    await complete(db, '2030-01-01 12:08:00+00', 2, 'batch', [
      ...[1000, 2000, 3000, 4000].map((latencyMs, k) => ({ id: 3_000_002 + 8 * k, latencyMs })),
      { id: 3_000_034, latencyMs: 5000, outcome: 'pending' },
      { id: 3_000_042, latencyMs: 2000, outcome: 'dead', topic: 'payments' },
    ]);

    // Produced: max(id) samples as the observers take them (12:07 was not sampled).
    await sql`
      INSERT INTO shardrelay.produced_minute (minute, max_id, reserved_ids, sampled_at)
      SELECT m::timestamptz, v.max_id, v.reserved, m::timestamptz FROM (VALUES
        ('2030-01-01 11:59:00+00', 900, 0), ('2030-01-01 12:05:00+00', 1000, 0),
        ('2030-01-01 12:06:00+00', 1100, 0), ('2030-01-01 12:08:00+00', 1400, 20),
        ('2030-01-01 12:09:00+00', 1500, 0), ('2030-01-01 12:10:00+00', 1530, 10)) AS v(m, max_id, reserved)`.execute(
      db,
    );

    // Health inputs: leases (shard 3's expired 20 s ago, shard 4 has none), shard 0's last batch
    // 90 s ago, lag samples of shard 5 (rising) and 6 (falling).
    await sql`
      INSERT INTO shardrelay.shard_lease (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
      SELECT 1, s, CASE WHEN s = 3 THEN 'relay-dead' ELSE 'relay-a' END, gen_random_uuid(), ${sql.raw(seconds(600))},
             ${sql.raw(seconds(1))}, CASE WHEN s = 3 THEN ${sql.raw(seconds(20))} ELSE timestamptz '${sql.raw(T)}' + interval '60 seconds' END
        FROM generate_series(0, 7) AS s WHERE s <> 4`.execute(db);
    await sql`
      INSERT INTO shardrelay.shard_progress (shard, lane, sent_total, last_batch_at, last_batch_ms)
      VALUES (0, 'batch', 7, ${sql.raw(seconds(90))}, 5)`.execute(db);
    await sql`
      INSERT INTO shardrelay.lag_minute (minute, shard, lane, pending_min, pending_max, pending_last, sampled_at)
      SELECT m::timestamptz, s, 'batch', lo, hi, hi, m::timestamptz FROM (VALUES
        ('2030-01-01 12:05:00+00', 5, 8, 10), ('2030-01-01 12:09:00+00', 5, 30, 34),
        ('2030-01-01 12:10:00+00', 5, 35, 39), ('2030-01-01 12:05:00+00', 6, 60, 100),
        ('2030-01-01 12:10:00+00', 6, 5, 9)) AS v(m, s, lo, hi)`.execute(db);
  });
  after(() => t.close());

  it('lag: pending and due rows, oldest pending and due age, longest due wait, per shard and lane', async () => {
    const rows = await view<Record<string, unknown>>(t.db, 'lag', T, 'ORDER BY shard, lane');
    assert.equal(rows.length, 16, 'every shard of 8 and both lanes');
    const busy = rows
      .filter((r) => Number(r.pending_rows) > 0)
      .map((r) => [
        r.shard,
        r.lane,
        Number(r.pending_rows),
        Number(r.due_rows),
        r.oldest_pending_seconds,
        r.oldest_due_seconds,
        r.waiting_seconds,
      ]);
    assert.deepEqual(busy, [
      // 2 pending, the one created 50 s ago waits out a retry (available in 60 s): not due.
      [0, 'batch', 2, 1, 100, 100, 100],
      [0, 'realtime', 1, 1, 5, 5, 5],
      // Created 30 s ago, due again since its retry delay ended 10 s ago.
      [1, 'batch', 1, 1, 30, 30, 10],
      // The row the completer retried at 12:08:00 (created 12:07:55) for 10 minutes: not due.
      [2, 'batch', 1, 0, 155, 0, 0],
      [5, 'batch', 40, 40, 20, 20, 20],
      [6, 'batch', 5, 5, 20, 20, 20],
    ]);
    // Shard 2's real-time canary (pending for 500 s) is not a business row.
    const canaryShard = rows.find((r) => r.shard === 2 && r.lane === 'realtime');
    assert.equal(Number(canaryShard?.pending_rows), 0);
  });

  it('the completer counts sent, retried and dead rows and latency buckets per minute, without canaries', async () => {
    const rollups = await sql<Record<string, unknown>>`
      SELECT to_char(minute AT TIME ZONE 'UTC', 'HH24:MI') AS minute, shard, lane, batches::int, sent::int,
             failed::int, dead::int, latency_ms_sum, latency_ms_max, latency_buckets::int[] AS buckets
        FROM shardrelay.rollup_minute ORDER BY minute`.execute(t.db);
    // Bounds (ms): 1 2.5 5 10 25 50 100 250 500 1000 2500 5000 ...; array position k counts
    // [bound k-1, bound k): 12 ms is in position 5 ([10, 25)), 5000 ms in 13 ([5000, 10000)).
    const histogram = (counts: Record<number, number>) =>
      Array.from({ length: 21 }, (_, k) => counts[k + 1] ?? 0);
    assert.deepEqual(rollups.rows, [
      { minute: '12:03', shard: 1, lane: 'realtime', batches: 1, sent: 1, failed: 0, dead: 0,
        latency_ms_sum: 5000, latency_ms_max: 5000, buckets: histogram({ 13: 1 }) },
      { minute: '12:08', shard: 2, lane: 'batch', batches: 1, sent: 4, failed: 1, dead: 1,
        latency_ms_sum: 10000, latency_ms_max: 4000, buckets: histogram({ 11: 2, 12: 2 }) },
      { minute: '12:09', shard: 1, lane: 'realtime', batches: 1, sent: 6, failed: 0, dead: 0,
        latency_ms_sum: 152, latency_ms_max: 40, buckets: histogram({ 5: 3, 6: 3 }) },
      { minute: '12:10', shard: 1, lane: 'realtime', batches: 1, sent: 4, failed: 0, dead: 0,
        latency_ms_sum: 423, latency_ms_max: 180, buckets: histogram({ 6: 2, 8: 2 }) },
    ]); // prettier-ignore
    const progress = await sql<Record<string, unknown>>`
      SELECT shard, lane, sent_total::int, failed_total::int, dead_total::int,
             to_char(last_batch_at AT TIME ZONE 'UTC', 'HH24:MI:SS') AS last_batch
        FROM shardrelay.shard_progress WHERE shard IN (1, 2) ORDER BY shard`.execute(t.db);
    assert.deepEqual(progress.rows, [
      { shard: 1, lane: 'realtime', sent_total: 11, failed_total: 0, dead_total: 0, last_batch: '12:10:05' },
      { shard: 2, lane: 'batch', sent_total: 4, failed_total: 1, dead_total: 1, last_batch: '12:08:00' },
    ]);
  });

  it('latency: p50, p95, p99 per lane over the last 5 minutes, from the histograms', async () => {
    const rows = await view<Record<string, unknown>>(t.db, 'latency', T, 'ORDER BY lane');
    // Real-time, minutes 12:05 to 12:10 (12:03 is out): 12 15 20 | 30 35 40 45 48 | 150 180.
    //   p50: rank 5 falls in [25, 50) holding ranks 4-8: 25 + 25 * (5 - 3) / 5 = 35
    //   p95: rank 9.5 in [100, 250), whose top is the slowest row, 180: 100 + 80 * 1.5 / 2 = 160
    //   p99: rank 9.9: 100 + 80 * 1.9 / 2 = 176
    // Batch: 1000 2000 | 3000 4000 in [1000, 2500) and [2500, 5000), max 4000.
    //   p50: rank 2: 1000 + 1500 * 2 / 2 = 2500; p95: rank 3.8: 2500 + 1500 * 1.8 / 2 = 3850;
    //   p99: rank 3.96: 2500 + 1500 * 1.96 / 2 = 3970.
    assert.deepEqual(rows, [
      { lane: 'batch', sent: '4', avg_ms: 2500, p50_ms: 2500, p95_ms: 3850, p99_ms: 3970, max_ms: 4000 },
      { lane: 'realtime', sent: '10', avg_ms: 57.5, p50_ms: 35, p95_ms: 160, p99_ms: 176, max_ms: 180 },
    ]);
    // With no row sent in the window, the percentiles are unknown, not zero.
    const later = await view<Record<string, unknown>>(
      t.db,
      'latency',
      '2030-01-01 13:00:00+00',
      'ORDER BY lane',
    );
    assert.deepEqual(
      later.map((r) => [r.lane, r.sent, r.p50_ms]),
      [
        ['batch', '0', null],
        ['realtime', '0', null],
      ],
    );
  });

  it('throughput_minute: produced against sent and dead per minute, with 5-minute sliding averages', async () => {
    const rows = await view<Record<string, unknown>>(t.db, 'throughput_minute');
    assert.equal(rows.length, 361, 'six hours of minutes, the current one included');
    const last = rows.slice(-8).map((r) => ({
      minute: (r.minute as Date).toISOString().slice(11, 16),
      produced: r.produced === null ? null : Number(r.produced),
      sent: Number(r.sent),
      failed: Number(r.failed),
      dead: Number(r.dead),
      produced_avg_5m: r.produced_avg_5m,
      sent_avg_5m: r.sent_avg_5m,
    }));
    // produced = rise of max(id) since the previous sample - ids the canaries took:
    //   12:05 1000-900 = 100, 12:06 100, 12:07 not sampled, 12:08 1400-1100-20 = 280,
    //   12:09 100, 12:10 1530-1500-10 = 20. Averages ignore unsampled minutes:
    //   at 12:10 (100 + 280 + 100 + 20) / 4 = 125; sent (0 + 0 + 4 + 6 + 4) / 5 = 2.8.
    assert.deepEqual(last, [
      {
        minute: '12:03',
        produced: null,
        sent: 1,
        failed: 0,
        dead: 0,
        produced_avg_5m: null,
        sent_avg_5m: 0.2,
      },
      {
        minute: '12:04',
        produced: null,
        sent: 0,
        failed: 0,
        dead: 0,
        produced_avg_5m: null,
        sent_avg_5m: 0.2,
      },
      { minute: '12:05', produced: 100, sent: 0, failed: 0, dead: 0, produced_avg_5m: 100, sent_avg_5m: 0.2 },
      { minute: '12:06', produced: 100, sent: 0, failed: 0, dead: 0, produced_avg_5m: 100, sent_avg_5m: 0.2 },
      {
        minute: '12:07',
        produced: null,
        sent: 0,
        failed: 0,
        dead: 0,
        produced_avg_5m: 100,
        sent_avg_5m: 0.2,
      },
      { minute: '12:08', produced: 280, sent: 4, failed: 1, dead: 1, produced_avg_5m: 160, sent_avg_5m: 0.8 },
      { minute: '12:09', produced: 100, sent: 6, failed: 0, dead: 0, produced_avg_5m: 145, sent_avg_5m: 2 },
      { minute: '12:10', produced: 20, sent: 4, failed: 0, dead: 0, produced_avg_5m: 125, sent_avg_5m: 2.8 },
    ]);
  });

  it('dead_letters: by topic and reason (numbers folded), count, oldest, newest sample', async () => {
    const rows = await view<Record<string, unknown>>(t.db, 'dead_letters');
    assert.deepEqual(
      rows.map((r) => [
        r.topic,
        r.reason,
        Number(r.dead_rows),
        r.oldest_seconds,
        Number(r.sample_id),
        r.sample_error,
      ]),
      [
        [
          'orders',
          'gave up after N attempts: http N from :N',
          2,
          3600,
          1_000_019,
          'gave up after 12 attempts: http 503 from :8080',
        ],
        ['invoices', 'permanent: unroutable', 1, 10, 1_000_035, 'permanent: unroutable'],
        ['orders', 'permanent: unroutable', 1, 120, 1_000_027, 'permanent: unroutable'],
        // Dead at 12:08:00, created 2 s before.
        ['payments', 'permanent: schema N rejected', 1, 152, 3_000_042, 'permanent: schema 7 rejected'],
      ],
    );
  });

  it('canaries: latest round trip, outstanding and dead canaries per shard and lane', async () => {
    const rows = await view<Record<string, unknown>>(t.db, 'canaries');
    assert.deepEqual(
      rows.map((r) => [r.shard, r.lane, r.last_latency_seconds, Number(r.outstanding), r.oldest_outstanding_seconds, Number(r.dead), r.last_error]),
      [
        [1, 'realtime', 9.999, 0, 0, 0, null],
        [2, 'realtime', null, 1, 500, 0, null],
        [3, 'batch', null, 0, 0, 1, 'permanent: no queue'],
      ],
    ); // prettier-ignore
  });

  it('health: STOP, STALL, ERROR, WARN and OK per shard and lane, with the reason', async () => {
    const rows = await view<Record<string, unknown>>(t.db, 'health');
    const classes = rows.map((r) => `${r.shard} ${r.lane} ${r.status}${r.reason ? `: ${r.reason}` : ''}`);
    assert.deepEqual(classes, [
      '0 batch STALL: 1 due rows waiting 100 s, last batch 90 s ago',
      '0 realtime OK',
      '1 batch OK',
      '1 realtime OK',
      '2 batch ERROR: 1 dead letters in the last 15 min',
      '2 realtime OK',
      '3 batch STOP: no live owner: lease of relay-dead expired 20 s ago',
      '3 realtime STOP: no live owner: lease of relay-dead expired 20 s ago',
      '4 batch STOP: no live owner: no lease',
      '4 realtime STOP: no live owner: no lease',
      '5 batch WARN: backlog rose from 10 to 40 rows in 5 min',
      '5 realtime OK',
      // Shard 6 fell from 100 to 5: OK.
      '6 batch OK',
      '6 realtime OK',
      '7 batch OK',
      '7 realtime OK',
    ]);
    assert.equal(rows[0]?.owner, 'relay-a');
    // Windows are settings: with a 2-minute stall window shard 0 is only late; with a 1-minute
    // error window the dead letter of 12:08 is out of it.
    const relaxed = await at(t.db, T, async (trx) => {
      await sql`SELECT set_config('shardrelay.stall_seconds', '120', true), set_config('shardrelay.error_minutes', '1', true)`.execute(trx);
      return (await sql<{ status: string }>`SELECT status FROM shardrelay.health WHERE shard IN (0, 2) AND lane = 'batch'`.execute(trx)).rows;
    }); // prettier-ignore
    assert.deepEqual(relaxed, [{ status: 'OK' }, { status: 'OK' }]);
    // At 12:30 (1170 s after T) every lease has expired. Renewed (but shard 4's, which never
    // existed), every backlog has waited far beyond the stall window: shard 2's retry is due
    // since 12:18 and no batch ran since 12:08.
    const later = await view<Record<string, unknown>>(t.db, 'health', '2030-01-01 12:30:00+00');
    assert.deepEqual([...new Set(later.map((r) => r.status))], ['STOP']);
    await sql`UPDATE shardrelay.shard_lease SET expires_at = '2030-01-01 13:00:00+00'`.execute(t.db);
    const renewed = await view<Record<string, unknown>>(t.db, 'health', '2030-01-01 12:30:00+00');
    assert.deepEqual(
      renewed.filter((r) => r.status !== 'OK').map((r) => `${r.shard} ${r.lane} ${r.status}: ${r.reason}`),
      [
        // Both rows of shard 0 are due by now (one since 12:08:50); its last batch ran at 12:09.
        '0 batch STALL: 2 due rows waiting 1270 s, last batch 1260 s ago',
        '0 realtime STALL: 1 due rows waiting 1175 s, last batch never',
        '1 batch STALL: 1 due rows waiting 1180 s, last batch never',
        '2 batch STALL: 1 due rows waiting 720 s, last batch 1320 s ago',
        '4 batch STOP: no live owner: no lease',
        '4 realtime STOP: no live owner: no lease',
        '5 batch STALL: 40 due rows waiting 1190 s, last batch never',
        '6 batch STALL: 5 due rows waiting 1190 s, last batch never',
      ],
    );
  });

  it('a relay with its own lane predicate makes the views split lanes its way', async () => {
    const { id } = await t.db
      .insertInto('shardrelay.outbox')
      .values({ topic: 'orders', payload: '{}', priority: 9 })
      .returning('id')
      .executeTakeFirstOrThrow();
    const shard = Number(id) % 8;
    assert.notEqual(shard, 0);
    // Real-time pending rows of shard 0 (row 1000016: lane = realtime, priority 0) and of the new
    // row's shard (lane = batch, priority 9).
    const realtime = async () => {
      const rows = await view<Record<string, unknown>>(t.db, 'lag');
      const of = (s: number) =>
        Number(rows.find((r) => r.shard === s && r.lane === 'realtime')?.pending_rows);
      return [of(0), of(shard)];
    };
    assert.deepEqual(await realtime(), [1, 0], 'default predicate: lane = realtime');
    await syncLaneFunction(t.db, parseLanePredicate({ column: 'priority', op: '>=', value: 5 }), failOnWarn);
    assert.deepEqual(await realtime(), [0, 1], 'priority >= 5');
    await syncLaneFunction(t.db, DEFAULT_LANE_PREDICATE, failOnWarn);
    assert.deepEqual(await realtime(), [1, 0]);
    // The default predicate compiles to exactly what migration 0004 installed: no replacement.
    const body = await sql<{ body: string }>`
      SELECT prosrc AS body FROM pg_proc WHERE oid = 'shardrelay.is_realtime(shardrelay.outbox)'::regprocedure`.execute(
      t.db,
    );
    assert.equal(body.rows[0]?.body, ` SELECT (o."lane" = 'realtime') IS TRUE `);
  });

  it('volume_hourly: per hour, the same from minutes and after maintain() folded the hour', async () => {
    const hour12 = (rows: Record<string, unknown>[]) => {
      const r = rows.find((x) => (x.hour as Date).toISOString() === '2030-01-01T12:00:00.000Z');
      return (
        r &&
        Object.fromEntries(Object.entries(r).map(([k, v]) => [k, k === 'hour' || v === null ? v : Number(v)]))
      );
    };
    const before = await view<Record<string, unknown>>(t.db, 'volume_hourly');
    assert.equal(before.length, 168, 'a week of hours');
    // Produced: last sample of 12:xx (1530) - last of 11:xx (900) - 30 canary ids = 600.
    const expected = {
      hour: new Date('2030-01-01T12:00:00Z'),
      produced: 600,
      sent: 15,
      sent_realtime: 11,
      sent_batch: 4,
      failed: 1,
      dead: 1,
    };
    assert.deepEqual(hour12(before), expected);
    assert.equal(
      before.find((x) => (x.hour as Date).getUTCHours() === 11)?.produced,
      null,
      'no sample before 11:59',
    );

    // An hour and ten minutes later the hour is over: maintain() folds it into rollup_hour.
    const later = '2030-01-01 13:20:30+00';
    await at(t.db, later, (trx) => sql`SELECT shardrelay.maintain()`.execute(trx));
    const folded = await sql<{ n: number }>`SELECT count(*)::int AS n FROM shardrelay.rollup_hour`.execute(
      t.db,
    );
    assert.equal(folded.rows[0]?.n, 2, 'one hourly row per shard and lane that had batches in 12:xx');
    // Drop the minutes of 12:xx: the view must now read the folded hour.
    await sql`DELETE FROM shardrelay.rollup_minute WHERE minute < '2030-01-01 13:00:00+00'`.execute(t.db);
    await sql`DELETE FROM shardrelay.produced_minute WHERE minute < '2030-01-01 13:00:00+00'`.execute(t.db);
    assert.deepEqual(hour12(await view(t.db, 'volume_hourly', later)), expected);
  });

  it('canary rows can be put in either lane of most predicates', () => {
    assert.deepEqual(canaryLaneInputs(DEFAULT_LANE_PREDICATE, 'realtime')?.lane, 'realtime');
    assert.deepEqual(canaryLaneInputs(DEFAULT_LANE_PREDICATE, 'batch')?.lane, 'batch');
    const byPriority = parseLanePredicate({
      and: [{ column: 'priority', op: '>', value: 4 }, { not: { column: 'key', op: 'in', value: ['bulk'] } }],
    });
    assert.equal(canaryLaneInputs(byPriority, 'realtime')?.priority, 5);
    assert.equal(canaryLaneInputs(byPriority, 'batch')?.priority, 0);
    // A canary's topic is fixed, so a lane chosen by topic alone cannot have one.
    const byTopic = parseLanePredicate({ column: 'topic', op: 'in', value: ['payments.authorised'] });
    assert.equal(canaryLaneInputs(byTopic, 'realtime'), undefined);
    assert.ok(canaryLaneInputs(byTopic, 'batch'));
  });
});
