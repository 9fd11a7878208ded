import { sql, type Transaction } from 'kysely';
import type { Database } from '../db/schema.js';

/**
 * Finding the items of a batch that make an operation on the whole batch fail, by halving: the
 * operation is tried on the batch; a part that fails is split in two and each half tried again,
 * down to single items. Written once for the three places that need it: the claim statement that
 * cannot read some rows (claims.ts `findUnclaimable`), the completion that fails on some rows
 * (completion.ts `completeIsolated`) and the sink that throws on some messages (deliverBatch.ts
 * `sendIsolated`).
 *
 * Bound on work: every attempt is on a distinct non-empty part of a binary split of the batch, so
 * a batch of n items costs at most 2n − 1 attempts, and at most 1 + 2·f·⌈log2 n⌉ when f items
 * make any part holding them fail (a part without them passes, its half is not split). Callers that
 * need less (a deadline, an operation that fails for every part) say so with `BisectOptions`.
 */

/** How one attempt on a part ended. A failed attempt must have left nothing behind. */
export type PartOutcome = { readonly ok: true } | { readonly ok: false; readonly error: unknown };

export const PASSED: PartOutcome = Object.freeze({ ok: true });

/** A part the bisection stopped at: one item that fails alone, or a part it was told not to split. */
export interface FailedPart<T> {
  readonly items: readonly T[];
  /** What the attempt on exactly this part failed with. */
  readonly error: unknown;
}

export interface BisectOptions {
  /** Asked before a failed part of two or more items is split; false = that part is reported whole. */
  readonly maySplit?: () => boolean;
  /**
   * When a failed part's first half failed too, its second half is tried but, if it fails, reported
   * whole instead of being split: both halves failing says the operation fails, not an item. With
   * an operation that fails for every part this costs 1 + 2·⌈log2 n⌉ attempts instead of 2n − 1.
   */
  readonly stopWhenBothHalvesFail?: boolean;
}

export interface BisectResult<T> {
  /** In the order of `items`; empty when the first attempt, on the whole batch, passed. */
  readonly failed: readonly FailedPart<T>[];
  readonly attempts: number;
}

/**
 * Tries `attempt` on `items`, then on halves of each failed part (first half first). Nothing but
 * `attempt` runs, so this is pure logic around it. An `attempt` that throws (instead of returning a
 * failure) ends the bisection with that error: the caller's way to say "stop, nothing more can be
 * tried", e.g. a transaction that is gone. No attempt is made on an empty part.
 */
export async function bisect<T>(
  items: readonly T[],
  attempt: (part: readonly T[]) => Promise<PartOutcome>,
  options: BisectOptions = {},
): Promise<BisectResult<T>> {
  const failed: FailedPart<T>[] = [];
  let attempts = 0;
  /** Whether `part` passed as a whole. */
  const run = async (part: readonly T[], splittable: boolean): Promise<boolean> => {
    if (part.length === 0) return true;
    attempts++;
    const outcome = await attempt(part);
    if (outcome.ok) return true;
    if (part.length > 1 && splittable && options.maySplit?.() !== false) {
      const half = Math.ceil(part.length / 2);
      const first = await run(part.slice(0, half), true);
      await run(part.slice(half), first || options.stopWhenBothHalvesFail !== true);
      return false;
    }
    failed.push({ items: part, error: outcome.error });
    return false;
  };
  await run(items, true);
  return { failed, attempts };
}

/** An item that made `operation` fail on its own, with that failure's error. */
export interface FailedItem<T> {
  readonly item: T;
  readonly error: unknown;
}

const SAVEPOINT_NAME = /^[a-z_]+$/;

/**
 * `bisect` with each attempt in a savepoint of `trx`: `operation` runs its statements on a part;
 * if it throws, the transaction is rolled back to the savepoint (undoing only that part's work, and
 * keeping every lock taken before it) and the part is split. Returns the items that fail alone, in
 * the order of `items` (empty when the whole batch passed at once). Every part is split down to
 * single items: nothing here gives up on a part, so every failing item is found.
 *
 * Cost: one SAVEPOINT and one RELEASE per attempt (two round trips of about 0.1 ms), ROLLBACK TO
 * and RELEASE on a failed one; the attempts are bounded as for `bisect`.
 *
 * Throws when a savepoint statement fails: the transaction is gone (a lost connection), which is
 * the caller's business.
 */
export async function savepointBisect<T>(
  trx: Transaction<Database>,
  savepoint: string,
  items: readonly T[],
  operation: (part: readonly T[]) => Promise<unknown>,
): Promise<FailedItem<T>[]> {
  // Goes into the statements as it is: a name of the caller's, never data.
  if (!SAVEPOINT_NAME.test(savepoint)) throw new Error(`not a savepoint name: ${JSON.stringify(savepoint)}`);
  const { failed } = await bisect(items, async (part) => {
    await sql.raw(`SAVEPOINT ${savepoint}`).execute(trx);
    try {
      await operation(part);
      await sql.raw(`RELEASE SAVEPOINT ${savepoint}`).execute(trx);
      return PASSED;
    } catch (error) {
      // If this throws too, the transaction is gone (connection lost): the caller's business.
      await sql.raw(`ROLLBACK TO SAVEPOINT ${savepoint}`).execute(trx);
      await sql.raw(`RELEASE SAVEPOINT ${savepoint}`).execute(trx);
      return { ok: false, error };
    }
  });
  return failed.flatMap((f) => f.items.map((item) => ({ item, error: f.error })));
}
