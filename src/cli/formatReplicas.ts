import type { ReplicaStatus, ShardOwnerStatus } from '../replicaStatus.js';

const age = (s: number | null) => (s === null ? '-' : `${s.toFixed(1)}s`);

/** The replicas and shard-owner sections of `shardrelay status`. */
export function formatReplicas(status: {
  readonly replicas: readonly ReplicaStatus[];
  readonly shardOwners: readonly ShardOwnerStatus[];
  readonly hiddenReplicas?: number;
}): string[] {
  const live = status.replicas.filter((r) => r.alive).length;
  const unowned = status.shardOwners.filter((s) => !s.leaseValid).length;
  const silent = status.shardOwners.filter((s) => s.ownerSilent).length;
  const hidden = status.hiddenReplicas ?? 0;
  return [
    `replicas: ${live} live${status.replicas.length > live ? `, ${status.replicas.length - live} gone` : ''}` +
      `${hidden ? ` (${hidden} gone longer not shown)` : ''}` +
      `   shards without a live owner: ${unowned}${silent ? `, with a silent owner: ${silent}` : ''}`,
    '',
    'replica               host:pid              state  heartbeat  generation  shards',
    ...status.replicas.map((r) => {
      const state = r.alive ? (r.duplicateId ? 'DUP-ID' : 'live') : 'gone';
      const generation = `${r.generation}${r.onCurrentGeneration ? '' : ' (old)'}`;
      return `${r.replicaId.slice(0, 20).padEnd(20)}  ${`${r.hostname}:${r.pid}`.slice(0, 20).padEnd(20)}  ${state.padEnd(6)} ${age(r.heartbeatAgeSeconds).padStart(9)}  ${generation.padEnd(10)}  ${r.shards.length}${r.shards.length ? `: ${r.shards.join(',')}` : ''}`;
    }),
    '',
    'shard  owner                 lease      pending  oldest',
    ...status.shardOwners.map((s) => {
      const lease =
        s.leaseExpiresInSeconds === null
          ? 'none'
          : s.leaseValid
            ? `${age(s.leaseExpiresInSeconds)} left`
            : 'EXPIRED';
      // A valid lease whose holder missed heartbeats: crashed or frozen, the shard waits for expiry.
      const note = s.ownerSilent ? `  SILENT owner: no heartbeat for ${age(s.ownerHeartbeatAgeSeconds)}` : '';
      return `${String(s.shard).padStart(5)}  ${(s.owner ?? '-').slice(0, 20).padEnd(20)}  ${lease.padEnd(9)}  ${String(s.pending).padStart(7)}  ${age(s.oldestPendingSeconds).padStart(6)}${note}`;
    }),
  ];
}
