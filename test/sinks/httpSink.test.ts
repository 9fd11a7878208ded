// What every sink must do (delivery counted by a consumer, cut, stall, broker down, credentials)
// is checked by the conformance suite (test/sinks/conformance/); this file keeps the behaviour
// specific to this sink.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { HTTP } from 'cloudevents';
import { ConfigError } from '../../src/errors.js';
import { createHttpSink } from '../../src/sinks/httpSink.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { ReceivedIds, outboxMessages, sendInTransaction, statuses } from '../support/brokers.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

interface Delivery {
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
  readonly id: string;
}

/** What the test server answers for one request; `null` never answers. */
type Answer = { status: number; body?: string; headers?: Record<string, string> } | null;

/** A webhook receiver on 127.0.0.1 whose answers each test scripts. */
async function startReceiver() {
  const received = new ReceivedIds();
  /** Ids the receiver answered with a 2xx, i.e. that the sink may report confirmed. */
  const acknowledged = new Set<string>();
  const deliveries: Delivery[] = [];
  let answer: (delivery: Delivery, attempt: number) => Answer = () => ({ status: 204 });
  const attempts = new Map<string, number>();
  const hanging = new Set<http.ServerResponse>();
  /** Requests held without an answer (answer `null`) and not yet aborted by the client. */
  const held = new Map<http.ServerResponse, string>();
  let onHold: (heldCount: number) => void = () => {};

  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const id = String((JSON.parse(body) as { id?: unknown }).id);
      const delivery = { headers: request.headers, body, id };
      deliveries.push(delivery);
      received.add(id);
      const attempt = (attempts.get(id) ?? 0) + 1;
      attempts.set(id, attempt);
      const reply = answer(delivery, attempt);
      if (reply === null) {
        hanging.add(response);
        held.set(response, id);
        onHold(held.size);
        return;
      }
      if (reply.status >= 200 && reply.status < 300) acknowledged.add(id);
      response.writeHead(reply.status, reply.headers).end(reply.body ?? '');
    });
    response.on('close', () => {
      hanging.delete(response);
      held.delete(response);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}/events`,
    received,
    acknowledged,
    deliveries,

    answerWith(fn: typeof answer) {
      answer = fn;
    },
    /** Called with the number of held requests each time one more is held. */
    onHold(fn: typeof onHold) {
      onHold = fn;
    },
    /** Answers every held request with `status`. */
    releaseAll(status: number) {
      for (const [response, id] of held) {
        held.delete(response);
        hanging.delete(response);
        if (status >= 200 && status < 300) acknowledged.add(id);
        response.writeHead(status).end();
      }
    },
    async close() {
      for (const response of hanging) response.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('HTTP sink', () => {
  let t: TestDatabase;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;

  before(async () => {
    t = await createTestDatabase('http_sink');
  });

  after(async () => {
    await t?.close();
  });

  // A receiver per test: requests a timed-out test leaves behind cannot disturb the next one.
  beforeEach(async () => {
    receiver = await startReceiver();
  });

  afterEach(async () => {
    await receiver.close();
  });

  it(
    'holds at most `concurrency` requests in flight, across concurrent batches',
    { timeout: 30_000 },
    async () => {
      let maxHeld = 0;
      receiver.answerWith(() => null);
      receiver.onHold((count) => {
        maxHeld = Math.max(maxHeld, count);
        // With 8 held, wait a little before answering them: a sink that ignored its limit would
        // have sent more by then. A correct sink cannot exceed 8, so this cannot fail spuriously.
        if (count === 8) setTimeout(() => receiver.releaseAll(200), 50);
      });
      const sink = createHttpSink({ url: receiver.url, concurrency: 8 });
      try {
        const outcomes = (
          await Promise.all([
            sendInTransaction(t.db, sink, outboxMessages(40)),
            sendInTransaction(t.db, sink, outboxMessages(40)),
          ])
        ).flat();
        assert.deepEqual(statuses(outcomes), { confirmed: 80 });
        assert.equal(maxHeld, 8);
      } finally {
        receiver.onHold(() => {});
      }
    },
  );

  it('POSTs a structured-mode CloudEvent with the configured headers', { timeout: 30_000 }, async () => {
    receiver.answerWith(() => ({ status: 200 }));
    const sink = createHttpSink({ url: receiver.url, headers: { Authorization: 'Bearer t0ken' } });
    const [message] = outboxMessages(1, () => ({
      correlationId: 'corr-1',
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      headers: { 'X-Tenant': 'acme', Host: 'evil.example', Authorization: 'from-row' },
    })) as [OutboxMessage];
    assert.deepEqual(await sendInTransaction(t.db, sink, [message]), [{ status: 'confirmed' }]);
    const delivery = receiver.deliveries.find((d) => d.id === message.eventId);
    assert.ok(delivery);
    assert.equal(delivery.headers['content-type'], 'application/cloudevents+json; charset=utf-8');
    assert.equal(delivery.headers.authorization, 'Bearer t0ken');
    assert.equal(delivery.headers['x-tenant'], 'acme');
    assert.equal(delivery.headers.host, `127.0.0.1:${receiver.port}`);
    assert.equal(delivery.headers.traceparent, message.traceparent);
    const event = HTTP.toEvent({ headers: delivery.headers, body: delivery.body });
    assert.ok(!Array.isArray(event));
    assert.equal(event.id, message.eventId);
    assert.equal(event.type, 'orders.created');
    assert.equal(event.datacontenttype, 'application/json');
    assert.equal(event.correlationid, 'corr-1');
    assert.equal(event.partitionkey, message.key);
    assert.deepEqual(event.data, JSON.parse(message.payloadJson));
  });

  it('reports a 500 as retryable and the 200 of the re-send as confirmed', { timeout: 30_000 }, async () => {
    receiver.answerWith((_, attempt) =>
      attempt === 1 ? { status: 500, body: 'database is down' } : { status: 200 },
    );
    const sink = createHttpSink({ url: receiver.url });
    const messages = outboxMessages(3);
    const first = await sendInTransaction(t.db, sink, messages);
    assert.deepEqual(statuses(first), { 'failed-retryable': 3 });
    assert.match(
      (first[0] as { error: string }).error,
      /answered 500 Internal Server Error: database is down/,
    );
    assert.deepEqual(await sendInTransaction(t.db, sink, messages), Array(3).fill({ status: 'confirmed' }));
  });

  it('classifies 400, 408, 429, 503 and redirects', { timeout: 30_000 }, async () => {
    const byTopic: Record<string, Answer> = {
      bad: { status: 400, body: `{"error":"amount is missing"}${' padding'.repeat(100)}` },
      slow: { status: 408 },
      limited: { status: 429 },
      busy: { status: 503 },
      moved: { status: 308, headers: { location: 'http://127.0.0.1:1/elsewhere' } },
    };
    receiver.answerWith((delivery) => byTopic[(JSON.parse(delivery.body) as { type: string }).type] ?? null);
    const sink = createHttpSink({ url: receiver.url });
    const outcomes = await sendInTransaction(
      t.db,
      sink,
      Object.keys(byTopic).flatMap((topic) => outboxMessages(1, () => ({ topic }))),
    );
    const [bad, slow, limited, busy, moved] = outcomes;
    assert.ok(bad?.status === 'failed' && !bad.retryable, JSON.stringify(bad));
    assert.match(bad.error, /answered 400 Bad Request: \{"error":"amount is missing"\}/);
    assert.ok(bad.error.length < 400, 'the body excerpt is bounded');
    for (const o of [slow, limited, busy])
      assert.ok(o?.status === 'failed' && o.retryable, JSON.stringify(o));
    assert.ok(moved?.status === 'failed' && !moved.retryable, JSON.stringify(moved));
    assert.match(moved.error, /308 .*redirect to http:\/\/127\.0\.0\.1:1\/elsewhere not followed/);
  });

  it(
    'a request without an answer fails as retryable after timeoutMs, or unknown at the batch deadline',
    { timeout: 30_000 },
    async () => {
      receiver.answerWith(() => null);
      const sink = createHttpSink({ url: receiver.url, timeoutMs: 300 });
      const [timedOut] = await sendInTransaction(t.db, sink, outboxMessages(1), 5_000);
      assert.deepEqual(timedOut, {
        status: 'failed',
        retryable: true,
        error: `no answer from ${receiver.url} within 300 ms`,
      });
      const slowSink = createHttpSink({ url: receiver.url, timeoutMs: 10_000 });
      const started = Date.now();
      const [late] = await sendInTransaction(t.db, slowSink, outboxMessages(1), 400);
      assert.ok(Date.now() - started < 3_000, 'the batch must end near its 400 ms deadline');
      assert.equal(late?.status, 'unknown');
    },
  );

  it(
    'starts no request its batch deadline would cut off: no unknown, nothing received unconfirmed',
    { timeout: 30_000 },
    async () => {
      // Each request is answered 300 ms after it arrived; one at a time, 2 s for the batch: about
      // six fit. Started regardless, the one in flight at the deadline would end unknown although
      // the receiver had it (then a re-send: a duplicate).
      receiver.answerWith(() => null);
      receiver.onHold(() => setTimeout(() => receiver.releaseAll(200), 300));
      const sink = createHttpSink({ url: receiver.url, concurrency: 1 });
      try {
        const outcomes = await sendInTransaction(t.db, sink, outboxMessages(20), 2_000);
        const counts = statuses(outcomes);
        assert.equal(counts.unknown, undefined, JSON.stringify(counts));
        assert.ok((counts.confirmed ?? 0) >= 1, JSON.stringify(counts));
        assert.equal((counts.confirmed ?? 0) + (counts.deferred ?? 0), 20, JSON.stringify(counts));
        // Let a request the sink might have started late reach the receiver before counting.
        await new Promise((resolve) => setTimeout(resolve, 500));
        assert.equal(
          receiver.received.counts.size,
          counts.confirmed,
          'the receiver got only what was confirmed',
        );
        const notSent = outcomes.find((o) => o.status === 'deferred');
        assert.match(
          notSent?.status === 'deferred' ? notSent.error : '',
          /^not sent: \d+ ms left before the batch deadline, too little for the receiver's recent answer time \(\d+ ms\)$/,
        );
        assert.equal(notSent?.status === 'deferred' && notSent.ownLimit, true);
      } finally {
        receiver.onHold(() => {});
      }
    },
  );

  it(
    'a request still waiting for a slot at its deadline is deferred (nothing sent), not unknown',
    { timeout: 30_000 },
    async () => {
      // One slot; each request answered 300 ms after it arrived. Batch A (4 requests, 10 s) holds
      // the slot while batch B (3 requests, 0.5 s) waits behind it: B's deadline comes while its
      // requests are still queued.
      receiver.answerWith(() => null);
      let heldFirst = (): void => {};
      const aHasTheSlot = new Promise<void>((resolve) => (heldFirst = resolve));
      receiver.onHold(() => {
        heldFirst();
        setTimeout(() => receiver.releaseAll(200), 300);
      });
      const sink = createHttpSink({ url: receiver.url, concurrency: 1 });
      try {
        const a = outboxMessages(4);
        const b = outboxMessages(3);
        const batchA = sendInTransaction(t.db, sink, a, 10_000);
        await aHasTheSlot;
        const outcomesB = await sendInTransaction(t.db, sink, b, 500);
        assert.deepEqual(statuses(outcomesB), { deferred: 3 });
        assert.match(
          outcomesB[0]?.status === 'deferred' ? outcomesB[0].error : '',
          /^not sent: the batch deadline passed while waiting for a free request slot$/,
        );
        // The sink's own limit, not the receiver's health: a route's breaker does not count it.
        assert.ok(outcomesB.every((o) => o.status === 'deferred' && o.ownLimit === true));
        assert.deepEqual(statuses(await batchA), { confirmed: 4 });
        // The slot is FIFO: once a later batch is answered, B's queued requests have had their turn.
        assert.deepEqual(statuses(await sendInTransaction(t.db, sink, outboxMessages(1), 10_000)), {
          confirmed: 1,
        });
        assert.deepEqual(
          b.filter((m) => receiver.received.has(m.eventId)).map((m) => m.eventId),
          [],
          'a deferred request reached the receiver',
        );
      } finally {
        receiver.onHold(() => {});
      }
    },
  );

  it('rejects credentials in the URL with a fix, without echoing them', () => {
    assert.throws(
      () => createHttpSink({ url: 'https://user:s3cret@receiver.example/events' }),
      (error: unknown) =>
        error instanceof ConfigError &&
        /authorization header/.test(error.fix ?? '') &&
        !error.message.includes('s3cret'),
    );
    assert.throws(() => createHttpSink({ url: 'ftp://receiver.example' }), /not http: or https:/);
    assert.throws(() => createHttpSink({ url: 'http://receiver.example', concurrency: 0 }), /concurrency/);
  });
});
