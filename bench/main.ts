/**
 * `npm run bench [-- options]`: measures the relay and the physical limit side by side on the same
 * data and prints a markdown table (stdout), the full JSON (--json) and the recovery chart
 * (--chart). `npm run bench -- --help` lists the options. Talks to 127.0.0.1 only: an embedded
 * PostgreSQL unless DATABASE_URL names a local server, and RabbitMQ at AMQP_URL when it answers.
 *
 * Exit code: 0 when every planned run ran cleanly; 1 when a run failed (or RabbitMQ is missing
 * with CI=true); 2 for bad options; 130 when interrupted.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AmqpBench } from './harness/amqp.js';
import { killAllChildren, useCompiledChildren } from './harness/child.js';
import { compileForChildren } from './harness/compile.js';
import { writeRecoveryChart } from './harness/chart.js';
import { BenchDatabase } from './harness/database.js';
import { plannedRuns, runSchedule, type ScheduleOutcome } from './harness/driver.js';
import { roundsDoNotFit } from './harness/budget.js';
import { describeMachine, finishMachine, type MachineInfo } from './harness/machine.js';
import { parseOptions, type BenchOptions } from './harness/options.js';
import type { PhaseContext } from './phases/context.js';
import { EXTERNAL_SCENARIOS, runExternal, scenarioPresent, type ExternalResult } from './phases/external.js';
import type { TimelinePoint } from './phases/recovery.js';
import { runRelayDrain } from './phases/relayDrain.js';
import { runSoak } from './phases/soak.js';
import { createProgress, type Progress } from './harness/progress.js';
import { markdown, summarise, type BenchReport } from './harness/report.js';
import { PHASES, type RunResult } from './harness/results.js';
import { median } from './harness/stats.js';
import { evaluateTargets } from './harness/targets.js';

/** Past the budget by this much, the bench stops its processes and reports what it has. */
const HARD_STOP_GRACE_MS = 60_000;

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2), process.env);
  const startedAt = Date.now();
  const special = options.soakMinutes !== undefined || options.rssBacklogRows !== undefined;
  const scenarios = EXTERNAL_SCENARIOS.filter((s) => options.phases.has(s.phase) && scenarioPresent(s));
  // The scenarios run once, after the rounds; their time is kept out of the rounds' budget.
  const reserved = scenarios.reduce((sum, s) => sum + s.estimateMs(options.quick), 0);
  const budgetProblem = special ? undefined : roundsDoNotFit(options, scenarios, reserved);
  if (budgetProblem) {
    console.error(budgetProblem);
    return 2;
  }
  const progress = createProgress(special ? 1 : plannedRuns(options));
  progress.log('compiling the relay and floor processes');
  const cpuProfileDir = options.cpuProfileDir && path.resolve(options.cpuProfileDir);
  useCompiledChildren(await compileForChildren(), {
    ...(cpuProfileDir ? { cpuProfileDir } : {}),
    relayNodeFlags: options.relayNodeFlags,
  });
  progress.log(`starting ${options.databaseUrl ? 'PostgreSQL from DATABASE_URL' : 'an embedded PostgreSQL'}`);
  const database = await BenchDatabase.open(options.databaseUrl, options.shards);
  let amqp: AmqpBench | undefined;
  const cleanup = async () => {
    killAllChildren();
    await amqp?.close().catch(() => {});
    await database.close().catch(() => {});
  };
  process.once('SIGINT', () => {
    progress.stop();
    process.stderr.write('interrupted: stopping the relay processes and PostgreSQL\n');
    void cleanup().finally(() => process.exit(130));
  });
  try {
    let rabbitMqProblem: string | undefined;
    const needsRabbit = ['relay-rabbitmq', 'confirm-pipelining', 'ordering'] as const;
    if (needsRabbit.some((p) => options.phases.has(p)) || options.rssBacklogRows !== undefined) {
      const opened = await AmqpBench.open(options.amqpUrl).catch((error: unknown) => String(error));
      if (typeof opened === 'string') {
        rabbitMqProblem = opened;
        progress.log(opened);
      } else amqp = opened;
    }
    const machine = describeMachine(
      `${database.serverVersion} (${database.kind})`,
      amqp?.brokerVersion ?? null,
    );
    const context: PhaseContext = { options, database, amqp, log: (line) => progress.log(line) };
    if (database.postgresCpuIsShared) {
      progress.log(
        'PostgreSQL CPU: backends of the bench database and the server background processes (other databases left out)',
      );
    }

    // The budget is kept by estimate (driver.ts); this is the backstop for a run that hangs.
    const hardStop = setTimeout(() => {
      progress.log('over the time budget: stopping the measured processes');
      killAllChildren();
    }, options.budgetMs + HARD_STOP_GRACE_MS);
    hardStop.unref();
    let outcome: ScheduleOutcome;
    const external: ExternalResult[] = [];
    try {
      if (special) outcome = await runSpecial(context, progress);
      else {
        const deadline = startedAt + options.budgetMs;
        outcome = await runSchedule(context, progress, deadline - reserved, rabbitMqProblem);
        for (const scenario of EXTERNAL_SCENARIOS) {
          if (!options.phases.has(scenario.phase)) continue;
          const skip = (reason: string) =>
            external.push({ phase: scenario.phase, status: 'skipped', seconds: 0, error: reason });
          if (!scenarioPresent(scenario)) {
            external.push({ phase: scenario.phase, status: 'absent', seconds: 0 });
          } else if (scenario.needsRabbitMq && rabbitMqProblem) {
            if (options.requireRabbitMq)
              outcome.failures.push({ phase: scenario.phase, round: 1, error: rabbitMqProblem });
            else skip(rabbitMqProblem);
          } else if (Date.now() + scenario.estimateMs(options.quick) > deadline) {
            skip('would end past the time budget');
          } else {
            progress.log(`${scenario.phase}: running ${scenario.file}`);
            external.push(await runExternal(context, scenario));
          }
        }
      }
    } finally {
      clearTimeout(hardStop);
      progress.stop();
    }

    const report = await buildReport(options, machine, context, outcome, external, startedAt);
    await mkdir(path.dirname(options.jsonPath), { recursive: true });
    await writeFile(options.jsonPath, `${JSON.stringify(report, null, 2)}\n`);
    process.stdout.write(`${markdown(report)}\n\nJSON: ${options.jsonPath}\n`);
    const externalFailed = external.some((e) => e.status === 'failed');
    return outcome.failures.length > 0 || externalFailed ? 1 : 0;
  } finally {
    await cleanup();
  }
}

async function buildReport(
  options: BenchOptions,
  machine: MachineInfo,
  context: PhaseContext,
  outcome: ScheduleOutcome,
  external: ExternalResult[],
  startedAt: number,
): Promise<BenchReport> {
  finishMachine(machine);
  const phases = summarise(outcome.results, [...PHASES]);
  const date = new Date(startedAt).toISOString();
  const chart = await chartOfRecovery(options, outcome.results, machine.cores, date).catch(
    (error: unknown) => {
      context.log(`the recovery chart failed: ${String(error)}`);
      return null;
    },
  );
  return {
    machine,
    date,
    command: options.command,
    durationSeconds: (Date.now() - startedAt) / 1000,
    settings: {
      database: context.database.kind,
      rows: options.rows,
      payloadBytes: options.payloadBytes,
      shards: options.shards,
      batchSize: options.batchSize,
      connections: options.connections,
      runs: options.runs,
      latencyRowsPerSec: options.latencyRowsPerSec,
      latencyWindowMs: options.latencyWindowMs,
      sustainStepMs: options.sustainStepMs,
      recoverySpikeRows: options.recoverySpikeRows,
      budgetMs: options.budgetMs,
    },
    phases,
    targets: evaluateTargets(phases),
    external,
    skipped: outcome.skipped,
    failures: outcome.failures,
    chart,
  };
}

/** `--soak` and `--rss-backlog`: long checks outside the 10-minute run, one run each. */
async function runSpecial(context: PhaseContext, progress: Progress): Promise<ScheduleOutcome> {
  const { options } = context;
  const outcome: ScheduleOutcome = { results: [], skipped: [], failures: [] };
  const attempt = async (phase: string, run: () => Promise<RunResult>) => {
    progress.phase(phase, 0);
    try {
      const result = await run();
      outcome.results.push(result);
      const memory = (result.detail?.memoryMb ?? {}) as Record<string, number | undefined>;
      progress.log(
        `${phase}: ${Math.round(result.rowsPerSec)} rows/s, peak RSS ${result.peakRssMb} MB, ` +
          `V8 heap used / reserved ${memory.peakHeapUsed ?? '?'} / ${memory.peakHeapTotal ?? '?'} MB, ` +
          `external ${memory.peakExternal ?? '?'} MB`,
      );
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      outcome.failures.push({ phase, round: 1, error: message });
      progress.log(`${phase} failed: ${message}`);
    }
  };
  const rows = options.rssBacklogRows;
  if (rows !== undefined) {
    for (const sink of context.amqp ? (['null', 'rabbitmq'] as const) : (['null'] as const)) {
      await attempt(`rss-backlog-${sink}`, () =>
        runRelayDrain(context, 1, sink, { rows, latencyWindow: false, phase: `rss-backlog-${sink}` }),
      );
    }
  }
  const minutes = options.soakMinutes;
  if (minutes !== undefined) await attempt('soak', () => runSoak(context, minutes));
  return outcome;
}

/** The chart of the recovery run with the median recovery time. */
async function chartOfRecovery(
  options: BenchOptions,
  results: readonly RunResult[],
  cores: number,
  date: string,
): Promise<string | null> {
  const runs = results.filter((r) => r.phase === 'recovery' && Number.isFinite(r.seconds));
  if (runs.length === 0) return null;
  const middle = median(runs.map((r) => r.seconds));
  const chosen = runs.reduce((a, b) => (Math.abs(b.seconds - middle) < Math.abs(a.seconds - middle) ? b : a));
  const detail = chosen.detail ?? {};
  const written = await writeRecoveryChart(options.chartPath, {
    title: `shardrelay recovery: a ${options.recoverySpikeRows.toLocaleString('en-US')}-row spike`,
    subtitle:
      `on a steady ${Number(detail.loadRowsPerSec).toLocaleString('en-US')} rows/s, null sink; ` +
      `round ${chosen.round}, the run with the median recovery time; ${cores} cores, ${date.slice(0, 10)}`,
    points: (detail.timeline ?? []) as TimelinePoint[],
    recoverySeconds: typeof detail.recoverySeconds === 'number' ? detail.recoverySeconds : null,
    thresholdLag: Number(detail.thresholdLag),
  });
  return written.path;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    killAllChildren();
    process.stderr.write(
      `bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exit(1);
  },
);
