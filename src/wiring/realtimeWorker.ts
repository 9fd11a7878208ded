/**
 * Entry of the real-time lane's worker thread (see replica.ts). It runs an ordinary relay limited
 * to the real-time lane, with its own event loop, connection pool, LISTEN connection and sink, so
 * that a batch backlog keeping the main thread busy cannot delay a real-time row. It runs the
 * shards the main thread says it holds, while the main thread's leases are known valid
 * (realtimeOwnership.ts); correctness never depends on that list (claims.ts).
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { RelayConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { ShardRelayError, toError } from '../errors.js';
import { createConfiguredSink } from '../routing/buildRoutingSink.js';
import type { RouteTable } from '../routing/loadRoutes.js';
import { startRelay, type Relay } from './relay.js';
import { OwnershipFence } from '../relay/ownershipFence.js';
import { RealtimeOwnership } from '../relay/realtimeOwnership.js';
import type { ToRealtimeWorker, FromRealtimeWorker } from '../relay/realtimeThreadMessages.js';

const port = parentPort;
if (!port) throw new Error('realtimeWorker.ts must run as a worker thread');

// The real-time lane polls on its own tick (its wake-ups come from NOTIFY).
// The routes come parsed from the main thread (replica.ts), which has checked them.
const { forwardSends, routeTable, fenceBuffer, ...given } = workerData as RelayConfig & {
  readonly forwardSends: boolean;
  readonly routeTable: RouteTable | undefined;
  readonly fenceBuffer: SharedArrayBuffer;
};
const config: RelayConfig = Object.freeze({ ...given, tickSeconds: given.realtimeTickSeconds });
const post = (message: FromRealtimeWorker) => port.postMessage(message);

const ownership = new RealtimeOwnership(Date.now, new OwnershipFence(fenceBuffer));

const logger = createLogger(config.logLevel, { replica: config.replicaId, thread: 'realtime' });

// A sink whose client loads in one thread only (the relay's, or a route's): this thread's sends
// through it go to the main thread's.
const sink = forwardSends
  ? await createConfiguredSink(config, routeTable, logger, {
      post: (send) => post({ type: 'send', ...send }),
      onOutcomes: (handler) =>
        port.on('message', (message: ToRealtimeWorker) => {
          if (message.type === 'sent') handler(message);
        }),
      onClose: (handler) => port.on('close', handler),
    })
  : undefined;

let relay: Relay;
try {
  relay = await startRelay({
    config,
    lanes: ['realtime'],
    ownership,
    ...(sink ? { sink } : {}),
    routeTable,
    // The main thread's relay observes the views and exports metrics for both lanes.
    observe: false,
    logger,
    hooks: {
      onBatch: (shard, lane, result) => post({ type: 'batch', shard, lane, result }),
      onRoutePart: (report) => post({ type: 'routePart', report }),
    },
  });
} catch (thrown) {
  const error = toError(thrown);
  post({
    type: 'failed',
    code: error instanceof ShardRelayError ? error.code : undefined,
    message: error.message,
    fix: error instanceof ShardRelayError ? error.fix : undefined,
  });
  port.close();
  process.exit(1);
}

port.on('message', (message: ToRealtimeWorker) => {
  if (message.type === 'shards') {
    if (ownership.receive(message)) void relay.scheduler.tick();
  } else if (message.type === 'stop') {
    void relay.stop().then(({ clean }) => {
      post({ type: 'stopped', clean });
      port.close();
    });
  }
});
post({ type: 'ready' });
