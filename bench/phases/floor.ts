/**
 * Phase 1, `sql-floor`: the physical limit. A backlog of `rows` rows is loaded and committed, then
 * the floor process (floorProcess.ts) drains it with the relay's claim SQL and one UPDATE per
 * batch, on the same shards, batch size and number of connections as the relay.
 *
 * Both sides first drain a small warm-up backlog, untimed (see warmupRows): the relay in
 * production is a long-running process, and a cold one spends its first batches compiling.
 */
import { BenchChild } from '../child.js';
import { CpuWindow } from '../cpuWindow.js';
import { cpuPer1k, mb, otherCores, rowsPerBatch, type RunResult } from '../results.js';
import type { PhaseContext } from './context.js';

export async function runFloor(context: PhaseContext, round: number, rows: number): Promise<RunResult> {
  const { options, database } = context;
  const child = BenchChild.spawn('floor');
  try {
    await database.reset();
    await child.request({
      kind: 'startFloor',
      databaseUrl: database.url,
      batchSize: options.batchSize,
      connections: options.connections,
    });
    const warmup = warmupRows(rows);
    await database.loadBacklog(warmup, options.payloadBytes);
    await child.runFloor(drainTimeoutMs(warmup));

    await database.loadBacklog(rows, options.payloadBytes);
    const window = await CpuWindow.open(child, database);
    const run = await child.runFloor(drainTimeoutMs(rows));
    const cpu = await window.close();
    const usage = await child.usage();
    const counts = await database.statusCounts();
    const problems =
      (counts.pending ?? 0) > 0 ? [`${counts.pending} rows still pending after the drain`] : [];
    const seconds = (run.finishedAt - run.startedAt) / 1000;
    return {
      phase: 'sql-floor',
      round,
      rows: run.rows,
      seconds,
      rowsPerSec: run.rows / seconds,
      latencyMs: null,
      latencyAtRowsPerSec: null,
      drainLatencyMs: await database.latencyOfIds(warmup, warmup + rows),
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
