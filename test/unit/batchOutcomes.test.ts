import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BatchOutcomes } from '../../src/sinks/deadline.js';
import { confirmed, deferred, permanent, unknown } from '../../src/sinks/sink.js';

describe('batch outcomes', () => {
  it('returns as soon as the last outcome is in, the first outcome of a message counting', async () => {
    const outcomes = new BatchOutcomes(3);
    outcomes.settle(1, permanent('too large'));
    outcomes.settle(1, confirmed); // a second report of the same message
    const all = outcomes.byDeadline(Date.now() + 60_000);
    setImmediate(() => {
      outcomes.settle(0, confirmed);
      outcomes.settle(2, deferred('no credit'));
    });
    const started = Date.now();
    assert.deepEqual(await all, [confirmed, permanent('too large'), deferred('no credit')]);
    assert.ok(Date.now() - started < 5_000, 'did not wait for the deadline');
  });

  it('makes a message without an outcome by the deadline unknown, or what the sink says of it', async () => {
    const outcomes = new BatchOutcomes(3);
    outcomes.settle(0, confirmed);
    const result = await outcomes.byDeadline(Date.now() + 50);
    assert.deepEqual(result, [confirmed, unknown('no confirm before the batch deadline'), result[2]]);
    assert.equal(result[2]?.status, 'unknown');

    const late = new BatchOutcomes(2);
    late.settle(1, confirmed);
    const atDeadline = await late.byDeadline(Date.now() + 20, () => deferred('never written'));
    assert.deepEqual(atDeadline, [deferred('never written'), confirmed]);
    // A confirm after the deadline does not change what the batch was given.
    late.settle(0, confirmed);
    assert.deepEqual(atDeadline, [deferred('never written'), confirmed]);
  });

  it('returns at once for an empty batch and for a batch whose outcomes are all in', async () => {
    assert.deepEqual(await new BatchOutcomes(0).byDeadline(Date.now() + 60_000), []);
    const outcomes = new BatchOutcomes(1);
    outcomes.settle(0, confirmed);
    assert.deepEqual(await outcomes.byDeadline(Date.now() + 60_000), [confirmed]);
  });
});
