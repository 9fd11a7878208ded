import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { deliverBatch } from '../../src/relay/deliverBatch.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { decideCompletions } from '../../src/relay/completionPolicy.js';
import { parseRetryAfter } from '../../src/sinks/retryAfter.js';
import { createHttpSink } from '../../src/sinks/httpSink.js';
import { retryable, type Sink } from '../../src/sinks/sink.js';
import { outboxMessage } from '../support/brokers.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** A receiver that answers every request with the status and headers the test sets. */
async function startReceiver() {
  let reply: { status: number; headers: Record<string, string> } = { status: 204, headers: {} };
  const server = http.createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      response.writeHead(reply.status, reply.headers).end('slow down');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`,
    answer(status: number, headers: Record<string, string> = {}) {
      reply = { status, headers };
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('Retry-After', () => {
  let t: TestDatabase;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let sink: Sink;
  before(async () => {
    t = await createTestDatabase('retry_after');
    receiver = await startReceiver();
    sink = createHttpSink({ url: receiver.url });
    await sink.start();
  });
  after(async () => {
    await sink.close();
    await receiver.close();
    await t.close();
  });

  /** Enqueues `n` rows, runs one batch through the real HTTP sink, returns each row's retry delay. */
  async function batchAnswered(n: number, capMs: number): Promise<{ delays: number[]; errors: string[] }> {
    await sql`DELETE FROM shardrelay.outbox`.execute(t.db);
    await enqueue(
      t.db,
      Array.from({ length: n }, (_, i) => ({ topic: 'throttled', payload: { i } })),
    );
    const result = await deliverBatch(t.db, sink, 0, 1, 'batch', {
      lanePredicate: DEFAULT_LANE_PREDICATE,
      batchSize: 100,
      retry: { maxAttempts: 10, baseMs: 100, capMs },
      sendTimeoutMs: 5_000,
    });
    assert.equal(result.claimed, n);
    assert.equal(result.retried, n);
    const { rows } = await sql<{ delay: number; last_error: string }>`
      SELECT extract(epoch FROM available_at - now())::float8 AS delay, last_error
        FROM shardrelay.outbox WHERE status = 'pending' AND attempts = 1`.execute(t.db);
    assert.equal(rows.length, n);
    return { delays: rows.map((r) => r.delay), errors: rows.map((r) => r.last_error) };
  }

  it('HTTP 429 with Retry-After: 30 is retried no earlier than 30 s', async () => {
    receiver.answer(429, { 'retry-after': '30' });
    const { delays, errors } = await batchAnswered(20, 300_000);
    for (const d of delays) assert.ok(d > 29 && d <= 30.5, `retry in ${d} s`);
    assert.match(errors[0] ?? '', /answered 429 Too Many Requests: slow down \(Retry-After 30 s\)/);
  });

  it('HTTP 503 with an HTTP date is honoured, capped by the retry cap', async () => {
    const in45s = new Date(Date.now() + 45_000).toUTCString();
    receiver.answer(503, { 'retry-after': in45s });
    const capped = await batchAnswered(10, 20_000);
    for (const d of capped.delays) assert.ok(d > 19 && d <= 20.5, `capped retry in ${d} s`);
    receiver.answer(503, { 'retry-after': new Date(Date.now() + 45_000).toUTCString() });
    const uncapped = await batchAnswered(10, 300_000);
    // The date has whole-second precision: 44-45 s from the answer.
    for (const d of uncapped.delays) assert.ok(d > 43 && d <= 45.5, `retry in ${d} s`);
  });

  it('without Retry-After the relay backoff applies (here under 0.1 s)', async () => {
    receiver.answer(429);
    const { delays } = await batchAnswered(10, 300_000);
    for (const d of delays) assert.ok(d <= 0.15, `retry in ${d} s`);
  });

  it('reads both forms of the header and ignores what is neither', () => {
    const now = Date.parse('2026-10-21T07:28:00Z');
    assert.equal(parseRetryAfter('120', now), 120_000);
    assert.equal(parseRetryAfter(' 0 ', now), 0);
    assert.equal(parseRetryAfter('Wed, 21 Oct 2026 07:28:30 GMT', now), 30_000);
    assert.equal(parseRetryAfter('Wed, 21 Oct 2026 07:27:00 GMT', now), 0, 'a past date means now');
    assert.equal(parseRetryAfter('-5', now), undefined);
    assert.equal(parseRetryAfter('soon', now), undefined);
    assert.equal(parseRetryAfter(null, now), undefined);
  });

  it('a hint shorter than the backoff leaves the backoff; a longer one is the delay, within the cap', () => {
    const m = (id: string) => ({ ...outboxMessage({ id, attempts: 3 }), maxAttempts: null });
    const decided = decideCompletions(
      [m('1'), m('2'), m('3')],
      [retryable('x', 10), retryable('x', 5_000), retryable('x', 120_000)],
      { maxAttempts: 10, baseMs: 100, capMs: 60_000 },
      () => 0.5,
    );
    // Backoff of attempt 4 with base 100: ceiling 800, jitter 0.5 → 600.
    assert.deepEqual(
      decided.map((d) => (d.status === 'pending' ? d.retryInMs : d.status)),
      [600, 5_000, 60_000],
    );
  });
});
