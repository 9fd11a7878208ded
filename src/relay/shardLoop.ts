/**
 * The loop of one (shard, lane): runs batches when triggered, never two at once.
 *
 * States and transitions:
 *
 *   idle ──trigger──▶ running ──batch came back full, or a trigger arrived meanwhile──▶ running
 *                        │ ──batch partial or empty──▶ idle
 *                        │ ──batch threw──▶ backingOff ──delay over──▶ idle (next trigger runs it)
 *   any ──stop()──▶ stopping ──in-flight batch finished──▶ stopped
 *
 * A trigger is a scheduler tick, a LISTEN wake-up or a direct call. Triggers while running are
 * folded into one re-run, so a burst of NOTIFYs costs one extra batch, not one per notification.
 *
 * Gathering (`gatherMs`, the batch lane): after a partial batch, the next one starts no sooner
 * than `gatherMs` after that batch started; triggers meanwhile fold into it (the loop counts as
 * running while it waits). So under a steady stream of inserts, each of which NOTIFYs, a loop
 * claims what arrived in at least `gatherMs` instead of what arrived during one round trip. A
 * full batch re-runs at once (a backlog drains at full speed), and a loop idle for longer than
 * `gatherMs` starts at once (a lone row is not delayed).
 * The loop knows nothing of SQL or sinks: it is given `runBatch`, so its scheduling is testable on
 * its own.
 */
export const LOOP_STATES = {
  idle: 'idle',
  running: 'running',
  backingOff: 'backingOff',
  stopping: 'stopping',
  stopped: 'stopped',
} as const;
export type LoopState = (typeof LOOP_STATES)[keyof typeof LOOP_STATES];

export interface ShardLoopOptions {
  /**
   * Runs one batch; answers whether it was full (a full batch means more rows may wait).
   * `running()` turns false once stop() is called: a batch that has not claimed yet (say, it waits
   * for a pooled connection) asks it right before its claim and claims nothing after a stop.
   */
  readonly runBatch: (running: () => boolean) => Promise<{ readonly full: boolean }>;
  readonly onError: (error: unknown, consecutiveFailures: number) => void;
  /** Pause after a failed batch before the next trigger may run one, by consecutive failures. */
  readonly errorBackoffMs: (consecutiveFailures: number) => number;
  /** Least time from the start of a partial batch to the start of the next; default 0. */
  readonly gatherMs?: number;
}

export class ShardLoop {
  #state: LoopState = LOOP_STATES.idle;
  #rerun = false;
  #failures = 0;
  #inFlight: Promise<void> | undefined;
  #backoffTimer: NodeJS.Timeout | undefined;
  /** performance.now() before which no batch starts (set after a partial batch, when gathering). */
  #notBefore = 0;
  /** Ends the gathering wait early (stop()). */
  #endWait: (() => void) | undefined;
  readonly #options: ShardLoopOptions;

  constructor(options: ShardLoopOptions) {
    this.#options = options;
  }

  readonly #running = (): boolean => this.#state === LOOP_STATES.running;

  get state(): LoopState {
    return this.#state;
  }

  /** Asks for a batch now; a no-op while backing off or stopping, folded into one re-run while running. */
  trigger(): void {
    if (this.#state === LOOP_STATES.running) {
      this.#rerun = true;
      return;
    }
    if (this.#state !== LOOP_STATES.idle) return;
    this.#state = LOOP_STATES.running;
    this.#inFlight = this.#drain().finally(() => {
      this.#inFlight = undefined;
    });
  }

  async #drain(): Promise<void> {
    for (;;) {
      this.#rerun = false;
      await this.#gather();
      if (this.#state !== LOOP_STATES.running) return;
      const started = performance.now();
      let full: boolean;
      try {
        ({ full } = await this.#options.runBatch(this.#running));
        this.#failures = 0;
      } catch (error) {
        this.#failures++;
        this.#options.onError(error, this.#failures);
        if (this.#state === LOOP_STATES.running) {
          this.#state = LOOP_STATES.backingOff;
          this.#backoffTimer = setTimeout(() => {
            this.#backoffTimer = undefined;
            if (this.#state === LOOP_STATES.backingOff) this.#state = LOOP_STATES.idle;
          }, this.#options.errorBackoffMs(this.#failures));
        }
        return;
      }
      if (this.#state !== LOOP_STATES.running) return;
      this.#notBefore = full ? 0 : started + (this.#options.gatherMs ?? 0);
      if (!full && !this.#rerun) {
        this.#state = LOOP_STATES.idle;
        return;
      }
      // Let other loops' I/O callbacks run between back-to-back batches of a large backlog.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** Waits until `#notBefore` (gathering rows after a partial batch), or until stop(). */
  async #gather(): Promise<void> {
    // A loop, because a timer fires by libuv's clock, which counts whole milliseconds: measured
    // over 300 timers, up to 1.65 ms before performance.now() reached their time (a CI run saw a
    // batch start 78.6 ms after a partial one, with gatherMs 80).
    for (;;) {
      const wait = this.#notBefore - performance.now();
      if (wait <= 0 || this.#state !== LOOP_STATES.running) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.ceil(wait));
        this.#endWait = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#endWait = undefined;
    }
  }

  /** Stops triggering new batches and waits for the one in flight (if any) to finish. */
  async stop(): Promise<void> {
    if (this.#backoffTimer) clearTimeout(this.#backoffTimer);
    this.#backoffTimer = undefined;
    this.#state = LOOP_STATES.stopping;
    this.#endWait?.();
    await this.#inFlight;
    this.#state = LOOP_STATES.stopped;
  }
}
