import type { Kysely } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import { toError } from '../errors.js';
import type { LanePredicate } from '../lanes/lanePredicate.js';
import type { Logger } from '../logger.js';
import {
  permanent,
  unknown,
  type RelaySink,
  type SendContext,
  type SendOutcome,
  type Sink,
} from '../sinks/sink.js';
import type { ClaimCursor } from './claimCursor.js';
import {
  claimBatch,
  findUnclaimable,
  keyBlockers,
  postponeDeferred,
  recordUnclaimable,
  wakeShard,
  type ClaimedMessage,
  type ClaimRequest,
  type CompleteRequest,
  type KeyOrdering,
  type Postponement,
  type UnclaimableOutcome,
} from './claims.js';
import { backoffDelayMs } from '../backoff.js';
import { bisect, PASSED } from './bisect.js';
import { completeIsolated, POISON_FIX, recoverCompletion, type PoisonRow } from './completion.js';
import {
  decideCompletions,
  recordedCompletions,
  type Decision,
  type Deferral,
  type RetryPolicy,
} from './completionPolicy.js';
import type { DeferralDelay } from './deferralDelay.js';
import { keyChains, sendInWaves } from './keyOrder.js';

export interface DeliverySettings {
  readonly lanePredicate: LanePredicate;
  /**
   * Rows a claim takes at most. A function is read when the batch has its connection, right
   * before the claim: the lane's claim size (relay/claimSize.ts) as it stands then, not as it
   * stood when the batch began waiting for one of the lane's connections (8 shards share 2 on
   * 2 cores).
   */
  readonly batchSize: number | (() => number);
  readonly retry: RetryPolicy;
  /** How long the sink may take for the whole batch before unsettled messages count as unknown. */
  readonly sendTimeoutMs: number;
  /**
   * Asked inside the transaction, right before the claim: false = claim nothing (the replica may
   * have lost the shard's lease while this batch waited for a connection).
   */
  readonly mayClaim?: () => boolean;
  /**
   * Asked by the sink while it sends: false = this replica's lease has run out (it was paused), so
   * the sink drops its link instead of flushing what it buffered before the pause. Not the same
   * as `mayClaim`, which also turns false on a step-back, when the lease is still good.
   */
  readonly mayKeepSending?: () => boolean;
  /** Where a completion recovered on another connection is reported. */
  readonly logger?: Logger;
  /** Per-key ordering (SHARDRELAY_ORDERING=key); absent = off. */
  readonly ordering?: KeyOrdering;
  /** How long deferred rows wait (relay/deferralDelay.ts); absent = the first retry delay. */
  readonly deferralDelay?: Pick<DeferralDelay, 'delayMs'>;
  /**
   * The (shard, lane)'s claim cursor (relay/claimCursor.ts): where the claim starts while the shard
   * drains a backlog. Not used with ordering on.
   */
  readonly cursor?: ClaimCursor;
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
  /**
   * Every row claimed and sent, canaries included (a full batch means more may wait). With
   * ordering on, rows claimed but held back (see `held`) are not counted.
   */
  readonly claimed: number;
  /** The row limit the claim used (0 when nothing was claimed): `claimed` below it = the shard had no more. */
  readonly asked: number;
  /**
   * Ordering on: rows claimed but not sent, because an earlier row of their key was pending outside
   * the batch, or failed earlier in the batch; they stay pending as they were.
   */
  readonly held?: number;
  /** Ordering on: send waves of the batch (1 = every row went at once). */
  readonly waves?: number;
  /**
   * Rows claimed (and counted in `claimed`) that the sink did not offer to the broker (outcome
   * `deferred`: unreachable, or the batch deadline came first); they stay pending, no attempt
   * counted, due again after `deferralDelay`.
   */
  readonly deferred: number;
  /**
   * Of the claimed rows, canaries included, how many the sink deferred at its own limit
   * (`heldBySink`: request slots, time left), not for the broker's sake; the lane's claim size
   * follows it (relay/claimSize.ts).
   */
  readonly deferredAtSinkLimit: number;
  /** When rows were deferred: in how many ms the first of them is due again. */
  readonly deferredDueInMs?: number;
  /** When rows were deferred: why the first of them was (the sink's words). */
  readonly deferredReason?: string;
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
  asked: 0,
  deferred: 0,
  deferredAtSinkLimit: 0,
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
 * Whether the shard's loop claims again at once after `result`: after a full batch (more may
 * wait) of which the sink offered something. A full batch it deferred whole waits for the next
 * trigger instead, so a sink that cannot send does not make the loop spin through the shard.
 */
export function claimsAgainAtOnce(result: BatchResult): boolean {
  return result.claimed >= result.asked && result.claimed > result.deferred;
}

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
export async function deliverBatch(
  db: Kysely<Database>,
  sink: RelaySink,
  shard: number,
  shardCount: number,
  lane: Lane,
  settings: DeliverySettings,
): Promise<BatchResult> {
  const started = performance.now();
  const cursor = settings.ordering ? undefined : settings.cursor;
  const claimRequest = (): ClaimRequest => {
    const afterId = cursor?.startAfter();
    return {
      shard,
      shardCount,
      lane,
      lanePredicate: settings.lanePredicate,
      batchSize: typeof settings.batchSize === 'function' ? settings.batchSize() : settings.batchSize,
      ...(settings.ordering ? { ordering: settings.ordering } : {}),
      ...(afterId !== undefined ? { afterId } : {}),
    };
  };
  /** Set when the batch has its connection. */
  let claim: ClaimRequest | undefined;
  /** Set once the sink has answered: what a completion lost with the connection must record. */
  let decided: DecidedBatch | undefined;
  /** Set once the batch's completions are recorded: where the cursor may move when it commits. */
  let advance: { readonly lastId: string | undefined; readonly full: boolean } | undefined;
  try {
    const outcome = await db.transaction().execute(async (trx) => {
      if (settings.mayClaim?.() === false) return EMPTY_BATCH;
      claim = claimRequest();
      let messages: ClaimedMessage[];
      try {
        messages = await claimBatch(trx, claim);
      } catch (error) {
        throw new ClaimFailed(error);
      }
      if (messages.length === 0) return EMPTY_BATCH;
      // The lease may have lapsed while the claim waited (a pause): roll back, send nothing.
      if (settings.mayClaim?.() === false) return EMPTY_BATCH;

      const sendStarted = performance.now();
      const context: SendContext = {
        deadline: Date.now() + settings.sendTimeoutMs,
        ...(settings.mayKeepSending ? { mayContinue: settings.mayKeepSending } : {}),
      };
      // Only an in-database sink (pg-boss) is handed the claim transaction; a broker sink never is.
      const sender: BatchSender =
        sink.kind === 'in-database'
          ? { name: sink.name, sendBatch: (part, c) => sink.sendBatch(part, c, trx) }
          : sink;
      let sent: readonly ClaimedMessage[] = messages;
      let outcomes: readonly SendOutcome[];
      /** Ordering on: decided wave by wave as the sends came back. */
      let decidedInWaves: readonly Decision[] | undefined;
      let held = 0;
      let waves = 1;
      if (settings.ordering) {
        const holdDead = settings.ordering.holdDead;
        // Rows whose key has an earlier row pending outside the batch are not sent (keyOrder.ts).
        const { chains, held: blocked } = keyChains(
          messages,
          await keyBlockers(trx, messages, settings.ordering),
        );
        // Each wave's completions are decided as it comes back, once: whether a row releases its
        // key depends on them, and they are what the batch records.
        const result = await sendInWaves(
          chains,
          async (wave) => {
            const got = await sendIsolated(sender, wave, context);
            const decided = decideCompletions(wave, got, settings.retry);
            return got.map((outcome, i) => ({ outcome, completion: decided[i] as Decision }));
          },
          // A confirmed row releases its key; so does one given up (dead) when dead rows release it.
          ({ completion: c }) => c.status === 'sent' || (!holdDead && c.status === 'dead'),
          () => Date.now() < context.deadline && settings.mayKeepSending?.() !== false,
        );
        ({ sent, waves } = result);
        outcomes = result.results.map((r) => r.outcome);
        decidedInWaves = result.results.map((r) => r.completion);
        held = blocked.length + result.notSent.length;
        if (sent.length === 0) return { ...EMPTY_BATCH, held };
      } else {
        outcomes = await sendIsolated(sender, messages, context);
      }
      const confirmedAt = Date.now();
      const sendMs = performance.now() - sendStarted;

      const decisions = decidedInWaves ?? decideCompletions(sent, outcomes, settings.retry);
      const batchMs = performance.now() - started;
      // Deferred rows get no completion: they stay pending as claimed, only postponed (below).
      const request = { shard, lane, completions: recordedCompletions(decisions), batchMs };
      // Kept through the COMMIT: a COMMIT whose connection dies is recovered the same way (the
      // recovery's guard sees whether it had committed after all).
      const postponed = deferralDelays(decisions, outcomes, settings);
      decided = { request, postponed, messages: sent, outcomes, decisions, asked: claim.batchSize };
      const poison = await completeIsolated(trx, request);
      await postponeDeferred(trx, postponed);
      // Claimed in id order: the last row is the highest id.
      advance = { lastId: messages.at(-1)?.id, full: messages.length >= claim.batchSize };
      if (settings.ordering && sent.some((m) => m.key !== null)) await wakeShard(trx, shard);
      const counted = batchResult(
        sent,
        outcomes,
        decisions,
        poison,
        confirmedAt,
        batchMs,
        sendMs,
        claim.batchSize,
      );
      const result =
        postponed.length === 0
          ? counted
          : {
              ...counted,
              deferredDueInMs: Math.min(...postponed.map((p) => p.delayMs)),
              deferredReason: decisions.find((d) => d.status === 'deferred')?.error ?? '',
            };
      return settings.ordering ? { ...result, held, waves } : result;
    });
    if (advance) cursor?.completed(advance.lastId, advance.full);
    else cursor?.reset();
    return outcome;
  } catch (error) {
    cursor?.reset();
    if (error instanceof ClaimFailed && claim)
      return isolateUnclaimable(db, claim, settings, error.cause, started);
    if (!decided || sink.kind === 'in-database') throw error;
    return recoverElsewhere(db, decided, error, settings.logger);
  }
}

/**
 * Each deferred row's delay: the lane's (deferralDelay.ts), or the sink's own "not before" when
 * that is longer, never beyond the retry cap.
 */
function deferralDelays(
  decisions: readonly Decision[],
  outcomes: readonly SendOutcome[],
  settings: DeliverySettings,
): Postponement[] {
  const deferred = decisions.filter((d): d is Deferral => d.status === 'deferred');
  if (deferred.length === 0) return [];
  const confirmedAny = outcomes.some((o) => o.status === 'confirmed');
  const laneDelay = settings.deferralDelay?.delayMs(confirmedAny) ?? settings.retry.baseMs;
  return deferred.map((d) => ({
    id: d.id,
    delayMs: Math.min(settings.retry.capMs, Math.max(laneDelay, d.retryAfterMs ?? 0)),
    reason: d.error,
  }));
}

/** What a batch is sent through: the sink, with the claim transaction bound if it takes one. */
type BatchSender = Pick<Sink, 'name' | 'sendBatch'>;

/** The claim statement itself threw (as opposed to the send or the completion). */
class ClaimFailed extends Error {
  constructor(override readonly cause: unknown) {
    super(toError(cause).message);
  }
}

/** The fix every log line of a row the claim could not read carries. */
export const UNCLAIMABLE_FIX =
  'correct the row in shardrelay.outbox (e.g. replace a character that has no UTF-8 equivalent ' +
  "in a database whose encoding is not UTF-8), then set status = 'pending' to send it again";

/**
 * SQLSTATE classes of an error that the same row data raises every time: 22 data exception (e.g.
 * 22P05, a character with no equivalent in the client's UTF-8), 54 program limit exceeded (a
 * value too large to output), XX internal error (corrupted data). Such a row is dead at once;
 * any other error counts as an attempt and the row is retried until `max_attempts`.
 */
const DETERMINISTIC = /^(22|54|XX)/;

/**
 * The claim statement failed: before this, every claim of the batch failed again the same way,
 * the shard's good rows were never sent and `attempts` never rose, for ever. Now the rows the
 * claim cannot read are found (claims.ts `findUnclaimable`, by halving the batch) and recorded in
 * one transaction: dead with the reason, or retried later with `attempts` + 1, so each ends in a
 * recorded state within `max_attempts` claims. The batch's other rows are left pending: the
 * shard's next claim, at once (`claimed` is the whole candidate list, a full batch), sends them.
 * When no row fails alone the failure was not in the data: the original error stands.
 */
async function isolateUnclaimable(
  db: Kysely<Database>,
  claim: ClaimRequest,
  settings: DeliverySettings,
  cause: unknown,
  started: number,
): Promise<BatchResult> {
  const result = await db.transaction().execute(async (trx) => {
    if (settings.mayClaim?.() === false) return undefined;
    const rows = await findUnclaimable(trx, claim);
    if (rows.length === 0) return undefined;
    const outcomes: UnclaimableOutcome[] = rows.map((r) => {
      const attempt = r.attempts + 1;
      const error = `the claim cannot read this row (PostgreSQL ${r.code || 'error'}: ${r.error})`;
      if (DETERMINISTIC.test(r.code)) return { id: r.id, status: 'dead', error: `permanent: ${error}` };
      if (attempt >= (r.maxAttempts ?? settings.retry.maxAttempts))
        return { id: r.id, status: 'dead', error: `gave up after ${attempt} attempts: ${error}` };
      return { id: r.id, status: 'pending', retryInMs: backoffDelayMs(settings.retry, attempt), error };
    });
    await recordUnclaimable(trx, outcomes);
    return { rows, outcomes };
  });
  if (!result) throw cause;
  const { rows, outcomes } = result;
  const problems: BatchProblem[] = rows.map((r, i) => {
    const o = outcomes[i] as UnclaimableOutcome;
    return {
      id: r.id,
      eventId: r.eventId,
      // Not read: the topic may be the very value the claim cannot read.
      topic: '',
      correlationId: null,
      traceparent: null,
      attempt: r.attempts + 1,
      next: o.status === 'dead' ? 'dead' : 'retry',
      ...(o.status === 'pending' ? { retryInMs: o.retryInMs } : {}),
      error: o.error,
      fix: UNCLAIMABLE_FIX,
      canary: false,
    };
  });
  const dead = outcomes.filter((o) => o.status === 'dead').length;
  return {
    ...EMPTY_BATCH,
    // A full batch: the shard's loop claims again at once and sends the rows left pending.
    claimed: claim.batchSize,
    asked: claim.batchSize,
    dead,
    retried: outcomes.length - dead,
    failures: { retryable: outcomes.length - dead, permanent: dead, unknown: 0 },
    batchMs: performance.now() - started,
    problems,
  };
}

/** What a batch decided after its send: what the claim's transaction records, or a recovery. */
interface DecidedBatch {
  readonly request: CompleteRequest;
  /** The deferred rows, with their delays. */
  readonly postponed: readonly Postponement[];
  readonly messages: readonly ClaimedMessage[];
  readonly outcomes: readonly SendOutcome[];
  readonly decisions: readonly Decision[];
  /** The row limit of the claim. */
  readonly asked: number;
}

/**
 * The claim's transaction is gone after the sink answered: record the outcomes through another
 * connection so that confirmed rows are not sent again. If that fails too, the original error
 * stands (the rows are pending again, re-sent with the same event ids).
 */
async function recoverElsewhere(
  db: Kysely<Database>,
  decided: DecidedBatch,
  cause: unknown,
  logger: Logger | undefined,
): Promise<BatchResult> {
  const { request, postponed, messages, outcomes, decisions } = decided;
  let recovery;
  try {
    recovery = await recoverCompletion(db, request, messages, postponed);
  } catch (recoveryError) {
    logger?.warn(
      {
        shard: request.shard,
        lane: request.lane,
        rows: messages.length,
        err: toError(recoveryError).message,
      },
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
      err: toError(cause).message,
    },
    'the claim transaction was lost after the send; outcomes recorded through another connection',
  );
  // Counted as decided; rows left alone (someone else's now) are in `leftAlone` above.
  return batchResult(
    messages,
    outcomes,
    decisions,
    recovery.poison,
    Date.now(),
    request.batchMs,
    0,
    decided.asked,
  );
}

/**
 * Sends a batch; if the sink throws (it should not for a message-level problem), the batch is
 * sent again in halves (relay/bisect.ts) to find the message that makes it throw, as long as the
 * other half goes through and the batch's deadline has not passed: a throw on a lone message, or on
 * both halves (the sink or broker is down), makes those messages `unknown` (retried, so `attempts`
 * rises and `max_attempts` ends it). Messages whose data no sink can send (a non-finite
 * created_at, from a database not yet migrated to 0006) are not sent at all and fail permanently.
 */
async function sendIsolated(
  sink: BatchSender,
  messages: readonly ClaimedMessage[],
  context: SendContext,
): Promise<SendOutcome[]> {
  const outcomes: (SendOutcome | undefined)[] = messages.map((m) => unsendable(m));
  const sendable = messages.flatMap((m, i) => (outcomes[i] ? [] : [{ m, i }]));
  // No savepoint around a send, unlike the claim and completion probes: only the pg-boss sink
  // writes in the transaction and it keeps the transaction usable with a savepoint of its own.
  const { failed } = await bisect(
    sendable,
    async (part) => {
      try {
        // The whole batch (every message sendable, the usual case) goes as claimed, without a copy.
        const got = await sink.sendBatch(
          part.length === messages.length ? messages : part.map((p) => p.m),
          context,
        );
        part.forEach((p, k) => (outcomes[p.i] = got[k]));
        return PASSED;
      } catch (error) {
        return { ok: false, error };
      }
    },
    {
      maySplit: () => Date.now() < context.deadline,
      // Both halves failing means the sink, not a message: stop splitting.
      stopWhenBothHalvesFail: true,
    },
  );
  for (const { items, error } of failed) {
    const reason = toError(error).message;
    for (const p of items) outcomes[p.i] = unknown(`sink ${sink.name} failed: ${reason}`);
  }
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
  completions: readonly Decision[],
  poison: readonly PoisonRow[],
  confirmedAt: number,
  batchMs: number,
  sendMs: number,
  asked: number,
): BatchResult {
  const poisoned = new Map(poison.map((p) => [p.id, p.reason]));
  // Completions come in the order of the messages (decideCompletions): found by index, through a
  // map of ids only if that ever stops holding.
  let byId: Map<string, Decision> | undefined;
  const completionOf = (message: ClaimedMessage, i: number): Decision | undefined => {
    const c = completions[i];
    if (c?.id === message.id) return c;
    byId ??= new Map(completions.map((x) => [x.id, x]));
    return byId.get(message.id);
  };
  const failures = { retryable: 0, permanent: 0, unknown: 0 };
  const latenciesMs: number[] = [];
  const problems: BatchProblem[] = [];
  let sent = 0;
  let retried = 0;
  let dead = 0;
  let deferred = 0;
  let deferredAtSinkLimit = 0;
  outcomes.forEach((o, i) => {
    if (o.status === 'deferred' && o.ownLimit) deferredAtSinkLimit++;
    const message = messages[i] as ClaimedMessage;
    const completion = completionOf(message, i);
    const poisonReason = poison.length === 0 ? undefined : poisoned.get(message.id);
    const status = poisonReason !== undefined ? 'dead' : completion?.status;
    if (status === 'deferred') {
      if (!message.canary) deferred++;
      return;
    }
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
    else if (o.status === 'deferred') return;
    else if (o.retryable) failures.retryable++;
    else failures.permanent++;
  });
  return {
    claimed: messages.length,
    asked,
    deferred,
    deferredAtSinkLimit,
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
