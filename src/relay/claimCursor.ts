/**
 * Where a (shard, lane)'s next claim starts reading the pending index: after the last row of the
 * previous batch while the shard drains a backlog, from the shard's first entry otherwise.
 *
 * Why: every row sent is deleted, and its entry in the shard's pending index stays until a vacuum
 * removes it. A claim that reads the index from the shard's first entry walks all of them before
 * its first live row (PostgreSQL skips an entry it has marked dead cheaply, but still reads its
 * page; the first claim after the delete also visits the heap for it). Between two vacuums a
 * shard drained at 7,000 rows/s gathers tens of thousands. Found in the max-sustainable phase
 * (PostgreSQL 15, 2 cores, 8 shards, autovacuum off so the relay vacuums every 10 s): at the step
 * where the relay fell behind it sent 38,000-39,000 rows/s, and 47,700-48,600 with the outbox
 * vacuumed every 2 s. With this cursor, old and new code alternated twice (3 rounds each), that
 * step sent 36,600-40,200 rows/s before and 46,000-47,400 after, both at ~1.9 cores of CPU in all;
 * the null-sink drain of a 100,000-row backlog went from 63,800 to 66,900-69,100 rows/s and
 * PostgreSQL's CPU there from 14.1 to 11.8-12.1 ms per 1,000 rows (bench/RESULTS.md).
 * A claim after the previous batch's last id starts past every entry this loop deleted.
 *
 * Why not always: a row can become claimable below that point. A transaction that took its id
 * earlier commits later; a row retried, deferred or released keeps its id and is due again later;
 * a batch rolled back leaves its rows pending. So a claim starts after the last id only
 * - when the previous batch of this loop came back full (the shard has more rows: a backlog), and
 *   was completed (a batch that threw or claimed nothing resets the cursor), and
 * - when the last claim from the shard's first entry was less than `fullScanEveryMs` ago.
 * Any other claim reads from the first entry and finds those rows: after a partial batch (the
 * shard caught up), after a retry of the shard came due (the relay's retry timers reset the
 * cursor, so a retried row keeps its "claimed within 50 ms of coming due"), and at least every
 * `fullScanEveryMs` while it drains. A row committed late below the cursor is thus claimed at most
 * `fullScanEveryMs` later than it would have been, and only while its shard drains a backlog of
 * full batches, whose rows above it wait their turn too.
 *
 * Used by the batch lane only: a real-time row is never claimed later for it. Per-key ordering
 * on: never (a key's earlier rows must be in the claim or locked elsewhere; relay/claims.ts
 * `keyHeadIsDue` and `keyBlockers`).
 */
export const FULL_SCAN_EVERY_MS = 1_000;

export class ClaimCursor {
  readonly #fullScanEveryMs: number;
  readonly #now: () => number;
  /** The last id of the previous batch, when the next claim may start after it. */
  #after: string | undefined;
  /** When the last claim from the shard's first entry started; -Infinity = never. */
  #lastFullScan = Number.NEGATIVE_INFINITY;

  constructor(options: { readonly fullScanEveryMs?: number; readonly now?: () => number } = {}) {
    this.#fullScanEveryMs = options.fullScanEveryMs ?? FULL_SCAN_EVERY_MS;
    this.#now = options.now ?? (() => performance.now());
  }

  /**
   * Called right before a claim: the id it starts after, or undefined for a claim from the shard's
   * first entry. Until `completed` or `reset`, the cursor stays where it was.
   */
  startAfter(): string | undefined {
    const now = this.#now();
    if (this.#after !== undefined && now - this.#lastFullScan < this.#fullScanEveryMs) return this.#after;
    this.#lastFullScan = now;
    return undefined;
  }

  /**
   * A batch was claimed and its completions recorded: `lastId` is its highest id, `full` whether it
   * took as many rows as it asked for.
   */
  completed(lastId: string | undefined, full: boolean): void {
    this.#after = full ? lastId : undefined;
  }

  /** The batch threw, claimed nothing or left its rows pending: the next claim reads from the start. */
  reset(): void {
    this.#after = undefined;
  }
}

/**
 * One lane's cursors, one per shard, made on first use. A cursor belongs to the shard count it was
 * made under: after a change of the count, shard `s` is another slice of the table, so it gets a
 * new cursor, whose first claim reads from the start.
 */
export class ClaimCursors {
  readonly #byShard = new Map<number, { readonly shardCount: number; readonly cursor: ClaimCursor }>();

  of(shard: number, shardCount: number): ClaimCursor {
    const held = this.#byShard.get(shard);
    if (held?.shardCount === shardCount) return held.cursor;
    const cursor = new ClaimCursor();
    this.#byShard.set(shard, { shardCount, cursor });
    return cursor;
  }

  /** The shard's next claim reads from its first entry (a retry of it came due). */
  reset(shard: number): void {
    this.#byShard.get(shard)?.cursor.reset();
  }
}
