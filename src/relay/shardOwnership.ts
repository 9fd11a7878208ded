import type { ShardConfig } from './shardConfig.js';

/**
 * Decides which shards this replica runs loops for. Ownership spreads the work between replicas;
 * correctness never depends on it (row locks and the pending re-check in claims.ts do), so two
 * replicas that briefly both run a shard send nothing twice, they only compete for rows.
 */
export interface ShardOwnership {
  /** Called every tick with the current shard config; returns the shards to run now. */
  refresh(config: ShardConfig): Promise<readonly number[]>;
  /** Gives up every shard (graceful shutdown), after the loops have stopped. */
  release(): Promise<void>;
  /**
   * Whether a new batch of `shard` may start now. Asked before every batch, between refreshes: a
   * lease-based owner answers false once its lease may have expired (e.g. the process was paused),
   * so a stale replica stops claiming before it re-validates. Absent: always true.
   */
  holds?(shard: number): boolean;
  /**
   * Whether the lease of `shard` cannot have expired yet by this process's own clock, whatever
   * else happened (a step-back after the liveness session died still answers true until the
   * lease's own deadline). Asked while a batch is being sent: a sink drops its link, instead of
   * flushing, only when this turns false (a pause past the lease). Tying it to `holds` instead
   * dropped the link on every step-back and re-sent whole batches the broker had received
   * (6.4-16.5 % duplicates under pg_terminate_backend, against 0.3 % with this guard). Absent:
   * always true.
   */
  leaseUnexpired?(shard: number): boolean;
  /**
   * Wall-clock time (epoch ms, as `Date.now()`) until which `holds(shard)` stays true without
   * another refresh or renewal; 0 when it is false now. For another thread of this process (the
   * real-time worker, wiring/replica.ts), which cannot ask `holds` itself. It is counted from when
   * ownership was last confirmed (a lease renewal started), never from now, so a thread that wakes
   * from a pause longer than that finds it already passed. Absent: ownership does not expire.
   */
  validUntil?(shard: number): number;
}

/**
 * What the main thread of a replica tells its real-time worker thread: the shards it may run now,
 * the shard-config generation whose shard numbers they are, and until when (`Date.now()` ms) they
 * stay held unless a newer message says so (Infinity: no expiry; 0 or any past time: not held).
 */
export interface HeldShards {
  /** undefined before the first refresh. */
  readonly generation: string | undefined;
  readonly shards: readonly number[];
  readonly validUntil: number;
}

/** A single replica: every shard is ours. */
export function allShards(): ShardOwnership {
  return {
    refresh: async (config) => Array.from({ length: config.shardCount }, (_, shard) => shard),
    release: async () => {},
  };
}
