import type { Lane } from '../db/schema.js';
import type { Logger } from '../logger.js';

/**
 * pg-pool's error when a checkout waited `connectionTimeoutMillis` for a free client of a full
 * pool. It is not a database failure: every connection of the lane is busy, typically holding a
 * batch that waits for a slow or stalled broker's confirms (each for up to the send timeout). No
 * transaction was opened and no row was claimed, so there is nothing to roll back or to retry
 * faster; logged as a batch failure, it sent operators looking for a database problem.
 */
export function isPoolCheckoutTimeout(error: unknown): boolean {
  for (let e: unknown = error; e instanceof Error; e = e.cause) {
    if (e.message === 'timeout exceeded when trying to connect') return true;
  }
  return false;
}

/** Said at most once per this interval per lane: a stall makes every shard loop wait at once. */
const REPORT_EVERY_MS = 30_000;

/** Logs waits for a connection of one lane's pool, with how many happened since the last line. */
export function poolWaitReporter(
  logger: Logger,
  lane: Lane,
  connections: number,
  waitedMs: number,
): (shard: number) => void {
  let lastAt = -Infinity;
  let since = 0;
  return (shard) => {
    since++;
    const now = Date.now();
    if (now - lastAt < REPORT_EVERY_MS) return;
    logger.warn(
      {
        lane,
        shard,
        connections,
        waitedMs,
        waits: since,
        fix: `if the broker is slow or stalled, this clears when it answers; if it persists under normal load, raise --connections-per-lane (now ${connections}) toward the number of shards this replica owns`,
      },
      `waiting for a database connection: ${connections === 1 ? 'the only connection' : `all ${connections} connections`} of the ${lane} lane ${connections === 1 ? 'is' : 'are'} busy ` +
        `(batches waiting for the sink's confirms); ${since} batch(es) found none within ${waitedMs / 1000} s, ` +
        'claimed nothing and wait for the next tick',
    );
    lastAt = now;
    since = 0;
  };
}
