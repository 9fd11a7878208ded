/**
 * Offered load: inserts rows at a set rate on a connection of its own, one statement every 5 ms
 * (200 a second) with the rows due since the last, each a commit and one NOTIFY, as an
 * application's transactions would be: at 50,000 rows/s, 250 rows a statement. A statement that
 * takes longer than a tick is followed by the next at once.
 *
 * When PostgreSQL cannot take the rate, the generator falls behind; it catches up by at most half
 * a second of rows and drops the rest, so `inserted` is what was really offered and a stall does
 * not turn into a burst. The driver compares the achieved rate with the target to tell "the relay
 * could not keep up" from "the machine could not even insert that fast".
 */
import type pg from 'pg';
import { insertRowsSql, padding } from './database.js';

const TICK_MS = 5;
const MAX_CHUNK = 5_000;

export class LoadGenerator {
  readonly #client: pg.Client;
  readonly #padding: string;
  #rate = 0;
  #since = 0;
  #insertedSince = 0;
  #inserted = 0;
  #dropped = 0;
  #statements = 0;
  #running: Promise<void> | undefined;
  #stopped = false;

  constructor(client: pg.Client, payloadBytes: number) {
    this.#client = client;
    this.#padding = padding(payloadBytes);
  }

  /** Rows committed so far. */
  get inserted(): number {
    return this.#inserted;
  }

  /** Insert statements (each a commit and a NOTIFY) so far. */
  get statements(): number {
    return this.#statements;
  }

  get dropped(): number {
    return this.#dropped;
  }

  get rate(): number {
    return this.#rate;
  }

  setRate(rowsPerSec: number): void {
    this.#rate = rowsPerSec;
    this.#since = performance.now();
    this.#insertedSince = 0;
  }

  start(rowsPerSec: number): void {
    this.setRate(rowsPerSec);
    this.#running ??= this.#loop();
  }

  async #loop(): Promise<void> {
    let nextTick = performance.now();
    while (!this.#stopped) {
      const due = Math.floor((this.#rate * (performance.now() - this.#since)) / 1000) - this.#insertedSince;
      const cap = Math.ceil(this.#rate / 2);
      if (due > cap) {
        this.#dropped += due - cap;
        this.#insertedSince += due - cap;
      }
      const n = Math.min(due, cap, MAX_CHUNK);
      if (n > 0) {
        await this.#client.query(insertRowsSql(), [n, this.#padding]);
        this.#insertedSince += n;
        this.#inserted += n;
        this.#statements += 1;
      }
      // One statement per tick at most, whatever the rate: without this wait the loop ran its
      // statements back to back (a few rows each, ~1,400 commits a second at 50,000 rows/s), so
      // the offered load's cost was set by how fast PostgreSQL answered, not by the rate.
      nextTick = Math.max(nextTick + TICK_MS, performance.now());
      const wait = nextTick - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  /** Stops after the statement in flight; `inserted` is final once this resolves. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#running;
  }
}

/** Inserts `rows` at once in one statement (a spike), on its own connection; resolves at commit. */
export async function insertSpike(client: pg.Client, rows: number, payloadBytes: number): Promise<void> {
  await client.query(insertRowsSql(), [rows, padding(payloadBytes)]);
}
