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
  /** A synthetic canary row (relay/canary.ts): sent like any row, left out of every business count. */
  canary: ColumnType<boolean, boolean | undefined, never>;
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

/** shardrelay.replica: one row per relay process, its heartbeat (relay/shardLeases.ts). */
export interface ReplicaTable {
  instance: string;
  replica_id: string;
  hostname: string;
  pid: number;
  started_at: ColumnType<Date, Date | string | undefined, never>;
  heartbeat_at: ColumnType<Date, Date | string | undefined, Date | string>;
  lease_timeout_seconds: number;
  generation: BigIntColumn;
  /** The liveness lock's key and session (migration 0008); null for replicas without one. */
  lock_key: ColumnType<number | null, number | null | undefined, number | null>;
  lock_pid: ColumnType<number | null, number | null | undefined, number | null>;
}

/** shardrelay.shard_lease: one row per (generation, shard) lease (relay/shardLeases.ts). */
export interface ShardLeaseTable {
  generation: BigIntColumn;
  shard: number;
  owner: string;
  owner_instance: string;
  acquired_at: Timestamp;
  renewed_at: Timestamp;
  expires_at: Timestamp;
}

/** The shardrelay.replicas view (sql/replicas.sql); numerics arrive as strings. */
export interface ReplicasView {
  replica_id: string;
  instance: string;
  hostname: string;
  pid: number;
  alive: boolean;
  started_at: Date;
  heartbeat_at: Date;
  heartbeat_age_seconds: string;
  lease_timeout_seconds: number;
  generation: string;
  on_current_generation: boolean;
  shards_held: string;
  shards: number[];
  duplicate_id: boolean;
}

/** The shardrelay.shards view (sql/shards.sql); numerics arrive as strings. */
export interface ShardsView {
  shard: number;
  shard_count: number;
  generation: string;
  owner: string | null;
  owner_instance: string | null;
  acquired_at: Date | null;
  renewed_at: Date | null;
  expires_at: Date | null;
  lease_valid: boolean | null;
  lease_expires_in_seconds: string | null;
  pending: string;
  oldest_pending_age_seconds: string | null;
  /** The sharding the counts use: the recorded ordering mode (migration 0012). */
  ordering: 'off' | 'key';
}

/**
 * shardrelay.sent_event: one row per event sent within the retention window (migrations/0007).
 * Written by shardrelay.complete_batch when a row leaves the outbox as sent; deleted by the
 * retention pruner (maintenance/sentPruner.ts).
 */
export interface SentEventTable {
  event_id: string;
  id: BigIntColumn;
  topic: string;
  key: string | null;
  shard: number;
  lane: Lane;
  attempts: number;
  created_at: Timestamp;
  sent_at: Timestamp;
  replica: string | null;
  sink: string | null;
}

/** shardrelay.events (sql/events.sql): what the database still knows of each event. */
export interface EventsView extends Omit<SentEventTable, 'sent_at'> {
  sent_at: ColumnType<Date | null, never, never>;
  status: OutboxStatus;
  last_error: string | null;
}

/** shardrelay.ordering_mode (migration 0012): a single row, the ordering mode the replicas run. */
export interface OrderingModeTable {
  singleton: ColumnType<boolean, never, never>;
  mode: 'off' | 'key';
  /** The last change by a relay; null when the mode is still the one migration 0012 set. */
  changed_at: ColumnType<Date | null, never, Date | null>;
  changed_by: string | null;
}

export interface Database {
  'shardrelay.outbox': OutboxTable;
  'shardrelay.sent_event': SentEventTable;
  'shardrelay.events': EventsView;
  'shardrelay.shard_config': ShardConfigTable;
  'shardrelay.ordering_mode': OrderingModeTable;
  'shardrelay.shard_progress': ShardProgressTable;
  'shardrelay.replica': ReplicaTable;
  'shardrelay.shard_lease': ShardLeaseTable;
  'shardrelay.replicas': ReplicasView;
  'shardrelay.shards': ShardsView;
}
