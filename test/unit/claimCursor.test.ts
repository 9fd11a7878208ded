import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ClaimCursor, ClaimCursors } from '../../src/relay/claimCursor.js';

/** A cursor on a clock the test moves. */
function cursorAt(fullScanEveryMs = 1_000) {
  const clock = { now: 0 };
  const cursor = new ClaimCursor({ fullScanEveryMs, now: () => clock.now });
  return { cursor, clock };
}

describe('claim cursor', () => {
  it('reads from the shard’s first entry until a batch came back full', () => {
    const { cursor } = cursorAt();
    assert.equal(cursor.startAfter(), undefined);
    cursor.completed('40', false);
    assert.equal(cursor.startAfter(), undefined, 'a partial batch: the shard caught up');
    cursor.completed('90', true);
    assert.equal(cursor.startAfter(), '90');
  });

  it('follows each full batch and goes back to the first entry after a partial one', () => {
    const { cursor } = cursorAt();
    cursor.startAfter();
    cursor.completed('1000', true);
    assert.equal(cursor.startAfter(), '1000');
    cursor.completed('2000', true);
    assert.equal(cursor.startAfter(), '2000');
    cursor.completed('2300', false);
    assert.equal(cursor.startAfter(), undefined);
  });

  it('reads from the first entry at least every fullScanEveryMs while batches stay full', () => {
    const { cursor, clock } = cursorAt(1_000);
    assert.equal(cursor.startAfter(), undefined); // a full scan at 0
    cursor.completed('1000', true);
    clock.now = 999;
    assert.equal(cursor.startAfter(), '1000');
    cursor.completed('2000', true);
    clock.now = 1_000;
    assert.equal(cursor.startAfter(), undefined, 'a second after the last full scan');
    cursor.completed('3000', true);
    clock.now = 1_500;
    assert.equal(cursor.startAfter(), '3000', 'the full scan at 1,000 counts');
  });

  it('reads from the first entry after a batch that threw or left its rows pending', () => {
    const { cursor } = cursorAt();
    cursor.startAfter();
    cursor.completed('1000', true);
    cursor.reset();
    assert.equal(cursor.startAfter(), undefined);
  });

  it('a full batch without an id (nothing claimed) does not move the cursor past anything', () => {
    const { cursor } = cursorAt();
    cursor.startAfter();
    cursor.completed(undefined, true);
    assert.equal(cursor.startAfter(), undefined);
  });
});

describe('claim cursors of a lane', () => {
  it('keep one cursor per shard, a new one when the shard count changes; a reset is per shard', () => {
    const cursors = new ClaimCursors();
    const a = cursors.of(3, 8);
    assert.equal(cursors.of(3, 8), a);
    a.startAfter();
    a.completed('500', true);
    const b = cursors.of(3, 16);
    assert.notEqual(b, a, 'shard 3 of 16 is another slice than shard 3 of 8');
    assert.equal(b.startAfter(), undefined, 'its first claim reads from the start');
    b.completed('600', true);
    const other = cursors.of(13, 16);
    other.startAfter();
    other.completed('700', true);
    cursors.reset(3);
    assert.equal(b.startAfter(), undefined);
    assert.equal(other.startAfter(), '700', 'shard 13 is not shard 3');
  });
});
