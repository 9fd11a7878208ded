/**
 * `--soak`: the relay (null sink) at saturation for `minutes`: the driver keeps a backlog of
 * 50,000–150,000 pending rows (topping it up in 50,000-row statements) and prunes sent rows older
 * than 30 s, as a production pruner would, so that minutes of throughput do not grow the table
 * by millions of rows. Throughput per minute shows decay: table or index bloat, vacuum falling
 * behind, a leak in the relay. Target: the last minute within 10% of the first. On a shared
 * machine other load moves throughput from minute to minute, so the CPU per row of each minute is
 * reported too: decay (bloat, a leak) shows there as well, and other load does not.
 */
import { CpuWindow } from '../cpuWindow.js';
import { insertSpike } from '../loadGenerator.js';
import { cpuPer1k, mb, otherCores, rowsPerBatch, per1k, type RunResult } from '../results.js';
import { Sampler } from '../sampler.js';
import { sleep, type PhaseContext } from './context.js';
import { problemsOf, startRelayChild } from './relayChild.js';

const LOW_WATER = 50_000;
const TOP_UP = 100_000;
const PRUNE_AFTER_SECONDS = 30;
const PRUNE_CHUNK = 20_000;

export interface SoakMinute {
  readonly minute: number;
  readonly sentRowsPerSec: number;
  readonly rssMb: number;
  readonly relayCpuMsPer1kRows: number | null;
  readonly postgresCpuMsPer1kRows: number | null;
  readonly otherCores: number | null;
  readonly prunedRows: number;
}

function cpuPerRow(minute: SoakMinute): number {
  return (minute.relayCpuMsPer1kRows ?? Number.NaN) + (minute.postgresCpuMsPer1kRows ?? Number.NaN);
}

export async function runSoak(context: PhaseContext, minutes: number): Promise<RunResult> {
  const { options, database } = context;
  await database.reset();
  const child = await startRelayChild(context, 'null');
  const topUpClient = await database.newClient();
  let inserted = 0;
  let pruned = 0;
  let stopping = false;
  const sampler = new Sampler(child, () => inserted, 1_000);
  // Background loops keep their failure for the end: a rejection nobody awaits yet would end the driver.
  const failures: unknown[] = [];
  // Keeps the relay saturated: whenever the lag falls under the low-water mark, add a top-up.
  const topUp = (async () => {
    while (!stopping) {
      const lag = inserted - (sampler.latest?.sent ?? 0);
      if (lag < LOW_WATER) {
        await insertSpike(topUpClient, TOP_UP, options.payloadBytes);
        inserted += TOP_UP;
      } else await sleep(100);
    }
  })().catch((error: unknown) => void failures.push(error));
  const pruner = (async () => {
    while (!stopping) {
      const deleted = await database.pruneSent(PRUNE_AFTER_SECONDS, PRUNE_CHUNK);
      pruned += deleted;
      if (deleted < PRUNE_CHUNK) await sleep(2_000);
    }
  })().catch((error: unknown) => void failures.push(error));
  const perMinute: SoakMinute[] = [];
  try {
    sampler.start();
    const whole = await CpuWindow.open(child, database);
    for (let minute = 1; minute <= minutes; minute++) {
      const window = await CpuWindow.open(child, database);
      const sentBefore = (await child.usage()).sent;
      const prunedBefore = pruned;
      await sleep(60_000);
      const cpu = await window.close();
      const usage = await child.usage();
      const sent = usage.sent - sentBefore;
      perMinute.push({
        minute,
        sentRowsPerSec: sent / (cpu.wallMs / 1000),
        rssMb: mb(usage.rssBytes),
        relayCpuMsPer1kRows: per1k(cpu.childMs, sent),
        postgresCpuMsPer1kRows: per1k(cpu.postgresMs, sent),
        otherCores: Number.isFinite(cpu.otherCores) ? cpu.otherCores : null,
        prunedRows: pruned - prunedBefore,
      });
      context.log(
        `  soak minute ${minute}: ${Math.round(sent / 60)} rows/s, RSS ${mb(usage.rssBytes)} MB, ` +
          `other load ${cpu.otherCores.toFixed(2)} cores`,
      );
    }
    const cpu = await whole.close();
    stopping = true;
    await Promise.all([topUp, pruner]);
    if (failures.length > 0) throw failures[0];
    await sampler.stop();
    await child.waitForSent(inserted, 120_000);
    const usage = await child.usage();
    const first = perMinute[0];
    const last = perMinute.at(-1);
    const total = perMinute.reduce((a, m) => a + m.sentRowsPerSec * 60, 0);
    return {
      phase: 'soak',
      round: 1,
      rows: Math.round(total),
      seconds: minutes * 60,
      rowsPerSec: total / (minutes * 60),
      latencyMs: null,
      latencyAtRowsPerSec: null,
      drainLatencyMs: null,
      peakRssMb: mb(usage.maxRssBytes),
      cpuMsPer1kRows: cpuPer1k(cpu, total),
      rowsPerBatch: rowsPerBatch(cpu),
      otherCpuCores: otherCores(cpu),
      problems: problemsOf(usage, await database.statusCounts()),
      detail: {
        minutes: perMinute,
        lastToFirst: first && last ? last.sentRowsPerSec / first.sentRowsPerSec : null,
        // CPU per row (relay + PostgreSQL), last minute over first: decay that other load cannot fake.
        cpuPerRowLastToFirst: first && last ? cpuPerRow(last) / cpuPerRow(first) : null,
        prunedRows: pruned,
      },
    };
  } finally {
    stopping = true;
    await Promise.all([topUp, pruner]);
    await sampler.stop().catch(() => {});
    await topUpClient.end().catch(() => {});
    await child.stop();
  }
}
