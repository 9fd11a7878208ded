/**
 * When to wake a shard's loop for the rows a batch put back for a retry: each row is claimed again
 * at most `spacingMs` after its retry is due, with at most `maxWakes` timers per batch.
 *
 * Without these wakes a retried row waited for the tick's poll, up to `tickSeconds` after it was
 * due (a transient failure with the default 1 s first retry cost 1-2 s). One wake at the earliest
 * retry was not enough: the claim then finds only the rows already due, and a batch's retries are
 * spread by the backoff's jitter ([delay/2, delay]), so the rest waited for the tick again (seen in
 * test/relay/retryAndDeadLetters.test.ts: 3.6 s for a retry due after at most 0.4 s).
 *
 * Delays are grouped from the earliest: a group spans at most `spacingMs`, and its wake is at its
 * latest delay, when all of the group is due. Past `maxWakes` groups the rest is left to the tick's
 * poll (a batch of many attempt counts spreads its retries over minutes; the tick is enough there).
 */
export function retryWakeDelays(retryInMs: readonly number[], spacingMs: number, maxWakes: number): number[] {
  const sorted = retryInMs.filter((ms) => Number.isFinite(ms) && ms >= 0).sort((a, b) => a - b);
  const wakes: number[] = [];
  let groupStart: number | undefined;
  let groupEnd = 0;
  for (const ms of sorted) {
    if (groupStart !== undefined && ms > groupStart + spacingMs) {
      wakes.push(groupEnd);
      if (wakes.length === maxWakes) return wakes;
      groupStart = undefined;
    }
    groupStart ??= ms;
    groupEnd = ms;
  }
  if (groupStart !== undefined) wakes.push(groupEnd);
  return wakes;
}
