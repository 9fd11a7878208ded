/**
 * A poll that remembers the longest it took. A replicas test bounds how long the relay takes to
 * react; a PostgreSQL that answers everything late for a moment (a checkpoint, another file's
 * `CREATE DATABASE`, a saturated machine) slows the replicas' statements just as much as the
 * test's own, and that delay is not the relay's. The test adds the slowest of its own polls to
 * the relay's share (a few ms on a quiet machine; 95-234 ms seen at load 10-12).
 */
export class TimedPoll<T> {
  #slowestMs = 0;
  readonly #poll: () => Promise<T>;

  constructor(poll: () => Promise<T>) {
    this.#poll = poll;
  }

  /** Runs the poll, timing it. */
  readonly run = async (): Promise<T> => {
    const started = performance.now();
    try {
      return await this.#poll();
    } finally {
      this.#slowestMs = Math.max(this.#slowestMs, performance.now() - started);
    }
  };

  /** The longest a poll took so far, in ms. */
  get slowestMs(): number {
    return this.#slowestMs;
  }
}
