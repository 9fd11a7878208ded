import type { Kysely } from 'kysely';
import cron, { type ScheduledTask } from 'node-cron';
import { EXPIRED, untilDeadline } from '../raceDeadline.js';
import { exponentialDelayMs } from '../backoff.js';
import type { Database, Lane } from '../db/schema.js';
import { ensurePendingShardIndexes } from '../db/shardIndex.js';
import { ShardRelayError, toError } from '../errors.js';
import type { Logger } from '../logger.js';
import { ShardLoop } from './shardLoop.js';
import { readShardConfig, type ShardConfig } from './shardConfig.js';
import type { HeldShards, ShardOwnership } from './shardOwnership.js';

export interface LaneRunner {
  readonly lane: Lane;
  /** Least time between the starts of a partial batch and the next, per loop (ShardLoop `gatherMs`). */
  readonly gatherMs?: number;
  /** Runs one batch of this lane for a shard; `full` = it claimed a whole batch (more may wait). */
  readonly runShardBatch: (
    shard: number,
    shardCount: number,
    guards?: BatchGuards,
  ) => Promise<{ readonly full: boolean }>;
  /**
   * Which of `shards` have a row this lane could claim now (relay/claims.ts shardsWithDueRows):
   * the tick's poll triggers only their loops. Absent: the poll triggers every loop.
   */
  readonly dueShards?: (shards: readonly number[], shardCount: number) => Promise<ReadonlySet<number>>;
}

/** What a batch asks its shard's ownership while it runs. */
export interface BatchGuards {
  /** Asked once the batch's transaction has its connection, right before the claim. */
  readonly mayClaim: () => boolean;
  /** Asked while the batch is being sent: false = the lease has run out, drop the broker link. */
  readonly mayKeepSending: () => boolean;
}

export interface SchedulerOptions {
  /** Reads shard_config; a connection of its own so a busy lane never delays the tick. */
  readonly db: Kysely<Database>;
  readonly lanes: readonly LaneRunner[];
  readonly ownership: ShardOwnership;
  readonly tickSeconds: number;
  readonly logger: Logger;
  /**
   * Builds the claim indexes of a new shard count (db/shardIndex.ts); default `db`; `null`: this
   * scheduler builds none (the process's other one does). A pool of its own: a build holds its
   * connection for as long as CREATE INDEX CONCURRENTLY takes, which includes waiting for every
   * transaction older than it (a batch stuck on a hung sink, up to its idle-in-transaction
   * timeout), and the control pool's two connections carry the lease renewals and the due-rows
   * probe meanwhile.
   */
  readonly indexDb?: Kysely<Database> | null;
  /** Per-key ordering on: build the claim indexes of its key-aware sharding (db/shardIndex.ts). */
  readonly ordering?: boolean;
  /** Called after every tick (e.g. to check for a drained outbox or refresh gauges). */
  readonly afterTick?: (config: ShardConfig, owned: readonly number[]) => Promise<void> | void;
}

/**
 * Runs one ShardLoop per (owned shard × lane). A node-cron tick (every `tickSeconds`, with a little
 * random delay so replicas do not tick in lockstep) re-reads the shard config and ownership,
 * reconciles the loops and polls: it triggers every new loop and every loop whose shard has a row
 * to claim now. This polling is what guarantees progress (rows whose retry came due, rows a failed
 * batch of another process gave back, rows inserted while the LISTEN connection was down); LISTEN
 * wake-ups (`wake`) only make it faster.
 *
 * The poll asks the lane which shards have due rows (one statement per lane, `dueShards`) instead
 * of running an empty claim on each: an idle replica ran a claim transaction per shard and lane
 * every second (16 with 8 shards, 3 round trips each), the largest part of its idle CPU. Measured
 * with an idle relay (null sink, 8 shards, no rows): see bench/RESULTS.md "Idle cost".
 *
 * When the shard count's generation changes, every loop finishes its in-flight batch before loops
 * of the new generation start, so a batch claimed under `id % 8` is completed before `id % 16`
 * claims begin on this replica.
 */
export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #loops = new Map<string, { shard: number; lane: Lane; loop: ShardLoop }>();
  #config: ShardConfig | undefined;
  #task: ScheduledTask | undefined;
  #ticking: Promise<void> | undefined;
  #tickAgain = false;
  #polling = false;
  /** Lanes whose last due-rows probe failed: its failure is said once, and its recovery. */
  #probeFailing = new Set<Lane>();
  #stopped = false;
  #owned: readonly number[] = [];
  /** The generation `#owned` was refreshed under (its shard numbers mean `id % shardCount` of it). */
  #ownedGeneration: string | undefined;
  #lastTickEndedAt = 0;

  constructor(options: SchedulerOptions) {
    this.#options = options;
  }

  /** Epoch ms at which the last tick ended, successfully or not (0 before the first): liveness. */
  get lastTickEndedAt(): number {
    return this.#lastTickEndedAt;
  }

  get config(): ShardConfig | undefined {
    return this.#config;
  }

  /** Shards this replica may run now (held at the last refresh, and still held by `holds`). */
  get ownedShards(): readonly number[] {
    const holds = this.#options.ownership.holds?.bind(this.#options.ownership);
    return holds ? this.#owned.filter((shard) => holds(shard)) : this.#owned;
  }

  /**
   * `ownedShards` with the generation whose shard numbers they are and until when (Date.now() ms)
   * they stay held without another refresh: what the real-time worker thread runs by (wiring/replica.ts).
   */
  get heldShards(): HeldShards {
    const shards = this.ownedShards;
    const ownership = this.#options.ownership;
    let validUntil = shards.length > 0 ? Infinity : 0;
    if (ownership.validUntil)
      for (const shard of shards) validUntil = Math.min(validUntil, ownership.validUntil(shard));
    return { generation: this.#ownedGeneration, shards, validUntil };
  }

  async start(): Promise<void> {
    await this.tick();
    this.#task = cron.schedule(`*/${this.#options.tickSeconds} * * * * *`, () => this.tick(), {
      name: 'shardrelay-tick',
      noOverlap: true,
      maxRandomDelay: Math.min(200, this.#options.tickSeconds * 100),
      // node-cron logs a skipped overlapping tick as a warning on the console; for us a slow tick
      // is expected under load (the next one comes), so its messages go to our log at debug.
      logger: {
        info: (message) => this.#options.logger.debug({ source: 'node-cron' }, message),
        warn: (message) => this.#options.logger.debug({ source: 'node-cron' }, message),
        error: (message) => this.#options.logger.warn({ source: 'node-cron' }, String(message)),
        debug: (message) => this.#options.logger.debug({ source: 'node-cron' }, String(message)),
      },
    });
  }

  /** Re-reads config and ownership, reconciles loops, triggers them. Never runs twice at once. */
  tick(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (this.#ticking) {
      // Asked for while a tick runs (e.g. a NOTIFY that leases were released): that tick may have
      // read the database before the change, so one more runs right after it.
      this.#tickAgain = true;
      return this.#ticking;
    }
    this.#ticking = this.#tick()
      .catch((error: unknown) => {
        this.#options.logger.error({ err: error }, 'scheduler tick failed; retrying next tick');
      })
      .finally(() => {
        this.#ticking = undefined;
        this.#lastTickEndedAt = Date.now();
        if (this.#tickAgain) {
          this.#tickAgain = false;
          void this.tick();
        }
      });
    return this.#ticking;
  }

  async #tick(): Promise<void> {
    const config = await readShardConfig(this.#options.db);
    /** Set when this tick switches to a new shard count: how long its in-flight batches took. */
    let switched: { readonly from: number; readonly seenAt: number; readonly inFlightMs: number } | undefined;
    if (this.#config && this.#config.generation !== config.generation) {
      const seenAt = performance.now();
      this.#options.logger.info(
        { from: this.#config.shardCount, to: config.shardCount, generation: config.generation },
        'shard count changed; finishing in-flight batches before switching',
      );
      // No new batch of the old count from here on, on this thread or the real-time worker's
      // (heldShards): its shard numbers mean other rows now. The refresh below sets the new ones.
      this.#owned = [];
      await this.#stopLoops([...this.#loops.keys()]);
      switched = {
        from: this.#config.shardCount,
        seenAt,
        inFlightMs: Math.round(performance.now() - seenAt),
      };
    }
    // Also on the first tick: the count may have changed while no replica ran.
    if (this.#config?.generation !== config.generation) this.#buildIndexes(config.shardCount);
    this.#config = config;
    if (this.#stopped) return;
    const owned = await this.#options.ownership.refresh(config);
    this.#owned = owned;
    this.#ownedGeneration = config.generation;
    if (switched)
      // The switch's two parts apart: the in-flight batches (as long as a batch takes, by design)
      // and the rest (the refresh that announces the new generation), for an operator timing a
      // change and for the shard-count test, which bounds each.
      this.#options.logger.info(
        {
          from: switched.from,
          to: config.shardCount,
          generation: config.generation,
          inFlightMs: switched.inFlightMs,
          switchMs: Math.round(performance.now() - switched.seenAt),
        },
        'switched to the new shard count',
      );
    const wanted = new Set<string>();
    const created = new Set<string>();
    for (const shard of owned) {
      for (const lane of this.#options.lanes) {
        const key = `${shard}:${lane.lane}`;
        wanted.add(key);
        if (!this.#loops.has(key)) {
          this.#loops.set(key, { shard, lane: lane.lane, loop: this.#newLoop(shard, lane) });
          created.add(key);
        }
      }
    }
    await this.#stopLoops([...this.#loops.keys()].filter((key) => !wanted.has(key)));
    for (const key of created) this.#loops.get(key)?.loop.trigger();
    // Not awaited: a refresh asked for meanwhile (a peer was evicted: its shards wait for it)
    // waits for the tick in progress, and must not wait for the probe too.
    void this.#poll(config, owned);
    await this.#options.afterTick?.(config, owned);
  }

  /**
   * Triggers the loops whose shard has a row to claim now (new loops were triggered already). A
   * failed probe triggers them all: each claim then finds out for itself, as every poll did before
   * the probe. One poll at a time; a tick that finds one running skips its own.
   */
  async #poll(config: ShardConfig, owned: readonly number[]): Promise<void> {
    if (this.#polling || owned.length === 0) return;
    this.#polling = true;
    try {
      for (const lane of this.#options.lanes) {
        const due = lane.dueShards
          ? await lane.dueShards(owned, config.shardCount).then(
              (shards) => {
                if (this.#probeFailing.delete(lane.lane))
                  this.#options.logger.info({ lane: lane.lane }, 'due-rows probe works again');
                return shards;
              },
              (error: unknown) => {
                // A warning the first time: the probe runs every tick, and what fails it (the outbox
                // locked by another session: "lock timeout") holds the claims up too.
                const first = !this.#probeFailing.has(lane.lane);
                this.#probeFailing.add(lane.lane);
                this.#options.logger[first ? 'warn' : 'debug'](
                  { err: toError(error).message, lane: lane.lane },
                  'due-rows probe failed; polling every loop (said once until it works again)',
                );
                return undefined;
              },
            )
          : undefined;
        if (this.#stopped) return;
        for (const shard of owned) {
          if (!due || due.has(shard)) this.#loops.get(`${shard}:${lane.lane}`)?.loop.trigger();
        }
      }
    } finally {
      this.#polling = false;
    }
  }

  #buildIndexes(shardCount: number): void {
    // In the background: a large outbox takes a while to index, and ticks must go on meanwhile.
    const db = this.#options.indexDb === undefined ? this.#options.db : this.#options.indexDb;
    if (db === null) return;
    ensurePendingShardIndexes(db, shardCount, this.#options.ordering ?? false).catch((error: unknown) =>
      error instanceof ShardRelayError
        ? this.#options.logger.warn({ shardCount, fix: error.fix }, error.message)
        : this.#options.logger.warn(
            { err: error, shardCount },
            'building the shard index failed; claims work, slower',
          ),
    );
  }

  #newLoop(shard: number, lane: LaneRunner): ShardLoop {
    const shardCount = this.#config?.shardCount ?? 1;
    return new ShardLoop({
      // Asked before every batch, not only per tick, and again right before the claim (a batch
      // may wait for a pooled connection, e.g. across a pause): a replica whose lease may have
      // lapsed (it was paused, its heartbeats failed) claims nothing until a refresh re-validates it.
      runBatch: (running) => {
        const ownership = this.#options.ownership;
        // A stopped loop (its shard given away, or a new shard count) claims nothing: a batch that
        // waited for a pooled connection when the loop was stopped would otherwise claim a whole
        // batch of a shard number that is no longer ours, and the switch would wait for it.
        const holds = () => running() && ownership.holds?.(shard) !== false;
        const leaseUnexpired = () => ownership.leaseUnexpired?.(shard) !== false;
        return holds()
          ? lane.runShardBatch(shard, shardCount, { mayClaim: holds, mayKeepSending: leaseUnexpired })
          : Promise.resolve({ full: false });
      },
      errorBackoffMs: (failures) => exponentialDelayMs({ baseMs: 250, capMs: 30_000 }, failures + 1),
      ...(lane.gatherMs ? { gatherMs: lane.gatherMs } : {}),
      onError: (error, failures) =>
        this.#options.logger.error(
          { err: error, shard, lane: lane.lane, consecutiveFailures: failures },
          'batch failed; its rows were rolled back to pending',
        ),
    });
  }

  async #stopLoops(keys: readonly string[]): Promise<void> {
    const stopping = keys.map((key) => {
      const entry = this.#loops.get(key);
      this.#loops.delete(key);
      return entry?.loop.stop();
    });
    await Promise.all(stopping);
  }

  /** Wakes the loops of the given shards (new rows arrived), for every lane or only one. */
  wake(shards: readonly number[], lane?: Lane): void {
    for (const shard of shards) {
      for (const l of this.#options.lanes) {
        if (lane && l.lane !== lane) continue;
        this.#loops.get(`${shard}:${l.lane}`)?.loop.trigger();
      }
    }
  }

  /** Stops ticking and waits for every in-flight batch, or until `timeoutMs` passes. */
  async stop(timeoutMs: number): Promise<boolean> {
    this.#stopped = true;
    await this.#task?.destroy();
    const done = (async () => {
      await this.#ticking;
      await this.#stopLoops([...this.#loops.keys()]);
    })();
    return (await untilDeadline(done, Date.now() + timeoutMs)) !== EXPIRED;
  }
}
