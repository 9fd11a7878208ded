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
  /** Runs one batch; returns how many rows it claimed and whether the batch was full. */
  readonly runBatch: () => Promise<{ readonly full: boolean }>;
  readonly onError: (error: unknown, consecutiveFailures: number) => void;
  /** Pause after a failed batch before the next trigger may run one, by consecutive failures. */
  readonly errorBackoffMs: (consecutiveFailures: number) => number;
}

export class ShardLoop {
  #state: LoopState = LOOP_STATES.idle;
  #rerun = false;
  #failures = 0;
  #inFlight: Promise<void> | undefined;
  #backoffTimer: NodeJS.Timeout | undefined;
  readonly #options: ShardLoopOptions;

  constructor(options: ShardLoopOptions) {
    this.#options = options;
  }

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
      let full: boolean;
      try {
        ({ full } = await this.#options.runBatch());
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
      if (!full && !this.#rerun) {
        this.#state = LOOP_STATES.idle;
        return;
      }
      // Let other loops' I/O callbacks run between back-to-back batches of a large backlog.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** Stops triggering new batches and waits for the one in flight (if any) to finish. */
  async stop(): Promise<void> {
    if (this.#backoffTimer) clearTimeout(this.#backoffTimer);
    this.#backoffTimer = undefined;
    this.#state = LOOP_STATES.stopping;
    await this.#inFlight;
    this.#state = LOOP_STATES.stopped;
  }
}
