/**
 * Canary events end to end: injected per owned shard and lane, delivered through the real sink
 * (pg-boss, RabbitMQ) as CloudEvent type `shardrelay.canary`, their round trip exported as a metric,
 * and left out of every business count. A canary that does not come back within three intervals
 * is reported.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import amqplib, { type ChannelModel, type ConsumeMessage } from 'amqplib';
import { sql } from 'kysely';
import { readStatus } from '../../src/status.js';
import { enqueue } from '../../src/enqueue.js';
import { CANARY_TOPIC } from '../../src/observability/canary.js';
import { startRelay, type Relay } from '../../src/wiring/relay.js';
import { createRabbitMqSink } from '../../src/sinks/rabbitmqSink.js';
import { confirmed, permanent, unknown, type SendOutcome, type Sink } from '../../src/sinks/sink.js';
import { AMQP_URL, captureLog, hostAndPort, requireBroker, uniqueName } from '../support/brokers.js';
import { waitFor } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

interface CanaryRow {
  shard: number;
  lane: string;
  last_latency_seconds: number | null;
}

async function canaries(t: TestDatabase): Promise<CanaryRow[]> {
  return (
    await sql<CanaryRow>`SELECT shard, lane, last_latency_seconds FROM shardrelay.canaries ORDER BY shard, lane`.execute(
      t.db,
    )
  ).rows;
}

/** Every shard (of 8) and lane has a canary that came back. */
async function everyCanaryBack(t: TestDatabase): Promise<boolean> {
  return (await canaries(t)).filter((r) => r.last_latency_seconds !== null).length === 16;
}

async function canaryGauges(relay: Relay): Promise<Map<string, number>> {
  const text = await (await fetch(`${relay.observer.server?.url}/metrics`)).text();
  const gauges = new Map<string, number>();
  for (const [, shard, lane, value] of text.matchAll(
    /^shardrelay_canary_latency_seconds\{replica="[^"]*",shard="(\d+)",lane="(\w+)"\} (\S+)$/gm,
  )) {
    gauges.set(`${shard}/${lane}`, Number(value));
  }
  return gauges;
}

/** The business figures of a run that enqueued `expected` rows: canaries appear in none. */
async function assertBusinessCounts(t: TestDatabase, relay: Relay, expected: number): Promise<void> {
  const figures = await sql<Record<string, number>>`
    SELECT (SELECT sum(sent_total)::int FROM shardrelay.shard_progress) AS progress,
           (SELECT sum(sent)::int FROM shardrelay.rollup_minute) AS rollups,
           (SELECT sum(sent)::int FROM shardrelay.throughput_minute) AS throughput,
           (SELECT sum(sent)::int FROM shardrelay.latency) AS latency,
           (SELECT sum(pending_rows)::int FROM shardrelay.lag) AS lag`.execute(t.db);
  assert.deepEqual(figures.rows[0], { progress: expected, rollups: expected, throughput: expected, latency: expected, lag: 0 }); // prettier-ignore
  const text = await (await fetch(`${relay.observer.server?.url}/metrics`)).text();
  const sent = [...text.matchAll(/^shardrelay_events_sent_total\{[^}]*\} (\S+)$/gm)].reduce(
    (n, m) => n + Number(m[1]),
    0,
  );
  assert.equal(sent, expected, 'metrics count no canary');
  const status = await readStatus(t.db);
  assert.deepEqual(status.totals, { pending: 0, sent: expected, dead: 0 });
  const rows = await sql<{
    canaries: number;
  }>`SELECT count(*)::int AS canaries FROM shardrelay.outbox WHERE canary`.execute(t.db);
  assert.ok((rows.rows[0]?.canaries ?? 0) >= 16, 'the canary rows are there, only not counted');
}

/** Rows produced by the application between two produced_minute readings (canary ids subtracted). */
async function producedSince(t: TestDatabase, start: { maxId: number; reserved: number }): Promise<number> {
  const now = await producedMark(t);
  return now.maxId - start.maxId - (now.reserved - start.reserved);
}
async function producedMark(t: TestDatabase): Promise<{ maxId: number; reserved: number }> {
  const r = await sql<{ max_id: string; reserved: string }>`
    SELECT max(max_id) AS max_id, sum(reserved_ids) AS reserved FROM shardrelay.produced_minute`.execute(
    t.db,
  );
  return { maxId: Number(r.rows[0]?.max_id), reserved: Number(r.rows[0]?.reserved) };
}

describe('canaries through pg-boss', { timeout: 180_000 }, () => {
  let t: TestDatabase;
  let relay: Relay | undefined;
  before(async () => {
    t = await createTestDatabase('canary_pgboss');
  });
  after(async () => {
    await relay?.stop();
    await t.close();
  });

  it('every shard and lane gets a canary through pg-boss; its latency is exported; no business count sees it', async () => {
    relay = await startRelay({
      config: testConfig(t.url, { sink: 'pgboss', canaryIntervalSeconds: 1, metricsPort: 0 }),
      observeIntervalMs: 300,
    });
    const mark = await producedMark(t);
    await enqueue(t.db, Array.from({ length: 100 }, (_, i) => ({ topic: 'orders.created', payload: { i }, lane: i % 5 ? 'batch' : 'realtime' }))); // prettier-ignore
    await waitFor('a canary back from every shard and lane', () => everyCanaryBack(t), 60_000, 200);
    await relay.whenDrained();
    await relay.observer.observe();

    const jobs = await sql<{ n: number; type: string }>`
      SELECT count(*)::int AS n, min(data->>'type') AS type FROM pgboss.job WHERE name = ${CANARY_TOPIC}`.execute(
      t.db,
    );
    assert.ok((jobs.rows[0]?.n ?? 0) >= 16, `canary jobs in pg-boss: ${jobs.rows[0]?.n}`);
    assert.equal(jobs.rows[0]?.type, 'shardrelay.canary', 'the CloudEvent type consumers can ignore');

    const gauges = await canaryGauges(relay);
    assert.equal(gauges.size, 16, 'a latency per shard and lane');
    for (const row of await canaries(t)) {
      const gauge = gauges.get(`${row.shard}/${row.lane}`) as number;
      assert.ok(gauge > 0 && gauge < 10, `canary ${row.shard}/${row.lane}: ${gauge} s`);
    }
    await assertBusinessCounts(t, relay, 100);
    assert.equal(await producedSince(t, mark), 100, 'produced counts the application rows, not the canaries');
  });

  it('a canary that does not come back within 3 intervals is logged and its latency gauge rises', async () => {
    await relay?.stop();
    // A sink whose broker never confirms canaries (an unknown outcome, retried until max_attempts:
    // 1000 here, since retries are woken when due and the default 10 at 50-100 ms would make the
    // canary dead within a second, before it is 3 intervals old).
    const blackhole = answeringCanariesWith(unknown('no confirm'));
    const capture = captureLog();
    relay = await startRelay({
      config: testConfig(t.url, {
        canaryIntervalSeconds: 1,
        metricsPort: 0,
        maxAttempts: 1000,
        retryBaseMs: 50,
        retryCapMs: 100,
      }),
      sink: blackhole,
      logger: capture.log,
      observeIntervalMs: 300,
    });
    const line = await capture.waitFor('canary event not delivered within 3 canary intervals', 60_000);
    assert.equal(line.limitSeconds, 3);
    assert.ok(Number(line.outstandingSeconds) >= 3, `outstanding for ${String(line.outstandingSeconds)} s`);
    const shard = `${line.shard as number}/${line.lane as string}`;
    const first = (await canaryGauges(relay)).get(shard) as number;
    await new Promise((r) => setTimeout(r, 1_000));
    await relay.observer.observe();
    const later = (await canaryGauges(relay)).get(shard) as number;
    assert.ok(
      first > 3 && later > first,
      `canary latency of ${shard} rises while it is missing: ${first} s, then ${later} s`,
    );
  });

  it('a canary given up (dead) before it is overdue is logged with its error', async () => {
    await relay?.stop();
    // The broker refuses canaries for good (say, no queue bound for their routing key): each one is
    // dead at its first attempt, long before it is 3 intervals old.
    const refusing = answeringCanariesWith(permanent('NO_ROUTE: no queue bound'));
    const capture = captureLog();
    relay = await startRelay({
      config: testConfig(t.url, { canaryIntervalSeconds: 1, metricsPort: 0 }),
      sink: refusing,
      logger: capture.log,
      observeIntervalMs: 300,
    });
    const line = await capture.waitFor('canary event given up (dead) without being delivered', 30_000);
    assert.ok(Number(line.given) >= 1);
    assert.match(String(line.lastError), /NO_ROUTE/);
  });
});

const broker = hostAndPort(AMQP_URL, 5672);
const skip = await requireBroker('RabbitMQ', broker.host, broker.port);

describe('canaries through RabbitMQ', { skip, timeout: 180_000 }, () => {
  let t: TestDatabase;
  let relay: Relay | undefined;
  let admin: ChannelModel;
  const exchange = uniqueName('sr_canary');
  const queue = uniqueName('sr_canary_q');
  const deliveries: ConsumeMessage[] = [];

  before(async () => {
    t = await createTestDatabase('canary_rabbitmq');
    admin = await amqplib.connect(AMQP_URL);
    const channel = await admin.createChannel();
    await channel.assertExchange(exchange, 'topic', { durable: true });
    await channel.assertQueue(queue, { durable: false, autoDelete: true });
    // A consumer of business events that also receives canaries (routing key shardrelay.canary).
    await channel.bindQueue(queue, exchange, '#');
    await channel.consume(queue, (message) => message && deliveries.push(message), { noAck: true });
  });
  after(async () => {
    await relay?.stop();
    const channel = await admin.createChannel();
    await channel.deleteExchange(exchange).catch(() => {});
    await admin.close();
    await t.close();
  });

  it('every shard and lane gets a canary through RabbitMQ; consumers can tell it by its type', async () => {
    relay = await startRelay({
      config: testConfig(t.url, { canaryIntervalSeconds: 1, metricsPort: 0 }),
      sink: createRabbitMqSink({ url: AMQP_URL, exchange }),
      observeIntervalMs: 300,
    });
    await enqueue(t.db, Array.from({ length: 40 }, (_, i) => ({ topic: 'orders.created', payload: { i }, lane: i % 4 ? 'batch' : 'realtime' }))); // prettier-ignore
    await waitFor('a canary back from every shard and lane', () => everyCanaryBack(t), 60_000, 200);
    await relay.whenDrained();
    await relay.observer.observe();

    const canaryMessages = deliveries.filter((m) => m.properties.type === CANARY_TOPIC);
    assert.ok(canaryMessages.length >= 16, `canaries received: ${canaryMessages.length}`);
    const sample = canaryMessages[0] as ConsumeMessage;
    assert.equal(sample.properties.headers?.['ce-type'], CANARY_TOPIC);
    assert.equal(sample.fields.routingKey, CANARY_TOPIC);
    assert.equal(JSON.parse(sample.content.toString()).canary, true);
    assert.equal(deliveries.filter((m) => m.properties.type === 'orders.created').length, 40);

    assert.equal((await canaryGauges(relay)).size, 16);
    await assertBusinessCounts(t, relay, 40);
  });
});

/** A sink that confirms business events and answers every canary with `outcome`. */
function answeringCanariesWith(outcome: SendOutcome): Sink {
  return {
    name: 'canary-answering',
    start: async () => {},
    close: async () => {},
    sendBatch: async (messages) => messages.map((m) => (m.topic === CANARY_TOPIC ? outcome : confirmed)),
  };
}
