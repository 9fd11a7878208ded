import type { Kysely } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import type { LanePredicate } from '../lanes/lanePredicate.js';
import type { Logger } from '../logger.js';
import {
  permanent,
  unknown,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
  type Sink,
} from '../sinks/sink.js';
import { claimBatch, type ClaimedMessage, type Completion, type CompleteRequest } from './claims.js';
import { completeIsolated, POISON_FIX, recoverCompletion, type PoisonRow } from './completion.js';
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
  /** Where a completion recovered on another connection is reported. */
  readonly logger?: Logger;
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
  /** What a person should do (poison rows: the completion itself failed on this row). */
  readonly fix?: string;
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
 * One batch of one shard and lane: claim, send, complete, commit, in one transaction.
 *
 * What each failure leaves behind:
 * - the completion fails on some rows' data: those rows are recorded dead with the reason, the
 *   rest completed as decided (relay/completion.ts `completeIsolated`);
 * - the claim's connection dies after the sink answered (terminated backend, network): the same
 *   completions are recorded through another connection, guarded per row (`recoverCompletion`),
 *   unless the sink wrote through the transaction (pg-boss), whose writes died with it;
 * - anything else throws: the transaction rolls back, the rows are pending again, nothing was
 *   recorded as sent.
 * So a claimed row's `attempts` rises on every claim whatever goes wrong after the send, and its
 * `max_attempts` bounds how often it is sent.
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
  /** Set once the sink has answered: what a completion lost with the connection must record. */
  let decided:
    | { request: CompleteRequest; messages: readonly ClaimedMessage[]; outcomes: readonly SendOutcome[] }
    | undefined;
  try {
    return await db.transaction().execute(async (trx) => {
      if (settings.mayClaim?.() === false) return EMPTY_BATCH;
      const messages = await claimBatch(trx, {
        shard,
        shardCount,
        lane,
        lanePredicate: settings.lanePredicate,
        batchSize: settings.batchSize,
      });
      if (messages.length === 0) return EMPTY_BATCH;
      // The lease may have lapsed while the claim waited (a pause): roll back, send nothing.
      if (settings.mayClaim?.() === false) return EMPTY_BATCH;

      const sendStarted = performance.now();
      const outcomes = await sendIsolated(sink, messages, {
        transaction: trx,
        deadline: Date.now() + settings.sendTimeoutMs,
        ...(settings.mayClaim ? { mayContinue: settings.mayClaim } : {}),
      });
      const confirmedAt = Date.now();
      const sendMs = performance.now() - sendStarted;

      const completions = decideCompletions(messages, outcomes, settings.retry);
      const batchMs = performance.now() - started;
      const request = { shard, lane, completions, batchMs };
      // Kept through the COMMIT: a COMMIT whose connection dies is recovered the same way (the
      // recovery's guard sees whether it had committed after all).
      decided = { request, messages, outcomes };
      const poison = await completeIsolated(trx, request);
      return batchResult(messages, outcomes, completions, poison, confirmedAt, batchMs, sendMs);
    });
  } catch (error) {
    if (!decided || sink.writesInTransaction) throw error;
    return recoverElsewhere(db, decided, error, settings.logger);
  }
}

/**
 * The claim's transaction is gone after the sink answered: record the outcomes through another
 * connection so that confirmed rows are not sent again. If that fails too, the original error
 * stands (the rows are pending again, re-sent with the same event ids).
 */
async function recoverElsewhere(
  db: Kysely<Database>,
  decided: {
    request: CompleteRequest;
    messages: readonly ClaimedMessage[];
    outcomes: readonly SendOutcome[];
  },
  cause: unknown,
  logger: Logger | undefined,
): Promise<BatchResult> {
  const { request, messages, outcomes } = decided;
  let recovery;
  try {
    recovery = await recoverCompletion(db, request, messages);
  } catch (recoveryError) {
    logger?.warn(
      { shard: request.shard, lane: request.lane, rows: messages.length, err: String(recoveryError) },
      'recording a batch through another connection failed too; its rows are pending and will be sent again',
    );
    throw cause;
  }
  logger?.warn(
    {
      shard: request.shard,
      lane: request.lane,
      rows: messages.length,
      recorded: recovery.recorded,
      leftAlone: recovery.leftAlone,
      lockedElsewhere: recovery.lockedElsewhere,
      waitedMs: recovery.waitedMs,
      err: cause instanceof Error ? cause.message : String(cause),
    },
    'the claim transaction was lost after the send; outcomes recorded through another connection',
  );
  // Counted as decided; rows left alone (someone else's now) are in `leftAlone` above.
  return batchResult(
    messages,
    outcomes,
    request.completions,
    recovery.poison,
    Date.now(),
    request.batchMs,
    0,
  );
}

/**
 * Sends a batch; if the sink throws (it should not for a message-level problem), the batch is
 * sent again in halves to find the message that makes it throw, as long as the other half goes
 * through: a throw on a lone message, or on both halves (the sink or broker is down), makes those
 * messages `unknown` (retried, so `attempts` rises and `max_attempts` ends it). Messages whose
 * data no sink can send (a non-finite created_at, from a database not yet migrated to 0006) are
 * not sent at all and fail permanently.
 */
async function sendIsolated(
  sink: Sink,
  messages: readonly ClaimedMessage[],
  context: SendContext,
): Promise<SendOutcome[]> {
  const outcomes: (SendOutcome | undefined)[] = messages.map((m) => unsendable(m));
  const sendable = messages.flatMap((m, i) => (outcomes[i] ? [] : [{ m, i }]));
  const send = async (part: readonly { m: OutboxMessage; i: number }[], alone: boolean): Promise<boolean> => {
    if (part.length === 0) return true;
    try {
      const got = await sink.sendBatch(
        part.map((p) => p.m),
        context,
      );
      part.forEach((p, k) => (outcomes[p.i] = got[k]));
      return true;
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      if (part.length > 1 && !alone && Date.now() < context.deadline) {
        const half = Math.ceil(part.length / 2);
        const first = await send(part.slice(0, half), false);
        // Both halves failing means the sink, not a message: stop splitting.
        await send(part.slice(half), !first);
        return false;
      }
      for (const p of part) outcomes[p.i] = unknown(`sink ${sink.name} failed: ${reason}`);
      return false;
    }
  };
  await send(sendable, false);
  return outcomes.map((o) => o ?? unknown(`sink ${sink.name} returned no outcome`));
}

function unsendable(m: ClaimedMessage): SendOutcome | undefined {
  // The driver returns ±Infinity (a number) for 'infinity' timestamps.
  const created: unknown = m.createdAt;
  if (created instanceof Date && Number.isFinite(created.getTime())) return undefined;
  return permanent(
    `created_at is ${String(created)}, not a finite timestamp; fix: correct the row and apply migration 0006, which refuses such values`,
  );
}

function batchResult(
  messages: readonly ClaimedMessage[],
  outcomes: readonly SendOutcome[],
  completions: readonly Completion[],
  poison: readonly PoisonRow[],
  confirmedAt: number,
  batchMs: number,
  sendMs: number,
): BatchResult {
  const poisoned = new Map(poison.map((p) => [p.id, p.reason]));
  const byId = new Map(completions.map((c) => [c.id, c]));
  const failures = { retryable: 0, permanent: 0, unknown: 0 };
  const latenciesMs: number[] = [];
  const problems: BatchProblem[] = [];
  let sent = 0;
  let retried = 0;
  let dead = 0;
  outcomes.forEach((o, i) => {
    const message = messages[i] as ClaimedMessage;
    const completion = byId.get(message.id);
    const poisonReason = poisoned.get(message.id);
    const status = poisonReason !== undefined ? 'dead' : completion?.status;
    if (poisonReason !== undefined || (completion && completion.status !== 'sent')) {
      problems.push({
        id: message.id,
        eventId: message.eventId,
        topic: message.topic,
        correlationId: message.correlationId,
        traceparent: message.traceparent,
        attempt: message.attempts + 1,
        next: status === 'dead' ? 'dead' : 'retry',
        ...(poisonReason === undefined && completion?.status === 'pending'
          ? { retryInMs: completion.retryInMs }
          : {}),
        error: poisonReason ?? (completion && completion.status !== 'sent' ? completion.error : ''),
        ...(poisonReason !== undefined ? { fix: POISON_FIX } : {}),
        canary: message.canary === true,
      });
    }
    if (message.canary) return;
    if (status === 'sent') sent++;
    else if (status === 'pending') retried++;
    else if (status === 'dead') dead++;
    const created: unknown = message.createdAt;
    if (o.status === 'confirmed') {
      if (created instanceof Date && Number.isFinite(created.getTime()))
        latenciesMs.push(confirmedAt - created.getTime());
    } else if (o.status === 'unknown') failures.unknown++;
    else if (o.retryable) failures.retryable++;
    else failures.permanent++;
  });
  return {
    claimed: messages.length,
    sent,
    retried,
    dead,
    failures,
    batchMs,
    sendMs,
    latenciesMs,
    problems,
  };
}
