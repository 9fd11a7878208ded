/**
 * What one record's produce() call costs the relay's thread, by how its headers are built: none,
 * the attribute record copied into computed-key objects (the Kafka sink before
 * src/sinks/kafkaHeaders.ts), and KafkaHeaders. librdkafka's in-process mock cluster takes the
 * records (`test.mock.num.brokers`), so no broker is needed; the figure is the wall time of the
 * synchronous produce() loop per record (librdkafka's own threads run beside it), each round
 * waiting for every delivery report before the next.
 *
 *   npx tsx bench/studies/kafkaProduceCost.ts [--rounds 6] [--records 20000]
 *
 * (Needs the optional @confluentinc/kafka-javascript.) The figures are in kafkaHeaders.ts and
 * bench/RESULTS.md.
 */
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { MessageHeader, Producer as ProducerType } from '@confluentinc/kafka-javascript';
import { median } from '../harness/stats.js';
import {
  CE_UNDERSCORE,
  DATA_CONTENT_TYPE,
  writeApplicationHeaders,
  writeAttributes,
} from '../../src/sinks/cloudEvent.js';
import { isCloudEventsHeader, KafkaHeaders } from '../../src/sinks/kafkaHeaders.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { outboxMessages } from '../../test/support/brokers.js';

const SOURCE = 'shardrelay';

function attributeRecord(message: OutboxMessage): MessageHeader[] {
  const all: Record<string, string> = {};
  writeApplicationHeaders(all, message, isCloudEventsHeader);
  writeAttributes(all, message, SOURCE, CE_UNDERSCORE);
  all['content-type'] = DATA_CONTENT_TYPE;
  const headers: MessageHeader[] = [];
  for (const name in all) headers.push({ [name]: all[name] as string });
  return headers;
}

const kafkaHeaders = new KafkaHeaders(SOURCE);
const VARIANTS: Record<string, ((message: OutboxMessage) => MessageHeader[]) | undefined> = {
  'no headers': undefined,
  'attribute record (before)': attributeRecord,
  KafkaHeaders: (message) => kafkaHeaders.of(message),
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { rounds: { type: 'string', default: '6' }, records: { type: 'string', default: '20000' } },
  });
  const rounds = Number(values.rounds);
  const records = Number(values.records);
  const { default: kafka } = await import('@confluentinc/kafka-javascript');
  const producer: ProducerType = new kafka.Producer({
    'test.mock.num.brokers': 1,
    'enable.idempotence': true,
    'queue.buffering.max.messages': records * 2,
    'linger.ms': 5,
    dr_cb: true,
  } as never);
  await new Promise<void>((resolve, reject) =>
    producer.connect({}, (error) => (error ? reject(error) : resolve())),
  );
  producer.setPollInBackground(true);
  let delivered = 0;
  producer.on('delivery-report', () => {
    delivered++;
  });
  const messages = outboxMessages(records, (i) => ({
    eventId: `0190f3b2-7c1e-7a00-8000-${String(i).padStart(12, '0')}`,
    topic: 'bench.event',
    key: `customer-${i % 100}`,
    payload: { n: 1, padding: 'x'.repeat(160) },
  }));
  const perRecord = new Map<string, number[]>(Object.keys(VARIANTS).map((v) => [v, []]));
  try {
    for (let round = 0; round <= rounds; round++) {
      for (const [name, headersOf] of Object.entries(VARIANTS)) {
        const expected = delivered + records;
        const startedAt = performance.now();
        for (const m of messages) {
          const value = Buffer.from(m.payloadJson, 'utf8');
          if (headersOf)
            producer.produce('bench', null, value, m.key, m.createdAt.getTime(), null, headersOf(m));
          else producer.produce('bench', null, value, m.key, m.createdAt.getTime(), null);
        }
        const us = ((performance.now() - startedAt) * 1000) / records;
        while (delivered < expected) await new Promise((resolve) => setTimeout(resolve, 5));
        if (round > 0) perRecord.get(name)?.push(us); // round 0 warms up
      }
    }
  } finally {
    producer.disconnect();
  }
  console.log(
    `${records} records a round, ${rounds} rounds, variants alternated; load average ${os.loadavg()[0]?.toFixed(2)}`,
  );
  console.log('| headers | produce() µs a record, median (min-max) |');
  console.log('| --- | ---: |');
  for (const [name, list] of perRecord) {
    console.log(
      `| ${name} | ${median(list).toFixed(2)} (${Math.min(...list).toFixed(2)}-${Math.max(...list).toFixed(2)}) |`,
    );
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
