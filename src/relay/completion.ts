import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import { savepointBisect } from './bisect.js';
import {
  completeBatch,
  postponeDeferred,
  type Completion,
  type CompleteRequest,
  type Postponement,
} from './claims.js';
import { storableExcerpt, storableText } from './storableText.js';

/**
 * Completion that cannot loop: whatever makes `shardrelay.complete_batch` fail, a claimed batch
 * ends in a recorded state, so a row's `attempts` rises on every claim and `max_attempts` bounds
 * how often it is sent. Every statement here runs on rows the caller holds locked (the claim's
 * transaction, or the recovery transaction below, which locks them itself); like claims.ts, this
 * file says next to each statement which locks it takes.
 *
 * Why this is needed: a failed completion rolls the claim back, `attempts` never rises, and the
 * same batch is claimed and published again every backoff, forever. Seen with a row whose
 * created_at was 'infinity' (the latency arithmetic fails: 10,010 deliveries of 4,010 ids, the
 * shard's good rows published 7 times in 10 s) and with a receiver whose error body held a NUL
 * byte (stored in last_error, refused by PostgreSQL: 10,000 deliveries of 2,040 rows, 0 sent).
 *
 * The logic lives here, around `completeBatch()`, and not inside the SQL function, so that it
 * holds whatever the function does internally.
 */

/** What the caller logs for a row recorded dead because its completion itself failed. */
export interface PoisonRow {
  readonly id: string;
  readonly reason: string;
}

/** The fix every poison-row log line carries. */
export const POISON_FIX =
  'correct the row in shardrelay.outbox (e.g. a non-finite created_at), then set status = ' +
  "'pending' to send it again; migration 0006 makes the schema refuse non-finite timestamps";

const SAVEPOINT = 'shardrelay_complete';

/**
 * Records `request` in `trx`. On a failure that leaves the transaction usable (an error raised by
 * a statement, not a lost connection), it rolls back to a savepoint and completes the rows in
 * halves, down to single rows (relay/bisect.ts `savepointBisect`); a row that fails on its own is
 * recorded `dead` by `recordPoison` with the error as the reason. Returns the rows recorded that
 * way (empty when all went well).
 * Throws when the transaction itself is gone (the caller then recovers on another connection).
 *
 * Cost: one SAVEPOINT and RELEASE per batch (two round trips of about 0.1 ms); the halving runs
 * only after a failure, about 2·log2(batch) completions per poison row.
 */
export async function completeIsolated(
  trx: Transaction<Database>,
  request: CompleteRequest,
): Promise<PoisonRow[]> {
  const completions = request.completions.map(storableCompletion);
  if (completions.length === 0) return [];
  const failed = await savepointBisect(trx, SAVEPOINT, completions, (part) =>
    completeBatch(trx, { ...request, completions: part }),
  );
  const poison = failed.map(({ item, error }) => ({ id: item.id, reason: poisonReason(item, error) }));
  if (poison.length > 0) await recordPoison(trx, poison);
  return poison;
}

function storableCompletion(c: Completion): Completion {
  return c.status === 'sent' ? c : { ...c, error: storableText(c.error) };
}

function poisonReason(c: Completion, error: unknown): string {
  const outcome = c.status === 'sent' ? 'the broker confirmed it' : `its delivery failed (${c.error})`;
  return storableExcerpt(
    `poison row: recording its outcome failed (${toError(error).message}); ${outcome}`,
    2000,
  );
}

/**
 * The minimal statement that records rows as dead: no arithmetic on the row's values, nothing but
 * a status, a counter and a text the caller made storable, so the data that broke the full
 * completion cannot break it. It updates rows the caller's transaction already holds locked
 * (FOR UPDATE by the claim or the recovery); it takes no other lock. The shard's progress and
 * rollup rows do not count these rows (the completion that counts them is what failed); the
 * log line and `last_error` do.
 */
export async function recordPoison(trx: Transaction<Database>, rows: readonly PoisonRow[]): Promise<void> {
  if (rows.length === 0) return;
  await sql`
    UPDATE shardrelay.outbox o SET status = 'dead', attempts = o.attempts + 1, last_error = v.reason
      FROM unnest(${rows.map((r) => r.id)}::bigint[], ${rows.map((r) => storableText(r.reason))}::text[])
           AS v(id, reason)
     WHERE o.id = v.id`.execute(trx);
}

/** A claimed row as the recovery needs it: its id and the attempts it had when claimed. */
export interface ClaimedRow {
  readonly id: string;
  readonly attempts: number;
}

export interface RecoveryResult {
  /** Rows recorded now through another connection. */
  readonly recorded: number;
  /** Rows left alone: sent, deleted, completed or re-claimed by someone else meanwhile. */
  readonly leftAlone: number;
  /** Of those, rows still locked by another transaction when the recovery gave up waiting. */
  readonly lockedElsewhere: number;
  readonly waitedMs: number;
  readonly poison: readonly PoisonRow[];
}

/** How long the recovery waits for the dead claim's locks to go (its backend exiting). */
const RECOVERY_LOCK_WAIT_MS = 10_000;
const RECOVERY_RETRY_MS = 25;

/**
 * The claim's transaction died (its connection was terminated or lost) after the sink answered:
 * records the same completions through another connection of `db`, so rows the broker confirmed
 * are not sent again (before this: `pg_terminate_backend` of the relay's connections re-sent
 * 80–100 % of the rows in flight), and postpones the rows the sink deferred, as the claim's
 * transaction would have (else they were due at once, claimed again while the broker is down).
 *
 * Guard, per row: it is locked `FOR UPDATE SKIP LOCKED` and must still be `pending` with the
 * `attempts` it had when claimed. So a row that someone else has re-claimed (locked), sent,
 * deleted or completed since (attempts moved), or that the dead transaction did commit after all
 * (a COMMIT whose answer was lost), is left alone. A row can still be locked by the dying backend
 * for a few milliseconds after the client saw the error (PostgreSQL releases locks as the backend
 * exits); those are retried for up to RECOVERY_LOCK_WAIT_MS (10 s: at a load average of 20 on 2 cores
 * recoveries took up to 5.5 s, pool waits included; only a real re-claim, a lease hand-off, waits
 * it out), after which a row still locked is
 * taken to be someone else's claim and left alone (it may then be sent again: same event id).
 * The shard's loop runs nothing else meanwhile, and no other replica runs the shard, so nothing
 * else claims these rows in that window unless a lease hand-off is under way.
 */
export async function recoverCompletion(
  db: Kysely<Database>,
  request: CompleteRequest,
  claimed: readonly ClaimedRow[],
  postponed: readonly Postponement[] = [],
): Promise<RecoveryResult> {
  const attemptsOf = new Map(claimed.map((r) => [r.id, r.attempts]));
  // The rows still to record, by id: the completions and the deferred rows, under the same guard
  // (a deferred row is postponed here, or left alone as someone else's).
  let remaining = [...request.completions, ...postponed].map((r) => r.id).filter((id) => attemptsOf.has(id));
  let recorded = 0;
  const poison: PoisonRow[] = [];
  const started = Date.now();
  const deadline = started + RECOVERY_LOCK_WAIT_MS;
  for (;;) {
    const ids = remaining;
    const round = await retryOnLostConnection(() =>
      db.transaction().execute(async (trx) => {
        const expected = sql`unnest(${ids}::bigint[], ${ids.map((id) => attemptsOf.get(id) ?? 0)}::int[]) AS v(id, attempts)`;
        // Locks: FOR UPDATE SKIP LOCKED on exactly the rows it returns (still pending, with the
        // attempts they had when claimed); it waits for no one.
        const locked = await sql<{ id: string }>`
          SELECT o.id::text AS id FROM shardrelay.outbox o JOIN ${expected} ON o.id = v.id AND o.attempts = v.attempts
           WHERE o.status = 'pending'
           FOR UPDATE OF o SKIP LOCKED`.execute(trx);
        const mine = new Set(locked.rows.map((r) => r.id));
        // No lock: which of the others are still pending, i.e. held by someone else right now.
        const others = await sql<{ id: string }>`
          SELECT o.id::text AS id FROM shardrelay.outbox o JOIN ${expected} ON o.id = v.id AND o.attempts = v.attempts
           WHERE o.status = 'pending' AND NOT (o.id = ANY(${[...mine]}::bigint[]))`.execute(trx);
        const completions = request.completions.filter((c) => mine.has(c.id));
        const found = await completeIsolated(trx, { ...request, completions });
        await postponeDeferred(
          trx,
          postponed.filter((p) => mine.has(p.id)),
        );
        return { recorded: mine.size, found, lockedElsewhere: new Set(others.rows.map((r) => r.id)) };
      }),
    );
    recorded += round.recorded;
    poison.push(...round.found);
    remaining = remaining.filter((id) => round.lockedElsewhere.has(id));
    if (remaining.length === 0 || Date.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, RECOVERY_RETRY_MS));
  }
  return {
    recorded: recorded - poison.length,
    leftAlone: claimed.length - recorded,
    lockedElsewhere: remaining.length,
    waitedMs: Date.now() - started,
    poison,
  };
}

/**
 * After a `pg_terminate_backend` of every connection, the pool still holds idle connections that
 * were terminated too and that it has not noticed yet: each fails at once. Measured with 4
 * connections per lane: three tries 50–100 ms apart were not enough (3 batches of 6 kills were
 * re-sent whole); fresh connections come within a few tries, so try up to 20 within 10 s.
 */
async function retryOnLostConnection<T>(work: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 10_000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (attempt >= 20 || Date.now() >= deadline) throw error;
      await new Promise((r) => setTimeout(r, 20 * attempt));
    }
  }
}
