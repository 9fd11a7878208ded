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
}

/** A single replica: every shard is ours. */
export function allShards(): ShardOwnership {
  return {
    refresh: async (config) => Array.from({ length: config.shardCount }, (_, shard) => shard),
    release: async () => {},
  };
}
