import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { retryWakeDelays } from '../../src/relay/retryWakes.js';

describe('retry wakes', () => {
  it('none without retries; one for retries within the spacing, at the latest of them', () => {
    assert.deepEqual(retryWakeDelays([], 50, 20), []);
    assert.deepEqual(retryWakeDelays([230, 200, 249], 50, 20), [249]);
  });

  it('every retry is due at its wake and woken at most the spacing after it was due', () => {
    const delays = Array.from({ length: 1000 }, (_, i) => 500 + ((i * 7919) % 500));
    const wakes = retryWakeDelays(delays, 50, 20);
    assert.ok(wakes.length <= 20);
    for (const d of delays) {
      const wake = wakes.find((w) => w >= d);
      assert.ok(wake !== undefined, `a wake at or after ${d}`);
      assert.ok(wake - d <= 50, `${d} woken at ${wake}`);
    }
  });

  it('stops at the most wakes allowed; the later retries are left to the tick', () => {
    const wakes = retryWakeDelays([0, 100, 200, 300, 400], 50, 3);
    assert.deepEqual(wakes, [0, 100, 200]);
  });

  it('ignores delays that are not finite or negative', () => {
    assert.deepEqual(retryWakeDelays([Number.NaN, -1, Number.POSITIVE_INFINITY, 10], 50, 20), [10]);
  });
});
