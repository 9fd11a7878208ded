import { backoffDelayMs } from '../backoff.js';
import { raceDeadline } from '../raceDeadline.js';

export interface ConnectAttemptsOptions {
  /** Back-off between failed attempts: doubles from `initialMs` up to `maxMs`. */
  readonly backoff: { readonly initialMs: number; readonly maxMs: number };
  /** The text of a failed attempt's error, credentials already scrubbed. */
  readonly describe: (error: unknown) => string;
  /** After each failed attempt (its number since the last success and its error), for the log. */
  readonly onFailure: (attempt: number, error: string) => void;
}

/**
 * How a broker sink's link manager (RabbitMQ, AMQP 1.0, each STOMP connection) gets a connection:
 * one attempt at a time, shared by every batch that needs it; after a failed attempt the next one
 * waits out the back-off, and a batch asking meanwhile fails at once with the reason (its rows go
 * back as retryable) instead of dialling a broker that just refused; a batch waits for an attempt
 * no longer than its own deadline (the attempt goes on for the next batch).
 */
export class ConnectAttempts<L> {
  readonly #options: ConnectAttemptsOptions;
  #inFlight: Promise<L> | null = null;
  #failed = 0;
  #nextAttemptAt = 0;
  #lastError = '';

  constructor(options: ConnectAttemptsOptions) {
    this.#options = options;
  }

  /** The attempt under way, if any (a closing sink waits for it before it closes what it made). */
  get inFlight(): Promise<L> | null {
    return this.#inFlight;
  }

  /** True while the back-off after a failed attempt holds the next one back. */
  backingOff(now: number = Date.now()): boolean {
    return this.#nextAttemptAt > now;
  }

  /**
   * The connection `open` makes, or the one the attempt under way will make, within `deadline`.
   * `adopt` takes a fresh connection (and may refuse it by throwing: the sink closed meanwhile).
   */
  connect(deadline: number, open: (deadline: number) => Promise<L>, adopt: (fresh: L) => L): Promise<L> {
    if (!this.#inFlight) {
      const wait = this.#nextAttemptAt - Date.now();
      if (wait > 0) {
        throw new Error(
          `reconnecting in ${wait} ms after ${this.#failed} failed attempt(s): ${this.#lastError}`,
        );
      }
      const attempt = open(deadline).then(
        (fresh) => {
          this.#failed = 0;
          this.#nextAttemptAt = 0;
          return adopt(fresh);
        },
        (error: unknown) => {
          this.#failed += 1;
          this.#lastError = this.#options.describe(error);
          const { initialMs, maxMs } = this.#options.backoff;
          this.#nextAttemptAt =
            Date.now() + backoffDelayMs({ baseMs: initialMs, capMs: maxMs }, this.#failed);
          this.#options.onFailure(this.#failed, this.#lastError);
          throw error;
        },
      );
      this.#inFlight = attempt;
      const settled = (): void => {
        this.#inFlight = null;
      };
      attempt.then(settled, settled);
    }
    return raceDeadline(this.#inFlight, deadline, 'the batch deadline passed while connecting');
  }
}
