/**
 * The Kafka sink's own scenarios (the shared ones are in conformance/kafka.test.ts), against
 * librdkafka's mock cluster (test/brokers/kafkaMock.ts; not an Apache Kafka):
 * - 20,000 events through the whole relay, counted once each by a consumer group;
 * - the outcome mapping, with errors injected into the mock's Produce responses and brokers taken
 *   down;
 * - key → partition as Kafka's default partitioner (murmur2) places it; `ce_` headers; compression.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Kafka from '@confluentinc/kafka-javascript';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { createKafkaSink } from '../../src/sinks/kafkaSink.js';
import type { OutboxMessage, SendOutcome } from '../../src/sinks/sink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { kafkaMockProblem, startKafkaMock, type KafkaMock } from '../brokers/kafkaMock.js';
import { ReceivedIds, outboxMessages, sendInTransaction, statuses, uniqueName } from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { consumeTopic, createTopic } from './conformance/targets/kafka.js';

const EVENTS = 20_000;
const PARTITIONS = 4;

/** Kafka's murmur2 (the Java client's `Utils.murmur2`), for the expected partition of a key. */
function murmur2(data: Buffer): number {
  const m = 0x5bd1e995;
  let h = (0x9747b28c ^ data.length) | 0;
  let i = 0;
  for (; i + 4 <= data.length; i += 4) {
    let k = data.readInt32LE(i);
    k = Math.imul(k, m);
    k ^= k >>> 24;
    k = Math.imul(k, m);
    h = Math.imul(h, m) ^ k;
  }
  const rest = data.length - i;
  if (rest === 3) h ^= (data[i + 2] as number) << 16;
  if (rest >= 2) h ^= (data[i + 1] as number) << 8;
  if (rest >= 1) {
    h ^= data[i] as number;
    h = Math.imul(h, m);
  }
  h ^= h >>> 13;
  h = Math.imul(h, m);
  h ^= h >>> 15;
  return h;
}

/** The Java client's default partition of a keyed record. */
function javaPartition(key: string, partitions: number): number {
  return (murmur2(Buffer.from(key, 'utf8')) & 0x7fffffff) % partitions;
}

const problem = kafkaMockProblem();
if (problem && process.env.CI === 'true')
  throw new Error(`CI must provide the Kafka mock cluster: ${problem}`);

describe('Kafka sink (librdkafka mock cluster)', { skip: problem ?? false }, () => {
  let t: TestDatabase;
  let mock: KafkaMock;
  before(async () => {
    t = await createTestDatabase('kafka_sink');
    mock = await startKafkaMock(3);
  });
  after(async () => {
    await mock?.stop();
    await t?.close();
  });

  async function send(sinkTopic: string, messages: readonly OutboxMessage[], extra = {}) {
    const sink = createKafkaSink({ brokers: mock.bootstrap, topic: sinkTopic, ...extra });
    await sink.start();
    try {
      return await sendInTransaction(t.db, sink, messages, 20_000);
    } finally {
      await sink.close();
    }
  }

  it(
    `delivers ${EVENTS.toLocaleString('en-US')} events through the relay that a consumer group counts once each`,
    { timeout: 240_000 },
    async (context) => {
      const topic = uniqueName('sr_relay');
      await createTopic(mock.bootstrap, topic);
      const received = new ReceivedIds();
      const consumer = await consumeTopic(mock.bootstrap, topic, received);
      try {
        await enqueue(t.db, syntheticEvents(EVENTS, { topic: 'orders.created' }));
        const started = Date.now();
        const relay = await startRelay({
          config: testConfig(t.url, { sendTimeoutMs: 60_000, batchBatchSize: 1000 }),
          sink: createKafkaSink({
            brokers: mock.bootstrap,
            topic,
            compression: 'lz4',
            deliveryTimeoutMs: 60_000,
          }),
        });
        await relay.whenDrained();
        await relay.stop();
        context.diagnostic(`relay drained ${EVENTS} rows in ${Date.now() - started} ms`);
        const rows = await t.db.selectFrom('shardrelay.events').select(['event_id', 'status']).execute();
        assert.equal(rows.length, EVENTS);
        assert.deepEqual(
          rows.filter((r) => r.status !== 'sent'),
          [],
          'every row is sent',
        );
        await received.waitForAll(
          rows.map((r) => r.event_id),
          60_000,
        );
        assert.equal(received.counts.size, EVENTS, 'the consumer group saw exactly the outbox event ids');
        assert.equal(received.duplicates, 0, 'no duplicates without faults');
      } finally {
        await consumer.close();
        await t.db.deleteFrom('shardrelay.outbox').execute();
        await t.db.deleteFrom('shardrelay.sent_event').execute();
      }
    },
  );

  it(
    'puts each key on the partition the Java client would, with CloudEvents ce_ headers',
    { timeout: 60_000 },
    async () => {
      const topic = uniqueName('sr_keys');
      await createTopic(mock.bootstrap, topic);
      const kafka = new Kafka.KafkaJS.Kafka({
        kafkaJS: { brokers: mock.bootstrap.split(','), logLevel: Kafka.KafkaJS.logLevel.NOTHING },
      });
      const seen: {
        key: string | null;
        partition: number;
        headers: Record<string, string>;
        value: string;
      }[] = [];
      const consumer = kafka.consumer({
        kafkaJS: { groupId: uniqueName('sr_keys_group'), fromBeginning: true },
      });
      await consumer.connect();
      await consumer.subscribe({ topic });
      await consumer.run({
        eachMessage: async ({ partition, message }) => {
          const headers: Record<string, string> = {};
          for (const [name, value] of Object.entries(message.headers ?? {})) headers[name] = String(value);
          seen.push({
            key: message.key?.toString() ?? null,
            partition,
            headers,
            value: String(message.value),
          });
        },
      });
      try {
        const messages = outboxMessages(200, (i) => ({
          key: i % 10 === 0 ? null : `customer-${i % 37}`,
          correlationId: 'corr-1',
          headers: { 'X-Tenant': 'acme' },
        }));
        assert.deepEqual(statuses(await send(topic, messages)), { confirmed: 200 });
        const deadline = Date.now() + 30_000;
        while (seen.length < 200 && Date.now() < deadline)
          await new Promise((resolve) => setTimeout(resolve, 50));
        assert.equal(seen.length, 200);
        const keyed = seen.filter((s) => s.key !== null);
        assert.equal(keyed.length, 180);
        for (const s of keyed) {
          assert.equal(s.partition, javaPartition(s.key as string, PARTITIONS), `key ${s.key}`);
        }
        const first = seen.find((s) => s.key === 'customer-1');
        assert.ok(first);
        assert.equal(first.headers['ce_specversion'], '1.0');
        assert.equal(first.headers['ce_type'], 'orders.created');
        assert.equal(first.headers['ce_source'], 'shardrelay');
        assert.equal(first.headers['ce_partitionkey'], 'customer-1');
        assert.equal(first.headers['ce_correlationid'], 'corr-1');
        assert.equal(first.headers['content-type'], 'application/json');
        assert.equal(first.headers['x-tenant'], 'acme');
        const sent = messages.find((m) => m.eventId === first.headers['ce_id']);
        assert.ok(sent, 'ce_id is the event id');
        assert.equal(first.value, sent.payloadJson, 'the value is the claimed JSON text, untouched');
      } finally {
        await consumer.disconnect();
      }
    },
  );

  it(
    'maps produce errors: too large → permanent, refused → retryable, transient → retried to confirmed, timed out → unknown',
    { timeout: 90_000 },
    async () => {
      const topic = uniqueName('sr_errors');
      await createTopic(mock.bootstrap, topic);
      // MESSAGE_TOO_LARGE from the broker.
      await mock.command('err 0 10');
      let outcomes = await send(topic, outboxMessages(1));
      assert.equal(outcomes[0]?.status, 'failed');
      assert.ok(outcomes[0]?.status === 'failed' && !outcomes[0].retryable, JSON.stringify(outcomes));
      assert.match((outcomes[0] as { error: string }).error, /code 10/);
      // TOPIC_AUTHORIZATION_FAILED: not retried by librdkafka, nothing appended.
      await mock.command('err 0 29');
      outcomes = await send(topic, outboxMessages(1));
      assert.ok(outcomes[0]?.status === 'failed' && outcomes[0].retryable, JSON.stringify(outcomes));
      assert.match((outcomes[0] as { error: string }).error, /code 29/);
      // NOT_LEADER_OR_FOLLOWER twice: librdkafka retries (idempotently) and the record lands once.
      await mock.command('err 0 6 6');
      outcomes = await send(topic, outboxMessages(1));
      assert.deepEqual(statuses(outcomes), { confirmed: 1 });
      // REQUEST_TIMED_OUT until the delivery timeout: the broker may have appended it.
      await mock.command(`err 0 ${Array(40).fill(7).join(' ')}`);
      outcomes = await send(topic, outboxMessages(1), { deliveryTimeoutMs: 2_000 });
      assert.equal(outcomes[0]?.status, 'unknown', JSON.stringify(outcomes));
      // A record above message.max.bytes never leaves the process.
      outcomes = await send(
        topic,
        outboxMessages(1, () => ({ payload: { filler: 'x'.repeat(2_000_000) } })),
      );
      assert.ok(outcomes[0]?.status === 'failed' && !outcomes[0].retryable, JSON.stringify(outcomes));
    },
  );

  it(
    'a broker down: records time out as unknown, never confirmed; after it is up, a re-send with the same ids is confirmed',
    { timeout: 90_000 },
    async () => {
      const single = await startKafkaMock(1);
      const topic = uniqueName('sr_down');
      await createTopic(single.bootstrap, topic);
      const sink = createKafkaSink({ brokers: single.bootstrap, topic, deliveryTimeoutMs: 1_500 });
      try {
        await sink.start();
        await single.command('down 1');
        const messages = outboxMessages(5);
        const first = await sendInTransaction(t.db, sink, messages, 10_000);
        assert.deepEqual(statuses(first), { unknown: 5 });
        // While down, nothing is confirmed (unknown, or retryable once librdkafka reports all
        // brokers down, which the mock's `down` does not always trigger).
        const during = await sendInTransaction(t.db, sink, messages, 10_000);
        for (const o of during) assert.ok(o.status !== 'confirmed', JSON.stringify(o));
        await single.command('up 1');
        let again: SendOutcome[] = [];
        for (let round = 0; round < 20; round++) {
          again = await sendInTransaction(t.db, sink, messages, 10_000);
          if (again.every((o) => o.status === 'confirmed')) break;
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
        assert.deepEqual(statuses(again), { confirmed: 5 });
      } finally {
        await sink.close();
        await single.stop();
      }
    },
  );
});
