import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import amqp from 'amqplib';
import { connect } from 'nats';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { createHttpSink } from '../../src/sinks/httpSink.js';
import { createJetStreamSink } from '../../src/sinks/jetStreamSink.js';
import { createRabbitMqSink } from '../../src/sinks/rabbitmqSink.js';
import type { Sink } from '../../src/sinks/sink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import {
  AMQP_URL,
  NATS_URL,
  ReceivedIds,
  hostAndPort,
  requireBroker,
  uniqueName,
} from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const EVENTS = 20_000;

/**
 * The whole relay (claims, sink, completion) into each real broker: every event id reaches a
 * consumer, shardrelay.events says `sent` for exactly those rows, and nothing arrives twice.
 */
describe('the relay through real brokers', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('relay_brokers');
  });
  after(() => t.close());

  async function relayAll(sink: Sink, received: ReceivedIds, batchSize = 1000): Promise<void> {
    await t.db.deleteFrom('shardrelay.outbox').execute();
    await t.db.deleteFrom('shardrelay.sent_event').execute();
    await enqueue(t.db, syntheticEvents(EVENTS, { topic: 'orders.created' }));
    const relay = await startRelay({
      config: testConfig(t.url, { sendTimeoutMs: 60_000, batchBatchSize: batchSize }),
      sink,
    });
    await relay.whenDrained();
    await relay.stop();
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
    assert.equal(received.counts.size, EVENTS, 'the consumer saw exactly the outbox event ids');
    assert.equal(received.duplicates, 0, 'no duplicates without faults');
  }

  it('RabbitMQ: 20,000 events confirmed, consumed once each', { timeout: 180_000 }, async (ctx) => {
    const { host, port } = hostAndPort(AMQP_URL, 5672);
    const skip = await requireBroker('RabbitMQ', host, port);
    if (skip) return ctx.skip(skip);
    const connection = await amqp.connect(AMQP_URL);
    const channel = await connection.createChannel();
    const exchange = uniqueName('sr_e2e');
    const queue = uniqueName('sr_e2e_q');
    try {
      await channel.assertExchange(exchange, 'topic', { durable: true });
      await channel.assertQueue(queue, { durable: false });
      await channel.bindQueue(queue, exchange, 'orders.#');
      const received = new ReceivedIds();
      await channel.consume(queue, (m) => m && received.add(String(m.properties.messageId)), { noAck: true });
      await relayAll(createRabbitMqSink({ url: AMQP_URL, exchange }), received);
    } finally {
      await channel.deleteQueue(queue).catch(() => {});
      await channel.deleteExchange(exchange).catch(() => {});
      await connection.close();
    }
  });

  it('NATS JetStream: 20,000 events acknowledged, consumed once each', { timeout: 180_000 }, async (ctx) => {
    const { host, port } = hostAndPort(NATS_URL, 4222);
    const skip = await requireBroker('NATS', host, port);
    if (skip) return ctx.skip(skip);
    const stream = uniqueName('SRE2E').toUpperCase();
    const subjectPrefix = uniqueName('sre2e');
    const sink = createJetStreamSink({ url: NATS_URL, stream, subjectPrefix });
    const admin = await connect({ servers: NATS_URL });
    try {
      await sink.start(); // creates the stream, so the consumer can attach before the relay runs
      const received = new ReceivedIds();
      const messages = await (await admin.jetstream().consumers.get(stream)).consume();
      void (async () => {
        for await (const m of messages) received.add(m.headers?.get('Nats-Msg-Id') ?? '');
      })();
      await relayAll(sink, received);
      assert.equal(sink.duplicates, 0);
      messages.close();
    } finally {
      await (await admin.jetstreamManager()).streams.delete(stream).catch(() => {});
      await admin.close();
    }
  });

  it('HTTP webhook: 20,000 events answered 2xx, received once each', { timeout: 240_000 }, async () => {
    const received = new ReceivedIds();
    const server = http.createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        received.add((JSON.parse(body) as { id: string }).id);
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      // One request per event: a batch of 1,000 per shard would queue 8,000 requests behind the
      // sink's concurrency limit and push late ones past the deadline (re-sent: duplicates).
      await relayAll(
        createHttpSink({ url: `http://127.0.0.1:${port}/events`, concurrency: 32 }),
        received,
        100,
      );
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
