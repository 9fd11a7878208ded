/**
 * A running relay's metrics against the SQL views, and its probes.
 *
 * The relay reaches PostgreSQL through a TCP proxy, so the test can make the database unreachable
 * for the relay alone (the test's own connections stay direct). The sink is real in shape: it
 * refuses some rows permanently, some once (retryable), and holds others until released, which
 * keeps rows pending and in flight long enough to compare the lag and in-flight gauges.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { startRelay, type Relay } from '../../src/wiring/relay.js';
import { confirmed, permanent, retryable, type Sink } from '../../src/sinks/sink.js';
import { spawnCli, waitFor } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { startTcpProxy, type TcpProxy } from '../support/tcpProxy.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

function parse(text: string): Sample[] {
  return text
    .split('\n')
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      assert.ok(match, `unparseable line ${line}`);
      const labels: Record<string, string> = {};
      for (const [, k, v] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
        labels[k as string] = v as string;
      return { name: match[1] as string, labels, value: Number(match[3]) };
    });
}

const sum = (samples: readonly Sample[], name: string, labels: Record<string, string> = {}) =>
  samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0);

type Payload = { fail?: 'permanent' | 'once'; hold?: boolean };

/** Refuses `permanent` rows for good, `once` rows the first time, holds `hold` rows until released. */
function scriptedSink() {
  const seen = new Set<string>();
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const sink: Sink = {
    name: 'scripted',
    start: async () => {},
    close: async () => {},
    async sendBatch(messages) {
      if (messages.some((m) => (JSON.parse(m.payloadJson) as Payload).hold)) await released;
      return messages.map((m) => {
        const payload = JSON.parse(m.payloadJson) as Payload;
        if (payload.fail === 'permanent') return permanent('rejected: schema 3 unknown');
        if (payload.fail === 'once' && !seen.has(m.eventId)) {
          seen.add(m.eventId);
          return retryable('broker busy');
        }
        return confirmed;
      });
    },
  };
  return { sink, release };
}

describe('relay metrics agree with the SQL views', { timeout: 120_000 }, () => {
  let t: TestDatabase;
  let proxy: TcpProxy;
  let relay: Relay;
  let url: string;
  const scripted = scriptedSink();

  const scrape = async () => {
    const res = await fetch(`${relay.observer.server?.url}/metrics`);
    assert.equal(res.status, 200);
    return parse(await res.text());
  };
  const probe = async (path: string) => {
    const res = await fetch(`${relay.observer.server?.url}${path}`);
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };

  before(async () => {
    t = await createTestDatabase('relay_metrics');
    const target = new URL(t.url);
    proxy = await startTcpProxy(target.hostname, Number(target.port || 5432));
    const viaProxy = new URL(t.url);
    viaProxy.hostname = '127.0.0.1';
    viaProxy.port = String(proxy.port);
    url = viaProxy.toString();
  });
  after(async () => {
    scripted.release();
    proxy?.resume();
    await relay?.stop();
    await proxy?.close();
    await t?.close();
  });

  it('counts sent, failed and dead rows and latencies as the rollups and views do', async () => {
    await enqueue(
      t.db,
      Array.from({ length: 400 }, (_, i) => ({
        topic: i % 2 ? 'orders.created' : 'invoices.issued',
        payload: { fail: i % 40 === 3 ? 'permanent' : i % 25 === 1 ? 'once' : undefined } satisfies Payload,
        lane: i % 4 === 0 ? ('realtime' as const) : ('batch' as const),
      })),
    );
    relay = await startRelay({
      config: testConfig(url, {
        metricsPort: 0,
        retryBaseMs: 1,
        retryCapMs: 5,
        replicaId: 'relay-m',
        // The in-flight test holds one batch of every shard at the sink at once: a connection each
        // (the default is sized to the cores).
        connectionsPerLane: 8,
      }),
      sink: scripted.sink,
      observeIntervalMs: 300,
    });
    await relay.whenDrained();
    await relay.observer.observe();
    const samples = await scrape();

    const totals = await sql<{ sent: number; failed: number; dead: number }>`
      SELECT sum(sent)::int AS sent, sum(failed)::int AS failed, sum(dead)::int AS dead
        FROM shardrelay.throughput_minute`.execute(t.db);
    // 10 permanent refusals (i % 40 = 3) are dead at once; 16 rows (i % 25 = 1) are refused once.
    assert.deepEqual(totals.rows[0], { sent: 390, failed: 16, dead: 10 });
    assert.equal(sum(samples, 'shardrelay_events_sent_total'), 390);
    assert.equal(sum(samples, 'shardrelay_events_failed_total', { kind: 'retryable' }), 16);
    assert.equal(sum(samples, 'shardrelay_events_failed_total', { kind: 'permanent' }), 10);
    assert.equal(sum(samples, 'shardrelay_events_dead_total'), 10);
    const dead = await sql<{
      n: number;
    }>`SELECT sum(dead_rows)::int AS n FROM shardrelay.dead_letters`.execute(t.db);
    assert.equal(dead.rows[0]?.n, 10);

    // Per shard and lane, the counters equal the completer's rollups.
    const rollups = await sql<{ shard: number; lane: string; sent: number; dead: number }>`
      SELECT shard, lane, sum(sent)::int AS sent, sum(dead)::int AS dead FROM shardrelay.rollup_minute
       GROUP BY shard, lane ORDER BY shard, lane`.execute(t.db);
    for (const r of rollups.rows) {
      const labels = { shard: String(r.shard), lane: r.lane };
      assert.equal(
        sum(samples, 'shardrelay_events_sent_total', labels),
        r.sent,
        `sent ${JSON.stringify(labels)}`,
      );
      assert.equal(
        sum(samples, 'shardrelay_events_dead_total', labels),
        r.dead,
        `dead ${JSON.stringify(labels)}`,
      );
    }

    // Latency: as many observations per lane as the view counts, and the same p50 within a bucket.
    const latency = await sql<{ lane: string; sent: string; p50_ms: number }>`
      SELECT lane, sent, p50_ms FROM shardrelay.latency ORDER BY lane`.execute(t.db);
    for (const row of latency.rows) {
      const count = sum(samples, 'shardrelay_end_to_end_latency_seconds_count', { lane: row.lane });
      assert.equal(count, Number(row.sent), `latency observations of ${row.lane}`);
      // The view's p50 comes from the completer's histogram (created_at to sent_at, stamped by
      // PostgreSQL when the batch completes), the metric's from the relay's (created_at to the
      // sink's answer, just before). So the view's p50 is never much earlier than the metric's, and
      // later by at most the time a completion takes after the confirm: a few ms on a quiet
      // machine; under a parallel test that saturates PostgreSQL, one slow completion of a
      // 100-row batch moved a whole lane by more than 80 ms (seen in CI). Half a second bounds it.
      const p50 = row.p50_ms / 1000;
      const cumulative = samples
        .filter(
          (s) => s.name === 'shardrelay_end_to_end_latency_seconds_bucket' && s.labels.lane === row.lane,
        )
        .map((s) => ({ le: Number(s.labels.le), n: s.value }))
        .sort((a, b) => a.le - b.le);
      // The metric's p50 lies in (metricP50Above, metricP50AtMost].
      const metricP50Above = [...cumulative].reverse().find((b) => b.n < count / 2)?.le ?? 0;
      const metricP50AtMost = cumulative.find((b) => b.n >= count / 2)?.le ?? Infinity;
      const buckets = JSON.stringify(cumulative);
      assert.ok(
        metricP50Above <= p50 * 1.2,
        `p50 ${p50}s of ${row.lane} is earlier than the metric's: ${buckets}`,
      );
      assert.ok(
        p50 <= metricP50AtMost + 0.5,
        `p50 ${p50}s of ${row.lane} is far later than the metric's: ${buckets}`,
      );
    }
    const batches = await sql<{
      n: number;
    }>`SELECT sum(batches)::int AS n FROM shardrelay.rollup_minute`.execute(t.db);
    assert.equal(sum(samples, 'shardrelay_batch_duration_seconds_count'), batches.rows[0]?.n);
  });

  it('sets lag, in-flight, status, ownership and outbox-id gauges from the views within one cycle', async () => {
    await enqueue(
      t.db,
      Array.from({ length: 40 }, () => ({
        topic: 'orders.created',
        payload: { hold: true } satisfies Payload,
      })),
    );
    // Every shard's batch is claimed and held at the sink: 40 rows pending, due and in flight.
    const scraped = async () => {
      const samples = await scrape();
      return { samples, inflight: sum(samples, 'shardrelay_inflight_unconfirmed') };
    };
    await waitFor('40 rows in flight', async () => (await scraped()).inflight === 40, 60_000);
    await relay.observer.observe();
    const { samples } = await scraped();
    const lag = await sql<{ shard: number; lane: string; due_rows: string; oldest_due_seconds: number }>`
      SELECT shard, lane, due_rows, oldest_due_seconds FROM shardrelay.lag ORDER BY shard, lane`.execute(
      t.db,
    );
    assert.equal(
      lag.rows.reduce((n, r) => n + Number(r.due_rows), 0),
      40,
    );
    for (const row of lag.rows) {
      const labels = { shard: String(row.shard), lane: row.lane };
      assert.equal(
        sum(samples, 'shardrelay_lag_events', labels),
        Number(row.due_rows),
        `lag ${JSON.stringify(labels)}`,
      );
      const seconds = sum(samples, 'shardrelay_lag_seconds', labels);
      assert.ok(
        Math.abs(seconds - row.oldest_due_seconds) < 2,
        `lag seconds ${seconds} vs ${row.oldest_due_seconds}`,
      );
    }
    const health = await sql<{ shard: number; lane: string; status: string }>`
      SELECT shard, lane, status FROM shardrelay.health`.execute(t.db);
    for (const row of health.rows) {
      const labels = { shard: String(row.shard), lane: row.lane, status: row.status };
      assert.equal(sum(samples, 'shardrelay_shard_status', labels), 1, `status ${JSON.stringify(labels)}`);
    }
    assert.equal(sum(samples, 'shardrelay_shards_owned'), 8);
    assert.equal(sum(samples, 'shardrelay_unowned_shards'), 0);
    const maxId = await sql<{
      id: string;
    }>`SELECT pg_sequence_last_value(pg_get_serial_sequence('shardrelay.outbox', 'id')::regclass) AS id`.execute(
      t.db,
    );
    assert.equal(sum(samples, 'shardrelay_outbox_max_id'), Number(maxId.rows[0]?.id));

    scripted.release();
    await relay.whenDrained();
    // The observer's own cycle (every 300 ms here) brings the lag back to zero without being asked.
    await waitFor(
      'lag gauges back to 0',
      async () => sum(await scrape(), 'shardrelay_lag_events') === 0,
      10_000,
    );
  });

  it('/healthz and /readyz answer; /readyz fails while the database is unreachable and recovers after', async () => {
    assert.deepEqual(await probe('/healthz'), { status: 200, body: { alive: true } });
    assert.deepEqual(await probe('/readyz'), { status: 200, body: { ready: true } });

    proxy.cutAll();
    proxy.stall(); // new connections hang too: the database does not answer at all
    await waitFor('readyz 503', async () => (await probe('/readyz')).status === 503, 15_000, 200);
    const down = await probe('/readyz');
    assert.equal(down.body.ready, false);
    assert.match(String(down.body.reason), /did not answer|database unreachable/);
    // A short database outage is not a reason to restart the process.
    assert.equal((await probe('/healthz')).status, 200);

    proxy.resume();
    await waitFor('readyz 200 again', async () => (await probe('/readyz')).status === 200, 60_000, 200);
    // And the relay works again.
    await enqueue(t.db, [{ topic: 'orders.created', payload: {} }]);
    await relay.whenDrained();
  });
});

describe('metrics of `shardrelay run` (real-time lane on its worker thread)', { timeout: 120_000 }, () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('run_metrics');
  });
  after(() => t.close());

  it('exports the batches of both lanes', async () => {
    const child = spawnCli(['run', '--sink', 'null', '--metrics-port', '0'], {
      DATABASE_URL: t.url,
      SHARDRELAY_LOG_LEVEL: 'info',
    });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await waitFor('the metrics server', async () => stderr.includes('serving /metrics'), 60_000);
      const url = /"url":"(http:\/\/[^"]+)"/.exec(stderr)?.[1] as string;
      await enqueue(
        t.db,
        Array.from({ length: 40 }, (_, i) => ({
          topic: 'orders.created',
          payload: { i },
          lane: i % 2 ? ('realtime' as const) : ('batch' as const),
        })),
      );
      const sent = async (lane: string) =>
        sum(parse(await (await fetch(`${url}/metrics`)).text()), 'shardrelay_events_sent_total', { lane });
      await waitFor('both lanes counted', async () => (await sent('realtime')) === 20 && (await sent('batch')) === 20, 60_000); // prettier-ignore
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  });
});
