/**
 * From runs to the report: per phase the median, min and max over its runs, the ratio to the SQL
 * floor (paired: each run against the floor run of the same round, so drift of the machine over
 * the run cancels out; then the median of those ratios), and the markdown table a person reads.
 * The JSON written next to it is this report, runs included.
 */
import type { Percentiles } from './database.js';
import type { MachineInfo } from './machine.js';
import type { ExternalResult } from '../phases/external.js';
import type { RunResult } from './results.js';
import { max, median, min, round } from './stats.js';
import type { TargetResult } from './targets.js';

export interface PhaseSummary {
  readonly name: string;
  readonly runs: number;
  readonly rowsPerSec: number | null;
  readonly rowsPerSecMin: number | null;
  readonly rowsPerSecMax: number | null;
  readonly ratioToFloor: number | null;
  readonly ratioToFloorMin: number | null;
  readonly ratioToFloorMax: number | null;
  /** The same against the physical-limit floor (sql-floor-narrow) of the same round. */
  readonly ratioToNarrow: number | null;
  readonly ratioToNarrowMin: number | null;
  readonly ratioToNarrowMax: number | null;
  /** relay-pgboss only: against pg-boss's own insert() of the same rows (pgboss-insert), same round. */
  readonly ratioToPgBossInsert: number | null;
  /**
   * CPU per row of the floor (client + PostgreSQL) over this phase's (process + PostgreSQL + broker),
   * medians: the efficiency ratio that other processes' load on a shared machine does not move.
   */
  readonly cpuRatioToFloor: number | null;
  /** Medians over runs of each percentile; all null for the floor (a drain only). */
  readonly latencyMs: {
    readonly p50: number | null;
    readonly p95: number | null;
    readonly p99: number | null;
  };
  readonly latencyAtRowsPerSec: number | null;
  readonly drainLatencyMs: {
    readonly p50: number | null;
    readonly p95: number | null;
    readonly p99: number | null;
  };
  /** Highest peak RSS over the runs. */
  readonly peakRssMb: number | null;
  readonly cpuMsPer1kRows: {
    readonly process: number | null;
    readonly postgres: number | null;
    readonly broker: number | null;
  };
  readonly rowsPerBatch: number | null;
  readonly otherCpuCores: number | null;
  readonly problems: readonly string[];
  readonly results: readonly RunResult[];
}

export interface BenchReport {
  readonly machine: MachineInfo;
  readonly date: string;
  readonly command: string;
  readonly durationSeconds: number;
  readonly settings: Readonly<Record<string, unknown>>;
  readonly phases: readonly PhaseSummary[];
  readonly targets: readonly TargetResult[];
  readonly external: readonly ExternalResult[];
  readonly skipped: readonly { readonly phase: string; readonly round: number; readonly reason: string }[];
  readonly failures: readonly { readonly phase: string; readonly round: number; readonly error: string }[];
  readonly chart: string | null;
}

function percentilesOf(values: readonly (Percentiles | null)[]) {
  const present = values.filter((v): v is Percentiles => v !== null);
  return {
    p50: round(median(present.map((v) => v.p50))),
    p95: round(median(present.map((v) => v.p95))),
    p99: round(median(present.map((v) => v.p99))),
  };
}

export function summarise(results: readonly RunResult[], order: readonly string[]): PhaseSummary[] {
  const floorByRound = new Map(
    results.filter((r) => r.phase === 'sql-floor').map((r) => [r.round, r.rowsPerSec] as const),
  );
  const floorMedian = median([...floorByRound.values()]);
  const byRound = (phase: string) => {
    const rounds = new Map(
      results.filter((r) => r.phase === phase).map((r) => [r.round, r.rowsPerSec] as const),
    );
    const fallback = median([...rounds.values()]);
    return (round: number) => rounds.get(round) ?? fallback;
  };
  const narrowOf = byRound('sql-floor-narrow');
  const pgBossInsertOf = byRound('pgboss-insert');
  const names = [...new Set([...order, ...results.map((r) => r.phase)])].filter((name) =>
    results.some((r) => r.phase === name),
  );
  const cpuPerRow = (r: RunResult) =>
    (r.cpuMsPer1kRows.client ?? Number.NaN) +
    (r.cpuMsPer1kRows.postgres ?? Number.NaN) +
    (r.cpuMsPer1kRows.broker ?? 0);
  const floorCpu = median(results.filter((r) => r.phase === 'sql-floor').map(cpuPerRow));
  return names.map((name) => {
    const runs = results.filter((r) => r.phase === name);
    const rates = runs.map((r) => r.rowsPerSec);
    const ratios = runs.map((r) => r.rowsPerSec / (floorByRound.get(r.round) ?? floorMedian));
    const narrowRatios = runs.map((r) => r.rowsPerSec / narrowOf(r.round));
    const pgBossRatios = runs.map((r) => r.rowsPerSec / pgBossInsertOf(r.round));
    const latencyAt = runs.map((r) => r.latencyAtRowsPerSec).filter((v): v is number => v !== null);
    return {
      name,
      runs: runs.length,
      rowsPerSec: round(median(rates)),
      rowsPerSecMin: round(min(rates)),
      rowsPerSecMax: round(max(rates)),
      ratioToFloor: round(median(ratios)),
      ratioToFloorMin: round(min(ratios)),
      ratioToFloorMax: round(max(ratios)),
      ratioToNarrow: round(median(narrowRatios)),
      ratioToNarrowMin: round(min(narrowRatios)),
      ratioToNarrowMax: round(max(narrowRatios)),
      ratioToPgBossInsert: name === 'relay-pgboss' ? round(median(pgBossRatios)) : null,
      cpuRatioToFloor: round(floorCpu / median(runs.map(cpuPerRow))),
      latencyMs: percentilesOf(runs.map((r) => r.latencyMs)),
      latencyAtRowsPerSec: round(median(latencyAt)),
      drainLatencyMs: percentilesOf(runs.map((r) => r.drainLatencyMs)),
      peakRssMb: round(max(runs.map((r) => r.peakRssMb))),
      cpuMsPer1kRows: {
        process: round(median(runs.map((r) => r.cpuMsPer1kRows.client ?? Number.NaN))),
        postgres: round(median(runs.map((r) => r.cpuMsPer1kRows.postgres ?? Number.NaN))),
        broker: round(median(runs.map((r) => r.cpuMsPer1kRows.broker ?? Number.NaN))),
      },
      rowsPerBatch: round(median(runs.map((r) => r.rowsPerBatch ?? Number.NaN))),
      otherCpuCores: round(median(runs.map((r) => r.otherCpuCores ?? Number.NaN))),
      problems: [...new Set(runs.flatMap((r) => r.problems))],
      results: runs,
    };
  });
}

const num = (value: number | null, digits = 0): string =>
  value === null
    ? '—'
    : value.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** Median (min–max) of a phase's runs. */
function spread(median: number | null, low: number | null, high: number | null, digits = 0): string {
  if (median === null) return '—';
  return `${num(median, digits)} (${num(low, digits)}–${num(high, digits)})`;
}

export function markdown(report: BenchReport): string {
  const { machine, settings } = report;
  const lines: string[] = [];
  lines.push(`## shardrelay bench, ${report.date.slice(0, 10)}`);
  lines.push('');
  lines.push(
    `Machine: ${machine.cores} cores (${machine.cpuModel}), ${machine.memoryGb} GB, ${machine.os}; ` +
      `Node ${machine.node}; PostgreSQL ${machine.postgres}` +
      (machine.rabbitmq ? `; RabbitMQ ${machine.rabbitmq}` : '') +
      '.',
  );
  lines.push(
    `Command: \`${report.command}\` (${Math.round(report.durationSeconds)} s)` +
      (machine.revision ? `, code at ${machine.revision}` : '') +
      '.',
  );
  lines.push(
    `Each drain: ${num(settings.rows as number)} rows of ~${settings.payloadBytes} B JSON, ` +
      `${settings.shards} shards, batch ${settings.batchSize}, ${settings.connections} connections. ` +
      `${settings.runs} rounds, phases interleaved; figures are median (min–max) over the rounds.`,
  );
  lines.push('');
  lines.push(
    '| phase | runs | rows/s | × floor | × narrow floor | × floor by CPU | rows/batch | latency p50 / p95 / p99 ms | at rows/s | peak RSS MB | CPU ms/1k rows: process | PostgreSQL | broker | other load, cores |',
  );
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const p of report.phases) {
    const latency =
      p.latencyMs.p50 === null
        ? '—'
        : `${num(p.latencyMs.p50, 1)} / ${num(p.latencyMs.p95, 1)} / ${num(p.latencyMs.p99, 1)}`;
    lines.push(
      `| ${p.name} | ${p.runs} | ${spread(p.rowsPerSec, p.rowsPerSecMin, p.rowsPerSecMax)} | ` +
        `${p.name === 'sql-floor' ? '1' : spread(p.ratioToFloor, p.ratioToFloorMin, p.ratioToFloorMax, 2)} | ` +
        `${p.name === 'sql-floor-narrow' ? '1' : spread(p.ratioToNarrow, p.ratioToNarrowMin, p.ratioToNarrowMax, 2)} | ` +
        `${num(p.cpuRatioToFloor, 2)} | ${num(p.rowsPerBatch)} | ` +
        `${latency} | ${num(p.latencyAtRowsPerSec)} | ${num(p.peakRssMb)} | ${num(p.cpuMsPer1kRows.process, 1)} | ` +
        `${num(p.cpuMsPer1kRows.postgres, 1)} | ${num(p.cpuMsPer1kRows.broker, 1)} | ${num(p.otherCpuCores, 2)} |`,
    );
  }
  lines.push('');
  lines.push(
    [
      "sql-floor: the relay's claim and one DELETE + sent-record statement on the outbox (the same-schema",
      'floor); sql-floor-narrow: the same claim and DELETE on a narrow table (the physical limit);',
      "pgboss-insert: pg-boss's own insert() of the same rows. × floor / × narrow floor: against the floor",
      'of the same round.',
      'rows/s: drains from the commit of the backlog to the last committed batch; max-sustainable: the',
      'highest offered rate the relay kept up with (null sink); recovery: the rate sent from the spike until',
      'the lag was back to baseline. × floor by CPU: CPU per row of the floor (client + PostgreSQL) over the',
      "phase's (process + PostgreSQL + broker); other load on the machine does not move it. rows/batch: mean",
      'rows per committed batch. Latency: created_at → sent_at under a steady offered load ("at rows/s": 5,000',
      "or 40% of the phase's drain rate if lower), not of the drained backlog (that is queueing; it is in the",
      'JSON as drainLatencyMs). CPU: of the measured',
      'process (relay, or the floor client), of all PostgreSQL processes and of RabbitMQ, per 1,000 rows; in',
      'the load phases PostgreSQL also inserts the offered rows. Other load: CPU of processes outside the',
      'bench meanwhile, in cores — the noise of a shared machine.',
    ].join(' '),
  );

  const recovery = report.phases.find((p) => p.name === 'recovery');
  if (recovery) {
    const seconds = recovery.results.map((r) => r.seconds);
    lines.push('');
    lines.push(
      `Recovery: ${num(median(recovery.results.map((r) => r.detail?.spikeRows as number)))} rows on top of ` +
        `${num(median(recovery.results.map((r) => r.detail?.loadRowsPerSec as number)))} rows/s; back to ` +
        `baseline lag after ${spread(round(median(seconds)), round(min(seconds)), round(max(seconds)), 1)} s.`,
    );
  }

  if (report.targets.length > 0) {
    lines.push('');
    lines.push('| target | measured | met |');
    lines.push('|---|---|---|');
    for (const t of report.targets) {
      lines.push(
        `| ${t.target} | ${t.measured} | ${t.met === null ? 'not measured' : t.met ? 'yes' : 'no'} |`,
      );
    }
  }
  for (const e of report.external) {
    const what =
      e.status === 'absent'
        ? 'not present in this checkout'
        : e.status === 'skipped'
          ? `skipped: ${e.error ?? ''}`
          : `${e.status} in ${e.seconds.toFixed(0)} s${e.error ? ` — ${e.error}` : ''}`;
    lines.push('');
    lines.push(`Scenario ${e.phase}: ${what}`);
    if (e.summary) lines.push('', e.summary);
  }
  const problems = report.phases.flatMap((p) => p.problems.map((text) => `${p.name}: ${text}`));
  if (problems.length + report.failures.length + report.skipped.length > 0) {
    lines.push('');
    for (const text of problems) lines.push(`- problem: ${text}`);
    for (const f of report.failures) lines.push(`- failed: ${f.phase} round ${f.round}: ${f.error}`);
    for (const s of report.skipped) lines.push(`- skipped: ${s.phase} round ${s.round}: ${s.reason}`);
  }
  if (report.chart) {
    lines.push('');
    lines.push(`Recovery chart: ${report.chart}`);
  }
  return lines.join('\n');
}
