/**
 * Phase 5, `max-sustainable`: the relay (null sink) runs while the offered load steps up by a
 * factor every few seconds; the result is the last rate before the lag grows.
 *
 * "Lag grows" is judged per step on the lag (rows committed − rows sent) sampled every 250 ms,
 * skipping the first fifth of the step (the lag settles at a new level when the rate rises, which
 * is not falling behind): the relay falls behind when the mean lag of the step's last 30% exceeds
 * that of its 20–50% part by more than 5% of the offered rate per second, and by more than one
 * batch (the lag moves in steps of a batch). The load generator shares the machine (and PostgreSQL)
 * with the relay, so a step whose offered rate the generator could not even insert ends the phase
 * too, with the reason; when that happens at the first step, the phase starts again just below what
 * the generator did insert instead of reporting nothing (the eighth session's slower machine reported
 * 0 rows/s that way). A phase ended by the generator gives a lower bound, marked as such.
 */
import { CpuWindow, type CpuSpent } from '../harness/cpuWindow.js';
import { LoadGenerator } from '../harness/loadGenerator.js';
import { cpuPer1k, mb, otherCores, rowsPerBatch, type RunResult } from '../harness/results.js';
import { meanLag, rate, Sampler } from '../harness/sampler.js';
import { sleep, type PhaseContext } from './context.js';
import { problemsOf, startRelayChild } from './relayChild.js';

const STEP_FACTOR = 1.2;
const GROWTH_TOLERANCE = 0.05;
/** Restarts below the generator's own rate when it cannot offer even the first step's. */
const MAX_RESTARTS = 3;

export interface SustainStep {
  readonly offeredRowsPerSec: number;
  readonly insertedRowsPerSec: number;
  readonly sentRowsPerSec: number;
  /** Mean lag in the early and late part of the step, rows. */
  readonly lagEarly: number;
  readonly lagLate: number;
  readonly verdict: 'kept up' | 'lag grows' | 'generator limited';
  readonly from: number;
  readonly to: number;
  readonly cpu: CpuSpent;
}

export async function runSustainable(
  context: PhaseContext,
  round: number,
  startRowsPerSec: number,
): Promise<RunResult> {
  const { options, database } = context;
  await database.reset();
  const child = await startRelayChild(context, 'null');
  const client = await database.newClient();
  const load = new LoadGenerator(client, options.payloadBytes);
  const sampler = new Sampler(child, () => load.inserted, 250);
  const steps: SustainStep[] = [];
  try {
    let offered = startRowsPerSec;
    let restarts = 0;
    load.start(offered);
    sampler.start();
    for (let k = 0; k < options.sustainMaxSteps + restarts; k++) {
      const from = Date.now();
      const insertedBefore = load.inserted;
      const window = await CpuWindow.open(child, database);
      await sleep(options.sustainStepMs);
      const cpu = await window.close();
      const to = Date.now();
      const inserted = (load.inserted - insertedBefore) / ((to - from) / 1000);
      const step = judge(sampler, from, to, offered, inserted, options.batchSize);
      steps.push({ ...step, cpu });
      context.log(
        `  step ${Math.round(offered)} rows/s: inserted ${Math.round(step.insertedRowsPerSec)}, ` +
          `sent ${Math.round(step.sentRowsPerSec)} in batches of ${rowsPerBatch(cpu) ?? '?'} rows, ` +
          `lag ${Math.round(step.lagEarly)} → ${Math.round(step.lagLate)}: ${step.verdict}`,
      );
      const nothingKept = !steps.some((s) => s.verdict === 'kept up');
      if (step.verdict === 'generator limited' && nothingKept && restarts < MAX_RESTARTS) {
        restarts += 1;
        offered = Math.max(100, Math.round((step.insertedRowsPerSec * 0.9) / 100) * 100);
        context.log(`  the generator could not offer that: starting again at ${offered} rows/s`);
        load.setRate(offered);
        continue;
      }
      if (step.verdict !== 'kept up') break;
      offered = Math.round(offered * STEP_FACTOR);
      load.setRate(offered);
    }
    await load.stop();
    await sampler.stop();
    // Let the relay finish the rows of the last step, so every latency below is complete.
    await child.waitForSent(load.inserted, 120_000).catch(() => {});

    const kept = steps.filter((s) => s.verdict === 'kept up');
    const best = kept.at(-1);
    const last = steps.at(-1);
    const usage = await child.usage();
    const rows = best ? Math.round(best.sentRowsPerSec * ((best.to - best.from) / 1000)) : 0;
    return {
      phase: 'max-sustainable',
      round,
      rows,
      seconds: best ? (best.to - best.from) / 1000 : 0,
      rowsPerSec: best?.insertedRowsPerSec ?? 0,
      latencyMs: best ? await database.latencyOfCreated(best.from, best.to) : null,
      latencyAtRowsPerSec: best ? Math.round(best.insertedRowsPerSec) : null,
      drainLatencyMs: null,
      peakRssMb: mb(usage.maxRssBytes),
      cpuMsPer1kRows: cpuPer1k(best?.cpu, rows),
      rowsPerBatch: rowsPerBatch(best?.cpu),
      otherCpuCores: otherCores(best?.cpu),
      problems: problemsOf(usage, await database.statusCounts()),
      detail: {
        startRowsPerSec,
        stepFactor: STEP_FACTOR,
        stepMs: options.sustainStepMs,
        endedBy: last?.verdict === 'kept up' ? 'last step reached' : (last?.verdict ?? 'no step'),
        // The relay kept up with all the generator could insert: the rate is a lower bound.
        generatorLimited: last?.verdict === 'generator limited',
        restarts,
        steps,
      },
    };
  } finally {
    await load.stop();
    await sampler.stop().catch(() => {});
    await client.end().catch(() => {});
    await child.stop();
  }
}

function judge(
  sampler: Sampler,
  from: number,
  to: number,
  offered: number,
  inserted: number,
  batchSize: number,
): Omit<SustainStep, 'cpu'> {
  const span = to - from;
  const early = sampler.between(from + span * 0.2, from + span * 0.5);
  const late = sampler.between(from + span * 0.7, to);
  const all = sampler.between(from, to);
  const first = all[0];
  const lastSample = all.at(-1);
  const sent = first && lastSample ? rate(first, lastSample, 'sent') : 0;
  const lagEarly = meanLag(early);
  const lagLate = meanLag(late);
  // Centre of the early part to centre of the late part: 0.5 of the step.
  const growthPerSec = (lagLate - lagEarly) / ((span * 0.5) / 1000);
  const grows = growthPerSec > GROWTH_TOLERANCE * offered && lagLate - lagEarly > batchSize;
  const verdict = grows ? 'lag grows' : inserted < 0.9 * offered ? 'generator limited' : 'kept up';
  return {
    offeredRowsPerSec: offered,
    insertedRowsPerSec: inserted,
    sentRowsPerSec: sent,
    lagEarly,
    lagLate,
    verdict,
    from,
    to,
  };
}
