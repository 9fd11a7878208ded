import type { Kysely } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import type { LanePredicate } from '../lanes/lanePredicate.js';
import { unknown, type SendOutcome, type Sink } from '../sinks/sink.js';
import { claimBatch, completeBatch } from './claims.js';
import { decideCompletions, type RetryPolicy } from './completionPolicy.js';

export interface BatchSettings {
  readonly lanePredicate: LanePredicate;
  readonly batchSize: number;
  readonly retry: RetryPolicy;
  /** How long the sink may take for the whole batch before unsettled messages count as unknown. */
  readonly sendTimeoutMs: number;
}

export interface BatchResult {
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
    outcomes.forEach((o, i) => {
      if (o.status === 'confirmed')
        latenciesMs.push(confirmedAt - (messages[i]?.createdAt.getTime() ?? confirmedAt));
      else if (o.status === 'unknown') failures.unknown++;
      else if (o.retryable) failures.retryable++;
      else failures.permanent++;
    });
    return {
      claimed: messages.length,
      sent: completions.filter((c) => c.status === 'sent').length,
      retried: completions.filter((c) => c.status === 'pending').length,
      dead: completions.filter((c) => c.status === 'dead').length,
      failures,
      batchMs,
      sendMs,
      latenciesMs,
    };
  });
}
