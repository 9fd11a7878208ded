/**
 * The lane benchmark: real-time end-to-end latency with (a) an idle system and (b) a 200,000-row
 * batch backlog draining, and the batch drain rate with and without the real-time load.
 * Targets on a 2-core machine: idle p99 <= 15 ms; under backlog p99 <= 50 ms; batch drain rate
 * under real-time load >= 90% of its rate alone.
 *
 *   npx tsx bench/laneLatency.ts [--quick] [--json PATH]     (DATABASE_URL or an embedded PostgreSQL)
 */
import { writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { createDatabase, createPool } from '../src/db/connection.js';
import { startEmbeddedPostgres } from '../src/db/embeddedPostgres.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { runLaneScenario, type LaneScenarioResult } from './laneScenario.js';

export interface LaneLatencyOptions {
  readonly databaseUrl: string;
  readonly backlogRows?: number;
  readonly realtimePerSecond?: number;
  readonly durationSeconds?: number;
  readonly relayArgs?: readonly string[];
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
}

/** Runs the three scenarios against an already migrated database (their tables are truncated). */
export async function runLaneLatencyBench(options: LaneLatencyOptions): Promise<LaneLatencyReport> {
  const common = {
    databaseUrl: options.databaseUrl,
    realtimePerSecond: options.realtimePerSecond ?? 50,
    durationSeconds: options.durationSeconds ?? 20,
    ...(options.relayArgs ? { relayArgs: options.relayArgs } : {}),
  };
  const backlogRows = options.backlogRows ?? 200_000;
  const idle = await runLaneScenario({ ...common, backlogRows: 0 });
  const batchAlone = await runLaneScenario({
    ...common,
    backlogRows,
    realtimePerSecond: 0,
    durationSeconds: 0,
  });
  const underBacklog = await runLaneScenario({ ...common, backlogRows });
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
      idleP99Ms: idle.realtimeLatencyMs.p99 <= 15,
      backlogP99Ms: underBacklog.realtimeLatencyMs.p99 <= 50,
      batchRateRatio: ratio !== null && ratio >= 0.9,
    },
  };
}

export function formatLaneReport(report: LaneLatencyReport): string {
  const l = (r: LaneScenarioResult) => r.realtimeLatencyMs;
  const mark = (ok: boolean) => (ok ? 'met' : 'missed');
  return [
    '| lane scenario | real-time rows | p50 ms | p95 ms | p99 ms | batch rows/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    `| idle | ${l(report.idle).count} | ${l(report.idle).p50} | ${l(report.idle).p95} | ${l(report.idle).p99} | - |`,
    `| ${Math.round(report.underBacklog.batchRows / 1000)}k batch backlog draining | ${l(report.underBacklog).count} | ${l(report.underBacklog).p50} | ${l(report.underBacklog).p95} | ${l(report.underBacklog).p99} | ${report.underBacklog.batchRowsPerSecond ?? '-'} |`,
    `| batch backlog alone | - | - | - | - | ${report.batchAlone.batchRowsPerSecond ?? '-'} |`,
    '',
    `targets: idle p99 <= 15 ms ${mark(report.targets.idleP99Ms)}; backlog p99 <= 50 ms ${mark(report.targets.backlogP99Ms)}; ` +
      `batch rate under real-time load ${report.batchRateRatio ?? '-'} of alone (>= 0.9) ${mark(report.targets.batchRateRatio)}`,
  ].join('\n');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const jsonIndex = args.indexOf('--json');
  let url = process.env.DATABASE_URL;
  const embedded = url ? undefined : await startEmbeddedPostgres();
  url ??= embedded?.url as string;
  try {
    const db = createDatabase(createPool({ connectionString: url, max: 1, applicationName: 'bench-setup' }));
    await migrateToLatest(db);
    await db.destroy();
    const report = await runLaneLatencyBench({
      databaseUrl: url,
      ...(quick ? { backlogRows: 50_000, durationSeconds: 5 } : {}),
    });
    console.log(formatLaneReport(report));
    if (jsonIndex >= 0 && args[jsonIndex + 1])
      await writeFile(args[jsonIndex + 1] as string, JSON.stringify(report, null, 2));
  } finally {
    await embedded?.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
