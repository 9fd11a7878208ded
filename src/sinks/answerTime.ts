/**
 * A receiver's recent answer time, to tell whether a request started now will likely be answered
 * before its batch's deadline.
 *
 * Why: a request still in flight at the deadline ends `unknown` although the receiver often takes
 * it a moment later, and the relay sends the event again: a duplicate at the receiver. Under load,
 * with concurrent batches queued for the same request slots, that was measured to be most of the
 * duplicates: with a 4 s deadline and the machine saturated (8 batches sharing 16 request slots),
 * 1,274 of a route's 5,000 events reached a webhook twice; with this check, 12 (same test, same
 * load: test/routing/routedDelivery.test.ts with the deadline cut). A request the sink does not
 * start fails `retryable` with nothing sent, which costs a retry but never a duplicate.
 */

/** Start a request only with at least this many recent answer times left before the deadline. */
export const START_MARGIN = 1.5;
/** Weight of the newest answer in the moving average: about the last ten answers count. */
const WEIGHT = 0.2;

export class AnswerTime {
  #ms: number | undefined;

  /** Records the time one answered request took, whatever its status. */
  record(ms: number): void {
    this.#ms = this.#ms === undefined ? ms : this.#ms + WEIGHT * (ms - this.#ms);
  }

  /** The moving average, ms; undefined until a request was answered. */
  get ms(): number | undefined {
    return this.#ms;
  }

  /** Whether `remainingMs` leaves room for an answer; true while nothing is known. */
  fits(remainingMs: number): boolean {
    return this.#ms === undefined || remainingMs >= START_MARGIN * this.#ms;
  }

  /**
   * Why a request with `remainingMs` left before its batch deadline is not started (the outcome's
   * reason), or undefined when it fits. `whose` names the answer time, e.g. "the receiver's".
   */
  tooLate(remainingMs: number, whose: string): string | undefined {
    return this.fits(remainingMs)
      ? undefined
      : `not sent: ${remainingMs} ms left before the batch deadline, too little for ${whose} recent answer time (${Math.round(this.#ms ?? 0)} ms)`;
  }
}
