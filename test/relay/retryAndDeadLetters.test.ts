import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { replayDeadLetters } from '../../src/deadLetters.js';
import { enqueue } from '../../src/enqueue.js';
import { deliverBatch } from '../../src/relay/deliverBatch.js';
import { startRelay } from '../../src/wiring/relay.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { confirmed, retryable, type Sink } from '../../src/sinks/sink.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** A real sink's shape that refuses (retryably) every message whose payload says `fail`, while `failing()`. */
function refusingSink() {
  let refusing = true;
  const attempts = new Map<string, number>();
  const sink: Sink = {
    name: 'refusing',
    start: async () => {},
    close: async () => {},
    sendBatch: async (messages) =>
      messages.map((m) => {
        attempts.set(m.eventId, (attempts.get(m.eventId) ?? 0) + 1);
        return refusing && (JSON.parse(m.payloadJson) as { fail?: boolean }).fail
          ? retryable('broker said no: queue full')
          : confirmed;
      }),
  };
  return { sink, attempts, accept: () => (refusing = false) };
}

describe('retries and dead letters', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('retry_dead');
  });
  after(() => t.close());

  it('retries refused messages with growing delays, sends the rest of the batch', async () => {
    // Shard 0 of 8 gets ids 8, 16, ...: enqueue 16 rows so shard 0 holds ids 8 and 16.
    const rows = await enqueue(
      t.db,
      Array.from({ length: 16 }, (_, i) => ({ topic: 't', payload: { fail: i === 7 } })),
    );
    const failing = rows[7] as { id: string };
    assert.equal(Number(failing.id) % 8, 0, 'the failing row is in shard 0');
    const { sink } = refusingSink();
    const settings = {
      lanePredicate: DEFAULT_LANE_PREDICATE,
      batchSize: 100,
      retry: { maxAttempts: 4, baseMs: 1000, capMs: 60_000 },
      sendTimeoutMs: 5000,
    };
    const delays: number[] = [];
    for (let attempt = 1; attempt <= 4; attempt++) {
      const result = await deliverBatch(t.db, sink, 0, 8, 'batch', settings);
      assert.ok(result.claimed >= 1);
      const row = await t.db
        .selectFrom('shardrelay.outbox')
        .select([
          'status',
          'attempts',
          'last_error',
          sql<number>`extract(epoch FROM available_at - clock_timestamp()) * 1000`.as('delay'),
        ])
        .where('id', '=', failing.id)
        .executeTakeFirstOrThrow();
      assert.equal(row.attempts, attempt);
      if (attempt < 4) {
        assert.equal(row.status, 'pending');
        assert.match(row.last_error ?? '', /queue full/);
        delays.push(Number(row.delay));
        // The test's clock: make the row due now instead of waiting out its backoff.
        await t.db
          .updateTable('shardrelay.outbox')
          .set({ available_at: sql`now()` })
          .where('id', '=', failing.id)
          .execute();
      } else {
        assert.equal(row.status, 'dead');
        assert.match(row.last_error ?? '', /gave up after 4 attempts: broker said no: queue full/);
      }
    }
    // Equal jitter on an exponential: attempt k waits between base*2^(k-1)/2 and base*2^(k-1).
    delays.forEach((d, i) => {
      const ceiling = 1000 * 2 ** i;
      assert.ok(
        d > ceiling / 2 - 100 && d <= ceiling,
        `delay ${i + 1} = ${Math.round(d)} ms, expected ${ceiling / 2}..${ceiling}`,
      );
    });
    assert.ok(
      (delays[2] as number) > (delays[0] as number),
      `delays grow: ${delays.map(Math.round).join(', ')}`,
    );

    const other = await t.db
      .selectFrom('shardrelay.events')
      .select(['status'])
      .where('id', '=', (rows[15] as { id: string }).id)
      .executeTakeFirstOrThrow();
    assert.equal(other.status, 'sent', 'the other row of the same batch was sent at the first attempt');
  });

  it('dead rows stay dead through the relay, and a replay delivers them', { timeout: 60_000 }, async () => {
    await t.db.deleteFrom('shardrelay.outbox').execute();
    await t.db.deleteFrom('shardrelay.sent_event').execute();
    await enqueue(
      t.db,
      Array.from({ length: 200 }, (_, i) => ({ topic: 't', payload: { fail: i % 50 === 0 } })),
    );
    const { sink, accept, attempts } = refusingSink();
    const config = testConfig(t.url, { maxAttempts: 3, retryBaseMs: 1, retryCapMs: 5 });
    const relay = await startRelay({ config, sink });
    await relay.whenDrained();
    const counts = await t.db
      .selectFrom('shardrelay.events')
      .select(['status', sql<number>`count(*)::int`.as('n')])
      .groupBy('status')
      .orderBy('status')
      .execute();
    assert.deepEqual(counts, [
      { status: 'dead', n: 4 },
      { status: 'sent', n: 196 },
    ]);
    const refused = [...attempts.values()].filter((n) => n === 3).length;
    assert.equal(refused, 4, 'each refused message was tried exactly max_attempts times');

    accept();
    assert.equal(await replayDeadLetters(t.db, { all: true }), 4);
    relay.scheduler.wake([0, 1, 2, 3, 4, 5, 6, 7]);
    await relay.whenDrained();
    await relay.stop();
    const dead = await t.db
      .selectFrom('shardrelay.events')
      .select(sql<number>`count(*)::int`.as('n'))
      .where('status', '<>', 'sent')
      .executeTakeFirstOrThrow();
    assert.equal(dead.n, 0, 'replayed rows were delivered');
  });
  it(
    'a failed row is claimed again when its retry is due, not at the next tick',
    { timeout: 60_000 },
    async () => {
      await t.db.deleteFrom('shardrelay.outbox').execute();
      await t.db.deleteFrom('shardrelay.sent_event').execute();
      /** Per event: when each attempt reached the sink (performance.now()). The first is refused. */
      const attempts = new Map<string, number[]>();
      let confirmedCount = 0;
      let allConfirmed: () => void = () => {};
      const done = new Promise<void>((resolve) => (allConfirmed = resolve));
      const sink: Sink = {
        name: 'refuses-once',
        start: async () => {},
        close: async () => {},
        sendBatch: async (messages) =>
          messages.map((m) => {
            const seen = attempts.get(m.eventId) ?? [];
            seen.push(performance.now());
            attempts.set(m.eventId, seen);
            if (seen.length === 1) return retryable('broker said no: try again');
            if (++confirmedCount === 40) allConfirmed();
            return confirmed;
          }),
      };
      // Ticks 30 s apart: a retry that waited for the tick's poll would wait up to 30 s (15 s on
      // average); the retry itself is due 200-400 ms after the failure (jitter in [cap/2, cap]).
      const config = testConfig(t.url, {
        retryBaseMs: 400,
        retryCapMs: 400,
        tickSeconds: 30,
        realtimeTickSeconds: 30,
      });
      const relay = await startRelay({ config, sink });
      try {
        await enqueue(
          t.db,
          Array.from({ length: 40 }, (_, i) => ({ topic: 't', payload: { i } })),
        );
        await done;
      } finally {
        await relay.stop();
      }
      const left = await t.db.selectFrom('shardrelay.outbox').select('id').execute();
      assert.deepEqual(left, [], 'every row was sent');
      assert.equal(attempts.size, 40);
      const waits = [...attempts.values()].map((a) => {
        assert.equal(a.length, 2, 'refused once, then confirmed');
        return (a[1] as number) - (a[0] as number);
      });
      const longest = Math.max(...waits);
      console.log(
        `# retry waits: shortest ${Math.round(Math.min(...waits))} ms, longest ${Math.round(longest)} ms`,
      );
      // The retry's delay plus the completion and a claim: well under a second, far from a tick.
      assert.ok(
        longest < 400 + 1_500,
        `every retry was claimed when due (longest wait ${Math.round(longest)} ms)`,
      );
    },
  );
});
