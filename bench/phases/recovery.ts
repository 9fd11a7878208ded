/**
 * Phase 6, `recovery`: the relay (null sink) runs under a steady offered load; after a baseline, a
 * spike of 100,000 rows lands in one statement, on top of the load. Measured: the time from the
 * spike's commit until the lag is back to its baseline, and the rate the relay sent at meanwhile
 * (load rows included), as a fraction of its peak (the relay-null drain rate of the same round).
 *
 * The baseline lag is the 95th percentile of the lag during the baseline (after a settling
 * second); "back" means three consecutive samples (100 ms apart) at most max(2 × baseline,
 * baseline + one batch) — the lag moves in steps of a batch, so a tighter bound would measure
 * batch boundaries, not recovery.
 */
import { CpuWindow, type CpuSpent } from '../harness/cpuWindow.js';
import { insertSpike, LoadGenerator } from '../harness/loadGenerator.js';
import { cpuPer1k, mb, otherCores, rowsPerBatch, type RunResult } from '../harness/results.js';
import { rate, Sampler, type Sample } from '../harness/sampler.js';
import { percentile } from '../harness/stats.js';
import { sleep, type PhaseContext } from './context.js';
import { problemsOf, startRelayChild } from './relayChild.js';

const SAMPLE_MS = 100;
const RECOVERED_SAMPLES = 3;
/** The chart continues this long after recovery, to show the return to the steady state. */
const TAIL_MS = 1_000;

export interface TimelinePoint {
  /** Seconds since the spike's commit (negative: baseline). */
  readonly t: number;
  readonly sentPerSec: number;
  /** The steady load's rate (the spike is not in it). */
  readonly insertedPerSec: number;
  readonly lag: number;
}

export async function runRecovery(
  context: PhaseContext,
  round: number,
  loadRowsPerSec: number,
  peakRowsPerSec: number | undefined,
): Promise<RunResult> {
  const { options, database } = context;
  await database.reset();
  const child = await startRelayChild(context, 'null');
  const loadClient = await database.newClient();
  const spikeClient = await database.newClient();
  const load = new LoadGenerator(loadClient, options.payloadBytes);
  let spiked = 0;
  const sampler = new Sampler(child, () => load.inserted + spiked, SAMPLE_MS);
  try {
    load.start(loadRowsPerSec);
    sampler.start();
    const baselineFrom = Date.now() + 1_000;
    await sleep(options.recoveryBaselineMs + 1_000);
    const baselineLag = percentile(
      sampler.between(baselineFrom, Date.now()).map((s) => s.lag),
      0.95,
    );
    const threshold = Math.max(2 * baselineLag, baselineLag + options.batchSize);

    const spikeStartedAt = Date.now();
    await insertSpike(spikeClient, options.recoverySpikeRows, options.payloadBytes);
    spiked = options.recoverySpikeRows;
    const spikeAt = Date.now();
    const window = await CpuWindow.open(child, database);

    let recoveredAt: number | undefined;
    let cpu: CpuSpent | undefined;
    const deadline = spikeAt + options.recoveryMaxMs;
    while (Date.now() < deadline) {
      await sleep(SAMPLE_MS);
      const recent = sampler.between(spikeAt, Date.now()).slice(-RECOVERED_SAMPLES);
      if (recent.length === RECOVERED_SAMPLES && recent.every((s) => s.lag <= threshold)) {
        recoveredAt = recent[0]?.at;
        cpu = await window.close();
        break;
      }
    }
    await sleep(TAIL_MS);
    await load.stop();
    const samples = await sampler.stop();
    await child.waitForSent(load.inserted + spiked, 120_000).catch(() => {});

    const atSpike = nearest(samples, spikeAt);
    const atRecovery = recoveredAt === undefined ? undefined : nearest(samples, recoveredAt);
    const drainRowsPerSec = atSpike && atRecovery ? rate(atSpike, atRecovery, 'sent') : 0;
    const rows = atSpike && atRecovery ? atRecovery.sent - atSpike.sent : 0;
    const recoverySeconds = recoveredAt === undefined ? null : (recoveredAt - spikeAt) / 1000;
    const usage = await child.usage();
    const problems = problemsOf(usage, await database.statusCounts());
    if (recoveredAt === undefined)
      problems.push(`lag not back to baseline within ${options.recoveryMaxMs} ms`);
    return {
      phase: 'recovery',
      round,
      rows,
      seconds: recoverySeconds ?? Number.NaN,
      rowsPerSec: drainRowsPerSec,
      latencyMs: await database.latencyOfCreated(spikeStartedAt, recoveredAt ?? Date.now()),
      latencyAtRowsPerSec: loadRowsPerSec,
      drainLatencyMs: null,
      peakRssMb: mb(usage.maxRssBytes),
      cpuMsPer1kRows: cpuPer1k(cpu, rows),
      rowsPerBatch: rowsPerBatch(cpu),
      otherCpuCores: otherCores(cpu),
      problems,
      detail: {
        loadRowsPerSec,
        spikeRows: options.recoverySpikeRows,
        spikeInsertMs: spikeAt - spikeStartedAt,
        baselineLag,
        thresholdLag: threshold,
        recoverySeconds,
        drainRowsPerSec,
        peakRowsPerSec: peakRowsPerSec ?? null,
        ratioToPeak: peakRowsPerSec ? drainRowsPerSec / peakRowsPerSec : null,
        timeline: timeline(samples, spikeAt, options.recoverySpikeRows),
      },
    };
  } finally {
    await load.stop();
    await sampler.stop().catch(() => {});
    await loadClient.end().catch(() => {});
    await spikeClient.end().catch(() => {});
    await child.stop();
  }
}

function nearest(samples: readonly Sample[], at: number): Sample | undefined {
  let best: Sample | undefined;
  for (const s of samples) if (!best || Math.abs(s.at - at) < Math.abs(best.at - at)) best = s;
  return best;
}

/**
 * Rates over a sliding 500 ms window (a single 100 ms interval sees whole batches or none). The
 * offered rate is the steady load's: the spike's rows, counted from its commit, are left out of it
 * (the chart marks the spike instead of drawing a 200,000 rows/s needle), but not out of the lag.
 */
function timeline(samples: readonly Sample[], spikeAt: number, spikeRows: number): TimelinePoint[] {
  const offered = (s: Sample) => s.inserted - (s.at >= spikeAt ? spikeRows : 0);
  const points: TimelinePoint[] = [];
  let j = 0;
  for (const s of samples) {
    while (j < samples.length - 1 && s.at - (samples[j + 1] as Sample).at >= 500) j++;
    const from = samples[j] as Sample;
    const seconds = (s.at - from.at) / 1000;
    if (seconds < 0.4) continue;
    points.push({
      t: Math.round((s.at - spikeAt) / 100) / 10,
      sentPerSec: Math.round(rate(from, s, 'sent')),
      insertedPerSec: Math.round((offered(s) - offered(from)) / seconds),
      lag: s.lag,
    });
  }
  return points;
}
