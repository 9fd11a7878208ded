/**
 * NATS JetStream (the machine's server, NATS_URL): a stream and subject prefix per destination,
 * created by the sink, and an ordered consumer over the stream counting `Nats-Msg-Id`. The test
 * server has no authentication, so the secret travels as the URL's password, which the server
 * ignores and the sink must still never show.
 */
import { randomBytes } from 'node:crypto';
import { connect } from 'nats';
import { createJetStreamSink } from '../../../../src/sinks/jetStreamSink.js';
import { NATS_URL, ReceivedIds, hostAndPort, requireBroker, uniqueName } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination } from '../target.js';

export const jetstreamTarget: ConformanceTarget = {
  name: 'jetstream',
  // The client refuses a payload over the server's max_payload (1 MiB by default) before sending.
  oversized: { payloadBytes: 1024 * 1024 + 1, refusedBy: 'sink' },
  async start() {
    const endpoint = hostAndPort(NATS_URL, 4222);
    const skip = await requireBroker('NATS', endpoint.host, endpoint.port);
    if (skip) return skip;
    const secret = `nats-${randomBytes(8).toString('hex')}`;
    const admin = await connect({ servers: NATS_URL });
    const jsm = await admin.jetstreamManager();
    return {
      endpoint,
      secret,
      async destination(): Promise<Destination> {
        const stream = uniqueName('SRC').toUpperCase();
        const subjectPrefix = uniqueName('src');
        // The sink creates the stream on start; the consumer is attached once it exists.
        await jsm.streams.add({ name: stream, subjects: [`${subjectPrefix}.>`] });
        const received = new ReceivedIds();
        const consumer = await admin.jetstream().consumers.get(stream);
        const messages = await consumer.consume();
        void (async () => {
          for await (const message of messages) received.add(message.headers?.get('Nats-Msg-Id') ?? '');
        })();
        return {
          topic: 'orders.created',
          received,
          createSink: ({ via, log, secret: password }) =>
            createJetStreamSink({
              url: `nats://relay:${password}@${via.host}:${via.port}`,
              stream,
              subjectPrefix,
              // Pings find a stalled link in ~1 s instead of 20.
              pingIntervalMs: 500,
              connectTimeoutMs: 2_000,
              log,
            }),
          async close() {
            await messages.close();
            await jsm.streams.delete(stream);
          },
        };
      },
      async stop() {
        await admin.close();
      },
    };
  },
};
