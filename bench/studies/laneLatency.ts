/**
 * The lane benchmark: real-time end-to-end latency with (a) an idle system and (b) a 200,000-row
 * batch backlog draining, and the batch drain rate with and without the real-time load.
 * Targets on a 2-core machine (issue 14), with the relay's default settings: idle p99 <= 10 ms;
 * under backlog p99 <= 25 ms; batch drain rate under real-time load >= 90% of its rate alone.
 *
 *   npx tsx bench/studies/laneLatency.ts [--quick] [--json PATH] [--compare '--connections-per-lane 8 --batch-gather-ms 0']
 *
 * (DATABASE_URL or an embedded PostgreSQL.) `--compare` runs the three scenarios a second time,
 * interleaved with the first, with those extra `shardrelay run` flags: a before/after of settings in
 * the same run, on the same machine load.
 */
import os from 'node:os';
import { writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
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
}

export interface LaneLatencyReport {
  readonly idle: LaneScenarioResult;
  readonly underBacklog: LaneScenarioResult;
  readonly batchAlone: LaneScenarioResult;
  /** Batch drain rate with real-time load / without. */
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
  const alones = await each((args) =>
    runLaneScenario({ ...common(args), backlogRows, realtimePerSecond: 0, durationSeconds: 0 }),
  );
  const unders = await each((args) => runLaneScenario({ ...common(args), backlogRows }));
  const loadAtEnd = load();
  const reports = variants.map((_, i) =>
    laneReport(
      idles[i] as LaneScenarioResult,
      unders[i] as LaneScenarioResult,
      alones[i] as LaneScenarioResult,
      [loadAtStart, loadAtEnd],
    ),
  );
  const first = reports[0] as LaneLatencyReport;
  return reports[1] && options.compareArgs
    ? { ...first, compared: { args: options.compareArgs, report: reports[1] } }
    : first;
}

function laneReport(
  idle: LaneScenarioResult,
  underBacklog: LaneScenarioResult,
  batchAlone: LaneScenarioResult,
  loadAverage: readonly [number, number],
): LaneLatencyReport {
  const ratio =
    underBacklog.batchRowsPerSecond && batchAlone.batchRowsPerSecond
      ? Math.round((underBacklog.batchRowsPerSecond / batchAlone.batchRowsPerSecond) * 1000) / 1000
      : null;
  return {
    idle,
    underBacklog,
    batchAlone,
    batchRateRatio: ratio,
    targets: {
      idleP99Ms: idle.realtimeLatencyMs.p99 <= IDLE_P99_TARGET_MS,
      backlogP99Ms: underBacklog.realtimeLatencyMs.p99 <= BACKLOG_P99_TARGET_MS,
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
  return [
    '| lane scenario | real-time rows | p50 ms | p95 ms | p99 ms | batch rows/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    `| idle | ${l(report.idle).count} | ${l(report.idle).p50} | ${l(report.idle).p95} | ${l(report.idle).p99} | - |`,
    `| ${Math.round(report.underBacklog.batchRows / 1000)}k batch backlog draining | ${l(report.underBacklog).count} | ${l(report.underBacklog).p50} | ${l(report.underBacklog).p95} | ${l(report.underBacklog).p99} | ${report.underBacklog.batchRowsPerSecond ?? '-'} |`,
    `| batch backlog alone | - | - | - | - | ${report.batchAlone.batchRowsPerSecond ?? '-'} |`,
    '',
    `targets: idle p99 <= ${IDLE_P99_TARGET_MS} ms ${mark(report.targets.idleP99Ms)}; backlog p99 <= ${BACKLOG_P99_TARGET_MS} ms ${mark(report.targets.backlogP99Ms)}; ` +
      `batch rate under real-time load ${report.batchRateRatio ?? '-'} of alone (>= 0.9) ${mark(report.targets.batchRateRatio)}`,
  ].join('\n');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const jsonIndex = args.indexOf('--json');
  const compareIndex = args.indexOf('--compare');
  const compareArgs =
    compareIndex >= 0 ? (args[compareIndex + 1] ?? '').split(/\s+/).filter(Boolean) : undefined;
  await withStudyDatabase(async (url) => {
    const report = await runLaneLatencyBench({
      databaseUrl: url,
      ...(quick ? { backlogRows: 50_000, durationSeconds: 5 } : {}),
      ...(compareArgs ? { compareArgs } : {}),
    });
    console.log(formatLaneReport(report));
    if (jsonIndex >= 0 && args[jsonIndex + 1])
      await writeFile(args[jsonIndex + 1] as string, JSON.stringify(report, null, 2));
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
