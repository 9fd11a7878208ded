/**
 * How long the observer waits before its next cycle.
 *
 * A cycle reads `shardrelay.health`, which counts every pending row (sql/lag.sql): its cost follows
 * the backlog. Measured on a 2-core machine (PostgreSQL 15, 1,000,000 pending rows, a third of them
 * keyed): 1.2-1.3 s per read. At a fixed 5 s period that is a quarter of a core of PostgreSQL per
 * replica, taken exactly while the relay drains a backlog; at a few million pending rows the read
 * outlasts the period and runs back to back. So the period stretches with the cost: a cycle starts
 * `intervalMs` after the previous one started, or later, so that PostgreSQL spends at most
 * 1 / `OBSERVE_DUTY_DIVISOR` of the time on it (5%: with 1,000,000 pending, one cycle every ~25 s).
 * Below 250 ms per read (about 200,000 pending rows on that machine) nothing changes at the default
 * period. The metrics are then that much older; the views answer live whenever someone asks.
 */
export const OBSERVE_DUTY_DIVISOR = 20;

/**
 * The longest period, whatever the read cost: metrics (and the alerts on them) are never more than
 * a minute plus one read old. A read that takes longer than 3 s (several million pending rows)
 * then costs PostgreSQL more than the 5 %.
 */
export const OBSERVE_MAX_PERIOD_MS = 60_000;

/**
 * The time from the start of a cycle that took `cycleMs` to the start of the next one. A failed
 * cycle (`failed`) measured no read, only how long it took to fail (a lock wait, a lost
 * connection): the next comes at the interval.
 */
export function observePeriodMs(intervalMs: number, cycleMs: number, failed = false): number {
  if (failed) return intervalMs;
  return Math.max(intervalMs, Math.min(OBSERVE_MAX_PERIOD_MS, cycleMs * OBSERVE_DUTY_DIVISOR));
}
