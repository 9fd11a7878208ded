/**
 * Phases 1-3, the floors (floorProcess.ts): a backlog of `rows` rows is loaded and committed, then
 * drained by a bare loop on the same shards, batch size and number of connections as the relay:
 * `sql-floor` on shardrelay.outbox with the relay's completion effect (the same-schema floor),
 * `sql-floor-narrow` on a narrow table with DELETE (the physical limit of the machine);
 * `pgboss-insert` inserts the same number of jobs with pg-boss's own insert().
 *
 * Both sides first drain a small warm-up backlog, untimed (see warmupRows): the relay in
 * production is a long-running process, and a cold one spends its first batches compiling.
 */
import { BenchChild } from '../harness/child.js';
import { CpuWindow } from '../harness/cpuWindow.js';
import { cpuPer1k, mb, otherCores, rowsPerBatch, type RunResult } from '../harness/results.js';
import type { FloorMode } from '../harness/ipc.js';
import type { PhaseContext } from './context.js';

const PHASE_OF: Readonly<Record<FloorMode, string>> = {
  outbox: 'sql-floor',
  narrow: 'sql-floor-narrow',
  'pgboss-insert': 'pgboss-insert',
};

export async function runFloor(
  context: PhaseContext,
  round: number,
  rows: number,
  mode: FloorMode = 'outbox',
): Promise<RunResult> {
  const { options, database } = context;
  const child = BenchChild.spawn('floor');
  const warmup = warmupRows(rows);
  const load = (n: number) =>
    mode === 'narrow'
      ? database.loadNarrowBacklog(n, options.payloadBytes)
      : mode === 'outbox'
        ? database.loadBacklog(n, options.payloadBytes)
        : Promise.resolve();
  try {
    await database.reset();
    await child.request(
      {
        kind: 'startFloor',
        databaseUrl: database.url,
        batchSize: options.batchSize,
        connections: options.connections,
        mode,
        rows: warmup,
        payloadBytes: options.payloadBytes,
      },
      120_000,
    );
    await load(warmup);
    await child.runFloor(drainTimeoutMs(warmup));
    if (mode === 'pgboss-insert') {
      // The measured run inserts `rows` jobs: tell the child the new count.
      await child.request({
        kind: 'startFloor',
        databaseUrl: database.url,
        batchSize: options.batchSize,
        connections: options.connections,
        mode,
        rows,
        payloadBytes: options.payloadBytes,
      });
    }

    await load(rows);
    const window = await CpuWindow.open(child, database);
    const run = await child.runFloor(drainTimeoutMs(rows));
    const cpu = await window.close();
    const usage = await child.usage();
    const pending =
      mode === 'narrow' ? await database.narrowPending() : ((await database.statusCounts()).pending ?? 0);
    const problems = pending > 0 ? [`${pending} rows still pending after the drain`] : [];
    const seconds = (run.finishedAt - run.startedAt) / 1000;
    return {
      phase: PHASE_OF[mode],
      round,
      rows: run.rows,
      seconds,
      rowsPerSec: run.rows / seconds,
      latencyMs: null,
      latencyAtRowsPerSec: null,
      drainLatencyMs: mode === 'outbox' ? await database.latencyOfIds(warmup, warmup + rows) : null,
      peakRssMb: mb(usage.maxRssBytes),
      cpuMsPer1kRows: cpuPer1k(cpu, run.rows),
      rowsPerBatch: rowsPerBatch(cpu),
      otherCpuCores: otherCores(cpu),
      problems,
    };
  } finally {
    await child.stop();
  }
}

/** Enough batches for every shard loop to run a few times; small next to the measured backlog. */
export function warmupRows(rows: number): number {
  return Math.min(10_000, Math.ceil(rows / 5));
}

/** Generous: a drain slower than 500 rows/s is broken, not slow. */
export function drainTimeoutMs(rows: number): number {
  return 60_000 + rows * 2;
}
