import { sql, type Kysely } from 'kysely';
import type { Database, Lane } from './db/schema.js';
import { readHealth, readLagTrend, type HealthRow } from './observability/views.js';
import { shardExpression } from './db/shardIndex.js';
import { readOrderingMode, type OrderingMode } from './relay/orderingMode.js';
import { readShardConfig } from './relay/shardConfig.js';
import {
  readReplicaStatus,
  type ReplicaStatus,
  type ReplicaStatusOptions,
  type ShardOwnerStatus,
} from './replicaStatus.js';

/**
 * `status` leaves out replicas gone longer than this by default: a crashed replica's row stays in
 * shardrelay.replica for 15 minutes (it is purged by the live ones), which in a terminal reads as
 * a crowd of dead processes after a few restarts.
 */
export const DEFAULT_HIDE_GONE_AFTER_SECONDS = 60;

export interface ShardStatus {
  readonly shard: number;
  readonly pending: number;
  readonly oldestPendingSeconds: number | null;
  /** Rows confirmed and recorded as sent, from shard_progress (outlives pruning). */
  readonly sent: number;
  /** Rows in dead letters now (a replay takes them out). */
  readonly dead: number;
  readonly lastBatchAt: string | null;
}

export interface LaneStatus {
  readonly lane: Lane;
  readonly pending: number;
  readonly oldestPendingSeconds: number | null;
  /** created_at → sent_at over rows sent in the last 5 minutes; null when none. */
  readonly p50Ms: number | null;
  readonly p95Ms: number | null;
  readonly p99Ms: number | null;
}

/** A shard and lane as shardrelay.health classifies it, with its backlog over the last minutes. */
export interface ShardLaneHealth extends HealthRow {
  /** Pending rows at the end of each of the last TREND_MINUTES minutes (oldest first); null = no sample. */
  readonly trend: readonly (number | null)[];
  /**
   * The lease holder missed heartbeats while its lease is still valid (probably crashed or frozen):
   * nobody runs the shard until the lease expires, though `status` (the view) may still say OK.
   */
  readonly ownerSilent: boolean;
}

export const TREND_MINUTES = 10;

/** A key held up (shardrelay.blocked_keys): with per-key ordering its later rows wait. */
export interface BlockedKey {
  readonly key: string;
  /** 'retrying': its earliest pending row waits for a retry; 'dead': a dead row with pending rows after it. */
  readonly reason: 'retrying' | 'dead';
  readonly blockingId: string;
  readonly attempts: number;
  readonly lastError: string | null;
  readonly retryInSeconds: number | null;
  /** Pending rows of the key after the blocking row. */
  readonly waiting: number;
}

export interface BlockedKeys {
  readonly retrying: number;
  readonly dead: number;
  /** The keys with the most rows waiting, at most BLOCKED_KEYS_SHOWN. */
  readonly top: readonly BlockedKey[];
}

export const BLOCKED_KEYS_SHOWN = 5;

export interface RelayStatus {
  readonly shardCount: number;
  readonly generation: string;
  /** The ordering mode the replicas run (shardrelay.ordering_mode); the per-shard counts use its sharding. */
  readonly ordering: OrderingMode;
  readonly shards: readonly ShardStatus[];
  readonly lanes: readonly LaneStatus[];
  readonly totals: { readonly pending: number; readonly sent: number; readonly dead: number };
  /** Per shard and lane: owner, lag, status class (shardrelay.health) and trend. */
  readonly health: readonly ShardLaneHealth[];
  /** Relay processes and their heartbeats and shards (shardrelay.replicas). */
  readonly replicas: readonly ReplicaStatus[];
  /** Gone replicas left out (gone longer than `hideGoneAfterSeconds`). */
  readonly hiddenReplicas: number;
  /** Lease holder and backlog of every shard of the current count (shardrelay.shards). */
  readonly shardOwners: readonly ShardOwnerStatus[];
  /** Keys held up by a retrying or dead row (shardrelay.blocked_keys, migration 0009). */
  readonly blockedKeys: BlockedKeys;
}

const num = (v: unknown): number => Number(v ?? 0);
const optionalNum = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/**
 * The picture `shardrelay status` prints. Pending and dead counts scan only the partial indexes of
 * pending and dead rows; sent totals come from shard_progress, so they survive pruning. Canary rows
 * (relay/canary.ts) are left out of every count.
 */
export async function readStatus(
  db: Kysely<Database>,
  options: ReplicaStatusOptions = {},
): Promise<RelayStatus> {
  const [config, ordering] = await Promise.all([readShardConfig(db), readOrderingMode(db)]);
  // A row's shard as the claim computes it under the mode the replicas run (db/shardIndex.ts).
  const shardOf = sql.raw(shardExpression(config.shardCount, ordering === 'key'));
  const [pending, dead, progress] = await Promise.all([
    db
      .selectFrom('shardrelay.outbox')
      .select([
        sql<number>`${shardOf}`.as('shard'),
        sql<string>`count(*)`.as('pending'),
        sql<number | null>`extract(epoch FROM shardrelay.now() - min(created_at))`.as('oldest'),
      ])
      .where('status', '=', 'pending')
      .where('canary', '=', false)
      .groupBy(sql`1`)
      .execute(),
    db
      .selectFrom('shardrelay.outbox')
      .select([sql<number>`${shardOf}`.as('shard'), sql<string>`count(*)`.as('dead')])
      .where('status', '=', 'dead')
      .where('canary', '=', false)
      .groupBy(sql`1`)
      .execute(),
    db
      .selectFrom('shardrelay.shard_progress')
      .select([
        'shard',
        sql<string>`sum(sent_total)`.as('sent'),
        sql<Date | null>`max(last_batch_at)`.as('last'),
      ])
      .groupBy('shard')
      .execute(),
  ]);
  const shards: ShardStatus[] = Array.from({ length: config.shardCount }, (_, shard) => {
    const p = pending.find((r) => num(r.shard) === shard);
    const d = dead.find((r) => num(r.shard) === shard);
    const g = progress.find((r) => r.shard === shard);
    return {
      shard,
      pending: num(p?.pending),
      oldestPendingSeconds: p ? optionalNum(p.oldest) : null,
      sent: num(g?.sent),
      dead: num(d?.dead),
      lastBatchAt: g?.last ? new Date(g.last).toISOString() : null,
    };
  });
  const [lanes, health, trends, membership, blockedKeys] = await Promise.all([
    readLanes(db),
    readHealth(db),
    readLagTrend(db, TREND_MINUTES),
    readReplicaStatus(db, options),
    readBlockedKeys(db),
  ]);
  const silent = new Set(membership.shardOwners.filter((s) => s.ownerSilent).map((s) => s.shard));
  const sentBeyondShards = progress
    .filter((g) => g.shard >= config.shardCount)
    .reduce((a, g) => a + num(g.sent), 0);
  return {
    shardCount: config.shardCount,
    generation: config.generation,
    ordering,
    shards,
    lanes,
    totals: {
      pending: shards.reduce((a, s) => a + s.pending, 0),
      // Progress of shards that existed under a larger shard count still counts as sent.
      sent: shards.reduce((a, s) => a + s.sent, 0) + sentBeyondShards,
      dead: shards.reduce((a, s) => a + s.dead, 0),
    },
    health: health.map((h) => ({
      ...h,
      trend: trends.get(`${h.shard}/${h.lane}`) ?? Array<null>(TREND_MINUTES).fill(null),
      ownerSilent: silent.has(h.shard),
    })),
    replicas: membership.replicas,
    hiddenReplicas: membership.hiddenReplicas,
    shardOwners: membership.shardOwners,
    blockedKeys,
  };
}

/** Counts by reason and the keys with most rows waiting, from shardrelay.blocked_keys. */
async function readBlockedKeys(db: Kysely<Database>): Promise<BlockedKeys> {
  const { rows } = await sql<{
    key: string;
    reason: 'retrying' | 'dead';
    blocking_id: string;
    attempts: number;
    last_error: string | null;
    retry_in_seconds: string | null;
    waiting: string;
    retrying_total: string;
    dead_total: string;
  }>`
    SELECT b.*, count(*) FILTER (WHERE reason = 'retrying') OVER () AS retrying_total,
           count(*) FILTER (WHERE reason = 'dead') OVER () AS dead_total
      FROM shardrelay.blocked_keys b
     ORDER BY b.waiting DESC, b.key
     LIMIT ${BLOCKED_KEYS_SHOWN}`.execute(db);
  return {
    retrying: num(rows[0]?.retrying_total),
    dead: num(rows[0]?.dead_total),
    top: rows.map((r) => ({
      key: r.key,
      reason: r.reason,
      blockingId: String(r.blocking_id),
      attempts: num(r.attempts),
      lastError: r.last_error,
      retryInSeconds: optionalNum(r.retry_in_seconds),
      waiting: num(r.waiting),
    })),
  };
}

/**
 * Per lane, from the views every other figure of `status` comes from: pending rows and the oldest
 * one's age from shardrelay.lag, latency percentiles from shardrelay.latency (the completer's
 * per-minute histograms). Both split lanes by the predicate the relay installed, and read the
 * views' clock; neither reads sent rows of the outbox.
 */
async function readLanes(db: Kysely<Database>): Promise<LaneStatus[]> {
  const { rows } = await sql<{
    lane: Lane;
    pending: string;
    oldest: number;
    p50: number | null;
    p95: number | null;
    p99: number | null;
  }>`
    SELECT l.lane, l.pending, l.oldest, t.p50_ms AS p50, t.p95_ms AS p95, t.p99_ms AS p99
      FROM (SELECT lane, sum(pending_rows) AS pending, max(oldest_pending_seconds) AS oldest
              FROM shardrelay.lag GROUP BY lane) AS l
      JOIN shardrelay.latency AS t USING (lane)
     ORDER BY l.lane = 'batch', l.lane`.execute(db);
  return rows.map((r) => ({
    lane: r.lane,
    pending: num(r.pending),
    oldestPendingSeconds: num(r.pending) > 0 ? optionalNum(r.oldest) : null,
    p50Ms: optionalNum(r.p50),
    p95Ms: optionalNum(r.p95),
    p99Ms: optionalNum(r.p99),
  }));
}
