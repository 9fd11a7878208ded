import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';

/**
 * Housekeeping of the observability tables: every `intervalMs` (default 5 minutes) one call of
 * shardrelay.maintain() (migrations/0004_observability.ts), which folds finished hours of the
 * per-minute samples into the hourly rollups (finished 10 minutes ago) and deletes minutes, lag
 * samples, hours and completed canary rows past their keep. Every replica that observes runs it:
 * every step is idempotent, so two replicas calling it at once only do the same work twice.
 *
 * Why every 5 minutes: an hour is folded at most 5 minutes after it ends (volume_hourly reads the
 * minutes until then), and a call costs one short transaction however many replicas run.
 *
 * It was part of the observer's cycle; it is its own module so that the observer only reads.
 * The first call comes one interval after start, as before: a replica that restarts in a loop does
 * not fold on every start.
 *
 * States: idle (timer armed) → maintaining (one call) → idle. `stop()` clears the timer and waits
 * for the call in progress.
 */
export interface HousekeepingOptions {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  /** Default 5 minutes. */
  readonly intervalMs?: number;
}

export interface Housekeeping {
  /** One call of shardrelay.maintain() now (tests). */
  maintainOnce(): Promise<void>;
  stop(): Promise<void>;
}

export const MAINTAIN_EVERY_MS = 5 * 60_000;

export function startHousekeeping(options: HousekeepingOptions): Housekeeping {
  const { db, logger } = options;
  let running: Promise<void> | undefined;
  const maintainOnce = async () => {
    await sql`SELECT shardrelay.maintain()`.execute(db);
  };
  const timer = setInterval(() => {
    if (running) return;
    running = maintainOnce()
      .catch((error: unknown) =>
        logger.warn({ err: toError(error).message }, 'shardrelay.maintain() failed; retrying next interval'),
      )
      .finally(() => (running = undefined));
  }, options.intervalMs ?? MAINTAIN_EVERY_MS);
  timer.unref();
  return {
    maintainOnce,
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
