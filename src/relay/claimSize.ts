import type { Lane } from '../db/schema.js';
import type { Logger } from '../logger.js';

/** How much a full batch with nothing held back grows the size. */
const GROWTH = 1.25;

/**
 * How many rows a lane's next claim takes: the configured batch size, or fewer while the sink
 * shows it cannot send that many before a batch deadline, i.e. it deferred rows at its own limit
 * (`heldBySink` in sinks/sink.ts: every HTTP request slot busy until the deadline, a request or a
 * Kinesis call not started for lack of time).
 *
 * Why: a row claimed and then held back by the sink costs a claim, a row lock held to the deadline
 * and a postponement UPDATE (a new row version), and it comes back out of turn after the deferral
 * delay. With the defaults (8 shards, 1,000-row batches, a 10 s deadline) an HTTP receiver
 * answering in 50 ms through 16 request slots takes ~3,200 rows per deadline: before this, every
 * batch claimed up to 1,000 rows and postponed what the slots could not send, batch after batch,
 * until the backlog was gone. Measured (test/relay/claimSize.test.ts: 2,400 rows, 4 slots, 10 ms
 * answers, 0.5 s deadline, 2 connections): 4,225-4,555 rows postponed to send 2,400, against
 * 1,250-1,549 with this (most of them by the first batches, claimed before the sink's first
 * answer); the drain took the same time (8.7-9.8 s), set by the receiver.
 *
 * The rule, per lane (the lane's batches share the sink, its slots and its deadline):
 * - a batch in which the sink deferred rows at its own limit: the size goes halfway from where it
 *   stands to what that batch got offered to the broker (at least 1). Halfway, not all the way:
 *   the sink serves concurrent batches first come first served, so the batch that queued behind
 *   another one may get nothing offered although the sink kept busy; taken at its word, it set
 *   the size to 1-4 rows in the test above, and the lane crawled back up from there;
 * - a batch that claimed all it asked for and had nothing deferred at the sink's limit: the size
 *   grows by a quarter (at least one row), up to the configured size;
 * - a batch that claimed less than it asked for (its shard had no more) and had nothing deferred
 *   says nothing about the sink: no change.
 * So the size settles where the lane's concurrent batches fit the sink's pace and probes upwards
 * while they do; a sink that never defers at its own limit (every sink but HTTP and Kinesis)
 * keeps the configured size.
 */
export class ClaimSize {
  #size: number;

  constructor(readonly configured: number) {
    this.#size = configured;
  }

  /** The size of the next claim. */
  get current(): number {
    return this.#size;
  }

  /**
   * After every batch that claimed rows: `asked` is the limit its claim used, `claimed` what it
   * got, `deferredAtSinkLimit` how many of them the sink deferred at its own limit. Answers how
   * the size changed, if it did.
   */
  record(batch: {
    readonly asked: number;
    readonly claimed: number;
    readonly deferredAtSinkLimit: number;
  }): SizeChange {
    const { asked } = batch;
    const before = this.#size;
    if (batch.deferredAtSinkLimit > 0) {
      const offered = batch.claimed - batch.deferredAtSinkLimit;
      this.#size = Math.max(1, Math.min(this.configured, Math.round((before + offered) / 2)));
    } else if (batch.claimed >= asked && before < this.configured) {
      this.#size = Math.min(this.configured, Math.max(before, asked + 1, Math.ceil(asked * GROWTH)));
    }
    if (this.#size < before) return { change: 'smaller', from: before, to: this.#size };
    if (this.#size > before) return { change: 'larger', from: before, to: this.#size };
    return undefined;
  }
}

export type SizeChange =
  { readonly change: 'smaller' | 'larger'; readonly from: number; readonly to: number } | undefined;

/**
 * Logs when a lane's claims leave the configured size and when they are back at it (info: the
 * sink is the bottleneck, nothing is wrong with the rows); the steps in between are not logged,
 * since while a receiver is saturated the size moves with every few batches.
 */
export function logClaimSizeChange(
  logger: Logger,
  lane: Lane,
  size: ClaimSize,
  change: SizeChange,
  reason: string | undefined,
): void {
  if (change === undefined) return;
  if (change.from === size.configured) {
    logger.info(
      { lane, claimSize: change.to, configured: size.configured, reason },
      'the sink cannot send a full batch before the deadline; the lane claims fewer rows per batch until it can',
    );
  } else if (change.to === size.configured) {
    logger.info(
      { lane, claimSize: change.to },
      'the sink takes full batches again; the lane claims the configured batch size',
    );
  }
}
