// What every sink must do (delivery counted by a consumer, cut, stall, broker down, credentials)
// is checked by the conformance suite (test/sinks/conformance/); this file keeps the behaviour
// specific to the STOMP sink, against a real ActiveMQ 5.17 the harness starts.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { FrameImpl, type IMessage } from '@stomp/stompjs';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { CE_UNDERSCORE, writeApplicationHeaders, writeAttributes } from '../../src/sinks/cloudEvent.js';
import { createStompSink, errorOutcome, sendFrameEncoder } from '../../src/sinks/stompSink.js';
import { FrameReader, type StompFrame } from '../../src/sinks/stompWire.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { activeMqMissing, startActiveMq, type ActiveMq } from '../support/activemq.js';
import {
  ReceivedIds,
  captureLog,
  outboxMessages,
  sendInTransaction,
  uniqueName,
} from '../support/brokers.js';
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
        assert.equal(delivered.body, message.payloadJson, 'the body is the claimed JSON text, untouched');
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

  it(
    "spreads a batch over several connections, each key's rows in order on one of them",
    { timeout: 60_000 },
    async () => {
      const prefix = uniqueName('sr_spread');
      const { messages: delivered, received } = await subscribe(`/queue/${prefix}.>`);
      const capture = captureLog();
      const sink = createStompSink({
        url: stompUrl(),
        destination: `/queue/${prefix}.{topic}`,
        connections: 4,
        connectionsPerBatch: 4,
        log: capture.log,
      });
      await sink.start();
      try {
        // Keyed rows and rows without a key, in transactions of 100 and across them.
        const messages = outboxMessages(400, (i) => ({ key: i % 5 === 0 ? null : `key-${i % 9}` }));
        const outcomes = await sendInTransaction(t.db, sink, messages);
        assert.ok(
          outcomes.every((o) => o.status === 'confirmed'),
          JSON.stringify(outcomes),
        );
        const settled = await capture.waitFor('STOMP batch settled', 5_000);
        assert.equal(settled.connections, 4);
        await received.waitForAll(
          messages.map((m) => m.eventId),
          20_000,
        );
        assert.equal(received.duplicates, 0);
        const order = (ids: (string | undefined)[], key: string | null) =>
          ids.filter((_, i) => (messages.find((m) => m.eventId === ids[i])?.key ?? null) === key);
        const sentIds = messages.map((m) => m.eventId);
        const gotIds = delivered.map((m) => m.headers.ce_id);
        for (let k = 0; k < 9; k++) {
          assert.deepEqual(order(gotIds, `key-${k}`), order(sentIds, `key-${k}`), `key-${k} out of order`);
        }
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

describe('STOMP SEND frames written by the sink', () => {
  it('are byte for byte what stompjs writes for client.publish of the same headers, escaped (1.2) or not', () => {
    const source = 'urn:test:a:b';
    const encode = sendFrameEncoder('/queue/x.{topic}', source);
    const [full, bare] = outboxMessages(2, (i) =>
      i === 0
        ? {
            topic: 'orders:created',
            key: 'customer:42\n',
            correlationId: 'corr\\7',
            traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
            headers: { 'X-Tenant': 'a:b\\c\nd\re', ce_id: 'forged', persistent: 'false' },
            payload: { n: 1, note: 'ü:\n' },
          }
        : { key: null },
    ) as [OutboxMessage, OutboxMessage];
    for (const message of [full, bare]) {
      for (const escape of [true, false]) {
        for (const transaction of [undefined, '3.tx9']) {
          // The headers as the sink set them for client.publish before it wrote frames itself.
          const headers: Record<string, string> = {};
          writeApplicationHeaders(
            headers,
            message,
            (name) =>
              ['persistent', 'type', 'destination', 'receipt', 'transaction'].includes(name) ||
              name.startsWith('ce_'),
          );
          writeAttributes(headers, message, source, CE_UNDERSCORE);
          headers['content-type'] = 'application/json';
          headers.persistent = 'true';
          headers.type = message.topic;
          if (message.correlationId !== null) headers['correlation-id'] = message.correlationId;
          if (message.key !== null) headers.JMSXGroupID = message.key;
          if (transaction !== undefined) headers.transaction = transaction;
          headers.receipt = '42';
          const expected = FrameImpl.marshall({
            command: 'SEND',
            headers: { destination: `/queue/x.${message.topic}`, ...headers },
            body: message.payloadJson,
            escapeHeaderValues: escape,
            skipContentLengthHeader: true,
          });
          assert.equal(encode(message, escape, transaction, '42'), expected);
        }
      }
    }
  });
});

describe('STOMP frames read by the sink', () => {
  it('finds frames split anywhere, heart-beats between them, escapes and content-length', () => {
    const wire = Buffer.from(
      'CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0\n\r\n' +
        'RECEIPT\nreceipt-id:1\n\n\0RECEIPT\r\nreceipt-id:2\r\n\r\n\0\n' +
        'RECEIPT\nreceipt-id:a\\cb\n\n\0RECEIPT\nreceipt-id:bye-1\n\n\0' +
        'ERROR\nreceipt-id:3\nmessage:a\\cb\\\\c\\nd\ncontent-length:4\n\nx\0yz\0' +
        'ERROR\nmessage:first\nmessage:second\n\nline one\nline two\0',
    );
    for (const [size, fast] of [1, 2, 3, 7, 19, wire.length].flatMap((n) => [
      [n, false] as const,
      [n, true] as const,
    ])) {
      const frames: StompFrame[] = [];
      // fast: plain RECEIPTs come as their id alone (the sink's path); the same list either way.
      const reader = new FrameReader(
        (frame) => {
          frames.push(frame);
          if (frame.command === 'CONNECTED') reader.escaped = true;
        },
        false,
        fast
          ? (id) => frames.push({ command: 'RECEIPT', headers: { 'receipt-id': id }, body: '' })
          : undefined,
      );
      for (let at = 0; at < wire.length; at += size) reader.push(wire.subarray(at, at + size));
      assert.deepEqual(
        frames.map((f) => [f.command, f.headers['receipt-id'], f.headers.message, f.body]),
        [
          ['CONNECTED', undefined, undefined, ''],
          ['RECEIPT', '1', undefined, ''],
          ['RECEIPT', '2', undefined, ''],
          ['RECEIPT', 'a:b', undefined, ''],
          ['RECEIPT', 'bye-1', undefined, ''],
          ['ERROR', '3', 'a:b\\c\nd', 'x\0yz'],
          ['ERROR', undefined, 'first', 'line one\nline two'],
        ],
        `read in pieces of ${size} bytes${fast ? ', receipts by id' : ''}`,
      );
    }
  });
});
