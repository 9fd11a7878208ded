import pg from 'pg';
import { toError } from '../errors.js';

/**
 * A pg client (for `pg.Pool`'s `Client` option) that does not wait for the answers of the
 * transaction-control statements it is given bare: `BEGIN`, `SAVEPOINT x` and `RELEASE SAVEPOINT
 * x`, written without parameters. It runs in pipeline mode, so such a statement goes out at once
 * and the next one follows it on the wire without waiting for its answer; that next statement's
 * answer then also stands for them: if one of them failed, the next statement throws its error.
 *
 * Why: the real-time lane's batch was six round trips, BEGIN, claim, SAVEPOINT, completion,
 * RELEASE, COMMIT, each a wake-up of the relay thread and of its backend that, on cores shared
 * with a draining batch lane, may wait behind that work in the run queue. With this it is three:
 * BEGIN+claim, SAVEPOINT+completion, RELEASE+COMMIT. Measured by bench/studies/realtimeRoundTrips.ts,
 * single-row real-time batches alternating between the two clients on a loaded 2-core machine
 * (load average 31-38): insert → sent_at p50 52.6 → 38.4 ms, p95 137.4 → 99.9 ms (0.73×);
 * bench/RESULTS.md, "Issue 14".
 *
 * Why it is safe: PostgreSQL runs pipelined statements in order, so the claim runs inside the
 * transaction exactly as before. A deferred statement that fails is reported by the next one,
 * which always comes: every transaction ends with COMMIT or ROLLBACK, and those are awaited. That
 * matters for COMMIT: after a failed statement PostgreSQL answers COMMIT by rolling back without
 * an error, and the deferred error is what tells the caller that nothing was committed.
 */
const DEFERRABLE = /^(?:begin|savepoint [a-z_][a-z0-9_]*|release savepoint [a-z_][a-z0-9_]*)$/i;

/** The error of a deferred statement, or undefined once it succeeded. */
type Deferred = Promise<Error | undefined>;

export class DeferringClient extends pg.Client {
  #deferred: Deferred[] = [];

  constructor(config?: string | pg.ClientConfig) {
    super({ ...(typeof config === 'string' ? { connectionString: config } : config), pipeline: true });
  }

  // pg's overloads: only (text, values) without a callback is deferred or flushed; every other
  // form goes to pg as it is. The implementation signature has to be this loose to cover them.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- pg's query() overloads
  override query(...args: any[]): any {
    const [text, values, callback] = args as [unknown, unknown, unknown];
    const plain =
      typeof text === 'string' &&
      callback === undefined &&
      (values === undefined || (Array.isArray(values) && values.length === 0));
    if (plain && DEFERRABLE.test(text)) {
      const answer = (super.query(text) as Promise<unknown>).then(() => undefined, toError);
      this.#deferred.push(answer);
      return Promise.resolve({ command: text.split(' ')[0]?.toUpperCase(), rowCount: null, rows: [] });
    }
    if (this.#deferred.length === 0 || typeof text !== 'string' || callback !== undefined)
      return super.query(...(args as Parameters<pg.Client['query']>));
    const deferred = this.#deferred;
    this.#deferred = [];
    const result = (super.query(text, values as unknown[]) as Promise<pg.QueryResult>).then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    // A ROLLBACK discards the transaction anyway: the error that led to it is the caller's, not
    // a deferred statement's that failed because of it.
    const discarding = /^rollback$/i.test(text);
    return (async () => {
      const outcome = await result;
      const errors = await Promise.all(deferred);
      if (!discarding) for (const error of errors) if (error) throw error;
      if ('error' in outcome) throw outcome.error;
      return outcome.value;
    })();
  }
}
