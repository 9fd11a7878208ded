import type { RelayStatus } from '../status.js';

const seconds = (s: number | null) =>
  s === null ? '-' : s < 120 ? `${s.toFixed(1)}s` : `${(s / 60).toFixed(1)}m`;
const ms = (v: number | null) => (v === null ? '-' : `${Math.round(v)}ms`);

/** The terminal table of `shardrelay status`. */
export function formatStatus(status: RelayStatus): string {
  const lines = [
    `shards: ${status.shardCount} (generation ${status.generation})   pending ${status.totals.pending}   sent ${status.totals.sent}   dead ${status.totals.dead}`,
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
  ];
  return lines.join('\n');
}
