/**
 * The relay through ActiveMQ over STOMP (the STOMP sink), on a throw-away ActiveMQ 5.17 started
 * here (test/support/activemq.ts), loopback only. Three measurements:
 *
 * 1. The seed scenario: a link that adds `confirmDelayMs` (20 ms) to every receipt (a delaying
 *    proxy, delayProxy.ts). The naive sequential job (one SEND, wait for its RECEIPT, the next)
 *    against the relay draining a `seedRows` (1,000) backlog through the same link. Target: the
 *    relay in ≤ 0.5 s, ≥ 40× faster than the naive job measured in the same run.
 * 2. Throughput with confirms, no delay: the relay (its own process, runRelayDrain) drains a
 *    backlog into ActiveMQ; rows/s, latency p50/p99 under a steady load afterwards, CPU per 1,000
 *    rows of the relay, PostgreSQL and the broker's JVM.
 * 3. The same drain with the null sink, so the relay's CPU per 1,000 rows with STOMP can be set
 *    against its CPU with no broker at all (target ≤ 2×).
 * A STOMP subscriber consumes everything, counting event ids (`ce_id`), so the queue does not
 * grow into ActiveMQ's memory limit and the report can say every event arrived once.
 *
 * Runs inside `npm run bench` as phase `activemq`: `npm run bench -- --only activemq [--quick]`.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Client } from '@stomp/stompjs';
import { TCPWrapper } from '@stomp/tcp-wrapper';
import { activeMqMissing, startActiveMq, type ActiveMq } from '../../test/support/activemq.js';
import { subscribeStomp } from '../../test/support/stompSubscriber.js';
import { startDelayProxy } from '../harness/delayProxy.js';
import type { PhaseContext } from './context.js';
import { startRelayChild } from './relayChild.js';
import { runRelayDrain } from './relayDrain.js';
import { processTreeCpuMs } from '../harness/processCpu.js';
import type { RunResult } from '../harness/results.js';
import { median } from '../harness/stats.js';

export interface ActiveMqBenchOptions {
  readonly context: PhaseContext;
  /** Rows of the seed scenario. Default 1,000. */
  readonly seedRows?: number;
  /** Added to every receipt in the seed scenario. Default 20 ms. */
  readonly confirmDelayMs?: number;
  /** Seed runs of the relay (the median is reported). Default 3. */
  readonly seedRuns?: number;
  /** Events the naive job actually sends (the rest is extrapolated). Default: all of seedRows. */
  readonly naiveEvents?: number;
  /** Backlog of the throughput drains. Default 30,000 (quick 10,000). */
  readonly drainRows?: number;
  /**
   * Batch size of the throughput drains (both sinks). Default 250: 8 shards × 1,000 rows in flight
   * at once is 8,000 receipts, which a loaded 2-core machine's ActiveMQ (about 1,000-2,000 durable
   * messages/s) does not return within the relay's 10 s send deadline.
   */
  readonly drainBatchSize?: number;
  /** Also run the seed in every SEED_SHAPES shape. Default true. */
  readonly seedShapes?: boolean;
}

export interface ActiveMqBenchResult {
  readonly skipped?: string;
  readonly broker?: string;
  readonly loadBefore?: string;
  readonly loadAfter?: string;
  readonly seed?: {
    readonly rows: number;
    readonly confirmDelayMs: number;
    readonly naive: {
      readonly measuredEvents: number;
      readonly measuredMs: number;
      readonly totalMs: number;
    };
    readonly relayRunsMs: readonly number[];
    readonly relayMs: number;
    readonly batchSize: number;
    readonly speedup: number;
    readonly metTime: boolean;
    readonly metSpeedup: boolean;
  };
  /**
   * The seed again with the broker's disk syncs batched (KahaDB journalDiskSyncStrategy=periodic):
   * how much of the seed's time is the broker's store rather than the relay.
   */
  readonly seedPeriodicSyncMs?: { readonly runs: readonly number[]; readonly median: number };
  /**
   * The seed again with a receipt per SEND and no transaction (the sink before transactions, and
   * `--stomp-transactions off`): the broker then syncs its store once per message.
   */
  readonly seedPerSendMs?: { readonly runs: readonly number[]; readonly median: number };
  /** The seed in each SEED_SHAPES shape, same run, interleaved. */
  readonly seedShapes?: readonly (SeedShape & {
    readonly runs: readonly number[];
    readonly median: number;
  })[];
  readonly stomp?: RunResult;
  readonly null?: RunResult;
  /** Relay CPU per 1,000 rows, STOMP / null. */
  readonly relayCpuRatio?: number | null;
  /** The relay's CPU with nothing to send, ms per second (idleCpuMsPerSec). */
  readonly relayIdleCpuMsPerSec?: number;
  readonly consumed?: { readonly unique: number; readonly duplicates: number };
}

const DESTINATION = '/queue/shardrelay_bench.{topic}';

function load(): string {
  try {
    return execFileSync('uptime', { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

/** The naive job: one SEND, wait for its RECEIPT, then the next; through `port`. */
async function naiveJob(host: string, port: number, events: number): Promise<number> {
  const client = new Client({
    webSocketFactory: () => new TCPWrapper(host, port),
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: () => {},
  });
  await new Promise<void>((resolve, reject) => {
    client.onConnect = () => resolve();
    client.onWebSocketClose = () => reject(new Error('the naive job lost its connection'));
    client.activate();
  });
  try {
    const started = performance.now();
    for (let i = 0; i < events; i++) {
      const id = randomUUID();
      await new Promise<void>((resolve) => {
        client.watchForReceipt(id, () => resolve());
        client.publish({
          destination: DESTINATION.replace('{topic}', 'naive'),
          headers: { receipt: id, persistent: 'true', ce_id: id, type: 'naive' },
          body: JSON.stringify({ n: i }),
          skipContentLengthHeader: true,
        });
      });
    }
    return performance.now() - started;
  } finally {
    await client.deactivate({ force: true });
  }
}

/** How the STOMP sink sends in a seed run; what is left out is the sink's default. */
export interface SeedShape {
  readonly transactions: boolean;
  /** The sink's connections. */
  readonly connections: number;
  /** Connections one batch is spread over. */
  readonly perBatch: number;
}

/**
 * The shapes the seed is run in, interleaved round by round: one connection per batch (4 in all,
 * the sink before batches were spread), each batch spread over 1, 2, 4 and 8 connections, in
 * transactions; and a receipt per SEND, one connection per batch or a batch over 8.
 */
const SEED_SHAPES: readonly SeedShape[] = [
  { transactions: true, connections: 4, perBatch: 1 },
  ...[1, 2, 4, 8].map((n) => ({ transactions: true, connections: n, perBatch: n })),
  { transactions: false, connections: 4, perBatch: 1 },
  { transactions: false, connections: 8, perBatch: 8 },
];

function shapeName(shape: SeedShape): string {
  return `${shape.transactions ? 'transactions of 100' : 'a receipt per SEND'}, ${shape.connections} connection(s), ${shape.perBatch} per batch`;
}

/** One seed run: the relay drains `rows` through the delaying link; ms from commit to last batch. */
async function seedRun(
  context: PhaseContext,
  stompUrl: string,
  rows: number,
  shape: Partial<SeedShape> = {},
): Promise<number> {
  const { database, options } = context;
  await database.reset();
  const child = await startRelayChild(context, 'stomp', {
    stompUrl,
    stompDestination: DESTINATION,
    ...(shape.transactions === undefined ? {} : { stompTransactions: shape.transactions }),
    ...(shape.connections === undefined ? {} : { stompConnections: shape.connections }),
    ...(shape.perBatch === undefined ? {} : { stompConnectionsPerBatch: shape.perBatch }),
  });
  try {
    // Untimed warm-up: the connection, the first claim plans, the JIT.
    await database.loadBacklog(100, options.payloadBytes);
    await child.waitForSent(100, 60_000);
    let startedAt = 0;
    await database.loadBacklog(rows, options.payloadBytes, async () => {
      startedAt = Date.now();
    });
    const drained = await child.waitForSent(100 + rows, 60_000, 5);
    return drained.lastBatchAt - startedAt;
  } finally {
    await child.stop();
  }
}

/**
 * The relay's CPU while it has nothing to send, ms per second: its timers (lease checks, the
 * scheduler's ticks, the bench's own sampling). A drain bounded by the broker pays it for longer
 * than a null-sink drain, per row; the report sets it against both drains.
 */
async function idleCpuMsPerSec(context: PhaseContext, stompUrl: string): Promise<number> {
  await context.database.reset();
  const child = await startRelayChild(context, 'stomp', { stompUrl, stompDestination: DESTINATION });
  try {
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    const first = await child.usage();
    await new Promise((resolve) => setTimeout(resolve, 5_000));
    const last = await child.usage();
    return (last.cpuUs - first.cpuUs) / (last.at - first.at);
  } finally {
    await child.stop();
  }
}

export async function runActiveMqBench(options: ActiveMqBenchOptions): Promise<ActiveMqBenchResult> {
  const { context } = options;
  const missing = activeMqMissing();
  if (missing) return { skipped: missing };
  const quick = context.options.quick;
  const seedRows = options.seedRows ?? 1_000;
  const confirmDelayMs = options.confirmDelayMs ?? 20;
  const naiveEvents = Math.min(seedRows, options.naiveEvents ?? (quick ? 200 : seedRows));
  const drainRows = options.drainRows ?? (quick ? 10_000 : 30_000);
  const drainBatchSize = options.drainBatchSize ?? 250;
  const loadBefore = load();

  const broker: ActiveMq = await startActiveMq();
  const brokerCpu = { brokerCpuMs: () => processTreeCpuMs(broker.pid) };
  const seen = new Map<string, number>();
  const subscriber = await subscribeStomp(broker.host, broker.stompPort, '/queue/shardrelay_bench.>', (m) => {
    const id = m.headers.ce_id ?? '';
    seen.set(id, (seen.get(id) ?? 0) + 1);
  });
  const proxy = await startDelayProxy(broker.host, broker.stompPort, confirmDelayMs);
  try {
    context.log(`activemq: the naive job, ${naiveEvents} events one by one through +${confirmDelayMs} ms`);
    const naiveMs = await naiveJob('127.0.0.1', proxy.port, naiveEvents);
    const naiveTotal = (naiveMs * seedRows) / naiveEvents;
    const relayRunsMs: number[] = [];
    const perSendRuns: number[] = [];
    const shapeRuns: number[][] = SEED_SHAPES.map(() => []);
    const through = `stomp://bench:bench@127.0.0.1:${proxy.port}`;
    // Interleaved, so that a change in the machine's load hits every shape alike.
    for (let run = 0; run < (options.seedRuns ?? 3); run++) {
      relayRunsMs.push(await seedRun(context, through, seedRows));
      perSendRuns.push(await seedRun(context, through, seedRows, { transactions: false }));
      if (options.seedShapes !== false) {
        for (const [i, shape] of SEED_SHAPES.entries()) {
          // A run that fails (ActiveMQ stopped answering, seen on a loaded machine) is reported
          // and left out; the other shapes still run.
          const ms = await seedRun(context, through, seedRows, shape).catch((error: unknown) => {
            const lines = broker.output().split('\n');
            context.log(
              `activemq: seed round ${run + 1}, ${shapeName(shape)} failed: ${String(error)}; ` +
                `broker's last lines:\n${lines.slice(-15).join('\n')}`,
            );
            return Number.NaN;
          });
          if (!Number.isNaN(ms)) (shapeRuns[i] as number[]).push(ms);
          context.log(`activemq: seed round ${run + 1}, ${shapeName(shape)}: ${ms} ms`);
        }
      }
    }
    const relayMs = median(relayRunsMs);
    context.log(`activemq: seed ${seedRows} rows in ${relayMs} ms (naive ${Math.round(naiveTotal)} ms)`);
    context.log(`activemq: seed with a receipt per SEND, no transaction: ${median(perSendRuns)} ms`);
    const seedShapes =
      options.seedShapes === false
        ? undefined
        : SEED_SHAPES.map((shape, i) => {
            const runs = shapeRuns[i] as number[];
            context.log(`activemq: seed, ${shapeName(shape)}: ${median(runs)} ms (runs ${runs.join(', ')})`);
            return { ...shape, runs, median: median(runs) };
          });

    const periodic = await startActiveMq({ kahaDb: { journalDiskSyncStrategy: 'periodic' } });
    const periodicRuns: number[] = [];
    try {
      const periodicProxy = await startDelayProxy(periodic.host, periodic.stompPort, confirmDelayMs);
      try {
        for (let run = 0; run < (options.seedRuns ?? 3); run++) {
          periodicRuns.push(
            await seedRun(context, `stomp://bench:bench@127.0.0.1:${periodicProxy.port}`, seedRows),
          );
        }
      } finally {
        await periodicProxy.close();
      }
    } finally {
      await periodic.stop();
    }
    context.log(`activemq: seed with periodic disk syncs ${median(periodicRuns)} ms`);

    const direct = `stomp://bench:bench@${broker.host}:${broker.stompPort}`;
    context.log(`activemq: draining ${drainRows} rows through the STOMP sink, then the null sink`);
    const stomp = await runRelayDrain(context, 1, 'stomp', {
      rows: drainRows,
      latencyWindow: true,
      phase: 'relay-stomp',
      broker: brokerCpu,
      relayStart: { stompUrl: direct, stompDestination: DESTINATION, batchSize: drainBatchSize },
    });
    const nullRun = await runRelayDrain(context, 1, 'null', {
      rows: drainRows,
      latencyWindow: false,
      phase: 'relay-null (activemq bench)',
      relayStart: { batchSize: drainBatchSize },
    });
    const idleMsPerSec = await idleCpuMsPerSec(context, direct);
    const stompCpu = stomp.cpuMsPer1kRows.client;
    const nullCpu = nullRun.cpuMsPer1kRows.client;
    let duplicates = 0;
    for (const n of seen.values()) duplicates += n - 1;
    return {
      broker: 'ActiveMQ 5.17 (Debian), STOMP, persistent (KahaDB)',
      loadBefore,
      loadAfter: load(),
      seed: {
        rows: seedRows,
        confirmDelayMs,
        naive: { measuredEvents: naiveEvents, measuredMs: naiveMs, totalMs: naiveTotal },
        relayRunsMs,
        relayMs,
        batchSize: context.options.batchSize,
        speedup: naiveTotal / relayMs,
        metTime: relayMs <= 500,
        metSpeedup: naiveTotal / relayMs >= 40,
      },
      seedPeriodicSyncMs: { runs: periodicRuns, median: median(periodicRuns) },
      seedPerSendMs: { runs: perSendRuns, median: median(perSendRuns) },
      ...(seedShapes ? { seedShapes } : {}),
      stomp,
      null: nullRun,
      relayCpuRatio: stompCpu !== null && nullCpu !== null && nullCpu > 0 ? stompCpu / nullCpu : null,
      relayIdleCpuMsPerSec: idleMsPerSec,
      consumed: { unique: seen.size, duplicates },
    };
  } finally {
    await proxy.close();
    await subscriber.close().catch(() => undefined);
    await broker.stop();
  }
}

const fmt = (n: number | null | undefined, digits = 0): string =>
  n === null || n === undefined || !Number.isFinite(n)
    ? 'n/a'
    : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

export function formatActiveMqReport(result: ActiveMqBenchResult): string {
  if (result.skipped) return `activemq: skipped (${result.skipped})`;
  const { seed, stomp } = result;
  const lines = [
    `activemq: ${result.broker}`,
    `load before: ${result.loadBefore}`,
    `load after:  ${result.loadAfter}`,
  ];
  if (seed) {
    const naive =
      seed.naive.measuredEvents === seed.rows
        ? `${fmt(seed.naive.totalMs)} ms`
        : `${fmt(seed.naive.totalMs)} ms (extrapolated from ${seed.naive.measuredEvents} events in ${fmt(seed.naive.measuredMs)} ms)`;
    lines.push(
      `seed: ${fmt(seed.rows)} rows through +${seed.confirmDelayMs} ms receipts: relay ${fmt(seed.relayMs)} ms ` +
        `(runs ${seed.relayRunsMs.map((ms) => fmt(ms)).join(', ')}), naive one-by-one job ${naive}, ` +
        `${fmt(seed.speedup, 1)}× — target ≤ 500 ms ${seed.metTime ? 'met' : 'NOT met'}, ≥ 40× ${seed.metSpeedup ? 'met' : 'NOT met'}`,
    );
  }
  if (result.seedPerSendMs) {
    lines.push(
      `seed with a receipt per SEND and no transaction (a store sync per message): relay ` +
        `${fmt(result.seedPerSendMs.median)} ms (runs ${result.seedPerSendMs.runs.map((ms) => fmt(ms)).join(', ')})`,
    );
  }
  for (const shape of result.seedShapes ?? []) {
    lines.push(
      `seed, ${shapeName(shape)}: relay ${fmt(shape.median)} ms (runs ${shape.runs.map((ms) => fmt(ms)).join(', ')})`,
    );
  }
  if (result.seedPeriodicSyncMs) {
    lines.push(
      `seed with the broker's disk syncs batched (KahaDB journalDiskSyncStrategy=periodic): relay ` +
        `${fmt(result.seedPeriodicSyncMs.median)} ms (runs ${result.seedPeriodicSyncMs.runs.map((ms) => fmt(ms)).join(', ')})`,
    );
  }
  if (stomp) {
    lines.push(
      `relay → ActiveMQ (STOMP, receipts): ${fmt(stomp.rowsPerSec)} rows/s over ${fmt(stomp.rows)} rows ` +
        `(${fmt(stomp.rowsPerBatch)} rows/batch); ` +
        `latency p50 ${fmt(stomp.latencyMs?.p50)} ms, p99 ${fmt(stomp.latencyMs?.p99)} ms at ${fmt(stomp.latencyAtRowsPerSec)} rows/s; ` +
        `CPU per 1,000 rows: relay ${fmt(stomp.cpuMsPer1kRows.client)} ms, broker ${fmt(stomp.cpuMsPer1kRows.broker)} ms, ` +
        `PostgreSQL ${fmt(stomp.cpuMsPer1kRows.postgres)} ms; other load ${fmt(stomp.otherCpuCores, 2)} cores` +
        (stomp.problems.length > 0 ? `; problems: ${stomp.problems.join('; ')}` : ''),
    );
  }
  if (result.null) {
    lines.push(
      `relay → null sink, same backlog: ${fmt(result.null.rowsPerSec)} rows/s; relay CPU per 1,000 rows ` +
        `${fmt(result.null.cpuMsPer1kRows.client)} ms; STOMP / null = ${fmt(result.relayCpuRatio, 2)}× ` +
        `(target ≤ 2×: ${result.relayCpuRatio == null ? 'not measured' : result.relayCpuRatio <= 2 ? 'met' : 'NOT met'})`,
    );
  }
  if (result.relayIdleCpuMsPerSec !== undefined && stomp && result.null) {
    const idle = result.relayIdleCpuMsPerSec;
    // ms of idle CPU per 1,000 rows of a drain of that rate: idle ms/s × s per 1,000 rows.
    const idleOf = (run: RunResult): number => (idle * 1_000) / run.rowsPerSec;
    const net = (run: RunResult): number | null =>
      run.cpuMsPer1kRows.client === null ? null : run.cpuMsPer1kRows.client - idleOf(run);
    const stompNet = net(stomp);
    const nullNet = net(result.null);
    lines.push(
      `relay idle CPU: ${fmt(idle, 1)} ms per second; of that, in the drains' CPU per 1,000 rows: ` +
        `STOMP ${fmt(idleOf(stomp))} ms, null ${fmt(idleOf(result.null))} ms; net of it ` +
        `STOMP / null = ${stompNet !== null && nullNet !== null && nullNet > 0 ? fmt(stompNet / nullNet, 2) : 'n/a'}× (an estimate)`,
    );
  }
  if (result.consumed) {
    lines.push(
      `STOMP subscriber: ${fmt(result.consumed.unique)} distinct event ids, ${result.consumed.duplicates} duplicates`,
    );
  }
  return lines.join('\n');
}
