/**
 * AMQP 1.0: a RabbitMQ node of its own with the AMQP 1.0 plugin (test/brokers/amqp10Broker.ts),
 * started for this test file on free loopback ports, with one user of a distinctive password.
 * Each destination is a durable queue (`/queue/<name>`, declared by the broker at attach) read by
 * an rhea receiver that counts `message-id`. The sink sends every topic (canaries included) to
 * that one address.
 */
import { randomBytes } from 'node:crypto';
import rhea, { type Connection, type EventContext } from 'rhea';
import { createAmqp10Sink } from '../../../../src/sinks/amqp10Sink.js';
import { amqp10BrokerProblem, startAmqp10Broker } from '../../../brokers/amqp10Broker.js';
import { ReceivedIds, uniqueName } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination, Endpoint } from '../target.js';

/** The sink's own size limit (RabbitMQ's AMQP 1.0 plugin announces none on the link). */
const MAX_MESSAGE_BYTES = 64 * 1024;

/** An rhea connection, open. */
export function connectAmqp10(endpoint: Endpoint, user: string, password: string): Promise<Connection> {
  return new Promise((resolve, reject) => {
    const connection = rhea.create_container().connect({
      host: endpoint.host,
      port: endpoint.port,
      username: user,
      password,
      reconnect: false,
    });
    connection.once('connection_open', () => resolve(connection));
    connection.once('disconnected', (context: EventContext) =>
      reject(context.error ?? new Error('disconnected')),
    );
  });
}

/** Closes an rhea connection and waits (at most 2 s) until the broker has answered. */
export function closeAmqp10(connection: Connection): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 2_000);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    connection.once('connection_close', done);
    connection.once('disconnected', done);
    connection.close();
  });
}

/** A receiver on `address` that counts each message's message-id; resolves once attached. */
export function countMessages(connection: Connection, address: string, received: ReceivedIds) {
  const receiver = connection.open_receiver({
    source: { address, durable: 2 },
    autoaccept: true,
    credit_window: 500,
  });
  receiver.on('message', (context: EventContext) => received.add(String(context.message?.message_id)));
  return new Promise<typeof receiver>((resolve) => receiver.once('receiver_open', () => resolve(receiver)));
}

export const amqp10Target: ConformanceTarget = {
  name: 'amqp10',
  oversized: { payloadBytes: MAX_MESSAGE_BYTES * 2, refusedBy: 'sink' },
  async start() {
    const problem = amqp10BrokerProblem();
    if (problem) {
      if (process.env.CI === 'true') throw new Error(`CI must provide the AMQP 1.0 test broker: ${problem}`);
      return problem;
    }
    const user = uniqueName('sr_conformance');
    const secret = `amqp10-${randomBytes(8).toString('hex')}`;
    const broker = await startAmqp10Broker({ user, password: secret });
    const endpoint = { host: broker.host, port: broker.port };
    const admin = await connectAmqp10(endpoint, user, secret);
    // A broker stopping under an open connection closes it with an error; not the test's concern.
    admin.on('disconnected', () => undefined);
    admin.on('connection_error', () => undefined);
    return {
      endpoint,
      secret,
      async destination(): Promise<Destination> {
        const address = `/queue/${uniqueName('sr_conf')}`;
        const received = new ReceivedIds();
        const receiver = await countMessages(admin, address, received);
        return {
          topic: 'orders.created',
          received,
          createSink: ({ via, log, secret: password }) =>
            createAmqp10Sink({
              url: `amqp://${user}:${password}@${via.host}:${via.port}`,
              address,
              // Finds a stalled link in ~4 s instead of 20.
              idleTimeoutMs: 2_000,
              maxMessageBytes: MAX_MESSAGE_BYTES,
              reconnectBackoff: { initialMs: 100, maxMs: 1_000 },
              log,
            }),
          async close() {
            receiver.close();
          },
        };
      },
      async stop() {
        await closeAmqp10(admin);
        await broker.stop();
      },
    };
  },
};
