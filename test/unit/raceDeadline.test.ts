import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { exponentialDelayMs } from '../../src/backoff.js';
import { EXPIRED, raceDeadline, untilDeadline } from '../../src/raceDeadline.js';

/** Timers this process still has pending (Node's own handles aside, which a test cannot clear). */
const pendingTimers = (): number =>
  process.getActiveResourcesInfo().filter((resource) => resource === 'Timeout').length;

describe('deadline race', () => {
  it('returns the value when the promise wins, and leaves no timer behind', async () => {
    const before = pendingTimers();
    assert.equal(await untilDeadline(Promise.resolve(7), Date.now() + 60_000), 7);
    assert.equal(await raceDeadline(Promise.resolve('ok'), Date.now() + 60_000, 'late'), 'ok');
    assert.equal(pendingTimers(), before);
  });

  it('gives EXPIRED (or rejects with the reason) once the deadline passed', async () => {
    const never = new Promise<number>(() => {});
    assert.equal(await untilDeadline(never, Date.now() + 20), EXPIRED);
    await assert.rejects(raceDeadline(never, Date.now() - 1, 'too late to connect'), /too late to connect/);
  });

  it("passes the promise's own rejection through, and leaves no timer behind", async () => {
    const before = pendingTimers();
    await assert.rejects(untilDeadline(Promise.reject(new Error('refused')), Date.now() + 60_000), /refused/);
    assert.equal(pendingTimers(), before);
  });
});

describe('exponential delay', () => {
  it('doubles from the base per attempt and stops at the cap', () => {
    const policy = { baseMs: 100, capMs: 1_000 };
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 60].map((a) => exponentialDelayMs(policy, a)),
      [100, 100, 200, 400, 800, 1_000, 1_000],
    );
  });
});
