/**
 * ActiveMQ Classic over STOMP: the harness starts a broker of its own (Debian's activemq package)
 * with the STOMP connector's `maxDataLength` at 1 MiB, the sink's `maxMessageBytes` matching it.
 * Each destination is a queue prefix of its own; a STOMP subscriber on `<prefix>.>` (ActiveMQ's
 * wildcard) counts the `ce_id` property, the event id (ActiveMQ assigns `message-id` itself).
 * The broker accepts any login, so the secret is a passcode it ignores and the sink must still
 * never show.
 */
import { randomBytes } from 'node:crypto';
import { Client } from '@stomp/stompjs';
import { TCPWrapper } from '@stomp/tcp-wrapper';
import { createStompSink } from '../../../../src/sinks/stompSink.js';
import { activeMqMissing, startActiveMq } from '../../../support/activemq.js';
import { ReceivedIds, uniqueName } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination } from '../target.js';

const MAX_DATA_LENGTH = 1024 * 1024;

/** A STOMP subscriber (auto ack) on `destination`, counting the `ce_id` header of each MESSAGE. */
export async function stompSubscriber(
  host: string,
  port: number,
  destination: string,
  received: ReceivedIds,
): Promise<{ close(): Promise<void> }> {
  const client = new Client({
    webSocketFactory: () => new TCPWrapper(host, port),
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: () => {},
  });
  await new Promise<void>((resolve, reject) => {
    client.onConnect = () => resolve();
    client.onStompError = (frame) => reject(new Error(frame.headers.message ?? 'STOMP ERROR'));
    client.onWebSocketClose = () => reject(new Error('the subscriber connection closed'));
    client.activate();
  });
  const subscribed = `sub-${randomBytes(4).toString('hex')}`;
  await new Promise<void>((resolve) => {
    client.watchForReceipt(subscribed, () => resolve());
    client.subscribe(destination, (message) => received.add(message.headers.ce_id ?? ''), {
      receipt: subscribed,
      // Many messages on their way at once: the default of 1 makes a round trip per message.
      'activemq.prefetchSize': '1000',
    });
  });
  return {
    close: () => client.deactivate({ force: true }),
  };
}

export const stompTarget: ConformanceTarget = {
  name: 'stomp',
  oversized: { payloadBytes: MAX_DATA_LENGTH + 1, refusedBy: 'sink' },
  timing: { receiveTimeoutMs: 30_000 },
  async start() {
    const missing = activeMqMissing();
    if (missing) return missing;
    const broker = await startActiveMq({
      stompOptions: { 'wireFormat.maxDataLength': String(MAX_DATA_LENGTH) },
    });
    const secret = `amq-${randomBytes(8).toString('hex')}`;
    return {
      endpoint: { host: broker.host, port: broker.stompPort },
      secret,
      async destination(): Promise<Destination> {
        const prefix = uniqueName('sr_conf');
        const received = new ReceivedIds();
        const subscriber = await stompSubscriber(
          broker.host,
          broker.stompPort,
          `/queue/${prefix}.>`,
          received,
        );
        return {
          topic: 'orders.created',
          received,
          createSink: ({ via, log, secret: passcode }) =>
            createStompSink({
              url: `stomp://relay:${passcode}@${via.host}:${via.port}`,
              destination: `/queue/${prefix}.{topic}`,
              // Heart-beats find a stalled link in ~2 s instead of 20.
              heartbeatMs: 1_000,
              connectTimeoutMs: 3_000,
              maxMessageBytes: MAX_DATA_LENGTH,
              reconnectBackoff: { initialMs: 100, maxMs: 1_000 },
              log,
            }),
          close: () => subscriber.close(),
        };
      },
      stop: () => broker.stop(),
    };
  },
};
