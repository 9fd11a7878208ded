/**
 * What the AMQP 1.0 sink allocates per message, and where: the sink alone (no relay, no
 * PostgreSQL) sends batches of 1,000 messages, two at a time as the relay's two batch connections
 * do, to a RabbitMQ node with the AMQP 1.0 plugin started here, each batch waiting for every
 * broker outcome. Reports the process's CPU per message per round and, over the last round, V8's
 * sampling heap profile including the objects the collector already freed: bytes allocated per
 * message by allocating function. Allocation is what the young-generation collector pays for
 * (issue 19 item 3: the relay's garbage-collection pauses with this sink are four times the null
 * sink's, bench phase broker-sinks).
 *
 *   npx tsx bench/studies/amqp10SinkAllocation.ts [--rounds 4] [--batches 10] [--top 25]
 *
 * (Needs rabbitmq-server with the rabbitmq_amqp1_0 plugin, as the tests do.) The figures are in
 * bench/RESULTS.md.
 */
import { Session } from 'node:inspector/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createAmqp10Sink } from '../../src/sinks/amqp10Sink.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { startAmqp10Broker } from '../../test/brokers/amqp10Broker.js';
import { outboxMessages } from '../../test/support/brokers.js';

const BATCH = 1_000;
/** One sample per 256 bytes allocated on average: fine enough for per-message figures. */
const SAMPLING_INTERVAL_BYTES = 256;

interface SamplingNode {
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  readonly selfSize: number;
  readonly children: readonly SamplingNode[];
}

/** Bytes by allocating function (name, file, line), summed over the profile's tree. */
function bytesByFunction(root: SamplingNode): Map<string, number> {
  const totals = new Map<string, number>();
  const pending: SamplingNode[] = [root];
  for (let node = pending.pop(); node; node = pending.pop()) {
    const { functionName, url, lineNumber } = node.callFrame;
    const where = `${functionName || '(anonymous)'} ${url.split('/').slice(-2).join('/')}:${lineNumber + 1}`;
    if (node.selfSize > 0) totals.set(where, (totals.get(where) ?? 0) + node.selfSize);
    pending.push(...node.children);
  }
  return totals;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '4' },
      batches: { type: 'string', default: '10' },
      top: { type: 'string', default: '25' },
    },
  });
  const rounds = Number(values.rounds);
  const batches = Number(values.batches);
  const broker = await startAmqp10Broker();
  const sink = createAmqp10Sink({ url: broker.url, address: '/queue/shardrelay_allocation_study' });
  const session = new Session();
  try {
    await sink.start();
    const send = (messages: readonly OutboxMessage[]) =>
      sink.sendBatch(messages, { deadline: Date.now() + 30_000 });
    // Fresh messages every round, as the relay's claims give: a reused array would be old-generation.
    const batchesOf = () =>
      Array.from({ length: batches }, () =>
        outboxMessages(BATCH, (i) => ({ payload: { n: i, padding: 'x'.repeat(160) } })),
      );
    for (const outcomes of await Promise.all([send(batchesOf()[0] ?? []), send(batchesOf()[0] ?? [])])) {
      if (outcomes.some((o) => o.status !== 'confirmed'))
        throw new Error('warm-up: not every message confirmed');
    }
    session.connect();
    const messages = batches * BATCH;
    for (let round = 1; round <= rounds; round++) {
      const work = batchesOf();
      const last = round === rounds;
      if (last) {
        await session.post('HeapProfiler.startSampling', {
          samplingInterval: SAMPLING_INTERVAL_BYTES,
          includeObjectsCollectedByMajorGC: true,
          includeObjectsCollectedByMinorGC: true,
        });
      }
      const before = process.cpuUsage();
      for (let i = 0; i < work.length; i += 2) {
        const outcomes = (await Promise.all(work.slice(i, i + 2).map(send))).flat();
        if (outcomes.some((o) => o.status !== 'confirmed')) throw new Error('not every message confirmed');
      }
      const cpu = process.cpuUsage(before);
      console.log(
        `round ${round}${last ? ' (heap sampling on)' : ''}: ${((cpu.user + cpu.system) / messages).toFixed(2)} µs of CPU a message`,
      );
      if (!last) continue;
      const { profile } = (await session.post('HeapProfiler.stopSampling')) as unknown as {
        profile: { head: SamplingNode };
      };
      const totals = bytesByFunction(profile.head);
      const all = [...totals.values()].reduce((a, b) => a + b, 0);
      console.log(`allocated: ${Math.round(all / messages)} bytes a message (sampled)`);
      console.log('| bytes a message | allocating function |');
      console.log('| ---: | --- |');
      for (const [where, bytes] of [...totals].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) {
        console.log(`| ${Math.round(bytes / messages)} | ${where} |`);
      }
    }
  } finally {
    session.disconnect();
    await sink.close();
    await broker.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
