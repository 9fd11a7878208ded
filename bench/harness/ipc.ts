/**
 * The messages between the bench driver and the processes it measures (relayProcess.ts,
 * floorProcess.ts). The measured code runs in a child process of its own so that its CPU time and
 * peak RSS are its own, not mixed with the driver's load generator and sampling.
 *
 * Protocol: the driver sends `{ id, request }`, the child answers `{ id, response }` or
 * `{ id, error }`. Requests are few and small; the answers carry the counters the driver needs.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';

export type SinkKind = 'null' | 'pgboss' | 'rabbitmq' | 'stomp' | 'amqp10' | 'kafka' | 'kinesis';

export interface RelayStart {
  readonly kind: 'startRelay';
  readonly databaseUrl: string;
  readonly sink: SinkKind;
  readonly amqpUrl: string;
  readonly amqpExchange: string;
  /** The STOMP sink's broker and destination template (bench/phases/activemq.ts). */
  readonly stompUrl?: string;
  readonly stompDestination?: string;
  /** The STOMP sink's transaction per batch (default on, the sink's default). */
  readonly stompTransactions?: boolean;
  /** The STOMP sink's connections, and how many of them one batch is spread over. */
  readonly stompConnections?: number;
  readonly stompConnectionsPerBatch?: number;
  readonly batchSize: number;
  readonly connections: number;
  /** More relay settings by RelayConfig key (the broker sinks' addresses), as flags would give them. */
  readonly settings?: Readonly<Record<string, string>>;
  /** SHARDRELAY_SENT_RETENTION of the relay; default the relay's own default. */
  readonly sentRetention?: string;
}

/**
 * What the floor process measures:
 * - `outbox`: the same-schema floor, the relay's claim on shardrelay.outbox and one completion
 *   statement with the relay's effect (DELETE, and the sent record);
 * - `narrow`: the physical limit, the same claim on a narrow table (bench_narrow), DELETE;
 * - `pgboss-insert`: pg-boss's own insert() of the same rows, the bound of the relay → pg-boss path.
 */
export type FloorMode = 'outbox' | 'narrow' | 'pgboss-insert';

export interface FloorStart {
  readonly kind: 'startFloor';
  readonly databaseUrl: string;
  readonly batchSize: number;
  readonly connections: number;
  readonly mode: FloorMode;
  /** pgboss-insert: how many jobs and their payload size. */
  readonly rows?: number;
  readonly payloadBytes?: number;
}

export type BenchRequest =
  | RelayStart
  | FloorStart
  /** Floor only: drain the outbox now; answers when no pending row is left. */
  | { readonly kind: 'runFloor' }
  | { readonly kind: 'usage' }
  | { readonly kind: 'stop' };

/** What a child reports about itself: counters since it started. */
export interface ChildUsage {
  readonly kind: 'usage';
  /** Epoch ms when the answer was made. */
  readonly at: number;
  /** User + system CPU of the child since it started, µs (process.resourceUsage). */
  readonly cpuUs: number;
  /** Peak RSS of the child's lifetime, bytes (process.resourceUsage().maxRSS). */
  readonly maxRssBytes: number;
  readonly rssBytes: number;
  /**
   * Peaks of the V8 heap (reserved, used) and of memory outside it (Buffers), sampled every 100 ms:
   * what the RSS is made of. RSS well above the used heap is heap the garbage collector has not
   * given back, not live data.
   */
  readonly peakHeapTotalBytes: number;
  readonly peakHeapUsedBytes: number;
  readonly peakExternalBytes: number;
  /**
   * The main thread's garbage-collection pauses since the child started, ms (V8's `gc` performance
   * entries). The collector's helper threads work beside them; their CPU is in `cpuUs`, not here.
   */
  readonly gcPauseMs: number;
  /** Rows recorded as sent by this child. */
  readonly sent: number;
  /** Committed batches that claimed rows: sent / batches is the mean batch size. */
  readonly batches: number;
  /** Rows that went back to pending (retry) or to dead letters; both should stay 0 in a benchmark. */
  readonly retried: number;
  readonly dead: number;
  /** Epoch ms of the first and the last committed batch that claimed rows; 0 before the first. */
  readonly firstBatchAt: number;
  readonly lastBatchAt: number;
  /** Errors the child saw (batch failures, sink errors), the first few, for the report. */
  readonly errors: readonly string[];
}

export interface FloorRun {
  readonly kind: 'floorRun';
  readonly rows: number;
  readonly startedAt: number;
  readonly finishedAt: number;
}

export type BenchResponse = { readonly kind: 'ready' } | { readonly kind: 'stopped' } | ChildUsage | FloorRun;

export interface RequestEnvelope {
  readonly id: number;
  readonly request: BenchRequest;
}

export type ResponseEnvelope =
  { readonly id: number; readonly response: BenchResponse } | { readonly id: number; readonly error: string };

/**
 * Child side: answers every request with `handle`, one at a time in arrival order. A handler
 * that throws answers with the error's message, so the driver fails with the child's reason
 * instead of a timeout.
 */
export function serveRequests(handle: (request: BenchRequest) => Promise<BenchResponse>): void {
  if (!process.send) throw new Error('this file is started by the bench driver (bench/main.ts), over IPC');
  process.on('message', (message: RequestEnvelope) => {
    handle(message.request).then(
      (response) => process.send?.({ id: message.id, response } satisfies ResponseEnvelope),
      (error: unknown) =>
        process.send?.({
          id: message.id,
          error: error instanceof Error ? (error.stack ?? error.message) : String(error),
        } satisfies ResponseEnvelope),
    );
  });
  // The driver going away (crash, Ctrl-C) must not leave a relay running against the database.
  process.on('disconnect', () => process.exit(0));
  trackMemory();
}

let peakHeapTotal = 0;
let peakHeapUsed = 0;
let peakExternal = 0;

/**
 * V8's own counters, not process.memoryUsage(): that one also reads the RSS from /proc on every
 * call (10 µs a call in a small process, against 0.4 µs), and at 10 samples a second it was
 * 35.7 ms of self time in a profiled STOMP drain's relay process (8.6 s): CPU charged to the relay,
 * weighing most on the slowest sink. The RSS is read once per report.
 */
function sampleMemory(): void {
  const heap = v8.getHeapStatistics();
  peakHeapTotal = Math.max(peakHeapTotal, heap.total_heap_size);
  peakHeapUsed = Math.max(peakHeapUsed, heap.used_heap_size);
  peakExternal = Math.max(peakExternal, heap.external_memory);
}

let gcPauseMs = 0;

/** Starts the memory sampling and the GC pause count of a child (neither keeps the process alive). */
export function trackMemory(): void {
  setInterval(sampleMemory, 100).unref();
  new PerformanceObserver((entries) => {
    for (const entry of entries.getEntries()) gcPauseMs += entry.duration;
  }).observe({ entryTypes: ['gc'] });
}

/** The part of usage every child computes the same way. */
export function processUsage(): Pick<
  ChildUsage,
  | 'at'
  | 'cpuUs'
  | 'maxRssBytes'
  | 'rssBytes'
  | 'peakHeapTotalBytes'
  | 'peakHeapUsedBytes'
  | 'peakExternalBytes'
  | 'gcPauseMs'
> {
  sampleMemory();
  const usage = process.resourceUsage();
  return {
    at: Date.now(),
    cpuUs: usage.userCPUTime + usage.systemCPUTime,
    // maxRSS is in kilobytes on Linux.
    maxRssBytes: usage.maxRSS * 1024,
    rssBytes: process.memoryUsage.rss(),
    peakHeapTotalBytes: peakHeapTotal,
    peakHeapUsedBytes: peakHeapUsed,
    peakExternalBytes: peakExternal,
    gcPauseMs,
  };
}
