// What every sink must do (delivery counted by a consumer, cut, stall, broker down, credentials)
// is checked by the conformance suite (test/sinks/conformance/); this file keeps the behaviour
// specific to the STOMP sink, against a real ActiveMQ 5.17 the harness starts.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { IMessage } from '@stomp/stompjs';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/relay/relay.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { createStompSink, errorOutcome } from '../../src/sinks/stompSink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { activeMqMissing, startActiveMq, type ActiveMq } from '../support/activemq.js';
import { ReceivedIds, outboxMessages, sendInTransaction, uniqueName } from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { subscribeStomp, type StompSubscriber } from '../support/stompSubscriber.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const skip = activeMqMissing() ?? false;

describe('STOMP sink (ActiveMQ 5.17)', { skip }, () => {
  let t: TestDatabase;
  let broker: ActiveMq;
  const subscribers: StompSubscriber[] = [];

  before(async () => {
    [t, broker] = await Promise.all([createTestDatabase('stomp_sink'), startActiveMq()]);
  });

  after(async () => {
    for (const s of subscribers) await s.close().catch(() => undefined);
    await broker?.stop();
    await t?.close();
  });

  /** A subscriber recording its messages; `received` may be shared between subscribers. */
  async function subscribe(destination: string, received = new ReceivedIds(), prefetch?: number) {
    const messages: IMessage[] = [];
    subscribers.push(
      await subscribeStomp(
        broker.host,
        broker.stompPort,
        destination,
        (message) => {
          messages.push(message);
          received.add(message.headers.ce_id ?? '');
        },
        prefetch,
      ),
    );
    return { messages, received };
  }

  const stompUrl = (): string => `stomp://relay:pw@${broker.host}:${broker.stompPort}`;

  it(
    'sends the headers a JMS consumer reads: persistent, type, correlation-id, ce_* properties; a row cannot forge them',
    { timeout: 60_000 },
    async () => {
      const prefix = uniqueName('sr_hdr');
      const { messages, received } = await subscribe(`/queue/${prefix}.orders.created`);
      const sink = createStompSink({
        url: stompUrl(),
        destination: `/queue/${prefix}.{topic}`,
        source: 'urn:test:orders',
      });
      await sink.start();
      try {
        const [message] = outboxMessages(1, () => ({
          key: 'customer-42',
          correlationId: 'corr-7',
          traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
          headers: {
            'X-Tenant': 'acme',
            ce_id: 'forged',
            persistent: 'false',
            type: 'forged',
            destination: '/queue/elsewhere',
          },
          payload: { total: 12.5, items: ['a', 'b'], text: 'line\nbreak: colon' },
        })) as [OutboxMessage];
        assert.deepEqual(await sendInTransaction(t.db, sink, [message]), [{ status: 'confirmed' }]);
        await received.waitForAll([message.eventId], 10_000);
        const delivered = messages[0];
        assert.ok(delivered);
        const h = delivered.headers;
        assert.equal(h.ce_id, message.eventId);
        assert.equal(h.ce_source, 'urn:test:orders');
        assert.equal(h.ce_type, 'orders.created');
        assert.equal(h.ce_specversion, '1.0');
        assert.equal(h.ce_time, message.createdAt.toISOString());
        assert.equal(h.ce_partitionkey, 'customer-42');
        assert.equal(h.persistent, 'true');
        assert.equal(h.type, 'orders.created');
        assert.equal(h['correlation-id'], 'corr-7');
        assert.equal(h['x-tenant'], 'acme');
        assert.equal(h.traceparent, message.traceparent);
        assert.equal(h.destination, `/queue/${prefix}.orders.created`);
        // ActiveMQ's own JMSMessageID, not the event id: consumers deduplicate on ce_id.
        assert.match(h['message-id'] ?? '', /^ID:/);
        // No content-length: ActiveMQ made it a TextMessage, which STOMP delivers without one.
        assert.equal(h['content-length'], undefined);
        assert.deepEqual(JSON.parse(delivered.body), message.payload);
      } finally {
        await sink.close();
      }
    },
  );

  it(
    "keeps each key's messages on one consumer (the key is the JMSXGroupID of ActiveMQ message groups)",
    { timeout: 60_000 },
    async () => {
      const prefix = uniqueName('sr_group');
      const destination = `/queue/${prefix}.orders.created`;
      // Two competing consumers of one queue, one message in flight each: without groups ActiveMQ
      // alternates between them, spreading every key over both.
      const both = new ReceivedIds();
      const consumers = [await subscribe(destination, both, 1), await subscribe(destination, both, 1)];
      const sink = createStompSink({ url: stompUrl(), destination: `/queue/${prefix}.{topic}` });
      await sink.start();
      try {
        const messages = outboxMessages(80, (i) => ({ key: `key-${i % 8}` }));
        const outcomes = await sendInTransaction(t.db, sink, messages);
        assert.ok(
          outcomes.every((o) => o.status === 'confirmed'),
          JSON.stringify(outcomes),
        );
        const ids = messages.map((m) => m.eventId);
        await both.waitForAll(ids, 20_000);
        const keysOf = (c: { messages: IMessage[] }) =>
          new Set(c.messages.map((m) => m.headers.ce_partitionkey));
        const [a, b] = consumers.map(keysOf) as [Set<string | undefined>, Set<string | undefined>];
        assert.deepEqual(
          [...a].filter((key) => b.has(key)),
          [],
          'a key was split across consumers',
        );
        assert.equal(a.size + b.size, 8);
        assert.equal(both.duplicates, 0);
      } finally {
        await sink.close();
      }
    },
  );

  it('sends a topic to a JMS topic when the destination template says so', { timeout: 60_000 }, async () => {
    const prefix = uniqueName('sr_topic');
    const first = await subscribe(`/topic/${prefix}.orders.created`);
    const second = await subscribe(`/topic/${prefix}.orders.created`);
    const sink = createStompSink({ url: stompUrl(), destination: `/topic/${prefix}.{topic}` });
    await sink.start();
    try {
      const messages = outboxMessages(10);
      const outcomes = await sendInTransaction(t.db, sink, messages);
      assert.ok(
        outcomes.every((o) => o.status === 'confirmed'),
        JSON.stringify(outcomes),
      );
      const ids = messages.map((m) => m.eventId);
      // Publish-subscribe: every subscriber of the topic gets every event.
      await first.received.waitForAll(ids, 10_000);
      await second.received.waitForAll(ids, 10_000);
    } finally {
      await sink.close();
    }
  });

  it(
    'an ERROR answering one frame fails that message permanently and confirms its neighbours on the same connection',
    { timeout: 60_000 },
    async () => {
      const prefix = uniqueName('sr_err');
      const { received } = await subscribe(`/queue/${prefix}.>`);
      // The template is the topic itself, so each message names its own destination.
      const sink = createStompSink({ url: stompUrl(), destination: '{topic}' });
      await sink.start();
      try {
        const messages = outboxMessages(3, (i) => ({
          // ActiveMQ answers a SEND to a temporary queue that does not exist with an ERROR for it.
          topic: i === 1 ? `/remote-temp-queue/${prefix}` : `/queue/${prefix}.ok${i}`,
        }));
        const [ok0, bad, ok2] = await sendInTransaction(t.db, sink, messages);
        assert.deepEqual(ok0, { status: 'confirmed' });
        assert.deepEqual(ok2, { status: 'confirmed' });
        assert.ok(bad?.status === 'failed' && !bad.retryable, JSON.stringify(bad));
        assert.match(bad.error, /does not exist/);
        await received.waitForAll(
          [messages[0], messages[2]].map((m) => m?.eventId ?? ''),
          10_000,
        );
        // The connection survived the ERROR: a later batch goes through it.
        const later = await sendInTransaction(
          t.db,
          sink,
          outboxMessages(5, () => ({ topic: `/queue/${prefix}.later` })),
        );
        assert.ok(
          later.every((o) => o.status === 'confirmed'),
          JSON.stringify(later),
        );
      } finally {
        await sink.close();
      }
    },
  );

  it('classifies ERROR texts: refusals for good are permanent, limits and shutdowns retryable', () => {
    const permanentTexts = [
      'User relay is not authorized to write to: queue://orders',
      'Illegal destination name: [x] -- ActiveMQ STOMP destinations must begin with one of: /queue/ /topic/',
      'The maximum data length was exceeded',
      'temp-queue://x: org.apache.activemq.DestinationDoesNotExistException: The destination temp-queue://x does not exist.',
      'AMQ229032: User: relay does not have permission=SEND on address orders (not authorized)',
    ];
    const retryableTexts = [
      'Usage Manager Memory Limit reached. Stopping producer (ID:x) to prevent flooding queue://orders.',
      'Persistent store is Full, 100% of 1073741824. Stopping producer (ID:x) to prevent flooding queue://orders.',
      'Broker: test - Client: x already connected from tcp://127.0.0.1:1',
      'java.io.IOException: Connection reset',
    ];
    for (const text of permanentTexts) {
      const o = errorOutcome(text);
      assert.ok(o.status === 'failed' && !o.retryable, text);
    }
    for (const text of retryableTexts) {
      const o = errorOutcome(text);
      assert.ok(o.status === 'failed' && o.retryable, text);
    }
  });

  it('refuses a destination template without {topic}, naming the fix', () => {
    assert.throws(
      () => createStompSink({ url: stompUrl(), destination: '/queue/orders' }),
      /invalid setting stomp destination: \/queue\/orders does not contain \{topic\}/,
    );
  });

  it(
    'the relay delivers 20,000 events through ActiveMQ, counted once each by a STOMP subscriber',
    { timeout: 240_000 },
    async () => {
      const prefix = uniqueName('sr_e2e');
      const { received } = await subscribe(`/queue/${prefix}.>`);
      const EVENTS = 20_000;
      await enqueue(t.db, syntheticEvents(EVENTS, { topic: 'orders.created' }));
      const relay = await startRelay({
        config: testConfig(t.url, { sendTimeoutMs: 60_000, batchBatchSize: 1000 }),
        sink: createStompSink({ url: stompUrl(), destination: `/queue/${prefix}.{topic}` }),
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
      assert.equal(received.counts.size, EVENTS, 'the subscriber saw exactly the outbox event ids');
      assert.equal(received.duplicates, 0, 'no duplicates without faults');
    },
  );
});
