/**
 * The AMQP 1.0 sink's own scenarios (the shared ones are in conformance/amqp10.test.ts):
 * - 20,000 events through the whole relay into a real, durable broker (a RabbitMQ node with the
 *   AMQP 1.0 plugin), counted once each by an AMQP 1.0 receiver;
 * - the outcome of every delivery state, and credit: against a scripted AMQP 1.0 peer (an rhea
 *   listener), since no broker rejects, releases or withholds credit on demand.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import rhea, { type Connection, type Delivery, type EventContext, type Receiver } from 'rhea';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { createAmqp10Sink } from '../../src/sinks/amqp10Sink.js';
import type { SendOutcome } from '../../src/sinks/sink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { amqp10BrokerProblem, startAmqp10Broker, type Amqp10Broker } from '../brokers/amqp10Broker.js';
import { ReceivedIds, outboxMessages, sendInTransaction, statuses, uniqueName } from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { closeAmqp10, connectAmqp10, countMessages } from './conformance/targets/amqp10.js';

const EVENTS = 20_000;

/**
 * A scripted AMQP 1.0 peer: accepts links, grants credit only when told, and settles each
 * transfer as `settle(index)` says (index = the payload's `index`), or leaves it unsettled.
 */
async function startPeer(settle: (index: number, delivery: Delivery) => void) {
  const container = rhea.create_container({ id: 'scripted-peer' });
  const receivers: Receiver[] = [];
  const connections: Connection[] = [];
  let transfers = 0;
  container.on('receiver_open', (context: EventContext) => {
    if (context.receiver) receivers.push(context.receiver);
  });
  container.on('connection_open', (context: EventContext) => connections.push(context.connection));
  container.on('message', (context: EventContext) => {
    transfers += 1;
    const body = context.message?.body as { content?: Buffer } | undefined;
    const index = (JSON.parse(String(body?.content)) as { index: number }).index;
    if (context.delivery) settle(index, context.delivery);
  });
  container.on('disconnected', () => undefined);
  container.on('error', () => undefined);
  // No credit until the test grants it; no automatic accept. (Link options are read from the
  // connection's, which are the listener's; the typings do not list them there.)
  const listenOptions = { port: 0, host: '127.0.0.1', credit_window: 0, autoaccept: false };
  const server = container.listen(listenOptions as Parameters<typeof container.listen>[0]);
  await new Promise<void>((resolve) => (server.listening ? resolve() : server.once('listening', resolve)));
  const { port } = server.address() as AddressInfo;
  return {
    url: `amqp://127.0.0.1:${port}`,
    get transfers() {
      return transfers;
    },
    /** The `n`-th link the sink attached (1-based), once attached. */
    async attached(n = 1): Promise<Receiver> {
      while (receivers.length < n) await new Promise((resolve) => setTimeout(resolve, 10));
      return receivers[n - 1] as Receiver;
    },
    grant(receiver: Receiver, credit: number) {
      // `flow` adds credit; the typings name it add_credit only in rhea's JavaScript.
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

describe('AMQP 1.0 sink: outcomes and credit against a scripted peer', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('amqp10_sink');
  });
  after(() => t.close());

  it('maps accepted to confirmed, rejected to permanent, released and modified to retryable', async () => {
    const peer = await startPeer((index, delivery) => {
      if (index % 4 === 0) delivery.accept();
      else if (index % 4 === 1)
        delivery.reject({ condition: 'amqp:invalid-field', description: 'bad header' });
      else if (index % 4 === 2) delivery.release();
      else delivery.modified({ delivery_failed: true, undeliverable_here: true });
    });
    const sink = createAmqp10Sink({ url: peer.url, address: 'events' });
    try {
      const started = sink.start();
      const receiver = await peer.attached();
      peer.grant(receiver, 100);
      await started;
      // One message a batch: rhea 3.0.5, as the peer's receiver, merges the dispositions of two
      // consecutive deliveries settled together into one frame with the first one's state, so a
      // peer settling a whole batch at once would not say what it means.
      const outcomes: SendOutcome[] = [];
      for (const message of outboxMessages(8)) {
        outcomes.push(...(await sendInTransaction(t.db, sink, [message], 10_000)));
      }
      assert.deepEqual(
        outcomes.map((o) =>
          o.status === 'failed' ? `${o.retryable ? 'retryable' : 'permanent'}` : o.status,
        ),
        [
          'confirmed',
          'permanent',
          'retryable',
          'retryable',
          'confirmed',
          'permanent',
          'retryable',
          'retryable',
        ],
      );
      assert.match((outcomes[1] as { error: string }).error, /rejected.*amqp:invalid-field: bad header/);
      assert.match((outcomes[3] as { error: string }).error, /modified \(undeliverable here\)/);
    } finally {
      await sink.close();
      await peer.close();
    }
  });

  it('sends only while it holds credit, and waits for more', async () => {
    const peer = await startPeer((_index, delivery) => delivery.accept());
    const sink = createAmqp10Sink({ url: peer.url, address: 'events' });
    try {
      const started = sink.start();
      const receiver = await peer.attached();
      peer.grant(receiver, 3);
      await started;
      const batch = sendInTransaction(t.db, sink, outboxMessages(10), 10_000);
      while (peer.transfers < 3) await new Promise((resolve) => setTimeout(resolve, 10));
      // Give an over-eager sender room to overrun: it must not.
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(peer.transfers, 3, 'transfers beyond the credit granted');
      peer.grant(receiver, 7);
      assert.deepEqual(statuses(await batch), { confirmed: 10 });
      assert.equal(peer.transfers, 10);
    } finally {
      await sink.close();
      await peer.close();
    }
  });

  it('without credit until the deadline, reports deferred (nothing was sent), not unknown', async () => {
    const peer = await startPeer((_index, delivery) => delivery.accept());
    const sink = createAmqp10Sink({ url: peer.url, address: 'events' });
    try {
      const started = sink.start();
      const receiver = await peer.attached();
      peer.grant(receiver, 2);
      await started;
      const outcomes = await sendInTransaction(t.db, sink, outboxMessages(5), 1_000);
      assert.deepEqual(statuses(outcomes), { confirmed: 2, deferred: 3 });
      assert.match((outcomes[4] as { error: string }).error, /no link credit/);
    } finally {
      await sink.close();
      await peer.close();
    }
  });

  it('reports deliveries unsettled when the connection drops as unknown, then reconnects', async () => {
    let settleNow = false;
    const peer = await startPeer((_index, delivery) => {
      if (settleNow) delivery.accept();
    });
    const sink = createAmqp10Sink({
      url: peer.url,
      address: 'events',
      reconnectBackoff: { initialMs: 10, maxMs: 10 },
    });
    try {
      const started = sink.start();
      peer.grant(await peer.attached(), 100);
      await started;
      const batch = sendInTransaction(t.db, sink, outboxMessages(5), 10_000);
      while (peer.transfers < 5) await new Promise((resolve) => setTimeout(resolve, 10));
      peer.dropConnections();
      const outcomes = await batch;
      assert.deepEqual(statuses(outcomes), { unknown: 5 });
      assert.match((outcomes[0] as { error: string }).error, /lost with the delivery unsettled/);
      settleNow = true;
      const again = sendInTransaction(t.db, sink, outboxMessages(2), 10_000);
      // The batch opened a new connection and link; it sends once that link has credit.
      peer.grant(await peer.attached(2), 100);
      assert.deepEqual(statuses(await again), { confirmed: 2 });
    } finally {
      await sink.close();
      await peer.close();
    }
  });
});

const skip = amqp10BrokerProblem();
if (skip && process.env.CI === 'true') throw new Error(`CI must provide the AMQP 1.0 test broker: ${skip}`);

describe(
  'AMQP 1.0 sink: the relay into a RabbitMQ node with the AMQP 1.0 plugin',
  { skip: skip ?? false },
  () => {
    let t: TestDatabase;
    let broker: Amqp10Broker;
    before(async () => {
      t = await createTestDatabase('amqp10_relay');
      broker = await startAmqp10Broker();
    });
    after(async () => {
      await broker?.stop();
      await t?.close();
    });

    it(
      `delivers ${EVENTS.toLocaleString('en-US')} events that an AMQP 1.0 receiver counts once each`,
      { timeout: 240_000 },
      async (context) => {
        const queue = uniqueName('sr_relay');
        const received = new ReceivedIds();
        const consumer = await connectAmqp10(
          { host: broker.host, port: broker.port },
          broker.user,
          broker.password,
        );
        try {
          await countMessages(consumer, `/queue/${queue}`, received);
          await enqueue(t.db, syntheticEvents(EVENTS, { topic: 'orders.created' }));
          const started = Date.now();
          const relay = await startRelay({
            config: testConfig(t.url, { sendTimeoutMs: 60_000, batchBatchSize: 1000 }),
            sink: createAmqp10Sink({ url: broker.url, address: `/queue/${queue}` }),
          });
          await relay.whenDrained();
          await relay.stop();
          context.diagnostic(`relay drained ${EVENTS} rows in ${Date.now() - started} ms`);
          const rows = await t.db.selectFrom('shardrelay.events').select(['event_id', 'status']).execute();
          assert.equal(rows.length, EVENTS);
          assert.deepEqual(
            rows.filter((r) => r.status !== 'sent'),
            [],
            'every row is sent',
          );
          await received.waitForAll(
            rows.map((r) => r.event_id),
            60_000,
          );
          assert.equal(received.counts.size, EVENTS, 'the receiver saw exactly the outbox event ids');
          assert.equal(received.duplicates, 0, 'no duplicates without faults');
        } finally {
          await closeAmqp10(consumer);
        }
      },
    );
  },
);
