/**
 * Phases 2–4, `relay-null`, `relay-pgboss`, `relay-rabbitmq`: the full relay (relayProcess.ts)
 * drains the same backlog as the floor. The relay is started first, idle on an empty outbox; the
 * backlog is written in one transaction and the clock starts at its commit, so connecting, sink
 * start-up and the load itself are not counted, while the relay's reaction (the NOTIFY wake-up)
 * is. The drain ends at the relay's last committed batch. As for the floor, a small warm-up
 * backlog is drained first, untimed.
 *
 * Then, with the relay still running, a steady offered load measures end-to-end latency (the
 * latency of a drained backlog is only the time rows queued behind each other): `--latency-rate`
 * rows/s, or 40% of the rate the relay just drained at when that is lower.
 */
import { CpuWindow, type MeasuredBroker } from '../harness/cpuWindow.js';
import type { Percentiles } from '../harness/database.js';
import type { RelayStart, SinkKind } from '../harness/ipc.js';
import { LoadGenerator } from '../harness/loadGenerator.js';
import { cpuPer1k, gcPausePer1k, mb, otherCores, rowsPerBatch, type RunResult } from '../harness/results.js';
import { sleep, type PhaseContext } from './context.js';
import { drainTimeoutMs, warmupRows } from './floor.js';
import { memoryOf, problemsOf, startRelayChild } from './relayChild.js';

export interface RelayDrainOptions {
  readonly rows: number;
  /** Measure latency under a steady load after the drain; off for the 1M-row RSS check. */
  readonly latencyWindow: boolean;
  /** Phase name in the report; default `relay-<sink>`. */
  readonly phase?: string;
  /** Settings of the relay process beyond the bench's (the STOMP sink's URL). */
  readonly relayStart?: Partial<Pick<RelayStart, 'stompUrl' | 'stompDestination' | 'batchSize'>>;
  /** The broker whose CPU to measure, when not RabbitMQ (ActiveMQ, the broker sinks' phase). */
  readonly broker?: MeasuredBroker;
  /** More relay settings (see RelayStart.settings). */
  readonly relaySettings?: Readonly<Record<string, string>>;
}

export async function runRelayDrain(
  context: PhaseContext,
  round: number,
  sink: SinkKind,
  settings: RelayDrainOptions,
): Promise<RunResult> {
  const { options, database } = context;
  const { rows } = settings;
  await database.reset();
  if (sink === 'rabbitmq') await context.amqp?.purge();
  const child = await startRelayChild(context, sink, {
    ...(settings.relayStart ?? {}),
    ...(settings.relaySettings ? { settings: settings.relaySettings } : {}),
  });
  try {
    const warmup = warmupRows(rows);
    await database.loadBacklog(warmup, options.payloadBytes);
    await child.waitForSent(warmup, drainTimeoutMs(warmup));

    let window: CpuWindow | undefined;
    let startedAt = 0;
    await database.loadBacklog(rows, options.payloadBytes, async () => {
      window = await CpuWindow.open(
        child,
        database,
        settings.broker ?? (sink === 'rabbitmq' ? context.amqp : undefined),
      );
      startedAt = Date.now();
    });
    if (!window) throw new Error('the backlog was committed without opening the CPU window');
    const drained = await child.waitForSent(warmup + rows, drainTimeoutMs(rows));
    const cpu = await window.close();
    const seconds = (drained.lastBatchAt - startedAt) / 1000;
    const drainLatencyMs = await database.latencyOfIds(warmup, warmup + rows);

    let latencyMs: Percentiles | null = null;
    let latencyAtRowsPerSec: number | null = null;
    if (settings.latencyWindow && options.latencyWindowMs > 0) {
      const client = await database.newClient();
      try {
        const load = new LoadGenerator(client, options.payloadBytes);
        const loadStarted = Date.now();
        // A sink at its limit would only measure queueing: offer at most 40% of what it just drained.
        load.start(Math.min(options.latencyRowsPerSec, Math.round((0.4 * rows) / seconds)));
        await sleep(options.latencyWindowMs);
        await load.stop();
        const offered = load.inserted;
        latencyAtRowsPerSec = Math.round(offered / ((Date.now() - loadStarted) / 1000));
        const before = warmup + rows;
        await child.waitForSent(before + offered, 60_000);
        latencyMs = await database.latencyOfIds(before, before + offered);
      } finally {
        await client.end();
      }
    }

    const usage = await child.usage();
    return {
      phase: settings.phase ?? `relay-${sink}`,
      round,
      rows,
      seconds,
      rowsPerSec: rows / seconds,
      latencyMs,
      latencyAtRowsPerSec,
      drainLatencyMs,
      peakRssMb: mb(usage.maxRssBytes),
      cpuMsPer1kRows: cpuPer1k(cpu, rows),
      rowsPerBatch: rowsPerBatch(cpu),
      otherCpuCores: otherCores(cpu),
      problems: problemsOf(usage, await database.statusCounts()),
      detail: { memoryMb: memoryOf(usage), gcPauseMsPer1kRows: gcPausePer1k(cpu, rows) },
    };
  } finally {
    await child.stop();
  }
}
