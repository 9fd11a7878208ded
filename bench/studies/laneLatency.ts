/**
 * The lane benchmark: real-time end-to-end latency with (a) an idle system and (b) a 200,000-row
 * batch backlog draining, and the batch drain rate with and without the real-time load.
 * Targets on a 2-core machine (issue 14), with the relay's default settings: idle p99 <= 10 ms;
 * under backlog p99 <= 25 ms; batch drain rate under real-time load >= 90% of its rate alone.
 *
 *   npx tsx bench/studies/laneLatency.ts [--quick] [--rounds N] [--json PATH] [--compare '--connections-per-lane 8 --batch-gather-ms 0']
 *
 * (DATABASE_URL or an embedded PostgreSQL.) `--compare` runs the three scenarios a second time,
 * interleaved with the first, with those extra `shardrelay run` flags: a before/after of settings in
 * the same run, on the same machine load. `--rounds N` drains the backlog N times each way,
 * alternated, and judges the medians.
 */
import os from 'node:os';
import { writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { median } from '../harness/stats.js';
import { runLaneScenario, type LaneScenarioResult } from './laneScenario.js';
import { withStudyDatabase } from './studyDatabase.js';

export interface LaneLatencyOptions {
  readonly databaseUrl: string;
  readonly backlogRows?: number;
  readonly realtimePerSecond?: number;
  readonly durationSeconds?: number;
  readonly relayArgs?: readonly string[];
  /** Also run every scenario with these extra flags (after relayArgs), interleaved. */
  readonly compareArgs?: readonly string[];
  /**
   * Backlog drains per scenario, alternated (alone, under real-time load, alone, ...); default 1.
   * The verdicts use the medians: two single 3-second drains of the same code differ by ±0.1 in
   * their ratio (seventh session, bench/RESULTS.md).
   */
  readonly rounds?: number;
}

/** One pair of backlog drains: alone, then under the real-time load. */
export interface LaneDrainRound {
  readonly batchAlone: LaneScenarioResult;
  readonly underBacklog: LaneScenarioResult;
  /** underBacklog's batch rate over batchAlone's. */
  readonly batchRateRatio: number | null;
}

export interface LaneLatencyReport {
  readonly idle: LaneScenarioResult;
  /** The drains, in the order they ran. */
  readonly rounds: readonly LaneDrainRound[];
  /** Median over the rounds of the real-time p99 while the backlog drained, ms. */
  readonly backlogP99Ms: number;
  /** Median over the rounds of the batch drain rate with real-time load / without. */
  readonly batchRateRatio: number | null;
  readonly targets: {
    readonly idleP99Ms: boolean;
    readonly backlogP99Ms: boolean;
    readonly batchRateRatio: boolean;
  };
  /** 1-minute load average at the start and the end: above the core count, others were busy. */
  readonly loadAverage: readonly [number, number];
  /** The same scenarios with `compareArgs`, run interleaved with these. */
  readonly compared?: { readonly args: readonly string[]; readonly report: LaneLatencyReport };
}

const IDLE_P99_TARGET_MS = 10;
const BACKLOG_P99_TARGET_MS = 25;

/** Runs the three scenarios against an already migrated database (their tables are truncated). */
export async function runLaneLatencyBench(options: LaneLatencyOptions): Promise<LaneLatencyReport> {
  const load = () => Number((os.loadavg()[0] ?? 0).toFixed(2));
  const loadAtStart = load();
  const base = options.relayArgs ?? ['--sink', 'null'];
  const variants = [base, ...(options.compareArgs ? [[...base, ...options.compareArgs]] : [])];
  const common = (relayArgs: readonly string[]) => ({
    databaseUrl: options.databaseUrl,
    realtimePerSecond: options.realtimePerSecond ?? 50,
    durationSeconds: options.durationSeconds ?? 20,
    relayArgs,
  });
  const backlogRows = options.backlogRows ?? 200_000;
  // Interleaved: each scenario runs once per variant before the next scenario.
  const each = (scenario: (args: readonly string[]) => Promise<LaneScenarioResult>) =>
    variants.reduce<Promise<LaneScenarioResult[]>>(
      async (done, args) => [...(await done), await scenario(args)],
      Promise.resolve([]),
    );
  const idles = await each((args) => runLaneScenario({ ...common(args), backlogRows: 0 }));
  const roundsByVariant = variants.map((): LaneDrainRound[] => []);
  for (let round = 0; round < Math.max(1, options.rounds ?? 1); round++) {
    const alones = await each((args) =>
      runLaneScenario({ ...common(args), backlogRows, realtimePerSecond: 0, durationSeconds: 0 }),
    );
    const unders = await each((args) => runLaneScenario({ ...common(args), backlogRows }));
    roundsByVariant.forEach((rounds, i) => {
      const batchAlone = alones[i] as LaneScenarioResult;
      const underBacklog = unders[i] as LaneScenarioResult;
      rounds.push({ batchAlone, underBacklog, batchRateRatio: drainRatio(underBacklog, batchAlone) });
    });
  }
  const loadAtEnd = load();
  const reports = variants.map((_, i) =>
    laneReport(idles[i] as LaneScenarioResult, roundsByVariant[i] ?? [], [loadAtStart, loadAtEnd]),
  );
  const first = reports[0] as LaneLatencyReport;
  return reports[1] && options.compareArgs
    ? { ...first, compared: { args: options.compareArgs, report: reports[1] } }
    : first;
}

function drainRatio(underBacklog: LaneScenarioResult, batchAlone: LaneScenarioResult): number | null {
  return underBacklog.batchRowsPerSecond && batchAlone.batchRowsPerSecond
    ? Math.round((underBacklog.batchRowsPerSecond / batchAlone.batchRowsPerSecond) * 1000) / 1000
    : null;
}

function laneReport(
  idle: LaneScenarioResult,
  rounds: readonly LaneDrainRound[],
  loadAverage: readonly [number, number],
): LaneLatencyReport {
  const ratios = rounds.flatMap((r) => (r.batchRateRatio === null ? [] : [r.batchRateRatio]));
  const ratio = ratios.length > 0 ? median(ratios) : null;
  const backlogP99Ms = median(rounds.map((r) => r.underBacklog.realtimeLatencyMs.p99));
  return {
    idle,
    rounds,
    backlogP99Ms,
    batchRateRatio: ratio,
    targets: {
      idleP99Ms: idle.realtimeLatencyMs.p99 <= IDLE_P99_TARGET_MS,
      backlogP99Ms: backlogP99Ms <= BACKLOG_P99_TARGET_MS,
      batchRateRatio: ratio !== null && ratio >= 0.9,
    },
    loadAverage,
  };
}

export function formatLaneReport(report: LaneLatencyReport): string {
  const own = formatOne(report);
  const load = `load average ${report.loadAverage[0]} at the start, ${report.loadAverage[1]} at the end`;
  if (!report.compared) return `${own}\n${load}`;
  return [
    'relay defaults:',
    own,
    '',
    `with ${report.compared.args.join(' ')} (interleaved with the above):`,
    formatOne(report.compared.report),
    load,
  ].join('\n');
}

function formatOne(report: LaneLatencyReport): string {
  const l = (r: LaneScenarioResult) => r.realtimeLatencyMs;
  const mark = (ok: boolean) => (ok ? 'met' : 'missed');
  const several = report.rounds.length > 1;
  const lines = [
    '| lane scenario | real-time rows | p50 ms | p95 ms | p99 ms | batch rows/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    `| idle | ${l(report.idle).count} | ${l(report.idle).p50} | ${l(report.idle).p95} | ${l(report.idle).p99} | - |`,
  ];
  report.rounds.forEach((round, i) => {
    const under = round.underBacklog;
    const label = several ? ` (round ${i + 1}, batch ratio ${round.batchRateRatio ?? '-'})` : '';
    lines.push(
      `| ${Math.round(under.batchRows / 1000)}k batch backlog draining${label} | ${l(under).count} | ${l(under).p50} | ${l(under).p95} | ${l(under).p99} | ${under.batchRowsPerSecond ?? '-'} |`,
      `| batch backlog alone${several ? ` (round ${i + 1})` : ''} | - | - | - | - | ${round.batchAlone.batchRowsPerSecond ?? '-'} |`,
    );
  });
  const over = several ? ` (medians of ${report.rounds.length} rounds)` : '';
  lines.push(
    '',
    `targets${over}: idle p99 <= ${IDLE_P99_TARGET_MS} ms ${mark(report.targets.idleP99Ms)}; backlog p99 ${report.backlogP99Ms} <= ${BACKLOG_P99_TARGET_MS} ms ${mark(report.targets.backlogP99Ms)}; ` +
      `batch rate under real-time load ${report.batchRateRatio ?? '-'} of alone (>= 0.9) ${mark(report.targets.batchRateRatio)}`,
  );
  return lines.join('\n');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const jsonIndex = args.indexOf('--json');
  const compareIndex = args.indexOf('--compare');
  const compareArgs =
    compareIndex >= 0 ? (args[compareIndex + 1] ?? '').split(/\s+/).filter(Boolean) : undefined;
  const roundsIndex = args.indexOf('--rounds');
  const rounds = roundsIndex >= 0 ? Number(args[roundsIndex + 1]) : 1;
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds takes a whole number of at least 1');
  await withStudyDatabase(async (url) => {
    const report = await runLaneLatencyBench({
      databaseUrl: url,
      ...(quick ? { backlogRows: 50_000, durationSeconds: 5 } : {}),
      ...(compareArgs ? { compareArgs } : {}),
      rounds,
    });
    console.log(formatLaneReport(report));
    if (jsonIndex >= 0 && args[jsonIndex + 1])
      await writeFile(args[jsonIndex + 1] as string, JSON.stringify(report, null, 2));
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
