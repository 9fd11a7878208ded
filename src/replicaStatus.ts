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
  /**
   * The lease is still valid but its holder has missed heartbeats (see `ownerIsSilent`): it most
   * likely crashed or froze, and the shard waits until the lease expires.
   */
  readonly ownerSilent: boolean;
  /** Seconds since the lease holder's last heartbeat; null without a lease or a replica row. */
  readonly ownerHeartbeatAgeSeconds: number | null;
  readonly pending: number;
  readonly oldestPendingSeconds: number | null;
}

const optional = (v: string | null): number | null => (v === null ? null : Number(v));

/**
 * A replica heartbeats at least every third of its lease timeout (shardLeases.ts: every
 * min(tick, lease timeout / 3)); one whose heartbeat is older than that plus a second of slack
 * for a slow heartbeat statement has missed at least one. With the default 10 s lease timeout a
 * killed replica's shards read as silent after about 4.3 s, 5.7 s before its leases expire.
 */
export function ownerIsSilent(heartbeatAgeSeconds: number, leaseTimeoutSeconds: number): boolean {
  return heartbeatAgeSeconds > leaseTimeoutSeconds / 3 + 1;
}

export interface ReplicaStatusOptions {
  /** Leave out replicas whose last heartbeat is older than this (gone ones linger 15 minutes). */
  readonly hideGoneAfterSeconds?: number;
}

/** Replicas (live first) and the owner of every shard of the current count, from the two views. */
export async function readReplicaStatus(
  db: Kysely<Database>,
  options: ReplicaStatusOptions = {},
): Promise<{
  readonly replicas: readonly ReplicaStatus[];
  readonly shardOwners: readonly ShardOwnerStatus[];
  /** Gone replicas left out by `hideGoneAfterSeconds`. */
  readonly hiddenReplicas: number;
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
  const byInstance = new Map(replicas.map((r) => [r.instance, r]));
  const hideAfter = options.hideGoneAfterSeconds ?? Infinity;
  const shown = replicas.filter((r) => r.alive || Number(r.heartbeat_age_seconds) <= hideAfter);
  return {
    hiddenReplicas: replicas.length - shown.length,
    replicas: shown.map((r) => ({
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
    shardOwners: shards.map((s) => {
      const holder = s.owner_instance === null ? undefined : byInstance.get(s.owner_instance);
      const age = holder ? Number(holder.heartbeat_age_seconds) : null;
      return {
        shard: s.shard,
        owner: s.owner,
        ownerInstance: s.owner_instance,
        leaseValid: s.lease_valid === true,
        leaseExpiresInSeconds: optional(s.lease_expires_in_seconds),
        ownerSilent:
          s.lease_valid === true && holder !== undefined && age !== null
            ? ownerIsSilent(age, holder.lease_timeout_seconds)
            : false,
        ownerHeartbeatAgeSeconds: age,
        pending: Number(s.pending),
        oldestPendingSeconds: optional(s.oldest_pending_age_seconds),
      };
    }),
  };
}
