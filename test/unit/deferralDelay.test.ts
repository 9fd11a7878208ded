import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DeferralDelay } from '../../src/relay/deferralDelay.js';

describe('deferral delay', () => {
  const policy = { baseMs: 1_000, capMs: 300_000 };

  it('is the first retry delay while the lane still confirms', () => {
    let now = 0;
    const delay = new DeferralDelay(policy, () => now);
    assert.equal(delay.delayMs(false), 1_000, 'no outage seen yet');
    delay.record({ sent: 5, deferred: 95 });
    now = 60_000;
    assert.equal(delay.delayMs(true), 1_000);
    assert.equal(delay.delayMs(false), 1_000, 'the last batch confirmed rows: no outage');
  });

  it('grows with an outage, half its age, up to the cap; the first confirm ends it', () => {
    let now = 0;
    const delay = new DeferralDelay(policy, () => now);
    delay.record({ sent: 0, deferred: 1_000 });
    now = 1_000;
    assert.equal(delay.delayMs(false), 1_000, 'at least the first retry delay');
    now = 40_000;
    delay.record({ sent: 0, deferred: 1_000 });
    assert.equal(delay.delayMs(false), 20_000);
    now = 3_600_000;
    assert.equal(delay.delayMs(false), 300_000, 'never beyond the cap');
    assert.equal(delay.delayMs(true), 1_000, 'a batch that confirmed is not in an outage');
    delay.record({ sent: 1, deferred: 999 });
    assert.equal(delay.delayMs(false), 1_000, 'a confirm ended the outage');
  });

  it('a batch that deferred nothing ends the outage too (the broker answered)', () => {
    let now = 0;
    const delay = new DeferralDelay(policy, () => now);
    delay.record({ sent: 0, deferred: 10 });
    now = 30_000;
    assert.equal(delay.delayMs(false), 15_000);
    delay.record({ sent: 0, deferred: 0 });
    assert.equal(delay.delayMs(false), 1_000);
  });
});
