import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OwnershipFence, withdraws } from '../../src/relay/ownershipFence.js';
import { RealtimeOwnership } from '../../src/relay/realtimeOwnership.js';

const config = (generation: string, shardCount = 12) => ({ generation, shardCount });

/** A RealtimeOwnership on a clock the test moves. */
function ownershipAt(start = 1_000_000) {
  const clock = { now: start };
  return { clock, ownership: new RealtimeOwnership(() => clock.now) };
}

describe('real-time worker ownership', () => {
  it('holds a listed shard of the running generation until the deadline, not after', async () => {
    const { clock, ownership } = ownershipAt();
    assert.equal(ownership.holds(1), false, 'nothing before the first message');
    ownership.receive({ generation: '3', shards: [1, 5], validUntil: clock.now + 3_000 });
    assert.deepEqual(await ownership.refresh(config('3')), [1, 5]);
    assert.equal(ownership.holds(1), true);
    assert.equal(ownership.holds(5), true);
    assert.equal(ownership.holds(2), false, 'not in the list');
    clock.now += 2_999;
    assert.equal(ownership.holds(1), true);
    clock.now += 1;
    assert.equal(ownership.holds(1), false, 'the main thread’s lease may have expired');
    assert.deepEqual(await ownership.refresh(config('3')), [1, 5], 'the loops stay; their batches wait');
  });

  it('after a pause past the deadline, holds nothing until the main thread re-validates', async () => {
    const { clock, ownership } = ownershipAt();
    ownership.receive({ generation: '3', shards: [1, 5], validUntil: clock.now + 3_000 });
    await ownership.refresh(config('3'));
    clock.now += 10_000; // SIGSTOP … SIGCONT: both threads wake, the wall clock moved on
    assert.equal(ownership.holds(1), false);
    // The main thread renewed: shard 5 was taken over meanwhile.
    const tick = ownership.receive({ generation: '3', shards: [1], validUntil: clock.now + 3_000 });
    assert.equal(tick, true);
    assert.equal(ownership.holds(1), true);
    assert.equal(ownership.holds(5), false);
  });

  it('asks for a tick when the list, its generation or its validity changes, not on a mere renewal', async () => {
    const { clock, ownership } = ownershipAt();
    assert.equal(ownership.receive({ generation: '3', shards: [1], validUntil: clock.now + 3_000 }), true);
    assert.equal(
      ownership.receive({ generation: '3', shards: [1], validUntil: clock.now + 4_000 }),
      false,
      'a renewal of a list still valid',
    );
    assert.equal(ownership.receive({ generation: '3', shards: [1, 2], validUntil: clock.now + 4_000 }), true);
    assert.equal(ownership.receive({ generation: '4', shards: [1, 2], validUntil: clock.now + 4_000 }), true);
    clock.now += 5_000;
    assert.equal(
      ownership.receive({ generation: '4', shards: [1, 2], validUntil: clock.now + 3_000 }),
      true,
      'lapsed, then valid again: loops that skipped batches run',
    );
  });

  it('holds nothing while its generation differs from the one the worker’s scheduler runs', async () => {
    const { clock, ownership } = ownershipAt();
    ownership.receive({ generation: '3', shards: [0, 1, 2], validUntil: clock.now + 3_000 });
    assert.deepEqual(await ownership.refresh(config('3')), [0, 1, 2]);

    // The worker read the new shard count first; the main thread still posts the old one's shards.
    assert.deepEqual(await ownership.refresh(config('4', 16)), []);
    assert.equal(ownership.holds(0), false);

    // The main thread switched and posted; until the worker's scheduler refreshes under the new
    // generation too, old-generation loops must not claim with new-generation shard numbers.
    ownership.receive({ generation: '4', shards: [0, 7], validUntil: clock.now + 3_000 });
    assert.equal(ownership.holds(0), true, 'the worker already runs generation 4');

    const behind = ownershipAt();
    behind.ownership.receive({ generation: '3', shards: [0], validUntil: behind.clock.now + 3_000 });
    await behind.ownership.refresh(config('3'));
    behind.ownership.receive({ generation: '4', shards: [0], validUntil: behind.clock.now + 3_000 });
    assert.equal(behind.ownership.holds(0), false, 'the worker still runs generation 3');
    assert.deepEqual(await behind.ownership.refresh(config('4', 16)), [0]);
    assert.equal(behind.ownership.holds(0), true);
  });

  it('an empty list (the main thread stops) and release hold nothing', async () => {
    const { clock, ownership } = ownershipAt();
    ownership.receive({ generation: '3', shards: [1], validUntil: clock.now + 3_000 });
    await ownership.refresh(config('3'));
    ownership.receive({ generation: undefined, shards: [], validUntil: 0 });
    assert.equal(ownership.holds(1), false);
    assert.deepEqual(await ownership.refresh(config('3')), []);
    ownership.receive({ generation: '3', shards: [1], validUntil: clock.now + 3_000 });
    await ownership.release();
    assert.equal(ownership.holds(1), false);
  });

  it('a withdrawal fenced by the main thread stops holding at once, before its message arrives', async () => {
    const clock = { now: 1_000_000 };
    const mainFence = new OwnershipFence();
    // The worker's view of the same shared memory, as it gets it through workerData.
    const ownership = new RealtimeOwnership(() => clock.now, new OwnershipFence(mainFence.buffer));
    const held = { generation: '3', shards: [1, 5], validUntil: clock.now + 3_000 };
    ownership.receive({ ...held, fence: mainFence.value });
    await ownership.refresh(config('3'));
    assert.equal(ownership.holds(1), true);

    // A renewal moves the deadline: nothing is let go of, no fence, still held meanwhile.
    const renewed = { ...held, validUntil: clock.now + 4_000 };
    assert.equal(withdraws(held, renewed), false);
    // The main thread steps back: it fences before it posts; the message is still on its way.
    const steppedBack = { generation: '3', shards: [], validUntil: 0 };
    assert.equal(withdraws(renewed, steppedBack), true);
    mainFence.withdraw();
    assert.equal(ownership.holds(1), false, 'held nothing from the fence on');
    assert.equal(ownership.holds(5), false);
    ownership.receive({ ...steppedBack, fence: mainFence.value });
    assert.equal(ownership.holds(1), false);

    // Back: the new list, posted under the current fence, is held again.
    ownership.receive({ ...held, validUntil: clock.now + 3_000, fence: mainFence.value });
    assert.equal(ownership.holds(1), true);
    // Giving one shard back fences the other too until the list arrives (a tick follows it).
    assert.equal(withdraws(held, { ...held, shards: [1] }), true);
    mainFence.withdraw();
    assert.equal(ownership.holds(1), false);
    assert.equal(
      ownership.receive({ ...held, shards: [1], fence: mainFence.value }),
      true,
      'asks for a tick',
    );
    assert.equal(ownership.holds(1), true);
    assert.equal(withdraws(held, { ...held, generation: '4' }), true, 'a new generation lets go of the old');
  });

  it('a list without expiry (an ownership with no leases) stays held', async () => {
    const { clock, ownership } = ownershipAt();
    ownership.receive({ generation: '1', shards: [0], validUntil: Infinity });
    await ownership.refresh(config('1'));
    clock.now += 1e12;
    assert.equal(ownership.holds(0), true);
  });
});
