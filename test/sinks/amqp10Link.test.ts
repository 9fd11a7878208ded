/**
 * The AMQP 1.0 link manager on its own, against a scripted AMQP 1.0 peer (an rhea listener that
 * grants credit and settles only when told): credit handed over but not yet written, the sink's
 * outcomes for settled and lost deliveries, waiters woken by a lost connection, the next
 * generation after it, the back-off after a failed connect, close. What the sink makes of it is in
 * amqp10Sink.test.ts and the conformance suite.
 */
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import rhea, { type Connection, type Delivery, type EventContext, type Receiver } from 'rhea';
import { silentLogger } from '../../src/logger.js';
import {
  createAmqp10Links,
  creditLeft,
  deliver,
  waitForCredit,
  type Amqp10LinkOptions,
  type DeliveryOutcomes,
  type SenderLink,
} from '../../src/sinks/amqp10Link.js';
import { confirmed, unknown, type SendOutcome } from '../../src/sinks/sink.js';

/** Outcomes that say which handler the manager called, and with what. */
const recording: DeliveryOutcomes = {
  accepted: () => confirmed,
  rejected: (address) => unknown(`rejected at ${address}`),
  released: (address) => unknown(`released at ${address}`),
  modified: (address) => unknown(`modified at ${address}`),
  lost: (address, reason) => unknown(`lost at ${address}: ${reason}`),
};

function options(url: string, overrides: Partial<Amqp10LinkOptions> = {}): Amqp10LinkOptions {
  return {
    url,
    idleTimeoutMs: 10_000,
    connectTimeoutMs: 5_000,
    reconnectBackoff: { initialMs: 10, maxMs: 10 },
    outcomes: recording,
    log: silentLogger,
    ...overrides,
  };
}

/** A peer that attaches every link without credit and keeps each transfer's delivery for the test. */
async function startPeer(peerOptions: { readonly idleTimeOutMs?: number } = {}) {
  const container = rhea.create_container({ id: 'scripted-link-peer' });
  const receivers: Receiver[] = [];
  const connections: Connection[] = [];
  const deliveries: Delivery[] = [];
  container.on('receiver_open', (context: EventContext) => {
    if (context.receiver) receivers.push(context.receiver);
  });
  container.on('connection_open', (context: EventContext) => connections.push(context.connection));
  container.on('message', (context: EventContext) => {
    if (context.delivery) deliveries.push(context.delivery);
  });
  container.on('disconnected', () => undefined);
  container.on('error', () => undefined);
  // (credit_window and autoaccept are link options read from the listener's; not in its typings.)
  const listenOptions = {
    port: 0,
    host: '127.0.0.1',
    credit_window: 0,
    autoaccept: false,
    // The peer closes a connection silent for twice this long (rhea's own idle check).
    ...(peerOptions.idleTimeOutMs ? { idle_time_out: peerOptions.idleTimeOutMs } : {}),
  };
  const server = container.listen(listenOptions as Parameters<typeof container.listen>[0]);
  await new Promise<void>((resolve) => (server.listening ? resolve() : server.once('listening', resolve)));
  const { port } = server.address() as AddressInfo;
  return {
    url: `amqp://127.0.0.1:${port}`,
    deliveries,
    connections,
    async attached(n = 1): Promise<Receiver> {
      while (receivers.length < n) await new Promise((resolve) => setTimeout(resolve, 5));
      return receivers[n - 1] as Receiver;
    },
    grant(receiver: Receiver, credit: number) {
      (receiver as unknown as { flow(credit: number): void }).flow(credit);
    },
    dropConnections() {
      for (const c of connections) (c as { socket?: { destroy(): void } }).socket?.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of connections) (c as { socket?: { destroy(): void } }).socket?.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A small message, encoded by rhea: the manager sends bytes as the sink encoded them. */
const message = (id: string): Buffer =>
  (rhea.message as unknown as { encode(message: object): Buffer }).encode({
    message_id: id,
    body: rhea.message.data_section(Buffer.from('{}')),
  });

/** A sender link on 'events' of the current connection, once the peer has granted it one credit. */
async function senderWithOneCredit(
  links: ReturnType<typeof createAmqp10Links>,
  peer: Awaited<ReturnType<typeof startPeer>>,
) {
  const connection = await links.current(Date.now() + 5_000);
  const state = links.senderFor(connection, 'events');
  peer.grant(await peer.attached(), 1);
  await until(() => creditLeft(state) > 0, 5_000, 'credit arrives');
  return { connection, state };
}

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const giveUp = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > giveUp) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The outcome of one delivery, as a promise. */
function delivered(state: SenderLink, encoded: Buffer): Promise<SendOutcome> {
  return new Promise((resolve) => deliver(state, encoded, resolve));
}

describe('AMQP 1.0 link manager against a scripted peer', () => {
  it('counts credit handed to rhea before rhea writes it, and maps settlements through the sink', async () => {
    const peer = await startPeer();
    const links = createAmqp10Links(options(peer.url));
    try {
      const connection = await links.current(Date.now() + 5_000);
      const state = links.senderFor(connection, 'events');
      assert.equal(links.senderFor(connection, 'events'), state, 'one sender per address');
      peer.grant(await peer.attached(), 3);
      await state.opened;
      await until(() => creditLeft(state) > 0, 5_000, 'credit arrives');
      assert.equal(creditLeft(state), 3);
      const first = delivered(state, message('a'));
      const second = delivered(state, message('b'));
      // rhea writes the transfers on a later tick; the credit they use is spoken for already.
      assert.equal(creditLeft(state), 1);
      await until(() => peer.deliveries.length === 2, 5_000, 'both transfers arrive');
      // One at a time: rhea 3.0.5, as the peer, merges the dispositions of consecutive deliveries
      // settled together into one frame with the first one's state.
      peer.deliveries[0]?.accept();
      assert.equal(await first, confirmed);
      peer.deliveries[1]?.release();
      assert.deepEqual(await second, unknown('released at events'));
      assert.equal(creditLeft(state), 1);
    } finally {
      await links.close();
      await peer.close();
    }
  });

  it('keeps the heartbeat a peer asks for going after transfers (their per-frame output is deferred to the cycle)', async () => {
    // The peer wants a frame at least every 150 ms (half its 300 ms idle time-out) and drops a
    // connection silent for 600 ms; between batches the sink sends nothing but heartbeats.
    const peer = await startPeer({ idleTimeOutMs: 300 });
    const links = createAmqp10Links(options(peer.url));
    try {
      const { connection, state } = await senderWithOneCredit(links, peer);
      const first = delivered(state, message('a'));
      await until(() => peer.deliveries.length === 1, 5_000, 'the transfer arrives');
      peer.deliveries[0]?.accept();
      assert.equal(await first, confirmed);
      const idleSince = Date.now();
      await until(() => Date.now() - idleSince >= 1_500, 5_000, 'an idle second and a half');
      assert.equal(connection.closed, false, 'the peer kept the connection: heartbeats went out');
      assert.equal(peer.connections[0]?.is_open(), true);
      peer.grant(await peer.attached(), 1);
      await until(() => creditLeft(state) > 0, 5_000, 'credit arrives');
      const second = delivered(state, message('b'));
      await until(() => peer.deliveries.length === 2, 5_000, 'the second transfer arrives');
      peer.deliveries[1]?.accept();
      assert.equal(await second, confirmed);
      assert.equal((await links.current(Date.now() + 5_000)).generation, 1, 'the same connection throughout');
    } finally {
      await links.close();
      await peer.close();
    }
  });

  it('settles unsettled deliveries as lost and wakes credit waiters when the connection drops, then reconnects', async () => {
    const peer = await startPeer();
    const links = createAmqp10Links(options(peer.url));
    try {
      const { state } = await senderWithOneCredit(links, peer);
      const pending = delivered(state, message('a'));
      assert.equal(creditLeft(state), 0);
      const waited = Date.now();
      const waiting = waitForCredit(state, Date.now() + 10_000);
      await until(() => peer.deliveries.length === 1, 5_000, 'the transfer arrives');
      peer.dropConnections();
      const outcome = await pending;
      assert.equal(outcome.status, 'unknown');
      assert.match((outcome as { error: string }).error, /^lost at events: disconnected/);
      await waiting;
      assert.ok(Date.now() - waited < 5_000, 'the credit waiter was woken by the loss, not its deadline');
      assert.equal(state.closed, true);
      const next = await links.current(Date.now() + 5_000);
      assert.equal(next.generation, 2);
      assert.notEqual(links.senderFor(next, 'events'), state, 'a new connection attaches a new sender');
    } finally {
      await links.close();
      await peer.close();
    }
  });

  it('after a failed connect, fails fast without dialling until the back-off has passed', async () => {
    let dialled = 0;
    const refusing = net.createServer((socket) => {
      dialled += 1;
      socket.destroy();
    });
    await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', resolve));
    const { port } = refusing.address() as AddressInfo;
    const links = createAmqp10Links(
      options(`amqp://127.0.0.1:${port}`, { reconnectBackoff: { initialMs: 60_000, maxMs: 60_000 } }),
    );
    try {
      await assert.rejects(links.current(Date.now() + 5_000));
      assert.equal(dialled, 1);
      await assert.rejects(
        links.current(Date.now() + 5_000),
        /reconnecting in \d+ ms after 1 failed attempt/,
      );
      assert.equal(dialled, 1, 'no second dial during the back-off');
    } finally {
      await links.close();
      await new Promise((resolve) => refusing.close(resolve));
    }
  });

  it('on close, settles what is unsettled as lost and opens nothing more', async () => {
    const peer = await startPeer();
    const links = createAmqp10Links(options(peer.url));
    try {
      const { connection, state } = await senderWithOneCredit(links, peer);
      const pending = delivered(state, message('a'));
      await links.close();
      assert.deepEqual(await pending, unknown('lost at events: the sink was closed'));
      assert.equal(connection.closed, true);
      await assert.rejects(links.current(Date.now() + 5_000), /the sink is closed/);
    } finally {
      await peer.close();
    }
  });
});
