/**
 * HTTP webhook: a receiver on loopback per destination that checks the bearer token (the secret),
 * answers 413 to a body over its limit, and counts the structured-mode CloudEvent `id` of every
 * request it takes in, then answers 204.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHttpSink } from '../../../../src/sinks/httpSink.js';
import { ReceivedIds } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination } from '../target.js';

/** The receiver's body limit, as a reverse proxy's `client_max_body_size` would set it. */
const MAX_BODY_BYTES = 256 * 1024;

async function startReceiver(secret: string) {
  const received = new ReceivedIds();
  const server = http.createServer((request, response) => {
    if (request.headers.authorization !== `Bearer ${secret}`) {
      response.writeHead(401).end();
      return;
    }
    if (Number(request.headers['content-length']) > MAX_BODY_BYTES) {
      // Refused from the headers, as a proxy does: the body is never read.
      response.writeHead(413, { connection: 'close' }).end('request entity too large');
      return;
    }
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      received.add(String((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id?: unknown }).id));
      response.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    received,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export const httpTarget: ConformanceTarget = {
  name: 'http',
  oversized: { payloadBytes: MAX_BODY_BYTES * 2, refusedBy: 'broker' },
  async start() {
    const secret = `http-${randomBytes(8).toString('hex')}`;
    // A receiver per destination so counts never mix; the first stands for "the broker".
    const receivers = [await startReceiver(secret)];
    return {
      endpoint: { host: '127.0.0.1', port: receivers[0]?.port ?? 0 },
      secret,
      async destination(): Promise<Destination> {
        const receiver = await startReceiver(secret);
        receivers.push(receiver);
        return {
          endpoint: { host: '127.0.0.1', port: receiver.port },
          topic: 'orders.created',
          received: receiver.received,
          createSink: ({ via, secret: token }) =>
            createHttpSink({
              url: `http://${via.host}:${via.port}/events`,
              headers: { authorization: `Bearer ${token}` },
              // Longer than the suite's deadlines: a silent receiver shows as unknown at the deadline.
              timeoutMs: 30_000,
            }),
          close: () => receiver.close(),
        };
      },
      async stop() {
        await Promise.all(receivers.map((r) => r.close().catch(() => undefined)));
      },
    };
  },
};
