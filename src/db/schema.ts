import type { ColumnType, Generated } from 'kysely';

/** The two lanes a row can be claimed by. Which lane a row is in is decided by the lane predicate. */
export type Lane = 'realtime' | 'batch';
export const LANES: readonly Lane[] = ['realtime', 'batch'];

export type OutboxStatus = 'pending' | 'sent' | 'dead';

/** bigint columns: pg returns them as strings (they may exceed 2^53); we write numbers or strings. */
type BigIntColumn = ColumnType<string, string | number | bigint, string | number | bigint>;
type Timestamp = ColumnType<Date, Date | string, Date | string>;

/**
 * shardrelay.outbox: one row per event. Written by `enqueue` (the application's transaction);
 * claimed, sent and completed by the relay; pruned after the retention window once sent.
 */
export interface OutboxTable {
  /** The shard key: shard = id % shard_count. */
  id: Generated<string>;
  /** The message id on every sink; stable across re-sends so consumers can de-duplicate. */
  event_id: Generated<string>;
  topic: string;
  key: string | null;
  payload: ColumnType<unknown, string, string>;
  headers: ColumnType<Record<string, string>, string | undefined, string>;
  correlation_id: string | null;
  traceparent: string | null;
  /** Input of the default lane predicate (`lane = 'realtime'`). */
  lane: ColumnType<Lane, Lane | undefined, Lane>;
  /** Free input for custom lane predicates, e.g. `priority >= 5`. */
  priority: ColumnType<number, number | undefined, number>;
  created_at: ColumnType<Date, Date | string | undefined, never>;
  available_at: ColumnType<Date, Date | string | undefined, Date | string>;
  attempts: ColumnType<number, number | undefined, number>;
  max_attempts: ColumnType<number | null, number | null | undefined, number | null>;
  status: ColumnType<OutboxStatus, OutboxStatus | undefined, OutboxStatus>;
  sent_at: ColumnType<Date | null, never, Date | string | null>;
  last_error: ColumnType<string | null, never, string | null>;
}

/** shardrelay.shard_config: a single row; the shard count and the generation it was set in. */
export interface ShardConfigTable {
  singleton: ColumnType<boolean, never, never>;
  shard_count: number;
  generation: BigIntColumn;
  updated_at: Timestamp;
}

/** shardrelay.shard_progress: per shard and lane, written by the completer in the batch's transaction. */
export interface ShardProgressTable {
  shard: number;
  lane: Lane;
  last_sent_id: BigIntColumn | null;
  sent_total: BigIntColumn;
  failed_total: BigIntColumn;
  dead_total: BigIntColumn;
  last_batch_at: Timestamp | null;
  last_batch_ms: number | null;
}

export interface Database {
  'shardrelay.outbox': OutboxTable;
  'shardrelay.shard_config': ShardConfigTable;
  'shardrelay.shard_progress': ShardProgressTable;
}
