import type { Lane } from '../db/schema.js';
import type { Logger } from '../logger.js';
import type { BatchResult } from './deliverBatch.js';

/**
 * One log line per delivery attempt that did not end in a confirm, carrying what joins it to the
 * application's own logs and traces: the event id, the correlation id and the W3C traceparent the
 * row was enqueued with. A retry logs at warn, a dead letter at error (a person has to act on it).
 * Rows deferred (never offered to the broker: an outage, a sink short of time) log one line per
 * batch, not per row: no attempt was made, and an outage would otherwise log every waiting row
 * each time it comes due; the deferral delay, which grows with the outage, bounds how often.
 */
export function logBatchProblems(logger: Logger, shard: number, lane: Lane, result: BatchResult): void {
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
  if (result.deferred > 0)
    logger.warn(
      {
        shard,
        lane,
        deferred: result.deferred,
        of: result.claimed,
        reason: result.deferredReason,
        dueInMs: result.deferredDueInMs,
      },
      'events not sent (deferred, no attempt counted); they will be sent again',
    );
}
