export interface BackoffPolicy {
  /** Delay before the first retry, in ms. */
  readonly baseMs: number;
  /** Upper bound of any delay, in ms. */
  readonly capMs: number;
}

/**
 * Delay before retry number `attempt` (1 = first retry): exponential, capped, with "equal jitter"
 * (half fixed, half random). The jitter spreads the retries of a batch that failed together (a
 * broker outage) so they do not all return in the same tick; keeping half of the delay fixed keeps
 * the delays growing from one attempt to the next.
 */
export function backoffDelayMs(
  policy: BackoffPolicy,
  attempt: number,
  random: () => number = Math.random,
): number {
  const ceiling = exponentialDelayMs(policy, attempt);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * The delay without jitter: `baseMs` doubled per attempt after the first (1 = first retry), at most
 * `capMs`. For a single client waiting to reconnect (a broker connection, the lease liveness lock,
 * a failing tick), where nothing else retries in step with it; retries of many rows at once use
 * `backoffDelayMs`. The only place shardrelay writes the formula.
 */
export function exponentialDelayMs(policy: BackoffPolicy, attempt: number): number {
  const exponent = Math.min(Math.max(attempt - 1, 0), 30);
  return Math.min(policy.capMs, policy.baseMs * 2 ** exponent);
}
