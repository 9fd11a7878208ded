import type { RelayStatus, ShardLaneHealth } from '../status.js';
import { formatReplicas } from './formatReplicas.js';

const seconds = (s: number | null) =>
  s === null ? '-' : s < 120 ? `${s.toFixed(1)}s` : `${(s / 60).toFixed(1)}m`;
const ms = (v: number | null) => (v === null ? '-' : `${Math.round(v)}ms`);

const BARS = '▁▂▃▄▅▆▇█';

/** The backlog over the last minutes, scaled to its own peak; `·` = no sample that minute. */
export function sparkline(points: readonly (number | null)[]): string {
  const peak = Math.max(0, ...points.map((p) => p ?? 0));
  return points
    .map((p) => (p === null ? '·' : BARS[peak === 0 ? 0 : Math.round((p / peak) * (BARS.length - 1))]))
    .join('');
}

function healthLine(h: ShardLaneHealth): string {
  const owner = (h.owner ?? '-').slice(0, 16);
  const lag = h.dueRows === 0 ? '-' : seconds(h.lagSeconds);
  // The view judges by the lease, which outlives a crashed owner by up to the lease timeout.
  const [cls, reason] = h.ownerSilent
    ? ['SILENT', 'its owner stopped heartbeating; the shard waits until its lease expires']
    : [h.status, h.reason ?? ''];
  return `${String(h.shard).padStart(5)}  ${h.lane.padEnd(8)}  ${cls.padEnd(6)}  ${owner.padEnd(16)}  ${String(h.pendingRows).padStart(7)}  ${lag.padStart(6)}  ${sparkline(h.trend)}  ${reason}`.trimEnd();
}

function healthSummary(status: RelayStatus): string {
  const counts = new Map<string, number>();
  for (const h of status.health) {
    const cls = h.ownerSilent ? 'SILENT' : h.status;
    counts.set(cls, (counts.get(cls) ?? 0) + 1);
  }
  return ['OK', 'WARN', 'SILENT', 'STALL', 'STOP', 'ERROR']
    .filter((c) => counts.has(c))
    .map((c) => `${counts.get(c)} ${c}`)
    .join(', ');
}

/**
 * Keys held up by a failed or dead row (shardrelay.blocked_keys); nothing when there are none. With
 * per-key ordering each such key's later rows wait; without it the lines still say which keys fail.
 */
function formatBlockedKeys(status: RelayStatus): string[] {
  const { retrying, dead, top } = status.blockedKeys;
  if (retrying + dead === 0) return [];
  return [
    `blocked keys: ${retrying} waiting for a retry, ${dead} behind a dead row (held only with SHARDRELAY_ORDERING_DEAD=hold)`,
    'key               reason    row         attempts  waiting  retry in  last error',
    ...top.map(
      (k) =>
        `${k.key.slice(0, 16).padEnd(16)}  ${k.reason.padEnd(8)}  ${k.blockingId.padEnd(10)}  ${String(k.attempts).padStart(8)}  ${String(k.waiting).padStart(7)}  ${seconds(k.retryInSeconds).padStart(8)}  ${(k.lastError ?? '').slice(0, 60)}`,
    ),
    '',
  ];
}

/** The terminal table of `shardrelay status`. */
export function formatStatus(status: RelayStatus): string {
  const lines = [
    `shards: ${status.shardCount} (generation ${status.generation}, ordering ${status.ordering})   pending ${status.totals.pending}   sent ${status.totals.sent}   dead ${status.totals.dead}   health: ${healthSummary(status) || '-'}`,
    '',
    'shard  lane      class   owner             pending     lag  backlog 10 min  reason',
    ...status.health.map(healthLine),
    '',
    'shard  pending  oldest   sent        dead  last batch',
    ...status.shards.map(
      (s) =>
        `${String(s.shard).padStart(5)}  ${String(s.pending).padStart(7)}  ${seconds(s.oldestPendingSeconds).padStart(6)}  ${String(s.sent).padStart(9)}  ${String(s.dead).padStart(6)}  ${s.lastBatchAt ?? '-'}`,
    ),
    '',
    'lane      pending  oldest   p50     p95     p99   (last 5 min)',
    ...status.lanes.map(
      (l) =>
        `${l.lane.padEnd(8)}  ${String(l.pending).padStart(7)}  ${seconds(l.oldestPendingSeconds).padStart(6)}  ${ms(l.p50Ms).padStart(6)}  ${ms(l.p95Ms).padStart(6)}  ${ms(l.p99Ms).padStart(6)}`,
    ),
    '',
    ...formatBlockedKeys(status),
    ...formatReplicas(status),
  ];
  return lines.join('\n');
}
