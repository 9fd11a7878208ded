/**
 * `--soak [minutes]`: the relay (null sink) under a steady offered load of 80% of its max
 * sustainable rate (measured first, or `--soak-rate`) for `minutes` (default 30), with its own
 * retention pruner (`--soak-retention`, default 5m) and nothing else maintaining the tables: what a
 * production deployment looks like after half an hour. Per minute: rows sent per second, the size
 * of the outbox and of the sent record (pg_total_relation_size: heap, indexes, TOAST), CPU per row.
 *
 * Targets (issue "the outbox's storage"): the rate of the last 5 minutes ≥ 0.95 × that of minutes
 * 2-6, and the outbox grows ≤ 5% over the last 10 minutes. The sent record grows until the
 * retention window is full, then stays flat; it is reported beside the outbox.
 */
import { CpuWindow } from '../harness/cpuWindow.js';
import { LoadGenerator } from '../harness/loadGenerator.js';
import { cpuPer1k, mb, otherCores, rowsPerBatch, per1k, type RunResult } from '../harness/results.js';
import { Sampler } from '../harness/sampler.js';
import { median } from '../harness/stats.js';
import { sleep, type PhaseContext } from './context.js';
import { problemsOf, startRelayChild } from './relayChild.js';
import { runSustainable } from './sustainable.js';

export interface SoakMinute {
  readonly minute: number;
  readonly offeredRowsPerSec: number;
  readonly sentRowsPerSec: number;
  /** Rows committed but not yet sent at the end of the minute. */
  readonly lag: number;
  readonly outboxBytes: number;
  readonly sentEventBytes: number;
  readonly rssMb: number;
  readonly relayCpuMsPer1kRows: number | null;
  readonly postgresCpuMsPer1kRows: number | null;
  readonly otherCores: number | null;
}

const mean = (values: readonly number[]) => values.reduce((a, b) => a + b, 0) / Math.max(values.length, 1);

export async function runSoak(context: PhaseContext, minutes: number): Promise<RunResult> {
  const { options, database } = context;
  let rate = options.soakRowsPerSec;
  let maxSustainable: number | null = null;
  if (rate === undefined) {
    context.log('  soak: measuring the max sustainable rate first');
    const sustained = await runSustainable(context, 0, 3_000);
    maxSustainable = sustained.rowsPerSec;
    if (!(maxSustainable >= 1_000)) {
      throw new Error(
        `the max sustainable rate measured ${Math.round(maxSustainable)} rows/s (its first step already fell ` +
          'behind: other load on the machine?); give the soak its rate with --soak-rate <rows/s>',
      );
    }
    rate = Math.max(500, Math.round((maxSustainable * 0.8) / 100) * 100);
  }
  context.log(
    `  soak: ${rate} rows/s for ${minutes} min, sent-record retention ${options.soakSentRetention}`,
  );
  await database.reset();
  const child = await startRelayChild(context, 'null', {
    ...(options.soakSentRetention ? { sentRetention: options.soakSentRetention } : {}),
  });
  const client = await database.newClient();
  const load = new LoadGenerator(client, options.payloadBytes);
  const sampler = new Sampler(child, () => load.inserted, 1_000);
  const perMinute: SoakMinute[] = [];
  try {
    load.start(rate);
    sampler.start();
    const whole = await CpuWindow.open(child, database);
    for (let minute = 1; minute <= minutes; minute++) {
      const window = await CpuWindow.open(child, database);
      const sentBefore = (await child.usage()).sent;
      const insertedBefore = load.inserted;
      await sleep(60_000);
      const cpu = await window.close();
      const usage = await child.usage();
      const sent = usage.sent - sentBefore;
      const sizes = await database.relationSizes();
      const seconds = cpu.wallMs / 1000;
      const row: SoakMinute = {
        minute,
        offeredRowsPerSec: Math.round((load.inserted - insertedBefore) / seconds),
        sentRowsPerSec: Math.round(sent / seconds),
        lag: load.inserted - usage.sent,
        outboxBytes: sizes.outbox,
        sentEventBytes: sizes.sentEvent,
        rssMb: mb(usage.rssBytes),
        relayCpuMsPer1kRows: per1k(cpu.childMs, sent),
        postgresCpuMsPer1kRows: per1k(cpu.postgresMs, sent),
        otherCores: Number.isFinite(cpu.otherCores) ? cpu.otherCores : null,
      };
      perMinute.push(row);
      context.log(
        `  soak minute ${minute}: offered ${row.offeredRowsPerSec}, sent ${row.sentRowsPerSec} rows/s, lag ${row.lag}, ` +
          `outbox ${mb(row.outboxBytes)} MB, sent record ${mb(row.sentEventBytes)} MB, ` +
          `PostgreSQL ${row.postgresCpuMsPer1kRows ?? '?'} ms/1k rows, other load ${cpu.otherCores.toFixed(2)} cores`,
      );
    }
    const cpu = await whole.close();
    await load.stop();
    await sampler.stop();
    await child.waitForSent(load.inserted, 120_000);
    const usage = await child.usage();
    const total = perMinute.reduce((a, m) => a + m.sentRowsPerSec * 60, 0);
    const early = perMinute.filter((m) => m.minute >= 2 && m.minute <= 6).map((m) => m.sentRowsPerSec);
    const late = perMinute.slice(-5).map((m) => m.sentRowsPerSec);
    const tenBack = perMinute.at(-11);
    const last = perMinute.at(-1);
    const outboxGrowth = tenBack && last ? last.outboxBytes / tenBack.outboxBytes - 1 : null;
    const sentEventGrowth = tenBack && last ? last.sentEventBytes / tenBack.sentEventBytes - 1 : null;
    return {
      phase: 'soak',
      round: 1,
      rows: Math.round(total),
      seconds: minutes * 60,
      rowsPerSec: total / (minutes * 60),
      latencyMs: null,
      latencyAtRowsPerSec: rate,
      drainLatencyMs: null,
      peakRssMb: mb(usage.maxRssBytes),
      cpuMsPer1kRows: cpuPer1k(cpu, total),
      rowsPerBatch: rowsPerBatch(cpu),
      otherCpuCores: otherCores(cpu),
      problems: problemsOf(usage, await database.statusCounts()),
      detail: {
        offeredRowsPerSec: rate,
        maxSustainableRowsPerSec: maxSustainable,
        sentRetention: options.soakSentRetention,
        minutes: perMinute,
        // The two soak targets.
        last5ToMinutes2to6: early.length > 0 && late.length > 0 ? mean(late) / mean(early) : null,
        outboxGrowthLast10Min: outboxGrowth,
        sentEventGrowthLast10Min: sentEventGrowth,
        medianOtherCores: median(perMinute.map((m) => m.otherCores ?? Number.NaN).filter(Number.isFinite)),
      },
    };
  } finally {
    await load.stop().catch(() => {});
    await sampler.stop().catch(() => {});
    await client.end().catch(() => {});
    await child.stop();
  }
}
