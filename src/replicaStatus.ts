import type { Kysely } from 'kysely';
import type { Database } from './db/schema.js';

/** A relay process as the shardrelay.replicas view shows it. */
export interface ReplicaStatus {
  readonly replicaId: string;
  /** The process's own token: two processes started with one replica id have two. */
  readonly instance: string;
  readonly hostname: string;
  readonly pid: number;
  /** Heartbeat younger than its lease timeout; only live replicas are given shards. */
  readonly alive: boolean;
  readonly heartbeatAgeSeconds: number;
  readonly leaseTimeoutSeconds: number;
  readonly generation: string;
  readonly onCurrentGeneration: boolean;
  readonly shards: readonly number[];
  /** Another live process uses the same replica id. */
  readonly duplicateId: boolean;
  readonly startedAt: string;
}

/** A shard's lease and backlog as the shardrelay.shards view shows it. */
export interface ShardOwnerStatus {
  readonly shard: number;
  /** Replica id of the lease holder; null when nobody holds it. */
  readonly owner: string | null;
  readonly ownerInstance: string | null;
  /** False when the lease expired and nobody has taken it over yet. */
  readonly leaseValid: boolean;
  /** Seconds until the lease expires (negative once expired); null without a lease. */
  readonly leaseExpiresInSeconds: number | null;
  readonly pending: number;
  readonly oldestPendingSeconds: number | null;
}

const optional = (v: string | null): number | null => (v === null ? null : Number(v));

/** Replicas (live first) and the owner of every shard of the current count, from the two views. */
export async function readReplicaStatus(db: Kysely<Database>): Promise<{
  readonly replicas: readonly ReplicaStatus[];
  readonly shardOwners: readonly ShardOwnerStatus[];
}> {
  const [replicas, shards] = await Promise.all([
    db
      .selectFrom('shardrelay.replicas')
      .selectAll()
      .orderBy('alive', 'desc')
      .orderBy('replica_id')
      .orderBy('pid')
      .execute(),
    db.selectFrom('shardrelay.shards').selectAll().orderBy('shard').execute(),
  ]);
  return {
    replicas: replicas.map((r) => ({
      replicaId: r.replica_id,
      instance: r.instance,
      hostname: r.hostname,
      pid: r.pid,
      alive: r.alive,
      heartbeatAgeSeconds: Number(r.heartbeat_age_seconds),
      leaseTimeoutSeconds: r.lease_timeout_seconds,
      generation: r.generation,
      onCurrentGeneration: r.on_current_generation,
      shards: r.shards,
      duplicateId: r.duplicate_id,
      startedAt: new Date(r.started_at).toISOString(),
    })),
    shardOwners: shards.map((s) => ({
      shard: s.shard,
      owner: s.owner,
      ownerInstance: s.owner_instance,
      leaseValid: s.lease_valid === true,
      leaseExpiresInSeconds: optional(s.lease_expires_in_seconds),
      pending: Number(s.pending),
      oldestPendingSeconds: optional(s.oldest_pending_age_seconds),
    })),
  };
}
