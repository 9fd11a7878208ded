import type { BackoffPolicy } from '../backoff.js';

/**
 * How long rows a sink deferred (never offered to the broker) wait before they are due again, per
 * lane of a relay (one sink): what a per-row backoff does for failed rows, without counting
 * attempts.
 *
 * - While the lane's batches still confirm rows (a sink that is up but short of time or request
 *   slots), the first retry delay: the rows behind the deferred ones go first meanwhile.
 * - Once the lane has confirmed nothing since it began deferring (a broker down, refusing
 *   connections), half the time since then, within the retry delay's bounds: a row deferred t
 *   seconds into an outage comes back at about 1.5 t, so claims of the waiting rows thin out as the
 *   outage goes on (as a doubling backoff would), and a row never waits longer than the retry cap.
 *
 * Why not the attempts: a row's attempts count the deliveries a broker could have judged, and
 * `max_attempts` turns them into dead letters. Counted during an outage (before this), a RabbitMQ
 * refusing connections dead-lettered every waiting row once the backoffs had added up to
 * `max_attempts` (with the defaults after 4 to 9 minutes; test/relay/brokerOutage.test.ts).
 */
export class DeferralDelay {
  #deferringSince: number | undefined;

  constructor(
    private readonly policy: Pick<BackoffPolicy, 'baseMs' | 'capMs'>,
    private readonly now: () => number = Date.now,
  ) {}

  /** The delay for rows deferred by a batch that did (`confirmedAny`) or did not confirm a row. */
  delayMs(confirmedAny: boolean): number {
    const { baseMs, capMs } = this.policy;
    if (confirmedAny || this.#deferringSince === undefined) return baseMs;
    return Math.min(capMs, Math.max(baseMs, (this.now() - this.#deferringSince) / 2));
  }

  /** After every batch that claimed rows: `sent` and `deferred` as the batch counted them. */
  record(batch: { readonly sent: number; readonly deferred: number }): void {
    if (batch.sent > 0 || batch.deferred === 0) this.#deferringSince = undefined;
    else this.#deferringSince ??= this.now();
  }
}
