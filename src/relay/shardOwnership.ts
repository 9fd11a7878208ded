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
}

/** A single replica: every shard is ours. */
export function allShards(): ShardOwnership {
  return {
    refresh: async (config) => Array.from({ length: config.shardCount }, (_, shard) => shard),
    release: async () => {},
  };
}
