/**
 * Kafka: librdkafka's mock cluster (test/brokers/kafkaMock.ts; there is no Apache Kafka on these
 * machines), 3 brokers, started for this test file. Each destination is a topic of its own
 * (4 partitions, created by a metadata request, as the mock auto-creates) read by a consumer
 * group of its own that counts the `ce_id` header.
 *
 * Not applicable: the link cut and the stall. A Kafka client reaches the brokers at the addresses
 * the cluster's metadata advertises, not through the address it bootstrapped from, so a TCP proxy
 * in front of the bootstrap address sees only the first request. test/sinks/kafkaSink.test.ts
 * takes the mock's brokers down and injects produce errors instead.
 *
 * The mock speaks no SASL, so the secret the suite checks for travels as a librdkafka
 * `sasl.password` setting on a plaintext connection (where librdkafka does not use it).
 */
import { randomBytes } from 'node:crypto';
import Kafka from '@confluentinc/kafka-javascript';
import { createKafkaSink } from '../../../../src/sinks/kafkaSink.js';
import { kafkaMockProblem, startKafkaMock } from '../../../brokers/kafkaMock.js';
import { ReceivedIds, uniqueName } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination } from '../target.js';

/** librdkafka's `message.max.bytes` for the sink: produce() refuses larger records itself. */
const MAX_MESSAGE_BYTES = 64 * 1024;

/** Creates `topic` on the mock (it auto-creates topics named in a metadata request). */
export async function createTopic(bootstrap: string, topic: string): Promise<void> {
  const producer = new Kafka.Producer({ 'bootstrap.servers': bootstrap, log_level: 3 });
  await new Promise<void>((resolve, reject) =>
    producer.connect({ timeout: 10_000 }, (error) => (error ? reject(new Error(error.message)) : resolve())),
  );
  try {
    await new Promise<void>((resolve, reject) =>
      producer.getMetadata({ topic, timeout: 10_000 }, (error) =>
        error ? reject(new Error(error.message)) : resolve(),
      ),
    );
  } finally {
    await new Promise<void>((resolve) => producer.disconnect(() => resolve()));
  }
}

/** A consumer group reading `topic` from its start, counting the `ce_id` header of each record. */
export async function consumeTopic(
  bootstrap: string,
  topic: string,
  received: ReceivedIds,
): Promise<{ close(): Promise<void> }> {
  const kafka = new Kafka.KafkaJS.Kafka({
    kafkaJS: { brokers: bootstrap.split(','), logLevel: Kafka.KafkaJS.logLevel.NOTHING },
  });
  const consumer = kafka.consumer({
    kafkaJS: { groupId: uniqueName('sr_conf_group'), fromBeginning: true },
    // Joining the mock's group takes ~3 s; a short fetch wait keeps delivery prompt.
    'fetch.wait.max.ms': 100,
  });
  await consumer.connect();
  await consumer.subscribe({ topic });
  await consumer.run({
    eachMessage: async ({ message }) => {
      received.add(String(message.headers?.ce_id ?? ''));
    },
  });
  return { close: () => consumer.disconnect() };
}

export const kafkaTarget: ConformanceTarget = {
  name: 'kafka',
  oversized: { payloadBytes: MAX_MESSAGE_BYTES * 2, refusedBy: 'sink' },
  notApplicable: {
    linkCut:
      'Kafka clients talk to the brokers the metadata advertises, not through a proxy; kafkaSink.test.ts takes mock brokers down instead',
    stall:
      'Kafka clients talk to the brokers the metadata advertises, not through a proxy; kafkaSink.test.ts covers timeouts with injected errors',
  },
  async start() {
    const problem = kafkaMockProblem();
    if (problem) {
      if (process.env.CI === 'true') throw new Error(`CI must provide the Kafka mock cluster: ${problem}`);
      return problem;
    }
    const mock = await startKafkaMock(3);
    const [host, port] = (mock.bootstrap.split(',')[0] ?? '').split(':');
    const secret = `kafka-${randomBytes(8).toString('hex')}`;
    return {
      endpoint: { host: host ?? '127.0.0.1', port: Number(port) },
      secret,
      async destination(): Promise<Destination> {
        const topic = uniqueName('sr_conf');
        await createTopic(mock.bootstrap, topic);
        const received = new ReceivedIds();
        const consumer = await consumeTopic(mock.bootstrap, topic, received);
        return {
          topic: 'orders.created',
          received,
          createSink: ({ via, log, secret: password }) =>
            createKafkaSink({
              // The proxy or dead port as bootstrap; the live brokers come from the metadata.
              brokers: `${via.host}:${via.port}`,
              topic,
              connectTimeoutMs: 3_000,
              librdkafka: { 'message.max.bytes': MAX_MESSAGE_BYTES, 'sasl.password': password },
              log,
            }),
          close: () => consumer.close(),
        };
      },
      stop: () => mock.stop(),
    };
  },
};
