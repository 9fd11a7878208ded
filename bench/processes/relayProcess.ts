/**
 * The relay under test, in a process of its own (started by bench/harness/child.ts). It runs the real
 * `startRelay` with the sink the driver asks for and counts what the relay reports through its
 * `onBatch` hook; the driver reads the counters and this process's CPU and peak RSS over IPC.
 */
import { destination, pino, type Logger } from 'pino';
import { loadConfig } from '../../src/config.js';
import { limitHeapGrowth } from '../../src/wiring/heapGrowth.js';
import { startRelay, type Relay } from '../../src/wiring/relay.js';
import type { Sink } from '../../src/sinks/sink.js';
import { processUsage, serveRequests, type BenchResponse, type RelayStart } from '../harness/ipc.js';

// The relay under test runs with the heap policy of `shardrelay run` (src/wiring/heapGrowth.ts).
limitHeapGrowth();

let relay: Relay | undefined;
let sent = 0;
let batches = 0;
let retried = 0;
let dead = 0;
let firstBatchAt = 0;
let lastBatchAt = 0;
const errors: string[] = [];

function noteError(text: string): void {
  if (errors.length < 5) errors.push(text);
}

/**
 * The relay's warnings and errors on stderr, each kind (message + reason) printed three times at
 * most: a sink failing every row would otherwise print a line per row. The first of each kind also
 * goes into the report.
 */
function benchLogger(): Logger {
  const seen = new Map<string, number>();
  return pino(
    {
      level: 'warn',
      base: { service: 'shardrelay', bench: 'relay' },
      hooks: {
        logMethod(args, method) {
          const [first, second] = args as unknown[];
          const fields =
            typeof first === 'object' && first !== null ? (first as Record<string, unknown>) : {};
          const message = typeof first === 'string' ? first : String(second ?? '');
          const cause = fields.err instanceof Error ? fields.err.message : fields.error;
          const reason = cause === undefined ? '' : String(cause);
          const key = `${message}|${reason}`;
          const count = (seen.get(key) ?? 0) + 1;
          seen.set(key, count);
          if (count === 1) noteError(reason ? `${message}: ${reason}` : message);
          if (count <= 3) method.apply(this, args);
          else if (count === 4)
            method.call(this, `further "${message}" lines like the above are not printed`);
        },
      },
    },
    destination(2),
  );
}

async function createSink(start: RelayStart): Promise<Sink | undefined> {
  if (start.sink === 'stomp') {
    const { createStompSink } = await import('../../src/sinks/stompSink.js');
    if (!start.stompUrl) throw new Error('the stomp sink needs stompUrl');
    return createStompSink({
      url: start.stompUrl,
      ...(start.stompDestination ? { destination: start.stompDestination } : {}),
      ...(start.stompTransactions === undefined ? {} : { transactions: start.stompTransactions }),
      ...(start.stompConnections === undefined ? {} : { connections: start.stompConnections }),
      ...(start.stompConnectionsPerBatch === undefined
        ? {}
        : { connectionsPerBatch: start.stompConnectionsPerBatch }),
    });
  }
  if (start.sink !== 'rabbitmq') return undefined; // null and pgboss: the relay builds them from its config
  // Loaded only when asked for, so the other phases do not pay for amqplib.
  const { createRabbitMqSink } = await import('../../src/sinks/rabbitmqSink.js');
  return createRabbitMqSink({ url: start.amqpUrl, exchange: start.amqpExchange });
}

async function start(request: RelayStart): Promise<BenchResponse> {
  const config = loadConfig(
    {
      databaseUrl: request.databaseUrl,
      sink: request.sink,
      batchBatchSize: request.batchSize,
      connectionsPerLane: request.connections,
      // Warnings and errors reach the driver's stderr (see benchLogger); a clean run prints nothing.
      logLevel: 'warn',
      // No canary rows: they would queue behind the drained backlog (and warn that they are late)
      // and are not part of the measured work.
      canaryIntervalSeconds: 0,
      ...request.settings,
      ...(request.sentRetention ? { sentRetentionSeconds: request.sentRetention } : {}),
    },
    {},
  );
  const sink = await createSink(request);
  relay = await startRelay({
    config,
    ...(sink ? { sink } : {}),
    logger: benchLogger(),
    hooks: {
      onBatch: (_shard, _lane, result) => {
        const now = Date.now();
        if (firstBatchAt === 0) firstBatchAt = now - result.batchMs;
        lastBatchAt = now;
        batches++;
        sent += result.sent;
        retried += result.retried;
        dead += result.dead;
        // (claimed may exceed sent + retried + dead by rows the relay leaves out of its business
        // counts, such as canaries; only retried and dead rows are problems.)
        if (result.retried + result.dead > 0) {
          const { retryable, permanent, unknown } = result.failures;
          noteError(
            `batch of ${result.claimed}: ${result.retried} retried, ${result.dead} dead ` +
              `(sink outcomes: ${unknown} unknown, ${retryable} retryable, ${permanent} permanent)`,
          );
        }
      },
    },
  });
  return { kind: 'ready' };
}

serveRequests(async (request) => {
  switch (request.kind) {
    case 'startRelay':
      return start(request);
    case 'usage':
      return {
        kind: 'usage',
        ...processUsage(),
        sent,
        batches,
        retried,
        dead,
        firstBatchAt,
        lastBatchAt,
        errors,
      };
    case 'stop': {
      const result = await relay?.stop();
      if (result && !result.clean) noteError('relay stop was not clean');
      relay = undefined;
      return { kind: 'stopped' };
    }
    default:
      throw new Error(`the relay process does not handle ${request.kind}`);
  }
});
