import type { ReplicaStatus, ShardOwnerStatus } from '../replicaStatus.js';

const age = (s: number | null) => (s === null ? '-' : `${s.toFixed(1)}s`);

/** The replicas and shard-owner sections of `shardrelay status`. */
export function formatReplicas(status: {
  readonly replicas: readonly ReplicaStatus[];
  readonly shardOwners: readonly ShardOwnerStatus[];
}): string[] {
  const live = status.replicas.filter((r) => r.alive).length;
  const unowned = status.shardOwners.filter((s) => !s.leaseValid).length;
  return [
    `replicas: ${live} live${status.replicas.length > live ? `, ${status.replicas.length - live} gone` : ''}` +
      `   shards without a live owner: ${unowned}`,
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
      return `${String(s.shard).padStart(5)}  ${(s.owner ?? '-').slice(0, 20).padEnd(20)}  ${lease.padEnd(9)}  ${String(s.pending).padStart(7)}  ${age(s.oldestPendingSeconds).padStart(6)}`;
    }),
  ];
}
