import type { HeldShards } from './shardOwnership.js';

/**
 * A counter in memory shared by the main thread and the real-time worker thread (wiring/replica.ts).
 * The main thread bumps it, in the same turn, whenever it stops holding something it told the
 * worker it held (a step-back after its liveness session died, a shard given back, a new shard
 * generation), before it posts the new list; each list carries the counter's value. The worker
 * holds nothing while the counter differs from its last list's value (relay/realtimeOwnership.ts).
 *
 * Why: a posted message reaches the worker's event loop some time later, tens of milliseconds on
 * a loaded machine, and until then the worker claimed on shards the main thread had already let
 * go of (seen in CI at load 14: a real-time batch started between a step-back and the re-lock).
 * Reading the counter costs an atomic load, so a worker's check right before its claim is as
 * current as the main thread's own. Only withdrawals bump it: a renewal (which moves the deadline
 * every second) must not leave the worker holding nothing until its message arrives.
 */
export class OwnershipFence {
  readonly #cell: Int32Array;

  /** A new fence, or the worker's view of the main thread's (its `buffer`, passed in workerData). */
  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT)) {
    this.#cell = new Int32Array(buffer);
  }

  get buffer(): SharedArrayBuffer {
    return this.#cell.buffer as SharedArrayBuffer;
  }

  get value(): number {
    return Atomics.load(this.#cell, 0);
  }

  /** The main thread: what it held before is no longer all held; call before posting the new list. */
  withdraw(): void {
    Atomics.add(this.#cell, 0, 1);
  }
}

/** Whether going from `before` to `after` lets go of anything: a shard, the generation, time. */
export function withdraws(before: HeldShards, after: HeldShards): boolean {
  return (
    before.generation !== after.generation ||
    before.shards.some((shard) => !after.shards.includes(shard)) ||
    after.validUntil < before.validUntil
  );
}
