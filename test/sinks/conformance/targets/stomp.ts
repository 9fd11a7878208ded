/**
 * ActiveMQ Classic over STOMP: the harness starts a broker of its own (Debian's activemq package)
 * with the STOMP connector's `maxDataLength` at 1 MiB, the sink's `maxMessageBytes` matching it.
 * Each destination is a queue prefix of its own; a STOMP subscriber on `<prefix>.>` (ActiveMQ's
 * wildcard) counts the `ce_id` property, the event id (ActiveMQ assigns `message-id` itself).
 * The broker accepts any login, so the secret is a passcode it ignores and the sink must still
 * never show.
 */
import { randomBytes } from 'node:crypto';
import { createStompSink } from '../../../../src/sinks/stompSink.js';
import { activeMqMissing, startActiveMq } from '../../../support/activemq.js';
import { ReceivedIds, uniqueName } from '../../../support/brokers.js';
import { subscribeStomp } from '../../../support/stompSubscriber.js';
import type { ConformanceTarget, Destination } from '../target.js';

const MAX_DATA_LENGTH = 1024 * 1024;

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
        const subscriber = await subscribeStomp(broker.host, broker.stompPort, `/queue/${prefix}.>`, (m) =>
          received.add(m.headers.ce_id ?? ''),
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
