import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ClaimSize } from '../../src/relay/claimSize.js';

describe('claim size', () => {
  it('stays at the configured size while the sink takes every row it is given', () => {
    const size = new ClaimSize(1_000);
    assert.equal(size.record({ asked: 1_000, claimed: 1_000, deferredAtSinkLimit: 0 }), undefined);
    assert.equal(size.record({ asked: 1_000, claimed: 10, deferredAtSinkLimit: 0 }), undefined);
    assert.equal(size.current, 1_000);
  });

  it('goes halfway to what the sink offered after it held rows back at its own limit', () => {
    const size = new ClaimSize(1_000);
    assert.deepEqual(size.record({ asked: 1_000, claimed: 1_000, deferredAtSinkLimit: 800 }), {
      change: 'smaller',
      from: 1_000,
      to: 600,
    });
    // A batch that waited behind another one for the sink's slots and got nothing offered: one
    // such batch halves the size, it does not take it to nothing.
    size.record({ asked: 1_000, claimed: 1_000, deferredAtSinkLimit: 1_000 });
    assert.equal(size.current, 300);
    // A part-full batch (its shard had 120 rows) of which the sink still held 100 back.
    size.record({ asked: 300, claimed: 120, deferredAtSinkLimit: 100 });
    assert.equal(size.current, 160);
  });

  it('never goes below one row', () => {
    const size = new ClaimSize(4);
    for (let i = 0; i < 5; i++)
      size.record({ asked: size.current, claimed: size.current, deferredAtSinkLimit: size.current });
    assert.equal(size.current, 1);
  });

  it('grows by a quarter (at least a row) after each full batch with nothing held back, up to the configured size', () => {
    const size = new ClaimSize(100);
    size.record({ asked: 100, claimed: 100, deferredAtSinkLimit: 100 });
    size.record({ asked: 50, claimed: 50, deferredAtSinkLimit: 50 });
    size.record({ asked: 25, claimed: 25, deferredAtSinkLimit: 25 });
    size.record({ asked: 13, claimed: 13, deferredAtSinkLimit: 13 });
    size.record({ asked: 7, claimed: 7, deferredAtSinkLimit: 7 });
    assert.equal(size.current, 4);
    const sizes: number[] = [];
    while (size.current < 100) {
      const asked = size.current;
      size.record({ asked, claimed: asked, deferredAtSinkLimit: 0 });
      sizes.push(size.current);
    }
    assert.deepEqual(sizes, [5, 7, 9, 12, 15, 19, 24, 30, 38, 48, 60, 75, 94, 100]);
  });

  it('does not grow on a part-full batch: the shard ran out of rows, the sink was not tried', () => {
    const size = new ClaimSize(1_000);
    size.record({ asked: 1_000, claimed: 1_000, deferredAtSinkLimit: 600 });
    assert.equal(size.current, 700);
    assert.equal(size.record({ asked: 700, claimed: 150, deferredAtSinkLimit: 0 }), undefined);
    assert.equal(size.current, 700);
  });

  it('a batch claimed at an older, smaller size does not shrink a size grown since', () => {
    const size = new ClaimSize(1_000);
    size.record({ asked: 1_000, claimed: 1_000, deferredAtSinkLimit: 1_000 });
    size.record({ asked: 500, claimed: 500, deferredAtSinkLimit: 0 });
    assert.equal(size.current, 625);
    // Another shard's batch, claimed at 500 before the growth, comes back whole.
    assert.equal(size.record({ asked: 500, claimed: 500, deferredAtSinkLimit: 0 }), undefined);
    assert.equal(size.current, 625);
  });
});
