import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import { laneFilter, type LanePredicate } from '../lanes/lanePredicate.js';
import type { OutboxMessage } from '../sinks/sink.js';
import { storableExcerpt } from './storableText.js';

/**
 * Every row lock the relay takes on the outbox lives in this file.
 *
 * The lock model: a batch is claimed with `FOR UPDATE SKIP LOCKED` inside a transaction, sent to the
 * sink while the transaction stays open, and completed (sent / retry later / dead) in that same
 * transaction. The row locks are the lease: if the process dies or its connection drops, PostgreSQL
 * rolls the transaction back, the locks vanish and the rows are claimable again at once, still
 * `pending`. Nothing else (no lease, no shard ownership) is needed for correctness.
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
    payload: r.payload,
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
      'payload',
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
    .where('available_at', '<=', sql<Date>`now()`)
    .where(sql`id % ${sql.lit(request.shardCount)}`, '=', sql.lit(request.shard))
    .where(laneFilter(request.lanePredicate, request.lane))
    .orderBy('id')
    .limit(request.batchSize)
    .forUpdate()
    .skipLocked();
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
 * it), with one call of `shardrelay.complete_batch` (migrations/0007_sent_record.ts, first 0005):
 * rows confirmed by the broker leave the outbox and, unless the retention is 0, leave a sent record
 * (sent_at = the moment of this call, after the confirm); retried rows get a later `available_at`; given-up rows become `dead` with their error.
 * The same call adds the batch to the shard's progress row and the minute's rollup row, so
 * progress, rollups and row states can never disagree. It locks the progress row, then the rollup
 * row, always in that order. Times come from shardrelay.clock(): clock_timestamp(), unless a test
 * set `shardrelay.now`.
 */
export async function completeBatch(trx: Transaction<Database>, request: CompleteRequest): Promise<void> {
  if (request.completions.length === 0) return;
  const ids: string[] = [];
  const statuses: string[] = [];
  const delays: number[] = [];
  const errors: (string | null)[] = [];
  for (const c of request.completions) {
    ids.push(c.id);
    statuses.push(c.status);
    delays.push(c.status === 'pending' ? c.retryInMs : 0);
    // Storable: an error text with a NUL or a lone surrogate made the whole completion fail.
    errors.push(c.status === 'sent' ? null : storableExcerpt(c.error, 2000));
  }
  await sql`
    SELECT shardrelay.complete_batch(${request.shard}::int, ${request.lane}::text, ${ids}::bigint[],
      ${statuses}::text[], ${delays}::float8[], ${errors}::text[], ${Math.round(request.batchMs)}::int)
  `.execute(trx);
}
