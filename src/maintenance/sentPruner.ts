import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';

/**
 * Retention of sent events: deletes records of events sent longer than `retentionSeconds` ago
 * (shardrelay.sent_event), and rows an earlier release left in the outbox as `sent`.
 *
 * - Bounded: each step is one call of `shardrelay.prune_sent(retention, batchRows)`
 *   (migrations/0007_sent_record.ts), one short transaction deleting at most `batchRows` rows; the
 *   pruner pauses `pauseMs` between steps so vacuum and claims keep their share of the server.
 * - One replica at a time: each step takes a transaction-level advisory lock with try-lock; a
 *   replica that does not get it skips the round (another replica is pruning).
 * - Never blocks claims: it deletes records and rows already sent, never a pending or dead row, so
 *   it takes no row lock a claim wants, and it runs on its own connection.
 *
 * States: idle (timer armed) → pruning (steps until one deletes less than a full batch, another
 * replica holds the lock, or stop) → idle. `stop()` waits for the step in progress.
 */
export interface SentPrunerOptions {
  readonly db: Kysely<Database>;
  readonly retentionSeconds: number;
  readonly logger: Logger;
  /** Pause between rounds; default 5 s. */
  readonly intervalMs?: number;
  /** Rows per step; default 5,000 (about 20-40 ms of PostgreSQL time on 2 cores). */
  readonly batchRows?: number;
  /** Pause between two steps of one round; default 10 ms. */
  readonly pauseMs?: number;
}

export interface PruneRound {
  readonly deleted: number;
  readonly steps: number;
  /** Another replica held the pruning lock: nothing was done. */
  readonly busy: boolean;
}

export class SentPruner {
  readonly #options: SentPrunerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<PruneRound> | undefined;
  #stopped = false;
  #deletedTotal = 0;

  constructor(options: SentPrunerOptions) {
    this.#options = options;
  }

  get deletedTotal(): number {
    return this.#deletedTotal;
  }

  start(): void {
    this.#stopped = false;
    this.#arm(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running?.catch(() => {});
  }

  /** One round now: steps until a short one (tests call it directly). */
  async pruneOnce(): Promise<PruneRound> {
    const { db, retentionSeconds } = this.#options;
    const batchRows = this.#options.batchRows ?? 5_000;
    let deleted = 0;
    let steps = 0;
    for (;;) {
      const { rows } = await sql<{ n: string }>`
        SELECT shardrelay.prune_sent(make_interval(secs => ${retentionSeconds}), ${batchRows}) AS n`.execute(
        db,
      );
      const n = Number(rows[0]?.n ?? 0);
      if (n < 0) return { deleted, steps, busy: true };
      steps++;
      deleted += n;
      this.#deletedTotal += n;
      if (n < batchRows || this.#stopped) return { deleted, steps, busy: false };
      await new Promise((resolve) => setTimeout(resolve, this.#options.pauseMs ?? 10));
    }
  }

  #arm(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#running = this.pruneOnce();
      void this.#running
        .then((round) => {
          if (round.deleted > 0) this.#options.logger.debug({ ...round }, 'pruned sent events');
        })
        .catch((error: unknown) =>
          this.#options.logger.warn({ err: toError(error).message }, 'pruning sent events failed; retrying'),
        )
        .finally(() => this.#arm(this.#options.intervalMs ?? 5_000));
    }, delayMs);
    this.#timer.unref();
  }
}
