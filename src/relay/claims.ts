import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import { shardExpression } from '../db/shardIndex.js';
import { toError } from '../errors.js';
import { laneFilter, type LanePredicate } from '../lanes/lanePredicate.js';
import type { OutboxMessage } from '../sinks/sink.js';
import { savepointBisect } from './bisect.js';
import { compareIds } from './keyOrder.js';
import { storableExcerpt } from './storableText.js';

/**
 * Every row lock the relay takes on the outbox lives in this file.
 *
 * The lock model: a batch is claimed with `FOR UPDATE SKIP LOCKED` inside a transaction, sent to the
 * sink while the transaction stays open, and completed (sent / retry later / dead) in that same
 * transaction. The row locks are the lease: if the process dies or its connection drops, PostgreSQL
 * rolls the transaction back, the locks vanish and the rows are claimable again at once, still
 * `pending`. Nothing else (no lease, no shard ownership) is needed for correctness.
 *
 * Per-key ordering (SHARDRELAY_ORDERING=key) adds no lock: the claim skips rows whose key waits for
 * a retry (`keyHeadIsDue`), and `keyBlockers` reads, with the batch's rows locked, which earlier
 * rows of its keys are still pending elsewhere; relay/keyOrder.ts sends what may go.
 */

/**
 * Session settings for the connections that claim (the lane pools). They make the ordered scan of
 * the shard's partial index `((id % N), id) WHERE status = 'pending'` the only cheap plan for
 * `claimBatch`, so a claim reads about `batchSize` rows, however many are pending.
 *
 * Why: PostgreSQL keeps no statistics for `id % N` (a partial index's expressions are not used for
 * estimates), so it guesses 0.5% of the pending rows per shard. Below about 200,000 pending rows
 * that guess is under the LIMIT and it plans a bitmap scan of every pending row of the shard, a
 * sort, then the LIMIT. Measured on 2 cores, 96,000 pending rows (12,000 per shard), one
 * 1,000-row claim: 21.5 ms as planned, 1.8 ms with these settings. They only penalise sorts and
 * bitmap scans (a query that needs a sort still gets one); these connections run nothing but
 * claims, completions and the sink's own writes in the same transaction.
 */
export const CLAIM_SESSION_SETTINGS: Readonly<Record<string, string>> = Object.freeze({
  enable_sort: 'off',
  enable_bitmapscan: 'off',
});

export interface ClaimRequest {
  readonly shard: number;
  readonly shardCount: number;
  readonly lane: Lane;
  readonly lanePredicate: LanePredicate;
  readonly batchSize: number;
  /** Per-key ordering (SHARDRELAY_ORDERING=key); absent = off. */
  readonly ordering?: KeyOrdering;
  /**
   * Start after this id instead of at the shard's first pending entry (relay/claimCursor.ts: why,
   * and when it is safe); never with ordering on. A range on the pending index's second column:
   * the index scan starts at (shard, afterId).
   */
  readonly afterId?: string;
}

/** How the claim treats keys when ordering is on. */
export interface KeyOrdering {
  /** A dead row holds its key's later rows until it is replayed or discarded (SHARDRELAY_ORDERING_DEAD=hold). */
  readonly holdDead: boolean;
}

export interface ClaimedMessage extends OutboxMessage {
  readonly maxAttempts: number | null;
  /** A synthetic canary row (relay/canary.ts): delivered like any other, left out of business counts. */
  readonly canary?: boolean;
}

/**
 * Claims up to `batchSize` pending rows of one shard and one lane, oldest first.
 *
 * - `FOR UPDATE` locks exactly the rows returned (LIMIT applies before the lock), never more than
 *   the loop sends now.
 * - `SKIP LOCKED` makes concurrent claimers (another lane never overlaps, but a second replica that
 *   briefly believes it owns the same shard, e.g. during a lease hand-off, can) pass over rows
 *   someone else holds instead of waiting for them. That is safe because a locked row is either
 *   being sent by its holder or will be pending again when the holder's transaction ends, and the
 *   next claim picks it up.
 * - The `status = 'pending'` filter is re-checked by PostgreSQL on the newest row version when the
 *   lock is taken (READ COMMITTED re-evaluation), so a row another claimer completed (deleted as
 *   sent, or marked dead or retried) and committed between our snapshot and our lock is not
 *   returned: no double send.
 * - `id % N` uses N as a literal so the planner can use the expression index `((id % N), id)`
 *   (see db/shardIndex.ts); a bound parameter would never match it.
 */
export async function claimBatch(
  trx: Transaction<Database>,
  request: ClaimRequest,
): Promise<ClaimedMessage[]> {
  const rows = await claimQuery(trx, request).execute();
  return rows.map((r) => ({
    id: r.id,
    eventId: r.event_id,
    topic: r.topic,
    key: r.key,
    payloadJson: r.payload_json,
    headers: r.headers,
    correlationId: r.correlation_id,
    traceparent: r.traceparent,
    lane: r.lane,
    createdAt: r.created_at,
    attempts: r.attempts,
    maxAttempts: r.max_attempts,
    canary: r.canary,
  }));
}

/** The claim statement itself (claimBatch runs it; tests read its plan). */
export function claimQuery(trx: Kysely<Database>, request: ClaimRequest) {
  return trx
    .selectFrom('shardrelay.outbox')
    .select([
      'id',
      'event_id',
      'topic',
      'key',
      // As text: sinks put it on the wire as it is (sinks/sink.ts, OutboxMessage.payloadJson).
      sql<string>`payload::text`.as('payload_json'),
      'headers',
      'correlation_id',
      'traceparent',
      'lane',
      'created_at',
      'attempts',
      'max_attempts',
      'canary',
    ])
    .where('status', '=', 'pending')
    .where('available_at', '<=', sql<Date>`(SELECT shardrelay.now())`)
    .where(
      sql.raw(shardExpression(request.shardCount, request.ordering !== undefined)),
      '=',
      sql.lit(request.shard),
    )
    .where(laneFilter(request.lanePredicate, request.lane))
    .$if(request.ordering !== undefined, (q) => q.where(keyHeadIsDue(request.ordering as KeyOrdering)))
    .$if(request.afterId !== undefined, (q) => q.where('id', '>', request.afterId as string))
    .orderBy('id')
    .limit(request.batchSize)
    .forUpdate()
    .skipLocked();
}

export interface DueShardsRequest {
  readonly shards: readonly number[];
  readonly shardCount: number;
  readonly lane: Lane;
  readonly lanePredicate: LanePredicate;
  /** Per-key ordering on: rows are sharded by key (db/shardIndex.ts). */
  readonly ordering: boolean;
}

/**
 * Which of `shards` hold a row this lane's claim could take now: pending, due, in the lane. One
 * statement for all of them, no lock taken. The scheduler's poll (relay/scheduler.ts) asks it once
 * per tick and lane and triggers only those shards' loops, where it used to run an empty claim
 * transaction on every shard and lane each tick.
 *
 * It may say yes where the claim then takes nothing (the rows are locked by another claimer, or,
 * with ordering on, their key waits for a retry: `keyHeadIsDue` is left out): one empty claim, as
 * every poll was before. It never says no where the claim would take a row: the filters are the
 * claim's own. Each shard's check stops at its first row, read from the same partial index as the
 * claim (`((id % N), id) WHERE status = 'pending'`; N is a literal here too).
 */
export async function shardsWithDueRows(
  db: Kysely<Database>,
  request: DueShardsRequest,
): Promise<ReadonlySet<number>> {
  if (request.shards.length === 0) return new Set();
  const candidate = db
    .selectFrom('shardrelay.outbox')
    .select(sql.lit(1).as('one'))
    .where('status', '=', 'pending')
    .where('available_at', '<=', sql<Date>`(SELECT shardrelay.now())`)
    .where(sql.raw(shardExpression(request.shardCount, request.ordering)), '=', sql.ref('s.shard'))
    .where(laneFilter(request.lanePredicate, request.lane));
  const { rows } = await sql<{ shard: number }>`
    SELECT s.shard FROM unnest(${[...request.shards]}::int[]) AS s(shard)
     WHERE EXISTS (${candidate})`.execute(db);
  return new Set(rows.map((r) => r.shard));
}

/** The row states that block a key's later rows: pending always; dead too in hold mode. */
function blockingStatuses(ordering: KeyOrdering): string {
  return ordering.holdDead ? `'pending', 'dead'` : `'pending'`;
}

/**
 * Ordering on: a keyed row is claimable only if the earliest row of its key still unsent (pending,
 * or dead in hold mode) and older than it is due: not waiting for a retry, not dead. So a failed row
 * blocks its key, not its shard: the claim passes over the key's later rows and takes other keys'.
 *
 * This is a filter for a useful batch, not the guarantee: that earliest row may be claimed by
 * someone else right now (another lane, a replica in a lease hand-off), so the batch runner then
 * asks `keyBlockers` which claimed rows must wait, with the rows locked.
 *
 * Cost: one probe of `outbox_key_order (key, id)` per keyed candidate, reading one index entry.
 * A key whose earliest row waits for a retry makes each claim step over all of the key's pending
 * rows in the shard (each a probe): cheap for hundreds, noticeable for a key with 100,000 rows
 * waiting behind one failure.
 */
function keyHeadIsDue(ordering: KeyOrdering) {
  return sql<boolean>`(outbox.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM (SELECT h.status, h.available_at FROM shardrelay.outbox h
                    WHERE h.key = outbox.key AND h.id < outbox.id
                      AND h.status IN (${sql.raw(blockingStatuses(ordering))})
                    ORDER BY h.id LIMIT 1) AS head
     WHERE head.status = 'dead' OR head.available_at > (SELECT shardrelay.now())))`;
}

/**
 * Ordering on, in the claim's transaction, after the claim: for each key of the batch, the lowest
 * id of a row of that key that is not in the batch and blocks it: pending (claimed by another
 * transaction, or waiting for a retry; an earlier row another claimer holds is still `pending` to
 * us until its completion commits) or, in hold mode, dead. The batch must not send its rows of the
 * key above that id (relay/keyOrder.ts `keyChains`).
 *
 * Why this is enough, with concurrent claimers: a row leaves `pending` only by a committed
 * completion. If our statement's snapshot sees an earlier row of the key as pending, we hold our
 * later rows back; if it no longer sees it, it was sent (deleted), or is dead in release mode, which
 * is what lets the later rows go. Two transactions holding rows of one key each see the other's rows
 * as pending, so only the one with the earliest row sends. Takes no lock (plain reads through
 * `outbox_key_order`, reading about as many entries as the batch has rows of the key).
 *
 * Not seen: a row inserted by a transaction that has not committed yet. Rows of one key enqueued by
 * overlapping transactions are ordered by id, and a later-committing transaction may hold the lower
 * id; producers that need order per key must not enqueue one key's events from overlapping
 * transactions (the usual case: the business row of the aggregate is locked by the update).
 */
export async function keyBlockers(
  trx: Transaction<Database>,
  claimed: readonly { readonly id: string; readonly key: string | null }[],
  ordering: KeyOrdering,
): Promise<Map<string, string>> {
  // Per key, only rows below the batch's last row of the key matter.
  const last = new Map<string, string>();
  for (const m of claimed) {
    if (m.key === null) continue;
    const seen = last.get(m.key);
    if (seen === undefined || compareIds(m.id, seen) > 0) last.set(m.key, m.id);
  }
  if (last.size === 0) return new Map();
  const ids = claimed.map((m) => m.id);
  // `NOT IN (SELECT unnest(...))` is a hashed subplan: one hash probe per index entry read
  // (`<> ALL(array)` compared each entry with every id of the batch: 35 ms for a 1,000-row batch).
  const { rows } = await sql<{ key: string; blocker: string | null }>`
    SELECT k.key,
           (SELECT min(h.id) FROM shardrelay.outbox h
             WHERE h.key = k.key AND h.id < k.last
               AND h.status IN (${sql.raw(blockingStatuses(ordering))})
               AND h.id NOT IN (SELECT unnest(${ids}::bigint[])))::text AS blocker
      FROM unnest(${[...last.keys()]}::text[], ${[...last.values()]}::bigint[]) AS k(key, last)`.execute(trx);
  const blockers = new Map<string, string>();
  for (const r of rows) if (r.blocker !== null) blockers.set(r.key, r.blocker);
  return blockers;
}

/**
 * Ordering on, in the batch's transaction once it sent keyed rows: NOTIFY the shard (delivered at
 * commit), so the shard's loops of the other lane, in this replica and any other, claim again at
 * once instead of at their next tick. A key's rows can be in both lanes; a real-time row held
 * behind the batch lane's earlier rows of its key (and the batch rows held behind it) can go as
 * soon as this commit makes them the key's earliest. Without it each lane change of a key waited
 * for a tick: measured in the ordering test (100 keys, every 9th row real-time), about 100 rows/s,
 * one row per key per tick. Takes no lock.
 */
export async function wakeShard(trx: Transaction<Database>, shard: number): Promise<void> {
  // Both channels: a relay that tells its lanes apart hears the real-time lane's on its own.
  await sql`SELECT pg_notify('shardrelay_outbox', ${String(shard)}),
                   pg_notify('shardrelay_outbox_realtime', ${String(shard)})`.execute(trx);
}

/** How a deferral's reason starts in `last_error`. */
const DEFERRED_PREFIX = 'deferred (no attempt counted)';

/** A row the sink deferred: how long it waits, and why (stored in its `last_error`). */
export interface Postponement {
  readonly id: string;
  readonly delayMs: number;
  readonly reason: string;
}

/**
 * Moves rows the sink deferred (never offered to the broker) later, each by its delay, and writes
 * why into `last_error` (prefixed `deferred (no attempt counted)`), so that `shardrelay event <id>`,
 * the events and blocked-keys views say why a row is still pending during an outage; nothing else
 * changes: no attempt, same status. Why a delay at all: a deferred row keeps its place at
 * the front of its shard (a claim takes the oldest due rows), so the next claim would take it again
 * before any row behind it; with routing, a slow route's deferred rows would fill every batch and
 * hold back the other routes' rows; during a broker outage every waiting row would be claimed
 * again at once (relay/deferralDelay.ts says how long). Runs in the claim's transaction (or the
 * recovery's, completion.ts), only for a batch with deferred rows, on rows that transaction holds
 * locked (FOR UPDATE); it takes no other lock.
 */
export async function postponeDeferred(
  trx: Transaction<Database>,
  rows: readonly Postponement[],
): Promise<void> {
  if (rows.length === 0) return;
  await sql`
    UPDATE shardrelay.outbox o
       SET available_at = shardrelay.clock() + v.delay_ms * interval '1 millisecond',
           last_error = v.reason
      FROM unnest(${rows.map((r) => r.id)}::bigint[], ${rows.map((r) => r.delayMs)}::float8[],
                  ${rows.map((r) => storableExcerpt(`${DEFERRED_PREFIX}: ${r.reason}`, 2000))}::text[])
           AS v(id, delay_ms, reason)
     WHERE o.id = v.id`.execute(trx);
}

/** What the completer decided for one claimed row. */
export type Completion =
  | { readonly id: string; readonly status: 'sent' }
  | { readonly id: string; readonly status: 'pending'; readonly retryInMs: number; readonly error: string }
  | { readonly id: string; readonly status: 'dead'; readonly error: string };

export interface CompleteRequest {
  readonly shard: number;
  readonly lane: Lane;
  readonly completions: readonly Completion[];
  readonly batchMs: number;
}

/**
 * Records the outcome of a claimed batch, in the claim's transaction (the rows are still locked by
 * it), with one call of `shardrelay.complete_outcomes` (migrations/0010_complete_outcomes.ts; first
 * 0005, then 0007's `complete_batch`, which replicas of earlier releases still call): rows confirmed
 * by the broker leave the outbox and, unless the retention is 0, leave a sent record (sent_at = the
 * moment of this call, after the confirm); retried rows get a later `available_at`; given-up rows
 * become `dead` with their error. The same call adds the batch to the shard's progress row and the
 * minute's rollup row, so progress, rollups and row states can never disagree. It locks the
 * progress row, then the rollup row, always in that order. Times come from shardrelay.clock():
 * clock_timestamp(), unless a test set `shardrelay.now`.
 *
 * The rows go grouped by outcome: the confirmed ids as one array literal written here (`{1,2,3}`:
 * ids are the bigint text PostgreSQL gave us), the rare retried and dead rows as arrays of their
 * own. Measured on 2 cores with one connection draining 24,000 rows in batches of 1,000 (claim +
 * completion, the relay process's CPU per 1,000 rows, load average 18-24): four arrays of 1,000
 * (ids, statuses, delays, errors) serialised by the driver cost 18.8 ms against 13.3 for the
 * floor's claim and one-array statement; grouped by outcome 16.2 (the floor 16.4 in that run).
 * At load 41-46 (bench/studies/completionStudy.ts) the process figures were too noisy to tell the two
 * apart (this 21-25 ms, the four arrays 18-23); PostgreSQL's side is in migrations/0010.
 */
export async function completeBatch(trx: Transaction<Database>, request: CompleteRequest): Promise<void> {
  if (request.completions.length === 0) return;
  const sent: string[] = [];
  const retryIds: string[] = [];
  const retryDelays: number[] = [];
  const retryErrors: string[] = [];
  const deadIds: string[] = [];
  const deadErrors: string[] = [];
  for (const c of request.completions) {
    if (c.status === 'sent') sent.push(c.id);
    // Storable: an error text with a NUL or a lone surrogate made the whole completion fail.
    else if (c.status === 'pending') {
      retryIds.push(c.id);
      retryDelays.push(c.retryInMs);
      retryErrors.push(storableExcerpt(c.error, 2000));
    } else {
      deadIds.push(c.id);
      deadErrors.push(storableExcerpt(c.error, 2000));
    }
  }
  for (const id of sent) if (!DIGITS.test(id)) throw new Error(`not a row id: ${JSON.stringify(id)}`);
  await sql`
    SELECT shardrelay.complete_outcomes(${request.shard}::int, ${request.lane}::text,
      ${`{${sent.join(',')}}`}::bigint[],
      ${retryIds}::bigint[], ${retryDelays}::float8[], ${retryErrors}::text[],
      ${deadIds}::bigint[], ${deadErrors}::text[],
      ${Math.round(request.batchMs)}::int)
  `.execute(trx);
}

/** A row the claim statement itself cannot read (found by `findUnclaimable`). */
export interface UnclaimableRow {
  readonly id: string;
  readonly eventId: string;
  readonly attempts: number;
  readonly maxAttempts: number | null;
  /** PostgreSQL's error when the claim read this row alone, and its SQLSTATE ('' if none). */
  readonly error: string;
  readonly code: string;
}

const PROBE_SAVEPOINT = 'shardrelay_claim_probe';

/**
 * The claim statement failed: finds the rows it cannot read, in `trx` (a fresh transaction; the
 * failed claim's own was aborted by the error). A claim fails on a row's data when PostgreSQL
 * cannot produce the row for the client, e.g. in a database whose encoding is not UTF-8 a
 * character with no UTF-8 equivalent (WIN1252 0x81, the EUC_JP user-defined area): every claim
 * of a batch holding that row fails with "character with byte sequence 0x81 in encoding
 * "WIN1252" has no equivalent in encoding "UTF8"" (22P05), the batch is never sent and its
 * `attempts` never rise, so the whole shard stalled for good behind one row.
 *
 * Locks, in this order:
 * 1. the candidates: the claim itself (same filters, order and limit, FOR UPDATE SKIP LOCKED)
 *    but reading only `id`, `event_id`, `attempts`, `max_attempts`, which PostgreSQL can always
 *    produce; the locks are kept to the end of `trx`, so nobody else claims them meanwhile;
 * 2. probes: the full claim restricted to a part of those ids, each in a savepoint (a failing
 *    probe is rolled back to it, releasing only what it locked: nothing new, the candidates are
 *    already held). A part that fails is split in two, down to single rows; a row that fails
 *    alone is unclaimable (relay/bisect.ts `savepointBisect`). About 2·log2(batch) probes per
 *    unclaimable row, and only after a failed claim.
 * Returns [] when every probe passes (the failure was not in the rows' data). Throws when a
 * statement fails and the transaction is gone (a lost connection), or when the candidate list
 * itself fails (a lane predicate that throws on a row's value: the current predicate cannot,
 * its columns are the outbox's own and its values are checked against their types at start).
 */
export async function findUnclaimable(
  trx: Transaction<Database>,
  request: ClaimRequest,
): Promise<UnclaimableRow[]> {
  const candidates = await claimQuery(trx, request)
    .clearSelect()
    .select(['id', 'event_id', 'attempts', 'max_attempts'])
    .execute();
  // Each probe is the full claim restricted to a part of the candidates, in a savepoint.
  const failed = await savepointBisect(trx, PROBE_SAVEPOINT, candidates, (part) =>
    claimQuery(trx, request)
      .where(sql<boolean>`id = ANY(${part.map((r) => r.id)}::bigint[])`)
      .execute(),
  );
  return failed.map(({ item: row, error }) => {
    const code = (error as { code?: unknown }).code;
    return {
      id: row.id,
      eventId: row.event_id,
      attempts: row.attempts,
      maxAttempts: row.max_attempts,
      error: toError(error).message,
      code: typeof code === 'string' ? code : '',
    };
  });
}

/** What the relay decided for an unclaimable row. */
export type UnclaimableOutcome =
  | { readonly id: string; readonly status: 'dead'; readonly error: string }
  | { readonly id: string; readonly status: 'pending'; readonly retryInMs: number; readonly error: string };

/**
 * Records unclaimable rows: each counts as one attempt (`attempts` + 1), like a claimed row
 * whose send failed, so `max_attempts` bounds how often the claim can fail on it; `dead` or
 * retried later (`available_at`), with the error in `last_error`. Nothing but a status, a counter,
 * a time and a text the caller made storable: nothing reads the data the claim could not read.
 * Runs in `findUnclaimable`'s transaction, on rows it holds locked; it takes no other lock. The
 * shard's progress and rollup rows do not count these rows (nothing was sent); the log line and
 * `last_error` do.
 */
export async function recordUnclaimable(
  trx: Transaction<Database>,
  outcomes: readonly UnclaimableOutcome[],
): Promise<void> {
  if (outcomes.length === 0) return;
  await sql`
    UPDATE shardrelay.outbox o
       SET status = v.status, attempts = o.attempts + 1, last_error = v.error,
           available_at = CASE WHEN v.status = 'pending'
                               THEN shardrelay.clock() + v.delay_ms * interval '1 millisecond'
                               ELSE o.available_at END
      FROM unnest(${outcomes.map((o) => o.id)}::bigint[], ${outcomes.map((o) => o.status)}::text[],
                  ${outcomes.map((o) => (o.status === 'pending' ? o.retryInMs : 0))}::float8[],
                  ${outcomes.map((o) => storableExcerpt(o.error, 2000))}::text[])
           AS v(id, status, delay_ms, error)
     WHERE o.id = v.id`.execute(trx);
}

/** A row id as the driver returns a bigint: decimal digits (checked before they go into a literal). */
const DIGITS = /^\d+$/;
