/**
 * Phase 7: scenarios that live in their own files, written with their own issues — the lane
 * scenario (bench/studies/laneLatency.ts, `runLaneLatencyBench(options)`) and the confirm-pipelining
 * scenario (bench/studies/confirmPipelining.ts, `runConfirmPipeliningBench(options)`). Each runs once,
 * after the rounds, when its file exists; it is loaded by path at run time so that the bench
 * builds and runs without it. Whatever it returns goes into the JSON as is.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { PhaseContext } from './context.js';

export interface ExternalScenario {
  readonly phase: 'lanes' | 'confirm-pipelining' | 'activemq' | 'broker-sinks' | 'ordering';
  readonly file: string;
  readonly exportName: string;
  /** The export that turns the result into the lines the bench prints. */
  readonly formatName: string;
  /** Needs RabbitMQ (skipped without it, failed without it under CI=true). */
  readonly needsRabbitMq: boolean;
  /** For the time budget: measured on the 2-core machine (90 s and 7 s in a full run), with margin. */
  readonly estimateMs: (quick: boolean) => number;
  /** The scenario's own options, from the bench's. */
  readonly options: (context: PhaseContext) => Record<string, unknown>;
}

export const EXTERNAL_SCENARIOS: readonly ExternalScenario[] = [
  {
    phase: 'lanes',
    file: 'studies/laneLatency.ts',
    exportName: 'runLaneLatencyBench',
    formatName: 'formatLaneReport',
    needsRabbitMq: false,
    // Measured: 100 s in a full run (fourteenth session, a quiet 2-core machine).
    estimateMs: (quick) => (quick ? 45_000 : 200_000),
    // The sizes of laneLatency.ts's own --quick. A full run also measures the settings that were
    // the defaults before issue 14 (8 connections per lane, no gathering), interleaved, so that
    // the report carries its own before/after.
    options: ({ database, options }) => ({
      databaseUrl: database.url,
      ...(options.quick
        ? { backlogRows: 50_000, durationSeconds: 5 }
        : { compareArgs: ['--connections-per-lane', '8', '--batch-gather-ms', '0'] }),
    }),
  },
  {
    phase: 'confirm-pipelining',
    file: 'studies/confirmPipelining.ts',
    exportName: 'runConfirmPipeliningBench',
    formatName: 'formatConfirmPipelining',
    needsRabbitMq: true,
    // Measured: 3 s.
    estimateMs: () => 15_000,
    options: ({ amqp, options }) => ({ amqpUrl: amqp?.url ?? options.amqpUrl }),
  },
  {
    // The STOMP sink through a throw-away ActiveMQ (bench/phases/activemq.ts): the seed scenario, rows/s
    // with receipts, CPU against the null sink. Measured: 60-79 s in a full run.
    phase: 'activemq',
    file: 'phases/activemq.ts',
    exportName: 'runActiveMqBench',
    formatName: 'formatActiveMqReport',
    needsRabbitMq: false,
    estimateMs: (quick) => (quick ? 60_000 : 120_000),
    options: (context) => ({ context }),
  },
  {
    phase: 'broker-sinks',
    file: 'phases/brokerSinks.ts',
    exportName: 'runBrokerSinksBench',
    formatName: 'formatBrokerSinks',
    // It starts its own brokers (AMQP 1.0 node, Kafka mock, kinesalite).
    needsRabbitMq: false,
    // Per broker (three starts): rounds of two drains of up to 50,000 rows (null, then the
    // sink), one latency window. Measured with 3 rounds: 117 s (AMD EPYC), 85-88 s (Intel Xeon).
    estimateMs: (quick) => (quick ? 90_000 : 180_000),
    // It runs the relay drain phase itself, so it needs the whole context.
    options: (context) => ({ context }),
  },
  {
    // Per-key ordering on and off, 100 keys and one key holding half the rows (phases/ordering.ts).
    phase: 'ordering',
    file: 'phases/ordering.ts',
    exportName: 'runOrderingBench',
    formatName: 'formatOrderingReport',
    // RabbitMQ when it answers, else the null sink (the report says which).
    needsRabbitMq: false,
    // Eight drains of 3,000 rows (quick) or 10,000; the skewed ones with ordering on are the
    // slowest (5,000 rows took 28 s each on RabbitMQ at load 17-18; the whole quick run of 5,000
    // rows 112 s; a full run on a quiet machine 28 s).
    estimateMs: (quick) => (quick ? 90_000 : 120_000),
    options: (context) => ({ context }),
  },
];

export interface ExternalResult {
  readonly phase: string;
  readonly status: 'absent' | 'skipped' | 'ran' | 'failed';
  readonly seconds: number;
  readonly result?: unknown;
  /** The scenario's own report of the result, printed under the bench's table. */
  readonly summary?: string;
  readonly error?: string;
}

function fileOf(scenario: ExternalScenario): string {
  return fileURLToPath(new URL(`../${scenario.file}`, import.meta.url));
}

export function scenarioPresent(scenario: ExternalScenario): boolean {
  return existsSync(fileOf(scenario));
}

export async function runExternal(
  context: PhaseContext,
  scenario: ExternalScenario,
): Promise<ExternalResult> {
  const started = Date.now();
  const seconds = () => (Date.now() - started) / 1000;
  if (!scenarioPresent(scenario)) return { phase: scenario.phase, status: 'absent', seconds: 0 };
  try {
    const module = (await import(pathToFileURL(fileOf(scenario)).href)) as Record<string, unknown>;
    const run = module[scenario.exportName];
    if (typeof run !== 'function')
      throw new Error(`${scenario.file} does not export ${scenario.exportName}()`);
    const result: unknown = await (run as (options: Record<string, unknown>) => unknown)(
      scenario.options(context),
    );
    const format = module[scenario.formatName];
    const summary =
      typeof format === 'function' ? String((format as (result: unknown) => unknown)(result)) : undefined;
    return {
      phase: scenario.phase,
      status: 'ran',
      seconds: seconds(),
      result,
      ...(summary ? { summary } : {}),
    };
  } catch (error) {
    return {
      phase: scenario.phase,
      status: 'failed',
      seconds: seconds(),
      error: error instanceof Error ? error.message : String(error),
    };
  } finally {
    // A scenario may leave rows or other state behind; whatever runs next must start clean.
    await context.database.reset().catch(() => {});
  }
}
