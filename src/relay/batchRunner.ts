import type { Kysely } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import type { LanePredicate } from '../lanes/lanePredicate.js';
import { unknown, type SendOutcome, type Sink } from '../sinks/sink.js';
import { claimBatch, completeBatch, type ClaimedMessage } from './claims.js';
import { decideCompletions, type RetryPolicy } from './completionPolicy.js';

export interface BatchSettings {
  readonly lanePredicate: LanePredicate;
  readonly batchSize: number;
  readonly retry: RetryPolicy;
  /** How long the sink may take for the whole batch before unsettled messages count as unknown. */
  readonly sendTimeoutMs: number;
  /**
   * Asked inside the transaction, right before the claim: false = claim nothing (the replica may
   * have lost the shard's lease while this batch waited for a connection).
   */
  readonly mayClaim?: () => boolean;
}

/**
 * A delivery attempt that did not end in a confirm, with what joins it to the application's trace
 * (correlation id, W3C traceparent): the relay logs one line per problem.
 */
export interface BatchProblem {
  readonly id: string;
  readonly eventId: string;
  readonly topic: string;
  readonly correlationId: string | null;
  readonly traceparent: string | null;
  /** This attempt's number (1 = first delivery). */
  readonly attempt: number;
  /** What happens to the row: delivered again later, or given up (a dead letter). */
  readonly next: 'retry' | 'dead';
  readonly retryInMs?: number;
  readonly error: string;
  readonly canary: boolean;
}

/** What one batch did. Counts and latencies are of business rows: canary rows are left out. */
export interface BatchResult {
  /** Every row claimed, canaries included (a full batch means more may wait). */
  readonly claimed: number;
  readonly sent: number;
  readonly retried: number;
  readonly dead: number;
  /** Confirm outcomes that were not `confirmed`, by kind, for metrics. */
  readonly failures: { readonly retryable: number; readonly permanent: number; readonly unknown: number };
  readonly batchMs: number;
  readonly sendMs: number;
  /** created_at → confirm, per sent row, in ms. */
  readonly latenciesMs: readonly number[];
  /** Every retried or dead-lettered row, canaries included. */
  readonly problems: readonly BatchProblem[];
}

export const EMPTY_BATCH: BatchResult = Object.freeze({
  claimed: 0,
  sent: 0,
  retried: 0,
  dead: 0,
  failures: Object.freeze({ retryable: 0, permanent: 0, unknown: 0 }),
  batchMs: 0,
  sendMs: 0,
  latenciesMs: Object.freeze([]) as readonly number[],
  problems: Object.freeze([]) as readonly BatchProblem[],
});

/**
 * One batch of one shard and lane: claim, send, complete, commit, in one transaction. A throw
 * anywhere (connection lost, sink crashed) rolls the transaction back: the rows are pending again
 * and nothing was recorded as sent.
 */
export async function runBatch(
  db: Kysely<Database>,
  sink: Sink,
  shard: number,
  shardCount: number,
  lane: Lane,
  settings: BatchSettings,
): Promise<BatchResult> {
  const started = performance.now();
  return db.transaction().execute(async (trx) => {
    if (settings.mayClaim?.() === false) return EMPTY_BATCH;
    const messages = await claimBatch(trx, {
      shard,
      shardCount,
      lane,
      lanePredicate: settings.lanePredicate,
      batchSize: settings.batchSize,
    });
    if (messages.length === 0) return EMPTY_BATCH;

    const sendStarted = performance.now();
    let outcomes: SendOutcome[];
    try {
      outcomes = await sink.sendBatch(messages, {
        transaction: trx,
        deadline: Date.now() + settings.sendTimeoutMs,
      });
    } catch (error) {
      // A sink that throws cannot say what the broker holds: every message is unknown, re-sent later.
      const reason = error instanceof Error ? error.message : String(error);
      outcomes = messages.map(() => unknown(`sink ${sink.name} failed: ${reason}`));
    }
    const confirmedAt = Date.now();
    const sendMs = performance.now() - sendStarted;

    const completions = decideCompletions(messages, outcomes, settings.retry);
    const batchMs = performance.now() - started;
    await completeBatch(trx, { shard, lane, completions, batchMs });

    const failures = { retryable: 0, permanent: 0, unknown: 0 };
    const latenciesMs: number[] = [];
    const problems: BatchProblem[] = [];
    outcomes.forEach((o, i) => {
      const message = messages[i] as ClaimedMessage;
      const completion = completions[i];
      if (completion && completion.status !== 'sent') {
        problems.push({
          id: message.id,
          eventId: message.eventId,
          topic: message.topic,
          correlationId: message.correlationId,
          traceparent: message.traceparent,
          attempt: message.attempts + 1,
          next: completion.status === 'dead' ? 'dead' : 'retry',
          ...(completion.status === 'pending' ? { retryInMs: completion.retryInMs } : {}),
          error: completion.error,
          canary: message.canary === true,
        });
      }
      if (message.canary) return;
      if (o.status === 'confirmed')
        latenciesMs.push(confirmedAt - (messages[i]?.createdAt.getTime() ?? confirmedAt));
      else if (o.status === 'unknown') failures.unknown++;
      else if (o.retryable) failures.retryable++;
      else failures.permanent++;
    });
    const business = completions.filter((_, i) => messages[i]?.canary !== true);
    return {
      claimed: messages.length,
      sent: business.filter((c) => c.status === 'sent').length,
      retried: business.filter((c) => c.status === 'pending').length,
      dead: business.filter((c) => c.status === 'dead').length,
      failures,
      batchMs,
      sendMs,
      latenciesMs,
      problems,
    };
  });
}
