/**
 * The one deadline race of shardrelay: wait for a promise, but no later than a deadline (epoch ms),
 * and always clear the timer, so that a race the promise wins leaves no timer behind to keep the
 * process alive or fire into a finished operation. Every bounded wait (a connect within the batch
 * deadline, a close that a stalled broker never answers, confirms by the batch deadline, a
 * readiness check) is built on `untilDeadline`.
 */

/** What `untilDeadline` returns when the deadline came first. */
export const EXPIRED: unique symbol = Symbol('deadline expired');

/**
 * The value of `promise`, or EXPIRED once `deadline` (epoch ms) has passed without it settling. A
 * rejection of `promise` before the deadline rejects. A promise that settles after the deadline is
 * left to itself: the caller decides what a late result means (close a late connection, count a
 * late confirm as unknown).
 */
export async function untilDeadline<T>(promise: Promise<T>, deadline: number): Promise<T | typeof EXPIRED> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<typeof EXPIRED>((resolve) => {
    timer = setTimeout(() => resolve(EXPIRED), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** The value of `promise`; rejects with `new Error(reason)` once `deadline` (epoch ms) has passed. */
export async function raceDeadline<T>(promise: Promise<T>, deadline: number, reason: string): Promise<T> {
  const result = await untilDeadline(promise, deadline);
  if (result === EXPIRED) throw new Error(reason);
  return result;
}
