/**
 * Every failed delivery attempt and every dead letter is a structured log line of the relay that
 * carries the event's correlation id and W3C traceparent, so it can be joined to the application's
 * own logs and traces.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { confirmed, permanent, retryable, type Sink } from '../../src/sinks/sink.js';
import { captureLog } from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const traceparent = (i: number) => `00-${String(i).padStart(32, '0')}-${'ab'.repeat(8)}-01`;

describe('correlation in the relay logs', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('correlation_logs');
  });
  after(() => t.close());

  it(
    'logs each retry and dead letter with its correlation id and traceparent',
    { timeout: 60_000 },
    async () => {
      // Row 3 is refused for good; row 5 is refused until it runs out of attempts (2); the rest pass.
      const sink: Sink = {
        name: 'picky',
        start: async () => {},
        close: async () => {},
        sendBatch: async (messages) =>
          messages.map((m) => {
            const { n } = JSON.parse(m.payloadJson) as { n: number };
            return n === 3 ? permanent('404 no such topic') : n === 5 ? retryable('503 busy') : confirmed;
          }),
      };
      const rows = await enqueue(
        t.db,
        Array.from({ length: 8 }, (_, n) => ({
          topic: 'orders.created',
          payload: { n },
          correlationId: `order-${n}`,
          traceparent: traceparent(n),
        })),
      );
      const capture = captureLog();
      const relay = await startRelay({
        config: testConfig(t.url, { maxAttempts: 2, retryBaseMs: 1, retryCapMs: 5 }),
        sink,
        logger: capture.log,
      });
      await relay.whenDrained();
      await relay.stop();

      const problems = capture.lines
        .filter((l) => typeof l.eventId === 'string')
        .map((l) => ({
          level: l.level,
          msg: l.msg,
          eventId: l.eventId,
          correlationId: l.correlationId,
          traceparent: l.traceparent,
          attempt: l.attempt,
          error: l.error,
        }))
        // Rows of different shards fail in batches that run concurrently: order by event, attempt.
        .sort(
          (a, b) =>
            String(a.correlationId).localeCompare(String(b.correlationId)) ||
            Number(a.attempt) - Number(b.attempt),
        );
      const event = (n: number) => ({
        eventId: rows[n]?.eventId,
        correlationId: `order-${n}`,
        traceparent: traceparent(n),
      });
      assert.deepEqual(problems, [
      // pino levels: 40 warn, 50 error.
      { level: 50, msg: 'event moved to dead letters', ...event(3), attempt: 1, error: 'permanent: 404 no such topic' },
      { level: 40, msg: 'event delivery failed; it will be retried', ...event(5), attempt: 1, error: '503 busy' },
      { level: 50, msg: 'event moved to dead letters', ...event(5), attempt: 2, error: 'gave up after 2 attempts: 503 busy' },
    ]); // prettier-ignore
      const dead = capture.lines.find((l) => l.msg === 'event moved to dead letters');
      assert.equal(dead?.shard, Number(rows[3]?.id) % 8);
      assert.equal(dead?.lane, 'batch');
      assert.equal(dead?.topic, 'orders.created');
    },
  );
});
