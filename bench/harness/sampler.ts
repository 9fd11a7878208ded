/**
 * Lag and throughput over time while the relay runs under offered load. Lag is counted, not
 * queried: rows the driver committed minus rows the relay reported sent. A `count(*)` of pending
 * rows every 100 ms would itself load the PostgreSQL being measured.
 */
import type { BenchChild } from './child.js';

export interface Sample {
  /** Epoch ms. */
  readonly at: number;
  readonly inserted: number;
  readonly sent: number;
  readonly lag: number;
  readonly rssBytes: number;
}

export class Sampler {
  readonly samples: Sample[] = [];
  #running: Promise<void> | undefined;
  #stopped = false;
  #error: Error | undefined;

  constructor(
    private readonly child: BenchChild,
    /** Rows committed so far by everything that inserts during the phase. */
    private readonly inserted: () => number,
    private readonly intervalMs: number,
  ) {}

  start(): void {
    this.#running ??= this.#loop();
  }

  get latest(): Sample | undefined {
    return this.samples.at(-1);
  }

  async #loop(): Promise<void> {
    while (!this.#stopped) {
      let usage;
      try {
        usage = await this.child.usage();
      } catch (error) {
        // Kept for stop(): a rejection nobody awaits yet would end the driver.
        this.#error = error instanceof Error ? error : new Error(String(error));
        return;
      }
      const inserted = this.inserted();
      this.samples.push({
        at: Date.now(),
        inserted,
        sent: usage.sent,
        lag: Math.max(0, inserted - usage.sent),
        rssBytes: usage.rssBytes,
      });
      await new Promise((resolve) => setTimeout(resolve, this.intervalMs));
    }
  }

  /** Stops sampling; throws if sampling failed (the relay process died). */
  async stop(): Promise<Sample[]> {
    this.#stopped = true;
    await this.#running;
    if (this.#error) throw this.#error;
    return this.samples;
  }

  /** Samples taken in [from, to] (epoch ms). */
  between(from: number, to: number): Sample[] {
    return this.samples.filter((s) => s.at >= from && s.at <= to);
  }
}

/** Rows per second between two samples. */
export function rate(from: Sample, to: Sample, field: 'sent' | 'inserted'): number {
  const seconds = (to.at - from.at) / 1000;
  return seconds > 0 ? (to[field] - from[field]) / seconds : 0;
}

/** Mean of the lag over samples. */
export function meanLag(samples: readonly Sample[]): number {
  return samples.length === 0 ? 0 : samples.reduce((a, s) => a + s.lag, 0) / samples.length;
}
