// What every sink must do (delivery counted by a consumer, cut, stall, broker down, credentials)
// is checked by the conformance suite (test/sinks/conformance/); this file keeps the behaviour
// specific to this sink.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { HTTP } from 'cloudevents';
import { StorageType, connect, nanos, type JetStreamManager, type JsMsg, type NatsConnection } from 'nats';
import { ShardRelayError } from '../../src/errors.js';
import { createJetStreamSink, type JetStreamSinkOptions } from '../../src/sinks/jetStreamSink.js';
import type { OutboxMessage, SendOutcome } from '../../src/sinks/sink.js';
import {
  NATS_URL,
  ReceivedIds,
  hostAndPort,
  outboxMessages,
  requireBroker,
  sendInTransaction,
  uniqueName,
} from '../support/brokers.js';
import { startTcpProxy } from '../support/tcpProxy.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const server = hostAndPort(NATS_URL, 4222);
const skip = await requireBroker('NATS', server.host, server.port);

function statuses(outcomes: readonly SendOutcome[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const o of outcomes) {
    const key =
      o.status === 'failed'
        ? `failed-${o.retryable ? 'retryable' : 'permanent'}`
        : o.status === 'confirmed' && o.duplicate
          ? 'confirmed-duplicate'
          : o.status;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

describe('JetStream sink', { skip }, () => {
  let t: TestDatabase;
  let admin: NatsConnection;
  let jsm: JetStreamManager;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    t = await createTestDatabase('jetstream_sink');
    admin = await connect({ servers: NATS_URL });
    jsm = await admin.jetstreamManager();
  });

  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    await admin?.close();
    await t?.close();
  });

  /** A stream name and subject prefix nobody else uses; the stream is deleted after the suite. */
  function names(): { stream: string; subjectPrefix: string } {
    const stream = uniqueName('SRT').toUpperCase();
    cleanups.push(() => jsm.streams.delete(stream));
    return { stream, subjectPrefix: uniqueName('srt') };
  }

  /** An ordered consumer over the whole stream, recording each delivery's Nats-Msg-Id. */
  async function consume(stream: string) {
    const received = new ReceivedIds();
    const deliveries: JsMsg[] = [];
    let idMismatches = 0;
    const consumer = await admin.jetstream().consumers.get(stream);
    const messages = await consumer.consume();
    cleanups.push(async () => messages.close());
    void (async () => {
      for await (const message of messages) {
        const id = message.headers?.get('Nats-Msg-Id') ?? '';
        if (message.headers?.get('ce-id') !== id) idMismatches += 1;
        deliveries.push(message);
        received.add(id);
      }
    })();
    return { received, deliveries, idMismatches: () => idMismatches };
  }

  async function storedCount(stream: string): Promise<number> {
    return (await jsm.streams.info(stream)).state.messages;
  }

  function sinkFor(options: Partial<JetStreamSinkOptions> & { stream: string; subjectPrefix: string }) {
    return createJetStreamSink({ url: NATS_URL, ...options });
  }

  it(
    'creates a file-backed stream with the duplicate window and sends binary-mode CloudEvents',
    { timeout: 30_000 },
    async () => {
      const { stream, subjectPrefix } = names();
      const sink = sinkFor({ stream, subjectPrefix, duplicateWindowMs: 45_000 });
      await sink.start();
      try {
        const info = await jsm.streams.info(stream);
        assert.deepEqual(info.config.subjects, [`${subjectPrefix}.>`]);
        assert.equal(info.config.storage, StorageType.File);
        assert.equal(info.config.duplicate_window, nanos(45_000));

        const { received, deliveries } = await consume(stream);
        const [message] = outboxMessages(1, () => ({
          correlationId: 'corr-9',
          traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
          headers: { 'X-Tenant': 'acme' },
          payload: 'a plain string',
        })) as [OutboxMessage];
        assert.deepEqual(await sendInTransaction(t.db, sink, [message]), [{ status: 'confirmed' }]);
        await received.waitForAll([message.eventId], 10_000);
        const delivery = deliveries[0];
        assert.ok(delivery);
        assert.equal(delivery.subject, `${subjectPrefix}.orders.created`);
        const headers: Record<string, string> = {};
        for (const [name, values] of delivery.headers ?? []) headers[name.toLowerCase()] = values[0] ?? '';
        assert.equal(headers['x-tenant'], 'acme');
        assert.equal(headers.traceparent, message.traceparent);
        assert.equal(delivery.string(), '"a plain string"');
        const event = HTTP.toEvent({ headers, body: delivery.string() });
        assert.ok(!Array.isArray(event));
        assert.equal(event.id, message.eventId);
        assert.equal(event.type, 'orders.created');
        assert.equal(event.source, 'shardrelay');
        assert.equal(event.correlationid, 'corr-9');
        assert.equal(event.partitionkey, message.key);
        assert.equal(event.data, 'a plain string');
      } finally {
        await sink.close();
      }
    },
  );

  it(
    'confirms a re-sent id as a duplicate, counts it, and the stream keeps one copy',
    { timeout: 30_000 },
    async () => {
      const { stream, subjectPrefix } = names();
      const sink = sinkFor({ stream, subjectPrefix });
      await sink.start();
      try {
        const messages = outboxMessages(50);
        assert.deepEqual(statuses(await sendInTransaction(t.db, sink, messages)), { confirmed: 50 });
        assert.equal(sink.duplicates, 0);
        const again = await sendInTransaction(t.db, sink, messages);
        assert.ok(again.every((o) => o.status === 'confirmed' && o.duplicate === true));
        assert.deepEqual(statuses(again), { 'confirmed-duplicate': 50 });
        assert.equal(sink.duplicates, 50);
        assert.equal(await storedCount(stream), 50);
      } finally {
        await sink.close();
      }
    },
  );

  it(
    'fails what can never be stored permanently, and an uncaptured subject as retryable',
    { timeout: 30_000 },
    async () => {
      const { stream, subjectPrefix } = names();
      // An operator-made stream that captures only the orders topics.
      await jsm.streams.add({
        name: stream,
        subjects: [`${subjectPrefix}.orders.>`],
        storage: StorageType.Memory,
      });
      const sink = sinkFor({ stream, subjectPrefix, ensureStream: false });
      await sink.start();
      try {
        const [ok, wildcard, huge, uncaptured] = await sendInTransaction(t.db, sink, [
          ...outboxMessages(1),
          ...outboxMessages(1, () => ({ topic: 'orders.*' })),
          ...outboxMessages(1, () => ({ payload: 'x'.repeat(admin.info?.max_payload ?? 1024 * 1024) })),
          ...outboxMessages(1, () => ({ topic: 'payments.settled' })),
        ]);
        assert.deepEqual(ok, { status: 'confirmed' });
        assert.ok(wildcard?.status === 'failed' && !wildcard.retryable, JSON.stringify(wildcard));
        assert.match(wildcard.error, /no valid NATS subject/);
        assert.ok(huge?.status === 'failed' && !huge.retryable, JSON.stringify(huge));
        assert.match(huge.error, /MAX_PAYLOAD_EXCEEDED|payload/i);
        assert.ok(uncaptured?.status === 'failed' && uncaptured.retryable, JSON.stringify(uncaptured));
        assert.match(uncaptured.error, /no responders/);
        assert.equal(await storedCount(stream), 1);
      } finally {
        await sink.close();
      }
    },
  );

  it(
    'fails to start with a clear error and no password when NATS is unreachable',
    { timeout: 30_000 },
    async () => {
      const proxy = await startTcpProxy(server.host, server.port);
      const port = proxy.port;
      await proxy.close();
      const sink = createJetStreamSink({ url: `nats://relay:pa55word-secret@127.0.0.1:${port}` });
      try {
        await assert.rejects(sink.start(), (error: unknown) => {
          assert.ok(error instanceof ShardRelayError);
          assert.equal(error.code, 'SINK_UNAVAILABLE');
          assert.match(error.message, new RegExp(`nats://relay:\\*\\*\\*@127\\.0\\.0\\.1:${port}`));
          assert.doesNotMatch(error.message, /pa55word-secret/);
          return true;
        });
      } finally {
        await sink.close();
      }
    },
  );
});
