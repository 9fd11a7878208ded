// A receiver slower than the relay's claims: an HTTP webhook that takes fewer rows per send
// deadline than the lane claims. Before the lane's claims followed the sink's pace
// (relay/claimSize.ts), every round claimed each shard's pending rows up to the batch size, sent
// what the request slots allowed before the deadline and postponed the rest (an UPDATE each),
// round after round until the backlog was gone.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { enqueue } from '../../src/enqueue.js';
import { createHttpSink } from '../../src/sinks/httpSink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { startRelay } from '../../src/wiring/relay.js';
import { captureLog } from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { startSlowWebhook } from '../support/slowWebhook.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const EVENTS = 2_400;
/** Each request answered after this: 4 request slots take ~400 rows/s, ~200 per send deadline. */
const ANSWER_AFTER_MS = 10;
const SLOTS = 4;
const SEND_TIMEOUT_MS = 500;

describe('a lane claiming for a sink slower than its batches', () => {
  let t: TestDatabase;
  let receiver: Awaited<ReturnType<typeof startSlowWebhook>>;
  before(async () => {
    t = await createTestDatabase('claim_size');
    receiver = await startSlowWebhook(ANSWER_AFTER_MS);
  });
  after(async () => {
    await receiver.close();
    await t.close();
  });

  it(
    'claims what the sink can send: few rows postponed, every event delivered',
    { timeout: 120_000 },
    async (ctx) => {
      const captured = captureLog();
      let claimed = 0;
      let deferredAtLimit = 0;
      /** Deferred at the sink's limit by batches that ended more than a second after the enqueue. */
      let deferredLater = 0;
      let sent = 0;
      let enqueuedAt = Number.POSITIVE_INFINITY;
      const relay = await startRelay({
        // 2 connections (the default on 2 cores) for 8 shards: the shards' batches take turns.
        config: testConfig(t.url, { sendTimeoutMs: SEND_TIMEOUT_MS, connectionsPerLane: 2, metricsPort: 0 }),
        logger: captured.log,
        sink: createHttpSink({ url: receiver.url, concurrency: SLOTS }),
        hooks: {
          onBatch: (_shard, _lane, result) => {
            claimed += result.claimed;
            deferredAtLimit += result.deferredAtSinkLimit;
            if (performance.now() - enqueuedAt > 2 * SEND_TIMEOUT_MS)
              deferredLater += result.deferredAtSinkLimit;
            sent += result.sent;
          },
        },
      });
      try {
        const ids = (await enqueue(t.db, syntheticEvents(EVENTS, { topic: 'orders.created' }))).map(
          (e) => e.eventId,
        );
        enqueuedAt = performance.now();
        await relay.whenDrained();
        const seconds = (performance.now() - enqueuedAt) / 1000;
        ctx.diagnostic(
          `drained ${EVENTS} rows in ${seconds.toFixed(1)} s: ${claimed} claimed, ${deferredAtLimit} deferred at the sink's limit (${deferredLater} after the first second), ${sent} sent`,
        );
        const missing = ids.filter((id) => !receiver.counts.has(id));
        assert.deepEqual(missing, [], 'events the receiver never got');
        assert.equal(sent, EVENTS, 'rows recorded as sent');
        // Before (the claims at the configured size; 2 connections, so the shards' batches took
        // turns): 4,225-4,555 rows postponed in all, 3,758-3,917 by batches that ended after the
        // first second. Now 1,250-1,549 and 780-1,085: the first batches, claimed before the sink
        // said how much it takes, still postpone most of their rows once.
        assert.ok(
          deferredLater < 0.8 * EVENTS,
          `${deferredLater} rows postponed at the sink's limit after the first second, to send ${EVENTS}`,
        );
        assert.ok(deferredAtLimit < 1.2 * EVENTS, `${deferredAtLimit} rows postponed in all`);
        const smaller = captured.lines.find((l) =>
          String(l.msg).includes('the lane claims fewer rows per batch'),
        );
        assert.ok(smaller, 'no log line said the claims got smaller');
        assert.equal(smaller.lane, 'batch');
        assert.ok(Number(smaller.claimSize) < 1_000, `claim size ${String(smaller.claimSize)}`);
      } finally {
        await relay.stop();
      }
    },
  );
});
