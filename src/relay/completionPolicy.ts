import type { SendOutcome } from '../sinks/sink.js';
import { backoffDelayMs, type BackoffPolicy } from '../backoff.js';
import type { ClaimedMessage, Completion } from './claims.js';

export interface RetryPolicy extends BackoffPolicy {
  /** Attempts after which a row is given up (dead), unless the row sets its own `max_attempts`. */
  readonly maxAttempts: number;
}

/**
 * A row its sink did not offer to the broker (outcome `deferred`): it gets no completion, so it
 * stays pending as claimed (attempts, last_error), only postponed (relay/deferralDelay.ts,
 * claims.ts `postponeDeferred`).
 */
export interface Deferral {
  readonly id: string;
  readonly status: 'deferred';
  readonly error: string;
  /** The sink's own "not before", if it gave one. */
  readonly retryAfterMs?: number;
}

/** What the relay does with one claimed row after the send. */
export type Decision = Completion | Deferral;

/** The decisions that are recorded: every one but the deferrals. */
export function recordedCompletions(decisions: readonly Decision[]): Completion[] {
  return decisions.filter((d): d is Completion => d.status !== 'deferred');
}

/**
 * Turns sink outcomes into row transitions. Only `confirmed` becomes `sent`; `deferred` changes
 * nothing (see `Deferral`): a row a sink never offered has not been attempted. `unknown` is retried
 * like a retryable failure: the broker may hold the message, so the re-send carries the same event
 * id for consumers to de-duplicate. Permanent failures and exhausted retries become `dead`.
 * A retry waits at least the broker's `retryAfterMs` (HTTP Retry-After), but never longer than
 * the retry cap: a receiver asking for an hour must not park a row beyond what the operator set.
 */
export function decideCompletions(
  messages: readonly ClaimedMessage[],
  outcomes: readonly SendOutcome[],
  policy: RetryPolicy,
  random: () => number = Math.random,
): Decision[] {
  if (outcomes.length !== messages.length) {
    throw new Error(`sink returned ${outcomes.length} outcomes for ${messages.length} messages`);
  }
  return messages.map((m, i) => {
    const outcome = outcomes[i] as SendOutcome;
    if (outcome.status === 'confirmed') return { id: m.id, status: 'sent' };
    if (outcome.status === 'deferred') return { id: m.id, ...outcome };
    const attempt = m.attempts + 1;
    const limit = m.maxAttempts ?? policy.maxAttempts;
    const error = outcome.status === 'unknown' ? `unknown: ${outcome.error}` : outcome.error;
    if (outcome.status === 'failed' && !outcome.retryable) {
      return { id: m.id, status: 'dead', error: `permanent: ${error}` };
    }
    if (attempt >= limit)
      return { id: m.id, status: 'dead', error: `gave up after ${attempt} attempts: ${error}` };
    const backoff = backoffDelayMs(policy, attempt, random);
    const retryAfterMs = outcome.status === 'failed' ? (outcome.retryAfterMs ?? 0) : 0;
    const retryInMs = retryAfterMs > backoff ? Math.min(policy.capMs, retryAfterMs) : backoff;
    return { id: m.id, status: 'pending', retryInMs, error };
  });
}
