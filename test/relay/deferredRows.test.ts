// A row its sink did not offer before the batch deadline (outcome `deferred`) stays pending as
// claimed: no attempt counted. Before, such rows counted an attempt each time, so a slow but
// healthy receiver at peak turned events it never saw into dead letters after `max_attempts` turns.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { claimsAgainAtOnce, deliverBatch, EMPTY_BATCH } from '../../src/relay/deliverBatch.js';
import { createHttpSink } from '../../src/sinks/httpSink.js';
import { confirmed, deferred, type Sink } from '../../src/sinks/sink.js';
import { startSlowWebhook } from '../support/slowWebhook.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const ANSWER_AFTER_MS = 250;

/** One batch's settings: a first retry a minute away, so a deferred row's wait is plain to see. */
const minuteRetry = (batchSize: number, sendTimeoutMs: number) => ({
  lanePredicate: DEFAULT_LANE_PREDICATE,
  batchSize,
  retry: { maxAttempts: 2, baseMs: 60_000, capMs: 60_000 },
  sendTimeoutMs,
});

describe('rows a sink deferred', () => {
  let t: TestDatabase;
  /** The pending rows: attempts, last error and seconds until due. */
  const pendingRows = async () =>
    (
      await sql<{ attempts: number; last_error: string | null; wait: number }>`
        SELECT attempts, last_error, extract(epoch FROM available_at - now())::float8 AS wait
          FROM shardrelay.outbox WHERE status = 'pending'`.execute(t.db)
    ).rows;
  let receiver: Awaited<ReturnType<typeof startSlowWebhook>>;
  let sink: Sink;
  before(async () => {
    t = await createTestDatabase('deferred_rows');
    receiver = await startSlowWebhook(ANSWER_AFTER_MS);
    // One request at a time: a 1 s batch deadline leaves room for about three of 12 requests.
    sink = createHttpSink({ url: receiver.url, concurrency: 1 });
    await sink.start();
  });
  after(async () => {
    await sink.close();
    await receiver.close();
    await t.close();
  });

  it(
    'a receiver slower than the deadline allows gets every event once, none dead-lettered, one attempt each',
    { timeout: 60_000 },
    async () => {
      const ids = (
        await enqueue(
          t.db,
          Array.from({ length: 12 }, (_, i) => ({ topic: 'slow.receiver', payload: { i } })),
        )
      ).map((e) => e.eventId);
      let deferred = 0;
      let dead = 0;
      let retried = 0;
      let batches = 0;
      for (; batches < 40; batches++) {
        const result = await deliverBatch(t.db, sink, 0, 1, 'batch', {
          lanePredicate: DEFAULT_LANE_PREDICATE,
          batchSize: 12,
          // Two attempts and no backoff to speak of: before, a row deferred twice was dead.
          retry: { maxAttempts: 2, baseMs: 1, capMs: 1 },
          sendTimeoutMs: 1_000,
        });
        if (result.claimed === 0) {
          // Deferred rows are due 1 ms after their batch's UPDATE: a claim that came sooner found
          // none (seen on a fast machine). Done only when nothing is pending.
          const { rows } = await sql<{ n: number }>`
            SELECT count(*)::int AS n FROM shardrelay.outbox WHERE status = 'pending'`.execute(t.db);
          if (rows[0]?.n === 0) break;
          await new Promise((resolve) => setTimeout(resolve, 5));
          continue;
        }
        deferred += result.deferred;
        dead += result.dead;
        retried += result.retried;
      }
      assert.equal(dead, 0, `rows dead-lettered in ${batches} batches (${retried} counted as attempts)`);
      assert.equal(retried, 0, 'attempts counted for rows that were not sent');
      assert.ok(deferred > 0, 'no row was deferred: the scenario tested nothing');
      const { rows } = await sql<{ status: string; n: number }>`
        SELECT status, count(*)::int AS n FROM shardrelay.outbox GROUP BY status`.execute(t.db);
      assert.deepEqual(rows, [], `rows left in the outbox after ${batches} batches`);
      assert.deepEqual(
        ids.filter((id) => receiver.counts.get(id) !== 1),
        [],
        'every event reached the receiver exactly once',
      );
      const attempts = await sql<{ attempts: number; n: number }>`
        SELECT attempts, count(*)::int AS n FROM shardrelay.sent_event GROUP BY attempts`.execute(t.db);
      assert.deepEqual(attempts.rows, [{ attempts: 1, n: 12 }], 'each sent event took one attempt');
    },
  );

  it(
    'a deferred row waits the first retry delay, with its attempts: the rows behind it go first',
    { timeout: 30_000 },
    async () => {
      await sql`DELETE FROM shardrelay.outbox`.execute(t.db);
      const first = await enqueue(
        t.db,
        Array.from({ length: 8 }, (_, i) => ({ topic: 'slow.receiver', payload: { i } })),
      );
      const settings = minuteRetry(8, 1_000);
      const result = await deliverBatch(t.db, sink, 0, 1, 'batch', settings);
      assert.ok(result.deferred > 0 && result.sent > 0, JSON.stringify(result));
      const rows = await pendingRows();
      assert.equal(rows.length, result.deferred);
      for (const row of rows) {
        assert.equal(row.attempts, 0);
        // Why it is still pending, for `shardrelay event <id>` and the views.
        assert.match(row.last_error ?? '', /^deferred \(no attempt counted\): not sent: \d+ ms left/);
        assert.ok(row.wait > 55 && row.wait <= 60, `due again in ${row.wait} s`);
      }
      // A row enqueued after them is claimed before them.
      const [later] = await enqueue(t.db, [{ topic: 'slow.receiver', payload: { later: true } }]);
      const next = await deliverBatch(t.db, sink, 0, 1, 'batch', settings);
      assert.equal(next.claimed, 1);
      assert.equal(receiver.counts.get(later?.eventId ?? ''), 1);
      const deferredIds = first.map((e) => e.eventId).filter((id) => !receiver.counts.has(id));
      assert.equal(deferredIds.length, result.deferred, 'a deferred row reached the receiver');
    },
  );

  it(
    'a claim transaction lost after the send: its deferred rows are postponed through another connection too',
    { timeout: 30_000 },
    async () => {
      await sql`DELETE FROM shardrelay.outbox`.execute(t.db);
      await enqueue(
        t.db,
        Array.from({ length: 10 }, (_, i) => ({ topic: 'lost.claim', payload: { i } })),
      );
      // Confirms the even rows, defers the odd ones, and first ends the claim's session (the
      // only transaction open in this database), as a failover or an operator would.
      const terminating: Sink = {
        name: 'terminating',
        start: async () => undefined,
        close: async () => undefined,
        async sendBatch(messages) {
          const { rows } = await sql<{ n: number }>`
            SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'idle in transaction'
               AND pid <> pg_backend_pid()`.execute(t.db);
          assert.equal(rows[0]?.n, 1, 'the claim transaction was not found');
          return messages.map((_, i) => (i % 2 === 0 ? confirmed : deferred('broker unreachable (test)')));
        },
      };
      const settings = minuteRetry(10, 5_000);
      const result = await deliverBatch(t.db, terminating, 0, 1, 'batch', settings);
      assert.equal(result.sent, 5, JSON.stringify(result));
      const rows = await pendingRows();
      assert.equal(rows.length, 5, 'the confirmed rows were not recorded as sent');
      for (const row of rows) {
        assert.equal(row.attempts, 0);
        assert.equal(row.last_error, 'deferred (no attempt counted): broker unreachable (test)');
        // Before, due at once: claimed again while the broker was still down.
        assert.ok(row.wait > 55 && row.wait <= 60, `due again in ${row.wait} s`);
      }
    },
  );

  it('the shard loop claims on at once after a full batch of which something was offered', () => {
    const batch = (claimed: number, deferred: number) => ({ ...EMPTY_BATCH, asked: 100, claimed, deferred });
    assert.equal(claimsAgainAtOnce(batch(100, 0)), true, 'a full batch: more may wait');
    assert.equal(claimsAgainAtOnce(batch(100, 60)), true, 'the rows behind the deferred ones');
    assert.equal(claimsAgainAtOnce(batch(40, 0)), false, 'a short batch: the shard is drained');
    assert.equal(claimsAgainAtOnce(batch(40, 30)), false, 'the deferred rows wait anyway');
    assert.equal(claimsAgainAtOnce(batch(100, 100)), false, 'nothing offered: wait for a trigger');
    assert.equal(claimsAgainAtOnce(batch(0, 0)), false);
  });
});
