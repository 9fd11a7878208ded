import { Worker } from 'node:worker_threads';
import type { Lane } from '../db/schema.js';
import { ShardRelayError } from '../errors.js';
import { isRoutingSink, type RoutePartReport } from '../routing/routingSink.js';
import { needsOneSinkThread } from '../routing/buildRoutingSink.js';
import { routeTableOf } from '../routing/loadRoutes.js';
import { answerForwardedSend } from '../sinks/forwardingSink.js';
import type { RelaySink } from '../sinks/sink.js';
import type { BatchResult } from '../relay/deliverBatch.js';
import { silentLogger } from '../logger.js';
import { lowerBatchLanePriority } from './batchLanePriority.js';
import { startRelay, type Relay, type StartRelayOptions } from './relay.js';
import type { FromRealtimeWorker, ToRealtimeWorker } from '../relay/realtimeThreadMessages.js';
import { OwnershipFence, withdraws } from '../relay/ownershipFence.js';
import type { HeldShards } from '../relay/shardOwnership.js';

/**
 * Compiled, the worker is a plain .js file. From source (tsx, as in tests and `npm start`), Node 20
 * does not carry the parent's TypeScript loader into worker threads, so the worker registers tsx
 * itself before importing its entry.
 */
function startWorker(workerData: unknown): Worker {
  if (!import.meta.url.endsWith('.ts'))
    return new Worker(new URL('./realtimeWorker.js', import.meta.url), { workerData });
  const entry = new URL('./realtimeWorker.ts', import.meta.url).href;
  const bootstrap = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(bootstrap, { eval: true, workerData });
}

/**
 * A replica as `shardrelay run` starts it: the batch lane on the main thread and the real-time
 * lane on a worker thread of its own.
 *
 * Why a thread: measured on a 2-core machine with a 200,000-row batch backlog draining and 50
 * real-time rows/s (bench/studies/laneLatency.ts), real-time p99 was about 350 ms with both lanes on one
 * event loop: each 1,000-row batch keeps the loop busy parsing and building statements, and a
 * woken real-time loop waits behind it. The real-time claim itself costs under 0.1 ms (it has its
 * own partial index). With its own thread the real-time lane has its own event loop, connections,
 * LISTEN connection and sink, and waits only for a CPU. The main thread keeps shard ownership and
 * tells the worker which shards it holds, of which generation, and until when its leases are known
 * valid (realtimeOwnership.ts).
 */
export async function startReplica(
  options: StartRelayOptions & {
    readonly realtimeThread?: boolean;
    /**
     * Lower this thread's CPU priority by `config.batchLaneNice` once the real-time thread runs
     * (batchLanePriority.ts). For a process that is the relay's own (`shardrelay run`): in an
     * embedding application the calling thread is the application's.
     */
    readonly lowerBatchLanePriority?: boolean;
  },
): Promise<Relay> {
  const lanes = options.lanes ?? (['realtime', 'batch'] as const);
  // A sink object given by the caller (tests) cannot cross a thread boundary; nor is a thread
  // worth it for one lane.
  const thread =
    (options.realtimeThread ?? true) && !options.sink && lanes.includes('realtime') && lanes.length > 1;
  // The routes are parsed once per start (here, unless the caller has), before any thread or
  // connection: bad routes fail the start with their ConfigError. Both lanes' relays get the table.
  const routeTable = options.sink ? undefined : (options.routeTable ?? routeTableOf(options.config));
  const withRoutes = { ...options, routeTable };
  if (!thread) return startRelay(withRoutes);

  // A sink whose client loads in one thread only (Kafka) runs in this thread alone; the worker
  // forwards its sends to it (sinks/forwardingSink.ts).
  const forwardSends = needsOneSinkThread(options.config, routeTable);
  let mainSink: RelaySink | null = null;
  // The route table is plain data (routes.ts), so it crosses to the worker as it is.
  const fence = new OwnershipFence();
  const worker = startWorker({
    ...options.config,
    metricsPort: undefined,
    forwardSends,
    routeTable,
    fenceBuffer: fence.buffer,
  });
  // The worker has no metrics of its own: the main relay's observer counts its batches too.
  let onOwnershipChange = () => {};
  let recordWorkerBatch: ((shard: number, lane: Lane, result: BatchResult) => void) | undefined;
  let recordWorkerRoutePart: ((report: RoutePartReport) => void) | undefined;
  const send = (message: ToRealtimeWorker) => worker.postMessage(message);
  let workerFailed: Error | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    worker.on('message', (message: FromRealtimeWorker) => {
      if (message.type === 'ready') resolve();
      else if (message.type === 'failed') {
        reject(
          message.code
            ? new ShardRelayError(message.code, message.message, message.fix ? { fix: message.fix } : {})
            : new Error(`the real-time lane could not start: ${message.message}`),
        );
      } else if (message.type === 'send') {
        // A routed send goes to its route's sink (the main thread's routing sink holds them all).
        const target =
          message.route === undefined || !mainSink
            ? mainSink
            : isRoutingSink(mainSink)
              ? (mainSink.sinkOf(message.route) ?? null)
              : null;
        void answerForwardedSend(target, message).then((answer) => send({ type: 'sent', ...answer }));
      } else if (message.type === 'batch') {
        recordWorkerBatch?.(message.shard, message.lane, message.result);
        options.hooks?.onBatch?.(message.shard, message.lane, message.result);
      } else if (message.type === 'routePart') {
        recordWorkerRoutePart?.(message.report);
      }
    });
    worker.on('error', (error) => {
      workerFailed = error;
      reject(error);
    });
  });
  // The worker first: until it is up, real-time rows would wait, and it boots slowly on a CPU
  // that a starting batch lane already keeps busy.
  await ready;
  // After the worker started: it keeps the priority it was created with.
  if (options.lowerBatchLanePriority)
    lowerBatchLanePriority(options.config.batchLaneNice, {
      realtimeSendsOnMainThread: forwardSends,
      logger: options.logger ?? silentLogger,
    });
  let main: Relay;
  try {
    main = await startRelay({
      ...withRoutes,
      lanes: lanes.filter((l): l is Lane => l !== 'realtime'),
      // Told at once, not at the next 100 ms check: e.g. a lost liveness lock stops the worker too.
      hooks: { ...options.hooks, onOwnershipChange: () => onOwnershipChange() },
    });
    mainSink = main.sink;
    const observer = main.observer;
    recordWorkerBatch = (shard, lane, result) => observer.recordBatch(shard, lane, result);
    // The main thread's routing sink carries the per-route metrics of both lanes.
    recordWorkerRoutePart = (report) => {
      const sink = main.sink;
      if (isRoutingSink(sink)) sink.onPart?.(report);
    };
  } catch (error) {
    await worker.terminate();
    throw error;
  }

  // Hand the worker our shards whenever they, their generation or their deadline change (checked
  // often: ownership changes per tick, and every lease renewal moves the deadline). The worker
  // cannot ask our `holds`; the deadline lets it stop on its own once our leases may have lapsed,
  // e.g. the moment the process wakes from a pause, before this thread has renewed and posted.
  // What it lets go of, it fences first (relay/ownershipFence.ts): the worker stops claiming on it
  // at once, not when this message arrives.
  let lastShared = '';
  let lastHeld: HeldShards | undefined;
  const shareShards = () => {
    const held = main.scheduler.heldShards;
    const key = `${held.generation}/${held.shards.join()}/${held.validUntil}`;
    if (key === lastShared) return;
    if (lastHeld && withdraws(lastHeld, held)) fence.withdraw();
    lastShared = key;
    lastHeld = held;
    send({ type: 'shards', ...held, fence: fence.value });
  };
  onOwnershipChange = shareShards;
  shareShards();
  const sharing = setInterval(shareShards, 100);

  let stopping: Promise<{ clean: boolean }> | undefined;
  return {
    ...main,
    stop: () =>
      (stopping ??= (async () => {
        clearInterval(sharing);
        fence.withdraw();
        send({ type: 'shards', generation: undefined, shards: [], validUntil: 0, fence: fence.value });
        const workerStopped = new Promise<boolean>((resolve) => {
          worker.on('message', (m: FromRealtimeWorker) => m.type === 'stopped' && resolve(m.clean));
          worker.on('exit', () => resolve(false));
        });
        if (!workerFailed) send({ type: 'stop' });
        // A worker forwarding its sends finishes them before this thread's sink closes.
        if (forwardSends) await workerStopped;
        const [workerClean, mainResult] = await Promise.all([workerStopped, main.stop()]);
        await worker.terminate();
        return { clean: workerClean && mainResult.clean };
      })()),
  };
}
