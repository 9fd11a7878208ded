import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';

export interface ShardConfig {
  readonly shardCount: number;
  /** Bumped by every change of the shard count; leases and loops belong to one generation. */
  readonly generation: string;
}

export async function readShardConfig(db: Kysely<Database>): Promise<ShardConfig> {
  const row = await db
    .selectFrom('shardrelay.shard_config')
    .select(['shard_count', 'generation'])
    .executeTakeFirstOrThrow();
  return { shardCount: row.shard_count, generation: row.generation };
}
