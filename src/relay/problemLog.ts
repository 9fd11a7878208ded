import type { Lane } from '../db/schema.js';
import type { Logger } from '../logger.js';
import type { BatchResult } from './deliverBatch.js';

/**
 * One log line per delivery attempt that did not end in a confirm, carrying what joins it to the
 * application's own logs and traces: the event id, the correlation id and the W3C traceparent the
 * row was enqueued with. A retry logs at warn, a dead letter at error (a person has to act on it).
 * Rows deferred (never offered to the broker: an outage, a sink short of time) log no line per
 * row: no attempt was made, and an outage would otherwise log every waiting row each time it comes
 * due. They log one line per batch, at most one per lane every DEFERRAL_LOG_INTERVAL_MS
 * (`DeferralLog`): a receiver saturated for an hour deferred rows in up to 8 batches per send
 * deadline per lane, and a line for each said nothing the first had not.
 */
export function logBatchProblems(
  logger: Logger,
  shard: number,
  lane: Lane,
  result: BatchResult,
  deferralLog: DeferralLog,
): void {
  for (const p of result.problems) {
    const fields = {
      shard,
      lane,
      id: p.id,
      eventId: p.eventId,
      topic: p.topic,
      correlationId: p.correlationId,
      traceparent: p.traceparent,
      attempt: p.attempt,
      error: p.error,
      ...(p.fix === undefined ? {} : { fix: p.fix }),
      ...(p.retryInMs === undefined ? {} : { retryInMs: p.retryInMs }),
      ...(p.canary ? { canary: true } : {}),
    };
    if (p.next === 'dead') logger.error(fields, 'event moved to dead letters');
    else logger.warn(fields, 'event delivery failed; it will be retried');
  }
  if (result.deferred === 0) return;
  const since = deferralLog.take(result.deferred);
  if (since === undefined) return;
  logger.warn(
    {
      shard,
      lane,
      deferred: result.deferred,
      of: result.claimed,
      reason: result.deferredReason,
      dueInMs: result.deferredDueInMs,
      ...(since.batches > 0 ? { sinceLastLine: since } : {}),
    },
    'events not sent (deferred, no attempt counted); they will be sent again',
  );
}

/** A lane's deferral lines come at most this often; the ones between are counted in the next. */
export const DEFERRAL_LOG_INTERVAL_MS = 10_000;

/** Whether a lane's batch with deferred rows logs its line now, and what was left unsaid since the last. */
export class DeferralLog {
  readonly #now: () => number;
  #lastLineAt = Number.NEGATIVE_INFINITY;
  #batches = 0;
  #rows = 0;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /**
   * A batch deferred `rows`: undefined while the lane logged a line less than the interval ago (the
   * batch is counted for the next line), else the batches and rows deferred without a line since
   * the last one.
   */
  take(rows: number): { readonly batches: number; readonly rows: number } | undefined {
    const now = this.#now();
    if (now - this.#lastLineAt < DEFERRAL_LOG_INTERVAL_MS) {
      this.#batches++;
      this.#rows += rows;
      return undefined;
    }
    const since = { batches: this.#batches, rows: this.#rows };
    this.#lastLineAt = now;
    this.#batches = 0;
    this.#rows = 0;
    return since;
  }
}
