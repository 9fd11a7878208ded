/**
 * RabbitMQ (the machine's broker, AMQP_URL): a user of its own with a distinctive password (so the
 * credentials scenario has something to find), a fresh topic exchange per destination and a
 * queue bound to `#` with a consumer counting `message-id`.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import amqplib from 'amqplib';
import { createRabbitMqSink } from '../../../../src/sinks/rabbitmqSink.js';
import { AMQP_URL, ReceivedIds, hostAndPort, requireBroker, uniqueName } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination, Endpoint } from '../target.js';

const run = promisify(execFile);

/** The sink's own size limit, below the broker's max_message_size (which closes the channel). */
const MAX_MESSAGE_BYTES = 64 * 1024;

export const rabbitmqTarget: ConformanceTarget = {
  name: 'rabbitmq',
  oversized: { payloadBytes: MAX_MESSAGE_BYTES * 2, refusedBy: 'sink' },
  async start() {
    const endpoint = hostAndPort(AMQP_URL, 5672);
    const skip = await requireBroker('RabbitMQ', endpoint.host, endpoint.port);
    if (skip) return skip;
    // A user per test file; rabbitmqctl talks to the local node (the suite runs on loopback only).
    const user = uniqueName('sr_conformance');
    const secret = `rmq-${randomBytes(8).toString('hex')}`;
    await run('rabbitmqctl', ['add_user', user, secret]);
    await run('rabbitmqctl', ['set_permissions', user, '.*', '.*', '.*']);
    const url = (via: Endpoint, password: string): string => {
      const parsed = new URL(AMQP_URL);
      parsed.username = user;
      parsed.password = password;
      parsed.hostname = via.host;
      parsed.port = String(via.port);
      return parsed.toString();
    };
    const admin = await amqplib.connect(url(endpoint, secret));
    const channel = await admin.createChannel();
    return {
      endpoint,
      secret,
      async destination(): Promise<Destination> {
        const exchange = uniqueName('sr_conf');
        const queue = uniqueName('sr_conf_q');
        await channel.assertExchange(exchange, 'topic', { durable: true });
        await channel.assertQueue(queue, { durable: false });
        await channel.bindQueue(queue, exchange, '#');
        const received = new ReceivedIds();
        const { consumerTag } = await channel.consume(
          queue,
          (message) => message && received.add(String(message.properties.messageId)),
          { noAck: true },
        );
        return {
          topic: 'orders.created',
          received,
          createSink: ({ via, log, secret: password }) =>
            createRabbitMqSink({
              url: url(via, password),
              exchange,
              // Heartbeats find a stalled link in ~2 s instead of 20.
              heartbeatSeconds: 1,
              maxMessageBytes: MAX_MESSAGE_BYTES,
              reconnectBackoff: { initialMs: 100, maxMs: 1_000 },
              log,
            }),
          async close() {
            await channel.cancel(consumerTag);
            await channel.deleteQueue(queue);
            await channel.deleteExchange(exchange);
          },
        };
      },
      async stop() {
        await admin.close().catch(() => undefined);
        await run('rabbitmqctl', ['delete_user', user]).catch(() => undefined);
      },
    };
  },
};
