// What every sink must do (delivery counted by a consumer, cut, stall, broker down, credentials)
// is checked by the conformance suite (test/sinks/conformance/); this file keeps the behaviour
// specific to this sink.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import amqplib, { type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import { HTTP } from 'cloudevents';
import { ShardRelayError } from '../../src/errors.js';
import { createRabbitMqSink } from '../../src/sinks/rabbitmqSink.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import {
  AMQP_URL,
  ReceivedIds,
  captureLog,
  hostAndPort,
  outboxMessages,
  requireBroker,
  sendInTransaction,
  statuses,
  uniqueName,
} from '../support/brokers.js';
import { startTcpProxy } from '../support/tcpProxy.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const broker = hostAndPort(AMQP_URL, 5672);
const skip = await requireBroker('RabbitMQ', broker.host, broker.port);

/** The broker URL with its host and port replaced, e.g. to go through a proxy. */
function viaPort(port: number): string {
  const url = new URL(AMQP_URL);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return url.toString();
}

describe('RabbitMQ sink', { skip }, () => {
  let t: TestDatabase;
  let admin: ChannelModel;
  let channel: Channel;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    t = await createTestDatabase('rabbitmq_sink');
    admin = await amqplib.connect(AMQP_URL);
    channel = await admin.createChannel();
  });

  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    await admin?.close();
    await t?.close();
  });

  /**
   * A fresh exchange (declared as the sink declares it) and a queue bound to it with a consumer that
   * records every delivery. Both are deleted after the suite.
   */
  async function topology(bindingKey = '#', queueArguments: Record<string, unknown> = {}, consume = true) {
    const exchange = uniqueName('sr_test');
    const queue = uniqueName('sr_test_q');
    await channel.assertExchange(exchange, 'topic', { durable: true });
    cleanups.push(() => channel.deleteExchange(exchange));
    await channel.assertQueue(queue, { durable: false, arguments: queueArguments });
    cleanups.push(() => channel.deleteQueue(queue));
    await channel.bindQueue(queue, exchange, bindingKey);
    const received = new ReceivedIds();
    const deliveries: ConsumeMessage[] = [];
    /** Deliveries whose `ce-id` header differs from their AMQP message id. */
    let idMismatches = 0;
    if (consume) {
      await channel.consume(
        queue,
        (message) => {
          if (!message) return;
          const messageId = String(message.properties.messageId);
          if ((message.properties.headers ?? {})['ce-id'] !== messageId) idMismatches += 1;
          deliveries.push(message);
          received.add(messageId);
        },
        { noAck: true },
      );
    }
    return { exchange, queue, received, deliveries, idMismatches: () => idMismatches };
  }

  it(
    'sends a CloudEvent in binary mode: ce-* headers, JSON body, message id = event id, persistent',
    { timeout: 30_000 },
    async () => {
      const { exchange, received, deliveries } = await topology();
      const sink = createRabbitMqSink({ url: AMQP_URL, exchange, source: 'urn:test:orders' });
      await sink.start();
      try {
        const [message] = outboxMessages(1, () => ({
          key: 'customer-42',
          correlationId: 'corr-7',
          traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
          headers: { 'X-Tenant': 'acme', 'ce-id': 'forged' },
          payload: { total: 12.5, items: ['a', 'b'] },
        })) as [OutboxMessage];
        assert.deepEqual(await sendInTransaction(t.db, sink, [message]), [{ status: 'confirmed' }]);
        await received.waitForAll([message.eventId], 10_000);
        const delivery = deliveries[0];
        assert.ok(delivery);
        assert.equal(delivery.properties.messageId, message.eventId);
        assert.equal(delivery.properties.deliveryMode, 2);
        assert.equal(delivery.properties.type, 'orders.created');
        assert.equal(delivery.properties.correlationId, 'corr-7');
        assert.equal(delivery.properties.contentType, 'application/json');
        const headers = delivery.properties.headers as Record<string, string>;
        assert.equal(headers['x-tenant'], 'acme');
        assert.equal(headers.traceparent, message.traceparent);
        const event = HTTP.toEvent({
          headers: { ...headers, 'content-type': delivery.properties.contentType as string },
          body: delivery.content.toString('utf8'),
        });
        assert.ok(!Array.isArray(event));
        assert.equal(event.id, message.eventId);
        assert.equal(event.specversion, '1.0');
        assert.equal(event.source, 'urn:test:orders');
        assert.equal(event.type, 'orders.created');
        assert.equal(event.time, message.createdAt.toISOString());
        assert.equal(event.correlationid, 'corr-7');
        assert.equal(event.traceparent, message.traceparent);
        assert.equal(event.partitionkey, 'customer-42');
        assert.deepEqual(event.data, { total: 12.5, items: ['a', 'b'] });
      } finally {
        await sink.close();
      }
    },
  );

  it(
    'reports messages a reject-publish queue nacks as retryable, never confirmed',
    { timeout: 30_000 },
    async () => {
      const { exchange } = await topology(
        'limited',
        { 'x-max-length': 2, 'x-overflow': 'reject-publish' },
        false,
      );
      const sink = createRabbitMqSink({ url: AMQP_URL, exchange });
      await sink.start();
      try {
        const outcomes = await sendInTransaction(
          t.db,
          sink,
          outboxMessages(10, () => ({ topic: 'limited' })),
        );
        // The queue holds 2 and nobody consumes: exactly the first 2 fit, the broker nacks the other 8.
        assert.deepEqual(statuses(outcomes), { confirmed: 2, 'failed-retryable': 8 });
        assert.deepEqual(
          outcomes.map((o) => o.status),
          ['confirmed', 'confirmed', ...Array<string>(8).fill('failed')],
        );
        const failure = outcomes[2];
        assert.ok(failure?.status === 'failed' && /nacked/.test(failure.error), JSON.stringify(failure));
      } finally {
        await sink.close();
      }
    },
  );

  it(
    'reports an unroutable message as a permanent failure, and confirms the routable ones beside it',
    { timeout: 30_000 },
    async () => {
      const { exchange, received, deliveries } = await topology('orders.#');
      const sink = createRabbitMqSink({ url: AMQP_URL, exchange });
      await sink.start();
      try {
        const messages = outboxMessages(20, (i) => ({
          topic: i % 2 === 0 ? 'orders.created' : 'nowhere.bound',
        }));
        const outcomes = await sendInTransaction(t.db, sink, messages);
        outcomes.forEach((outcome, i) => {
          if (i % 2 === 0) assert.deepEqual(outcome, { status: 'confirmed' }, `message ${i}`);
          else {
            assert.equal(outcome.status, 'failed', `message ${i}`);
            assert.ok(outcome.status === 'failed' && !outcome.retryable, `message ${i} must be permanent`);
            assert.match(outcome.error, /unroutable \(312 NO_ROUTE\).*routing key 'nowhere\.bound'/);
          }
        });
        const routable = messages.filter((_, i) => i % 2 === 0).map((m) => m.eventId);
        await received.waitForAll(routable, 10_000);
        // Returned messages are dropped by the broker: none of them reached the queue.
        assert.equal(deliveries.length, 10);
        assert.ok(messages.filter((_, i) => i % 2 === 1).every((m) => !received.has(m.eventId)));
      } finally {
        await sink.close();
      }
    },
  );

  it(
    'waits for drain under back-pressure, and still confirms every message',
    { timeout: 60_000 },
    async () => {
      const { exchange, received } = await topology();
      const capture = captureLog();
      // Small frames make each 64 KiB message 17 frames, so a batch outgrows amqplib's write buffer
      // (1,024 frames) and publish() starts returning false.
      const url = new URL(AMQP_URL);
      url.searchParams.set('frameMax', '4096');
      const sink = createRabbitMqSink({ url: url.toString(), exchange, log: capture.log });
      await sink.start();
      try {
        const filler = 'x'.repeat(64 * 1024);
        const messages = outboxMessages(200, (index) => ({ payload: { index, filler } }));
        const outcomes = await sendInTransaction(t.db, sink, messages, 30_000);
        assert.deepEqual(statuses(outcomes), { confirmed: 200 });
        const settled = await capture.waitFor('RabbitMQ batch settled', 1_000);
        assert.ok(
          Number(settled.drainWaits) > 0,
          `publish() never reported back-pressure: ${JSON.stringify(settled)}`,
        );
        await received.waitForAll(
          messages.map((m) => m.eventId),
          20_000,
        );
      } finally {
        await sink.close();
      }
    },
  );

  it(
    'defers batches fast while the broker is unreachable, without revealing the password',
    { timeout: 30_000 },
    async () => {
      const proxy = await startTcpProxy(broker.host, broker.port);
      const port = proxy.port;
      await proxy.close(); // nothing listens on this port any more
      const url = new URL(viaPort(port));
      url.password = 'pa55word-secret';
      const sink = createRabbitMqSink({
        url: url.toString(),
        reconnectBackoff: { initialMs: 60_000, maxMs: 60_000 },
      });
      try {
        await assert.rejects(sink.start(), (error: unknown) => {
          assert.ok(error instanceof ShardRelayError);
          assert.equal(error.code, 'SINK_UNAVAILABLE');
          assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
          assert.match(error.fix ?? '', /running and reachable/);
          assert.doesNotMatch(error.message, /pa55word-secret/);
          return true;
        });
        const started = Date.now();
        const outcomes = await sendInTransaction(t.db, sink, outboxMessages(3), 10_000);
        assert.ok(
          Date.now() - started < 3_000,
          'a batch during the reconnect back-off must not wait for a connect',
        );
        assert.deepEqual(statuses(outcomes), { deferred: 3 });
        assert.match((outcomes[0] as { error: string }).error, /reconnecting in \d+ ms/);
        assert.doesNotMatch(JSON.stringify(outcomes), /pa55word-secret/);
      } finally {
        await sink.close();
      }
    },
  );

  it('refuses to start without declaring when the exchange does not exist', { timeout: 30_000 }, async () => {
    const sink = createRabbitMqSink({
      url: AMQP_URL,
      exchange: uniqueName('sr_missing'),
      declareExchange: false,
    });
    try {
      await assert.rejects(
        sink.start(),
        /invalid setting rabbitmq exchange: exchange 'sr_missing_[0-9a-f]+' does not exist/,
      );
    } finally {
      await sink.close();
    }
  });
});
