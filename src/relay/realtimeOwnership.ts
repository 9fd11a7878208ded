import type { OwnershipFence } from './ownershipFence.js';
import type { ShardConfig } from './shardConfig.js';
import type { HeldShards, ShardOwnership } from './shardOwnership.js';

/**
 * The real-time worker thread's shard ownership (wiring/realtimeWorker.ts). The main thread holds
 * the leases and posts what it holds (`HeldShards`) whenever the list, its generation or its
 * validity changes, at least on every renewal (wiring/replica.ts); this only answers by the last
 * message.
 *
 * A shard is held while three things are true:
 *  - it is in the last list;
 *  - that list's generation is the one this thread's scheduler runs (the config of its last
 *    refresh). Each thread reads shard_config on its own tick, so for a moment after a change of
 *    the shard count they disagree, and a shard number of one count means other rows under the
 *    other;
 *  - the main thread has not let go of anything since it posted that list (`fence`,
 *    relay/ownershipFence.ts): a step-back stops this thread's claims at once, not when the
 *    message saying so arrives;
 *  - the wall clock is before the list's deadline. The deadline is when the main thread's last
 *    successful renewal started plus the lease timeout, not "when the message came plus the lease",
 *    so after a pause of the whole process (SIGSTOP, a frozen VM; both threads resume together) it
 *    has already passed, and the worker starts nothing on a shard another replica may have taken
 *    over meanwhile until the main thread's renewal re-validates it and posts again.
 *
 * As with the leases themselves, correctness never depends on this (row locks and the pending
 * re-check in claims.ts do); it keeps a stale replica from spending claims on rows that are no
 * longer its to send.
 */
export class RealtimeOwnership implements ShardOwnership {
  readonly #now: () => number;
  #held: HeldShards = { generation: undefined, shards: [], validUntil: 0 };
  /** The fence's value the last list was posted with. */
  #heldFence = 0;
  readonly #fence: OwnershipFence | undefined;
  /**
   * Per shard, the deadline of the last list that held it: a step-back posts an empty list, but
   * a batch already sending keeps its link until the lease itself runs out (`leaseUnexpired`).
   */
  readonly #leaseDeadlines = new Map<number, number>();
  /** The generation this thread's scheduler runs: that of its last refresh. */
  #running: string | undefined;

  /**
   * `now`: the wall clock, as `Date.now()` (the main thread's deadlines are on it); tests pass their
   * own. `fence`: the main thread's (its buffer comes in workerData); without one, only messages count.
   */
  constructor(now: () => number = Date.now, fence?: OwnershipFence) {
    this.#now = now;
    this.#fence = fence;
  }

  /**
   * Takes a message of the main thread. True when this thread's scheduler should tick now: the
   * list or its generation changed (loops to start or stop), or the shards were not held and are
   * again (loops that skipped their batches may run the rows that waited meanwhile).
   */
  receive(held: HeldShards & { readonly fence?: number }): boolean {
    const before = this.#held;
    const now = this.#now();
    this.#held = { generation: held.generation, shards: [...held.shards], validUntil: held.validUntil };
    this.#heldFence = held.fence ?? 0;
    for (const shard of held.shards) this.#leaseDeadlines.set(shard, held.validUntil);
    return (
      held.generation !== before.generation ||
      held.shards.join() !== before.shards.join() ||
      (before.validUntil <= now && held.validUntil > now)
    );
  }

  holds(shard: number): boolean {
    return (
      this.#held.generation !== undefined &&
      this.#held.generation === this.#running &&
      this.#held.shards.includes(shard) &&
      (this.#fence === undefined || this.#fence.value === this.#heldFence) &&
      this.#now() < this.#held.validUntil
    );
  }

  leaseUnexpired(shard: number): boolean {
    return this.#now() < (this.#leaseDeadlines.get(shard) ?? 0);
  }

  /**
   * The shards to run loops for: the list, if it belongs to the generation the scheduler runs now,
   * else none (the main thread posts the new generation's list once it has switched too). Not
   * filtered by the deadline: a lapsed lease stops batches (`holds`), the loops stay for when the
   * main thread re-validates it.
   */
  async refresh(config: ShardConfig): Promise<readonly number[]> {
    this.#running = config.generation;
    return this.#held.generation === config.generation ? this.#held.shards : [];
  }

  /** The leases are the main thread's; it gives them back. */
  async release(): Promise<void> {
    this.#held = { generation: undefined, shards: [], validUntil: 0 };
    this.#leaseDeadlines.clear();
  }
}
