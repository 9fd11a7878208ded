/**
 * The targets of the benchmark issue for a 2-core machine, checked against a report's phases.
 * A target whose phase did not run is "not measured" (null), never met by default.
 */
import type { PhaseSummary } from './report.js';
import { median } from './stats.js';

export interface TargetResult {
  readonly target: string;
  readonly measured: string;
  readonly met: boolean | null;
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

function detailNumbers(phase: PhaseSummary | undefined, key: string): number[] {
  return (phase?.results ?? [])
    .map((r) => r.detail?.[key])
    .filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
}

export function evaluateTargets(phases: readonly PhaseSummary[]): TargetResult[] {
  const byName = (name: string) => phases.find((p) => p.name === name);
  const targets: TargetResult[] = [];

  const relayNull = byName('relay-null');
  if (byName('sql-floor') && relayNull?.ratioToFloor != null) {
    targets.push({
      target: 'relay (null sink) ≥ 0.8 × SQL floor',
      measured: `${fmt(relayNull.ratioToFloor, 2)} × (${fmt(relayNull.ratioToFloorMin ?? 0, 2)}–${fmt(relayNull.ratioToFloorMax ?? 0, 2)})`,
      met: relayNull.ratioToFloor >= 0.8,
    });
  }

  const rabbit = byName('relay-rabbitmq');
  // In the --soak / --rss-backlog runs no drain phase runs: no line for the RabbitMQ target there.
  if (rabbit || relayNull)
    targets.push(
      rabbit?.rowsPerSec != null
        ? {
            target: 'relay to RabbitMQ with confirms ≥ 10,000 rows/s',
            measured: `${fmt(rabbit.rowsPerSec)} rows/s`,
            met: rabbit.rowsPerSec >= 10_000,
          }
        : { target: 'relay to RabbitMQ with confirms ≥ 10,000 rows/s', measured: 'not run', met: null },
    );

  const recovery = byName('recovery');
  const ratios = detailNumbers(recovery, 'ratioToPeak');
  if (ratios.length > 0) {
    const ratio = median(ratios);
    targets.push({
      target: 'recovery drains at ≥ 90% of peak throughput',
      measured: `${fmt(ratio * 100)}% of the relay-null drain rate (${fmt(recovery?.rowsPerSec ?? 0)} rows/s)`,
      met: ratio >= 0.9,
    });
  }

  const rss = phases.filter((p) => p.name.startsWith('rss-backlog'));
  for (const phase of rss) {
    targets.push({
      target: `relay RSS ≤ 200 MB with a 1,000,000-row backlog (${phase.name.replace('rss-backlog-', '')} sink)`,
      measured: `${fmt(phase.peakRssMb ?? Number.NaN)} MB peak`,
      met: phase.peakRssMb !== null && phase.peakRssMb <= 200,
    });
  }

  const soak = byName('soak');
  const lastToFirst = detailNumbers(soak, 'lastToFirst');
  if (lastToFirst.length > 0) {
    const ratio = lastToFirst[0] as number;
    const cpu = detailNumbers(soak, 'cpuPerRowLastToFirst')[0];
    targets.push({
      target: 'no throughput decay over the soak (last minute within 10% of the first)',
      measured:
        `rows/s last/first = ${fmt(ratio, 2)}` +
        (cpu === undefined ? '' : `; CPU per row last/first = ${fmt(cpu, 2)}`),
      met: Math.abs(ratio - 1) <= 0.1,
    });
  }
  return targets;
}
