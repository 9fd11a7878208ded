/** Starts a relay process (relayProcess.ts) with the bench's settings, idle until rows arrive. */
import { BenchChild } from '../harness/child.js';
import type { ChildUsage, RelayStart, SinkKind } from '../harness/ipc.js';
import { mb } from '../harness/results.js';
import type { PhaseContext } from './context.js';

export async function startRelayChild(
  context: PhaseContext,
  sink: SinkKind,
  extra: Partial<
    Pick<
      RelayStart,
      | 'stompUrl'
      | 'stompDestination'
      | 'stompTransactions'
      | 'stompConnections'
      | 'stompConnectionsPerBatch'
      | 'batchSize'
      | 'settings'
      | 'sentRetention'
    >
  > = {},
): Promise<BenchChild> {
  const { options, database, amqp } = context;
  if (sink === 'rabbitmq' && !amqp) throw new Error('RabbitMQ is not reachable');
  const child = BenchChild.spawn('relay');
  try {
    await child.request(
      {
        kind: 'startRelay',
        databaseUrl: database.url,
        sink,
        amqpUrl: amqp?.url ?? options.amqpUrl,
        amqpExchange: amqp?.exchange ?? 'shardrelay',
        batchSize: options.batchSize,
        connections: options.connections,
        ...extra,
        settings: {
          ...(options.batchGatherMs !== undefined ? { batchGatherMs: String(options.batchGatherMs) } : {}),
          ...extra.settings,
        },
      },
      120_000,
    );
    return child;
  } catch (error) {
    await child.stop();
    throw error;
  }
}

/** What a clean run must show: nothing retried, nothing dead, no errors, nothing left pending. */
export function problemsOf(usage: ChildUsage, counts: Record<string, number>): string[] {
  const problems = [...usage.errors];
  if (usage.retried + usage.dead > 0) problems.push(`${usage.retried} retried, ${usage.dead} dead`);
  if ((counts.pending ?? 0) > 0) problems.push(`${counts.pending} rows still pending`);
  return problems;
}

/** What the relay's peak RSS is made of, MB (see ChildUsage). */
export function memoryOf(usage: ChildUsage): Record<string, number> {
  return {
    peakRss: mb(usage.maxRssBytes),
    peakHeapTotal: mb(usage.peakHeapTotalBytes),
    peakHeapUsed: mb(usage.peakHeapUsedBytes),
    peakExternal: mb(usage.peakExternalBytes),
  };
}
