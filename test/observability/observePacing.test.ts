/**
 * The observer's cycle reads shardrelay.health, which counts every pending row: with a large
 * backlog it must not run at its fixed interval (src/observability/observePacing.ts). Checked on the
 * observer's own connection: each cycle's time on it, and the gap to the next cycle's start.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { silentLogger } from '../../src/logger.js';
import { OBSERVE_DUTY_DIVISOR, observePeriodMs } from '../../src/observability/observePacing.js';
import { createObserver } from '../../src/observability/observer.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('observePeriodMs', () => {
  it('keeps the interval while a cycle is cheap and stretches it to 20 cycles when not', () => {
    assert.equal(OBSERVE_DUTY_DIVISOR, 20);
    assert.equal(observePeriodMs(5_000, 3), 5_000);
    assert.equal(observePeriodMs(5_000, 250), 5_000);
    assert.equal(observePeriodMs(5_000, 1_250), 25_000);
  });
});

describe('the observer paces itself by the cost of its read', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('observe_pacing');
  });
  after(() => t.close());

  /** Runs an observer for `windowMs` and returns each cycle's start and time on its connection. */
  async function observeCycles(intervalMs: number, windowMs: number) {
    const pool = createPool({ connectionString: t.url, max: 1, applicationName: 'test-observer' });
    const cycles: { start: number; busyMs: number }[] = [];
    let acquired = 0;
    let counting = false;
    pool.on('acquire', () => {
      acquired = performance.now();
    });
    pool.on('release', () => {
      if (counting) cycles.push({ start: acquired, busyMs: performance.now() - acquired });
    });
    const observer = createObserver({
      db: createDatabase(pool),
      config: testConfig(t.url),
      sinkName: 'null',
      lanes: ['batch'],
      logger: silentLogger,
      intervalMs,
    });
    const shards = { config: { shardCount: 8, generation: '1' }, ownedShards: [0, 1, 2, 3, 4, 5, 6, 7] };
    await observer.start({ ...shards, lastTickEndedAt: Date.now() });
    counting = true;
    await new Promise((resolve) => setTimeout(resolve, windowMs));
    await observer.stop();
    await pool.end();
    return cycles;
  }

  it('with nothing pending, cycles come at the configured interval', async () => {
    const cycles = await observeCycles(200, 2_000);
    assert.ok(cycles.length >= 5, `${cycles.length} cycles in 2 s at a 200 ms interval`);
    for (let i = 1; i < cycles.length; i++) {
      const gap = (cycles[i]?.start ?? 0) - (cycles[i - 1]?.start ?? 0);
      assert.ok(gap >= 195, `cycle ${i} started ${gap.toFixed(1)} ms after the one before`);
    }
  });

  it('with a backlog, the next cycle starts no sooner than 20 of the last one later', async () => {
    // Pending but not due (a retry an hour away): counted by the views, claimed by nobody.
    await sql`
      INSERT INTO shardrelay.outbox (topic, payload, available_at)
      SELECT 'orders', jsonb_build_object('i', g), now() + interval '1 hour'
        FROM generate_series(1, 15000) AS g`.execute(t.db);
    await sql`ANALYZE shardrelay.outbox`.execute(t.db);
    // At a 20 ms interval an unpaced observer would read the backlog back to back.
    const cycles = await observeCycles(20, 3_000);
    assert.ok(cycles.length >= 2, `${cycles.length} cycles: too few to compare`);
    const busy = cycles.reduce((sum, c) => sum + c.busyMs, 0);
    const report = cycles.map((c) => `${c.busyMs.toFixed(1)} ms`).join(', ');
    for (let i = 1; i < cycles.length; i++) {
      const before = cycles[i - 1] as { start: number; busyMs: number };
      const gap = (cycles[i]?.start ?? 0) - before.start;
      // The observer measures a little more than the connection's time (the cycle's own work), so
      // its period is at least 20 times what is seen here; 19 leaves the timers' early firing.
      assert.ok(
        gap >= (OBSERVE_DUTY_DIVISOR - 1) * before.busyMs,
        `cycle ${i} started ${gap.toFixed(0)} ms after the one before, which read for ${before.busyMs.toFixed(1)} ms (cycles: ${report})`,
      );
    }
    console.log(`# observer cycles with 15,000 pending rows: ${report}; busy ${busy.toFixed(0)} ms of 3,000`);
    assert.ok(
      busy / 3_000 < 0.1,
      `the observer's connection was busy ${busy.toFixed(0)} ms of 3,000 (${report})`,
    );
  });
});
