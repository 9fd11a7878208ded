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
import {
  OBSERVE_DUTY_DIVISOR,
  OBSERVE_MAX_PERIOD_MS,
  observePeriodMs,
} from '../../src/observability/observePacing.js';
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
  it('never beyond a minute, and a failed cycle (a lock wait, a lost connection) does not stretch it', () => {
    assert.equal(OBSERVE_MAX_PERIOD_MS, 60_000);
    assert.equal(observePeriodMs(5_000, 29_000), 60_000);
    assert.equal(observePeriodMs(5_000, 2_000, true), 5_000);
  });
});

describe('the observer paces itself by the cost of its read', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('observe_pacing');
  });
  after(() => t.close());

  /**
   * Runs an observer until it has run `count` cycles (at most `timeoutMs`) and returns each cycle's
   * start and time on its connection, and how long it ran. Counted, not timed: on a loaded machine a
   * cycle costs more and the observer rightly runs fewer of them in a given window.
   */
  async function observeCycles(intervalMs: number, count: number, timeoutMs: number) {
    const pool = createPool({ connectionString: t.url, max: 1, applicationName: 'test-observer' });
    const cycles: { start: number; busyMs: number }[] = [];
    let acquired = 0;
    let counting = false;
    pool.on('acquire', () => {
      acquired = performance.now();
    });
    let enough: () => void = () => {};
    const reached = new Promise<void>((resolve) => (enough = resolve));
    pool.on('release', () => {
      if (!counting) return;
      cycles.push({ start: acquired, busyMs: performance.now() - acquired });
      if (cycles.length >= count) enough();
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
    const from = performance.now();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([reached, new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    const elapsedMs = performance.now() - from;
    await observer.stop();
    await pool.end();
    return { cycles, elapsedMs };
  }

  const median = (values: readonly number[]) =>
    [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? Number.NaN;

  it('with nothing pending, cycles come at the configured interval', async () => {
    const { cycles } = await observeCycles(200, 6, 20_000);
    assert.ok(cycles.length >= 6, `${cycles.length} cycles in 20 s at a 200 ms interval`);
    const gaps = cycles.slice(1).map((c, i) => c.start - (cycles[i]?.start ?? 0));
    for (const [i, gap] of gaps.entries()) {
      assert.ok(gap >= 195, `cycle ${i + 1} started ${gap.toFixed(1)} ms after the one before`);
    }
    // Not stretched beyond what the pacing asks for: the interval, or 20 reads when a read is
    // dear (in a loaded suite an empty read has taken tens of ms). The observer times a little
    // more than the connection's read (its own work), hence 1.5 on the median.
    const busy = median(cycles.map((c) => c.busyMs));
    const expected = Math.max(200, busy * OBSERVE_DUTY_DIVISOR);
    assert.ok(
      median(gaps) <= 1.5 * expected,
      `cycles came at the interval the pacing asks for, ${expected.toFixed(0)} ms (gaps ${gaps.map((g) => g.toFixed(0)).join(', ')} ms; median read ${busy.toFixed(1)} ms)`,
    );
  });

  it('with a backlog, the next cycle starts no sooner than 20 of the last one later', async () => {
    // Pending but not due (a retry an hour away): counted by the views, claimed by nobody.
    await sql`
      INSERT INTO shardrelay.outbox (topic, payload, available_at)
      SELECT 'orders', jsonb_build_object('i', g), now() + interval '1 hour'
        FROM generate_series(1, 15000) AS g`.execute(t.db);
    await sql`ANALYZE shardrelay.outbox`.execute(t.db);
    // At a 20 ms interval an unpaced observer would read the backlog back to back.
    const { cycles, elapsedMs } = await observeCycles(20, 4, 60_000);
    assert.ok(cycles.length >= 4, `${cycles.length} cycles in 60 s: too few to compare`);
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
    const window = `${busy.toFixed(0)} ms of ${elapsedMs.toFixed(0)}`;
    console.log(`# observer cycles with 15,000 pending rows: ${report}; busy ${window}`);
    // Counted up to the start of the last cycle's read, whose wait after it is not part of the run.
    assert.ok(busy / elapsedMs < 0.1, `the observer's connection was busy ${window} (${report})`);
  });
});
