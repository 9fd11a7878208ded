/**
 * One relay, four real brokers, chosen per event by the routes: RabbitMQ, NATS JetStream, an HTTP
 * receiver and pg-boss, each with the real consumer of the sink conformance suite counting by
 * event id. Then one route's broker is cut for 30 s through a TCP proxy while events keep coming.
 */
import assert from 'node:assert/strict';
import { execSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { SETTINGS } from '../../src/config.js';
import { enqueue, type OutboxEvent } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { parseRoutes } from '../../src/routing/routes.js';
import { createRoutingSink, PROBE_BUDGET_MS } from '../../src/routing/routingSink.js';
import type { RelaySink } from '../../src/sinks/sink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import type { ReceivedIds } from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { startTcpProxy, type TcpProxy } from '../support/tcpProxy.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import type { ConformanceTarget, Destination, RunningBroker } from '../sinks/conformance/target.js';
import { httpTarget } from '../sinks/conformance/targets/http.js';
import { jetstreamTarget } from '../sinks/conformance/targets/jetstream.js';
import { pgbossTarget } from '../sinks/conformance/targets/pgboss.js';
import { rabbitmqTarget } from '../sinks/conformance/targets/rabbitmq.js';

const ROUTES = ['orders', 'emails', 'hooks', 'jobs'] as const;
type Route = (typeof ROUTES)[number];

interface RouteUnderTest {
  readonly target: ConformanceTarget;
  broker?: RunningBroker;
  destination?: Destination;
  proxy?: TcpProxy;
  /** Receive time of each event id's first delivery (ms since epoch). */
  readonly receivedAt: Map<string, number>;
}

const log = pino({ level: 'silent' });

function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

describe('routing: one outbox, four brokers', () => {
  let t: TestDatabase;
  const routes: Record<Route, RouteUnderTest> = {
    orders: { target: rabbitmqTarget, receivedAt: new Map() },
    emails: { target: jetstreamTarget, receivedAt: new Map() },
    hooks: { target: httpTarget, receivedAt: new Map() },
    jobs: { target: pgbossTarget, receivedAt: new Map() },
  };
  let skip: string | undefined;

  /** A new destination (exchange, stream, receiver, queue) whose consumer also notes receive times. */
  async function freshDestination(route: Route): Promise<void> {
    const r = routes[route];
    await r.destination?.close().catch(() => {});
    r.destination = await (r.broker as RunningBroker).destination();
    r.receivedAt.clear();
    const received: ReceivedIds = r.destination.received;
    const add = received.add.bind(received);
    received.add = (id: string) => {
      if (!r.receivedAt.has(id)) r.receivedAt.set(id, Date.now());
      add(id);
    };
  }

  before(async () => {
    t = await createTestDatabase('routing');
    for (const route of ROUTES) {
      const r = routes[route];
      const started = await r.target.start({ databaseUrl: t.url });
      if (typeof started === 'string') {
        skip = started;
        return;
      }
      r.broker = started;
      await freshDestination(route);
    }
  });
  after(async () => {
    for (const route of ROUTES) {
      const r = routes[route];
      await r.destination?.close().catch(() => {});
      await r.proxy?.close().catch(() => {});
      await r.broker?.stop().catch(() => {});
    }
    await t.close();
  });

  /** The topic of each route's events: pg-boss's is its queue (one word), the others a word under a prefix. */
  const topicOf = (route: Route): string =>
    route === 'jobs' ? (routes.jobs.destination as Destination).topic : `${route}.created`;

  /** A routing sink over the conformance targets' sinks; `orders` (RabbitMQ) through `proxy` if given. */
  function routingSink(proxyOrders?: TcpProxy): RelaySink {
    const table = parseRoutes(
      {
        sinks: {
          orders: { type: 'rabbitmq' },
          emails: { type: 'jetstream' },
          hooks: { type: 'http', webhookUrl: 'http://127.0.0.1:1/unused' },
          jobs: { type: 'pgboss' },
        },
        rules: [
          { match: { topic: 'orders.#' }, sink: 'orders' },
          { match: { topic: 'emails.*' }, sink: 'emails' },
          { match: { topic: 'hooks.*' }, sink: 'hooks' },
          { match: { topic: topicOf('jobs') }, sink: 'jobs' },
        ],
      },
      SETTINGS,
      {},
    );
    const sinks = new Map<string, RelaySink>();
    for (const route of ROUTES) {
      const r = routes[route];
      const destination = r.destination as Destination;
      const broker = r.broker as RunningBroker;
      const via =
        route === 'orders' && proxyOrders
          ? { host: '127.0.0.1', port: proxyOrders.port }
          : (destination.endpoint ?? broker.endpoint);
      sinks.set(route, destination.createSink({ via, log, secret: broker.secret }));
    }
    return createRoutingSink({ table, sinks });
  }

  async function outboxIdsByRoute(): Promise<Map<Route, string[]>> {
    const rows = await t.db.selectFrom('shardrelay.events').select(['event_id', 'topic', 'status']).execute();
    const result = new Map<Route, string[]>(ROUTES.map((r) => [r, []]));
    for (const row of rows) {
      const route = ROUTES.find((r) => topicOf(r) === row.topic);
      assert.ok(route, `row of unexpected topic ${row.topic}`);
      result.get(route)?.push(row.event_id);
    }
    return result;
  }

  function assertExactly(route: Route, ids: readonly string[], allowDuplicates: boolean): void {
    const received = (routes[route].destination as Destination).received;
    const expected = new Set(ids);
    const foreign = [...received.counts.keys()].filter((id) => !expected.has(id));
    assert.deepEqual(foreign, [], `${route}: received only the events of its route`);
    assert.equal(received.counts.size, expected.size, `${route}: received every event of its route`);
    if (!allowDuplicates) assert.equal(received.duplicates, 0, `${route}: no duplicates without faults`);
  }

  it(
    '20,000 events over four topics: every consumer receives exactly the events of its route',
    { timeout: 300_000 },
    async (ctx) => {
      if (skip) return ctx.skip(skip);
      const events: OutboxEvent[] = ROUTES.flatMap((route) =>
        syntheticEvents(5_000, { topic: topicOf(route) }),
      );
      // Interleaved, so every batch holds rows of all four routes.
      events.sort((a, b) => (a.payload as { n: number }).n - (b.payload as { n: number }).n);
      await enqueue(t.db, events);
      const started = Date.now();
      const relay = await startRelay({
        config: testConfig(t.url, { sendTimeoutMs: 30_000, batchBatchSize: 1000 }),
        sink: routingSink(),
        lanes: ['batch'],
      });
      try {
        await relay.whenDrained();
      } finally {
        await relay.stop();
      }
      const seconds = (Date.now() - started) / 1000;
      const pending = await t.db
        .selectFrom('shardrelay.outbox')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .where('status', '<>', 'sent')
        .executeTakeFirstOrThrow();
      assert.equal(Number(pending.n), 0, 'every row is sent');
      const byRoute = await outboxIdsByRoute();
      for (const route of ROUTES) {
        const ids = byRoute.get(route) ?? [];
        assert.equal(ids.length, 5_000);
        await (routes[route].destination as Destination).received.waitForAll(ids, 60_000);
        assertExactly(route, ids, false);
      }
      console.log(
        `routing 20,000 events over 4 brokers: drained in ${seconds.toFixed(1)} s (${Math.round(20_000 / seconds)}/s); load ${execSync('uptime').toString().trim()}`,
      );
    },
  );

  it(
    "one route's broker cut for 30 s: the other routes keep their latency, the cut route catches up, nothing is lost",
    { timeout: 300_000 },
    async (ctx) => {
      if (skip) return ctx.skip(skip);
      await t.db.deleteFrom('shardrelay.outbox').execute();
      await t.db.deleteFrom('shardrelay.sent_event').execute();
      for (const route of ROUTES) await freshDestination(route);
      const rabbit = (routes.orders.broker as RunningBroker).endpoint;
      const proxy = await startTcpProxy(rabbit.host, rabbit.port);
      routes.orders.proxy = proxy;
      const sendTimeoutMs = 2_000;
      const relay = await startRelay({
        // A short deadline so the first batches that meet the cut wait little; many attempts and
        // a 1 s retry cap so the cut route's rows keep coming back (and none goes dead) for 30 s.
        config: testConfig(t.url, { sendTimeoutMs, maxAttempts: 1000, retryBaseMs: 100, retryCapMs: 1000 }),
        sink: routingSink(proxy),
        lanes: ['realtime'],
      });

      // A steady producer: every 100 ms, 5 real-time events per route (200 events/s in all).
      const enqueuedAt = new Map<string, number>();
      let producing = true;
      let n = 0;
      const producer = (async () => {
        while (producing) {
          const events = ROUTES.flatMap((route) =>
            syntheticEvents(5, { topic: topicOf(route), lane: 'realtime', startAt: n }),
          );
          n += 5;
          const ids = await enqueue(t.db, events);
          const at = Date.now();
          for (const e of ids) enqueuedAt.set(e.eventId, at);
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
      const t0 = Date.now();
      await wait(10_000);
      const cutAt = Date.now();
      // The broker goes silent and every open connection drops; reconnects hang in the stall.
      proxy.stall();
      proxy.cutAll();
      await wait(30_000);
      const healAt = Date.now();
      proxy.resume();
      await wait(5_000);
      producing = false;
      await producer;
      try {
        await relay.whenDrained();
      } finally {
        await relay.stop();
      }
      const drainedAt = Date.now();

      // Nothing lost: every row sent, every consumer holds exactly its route's events.
      const notSent = await t.db
        .selectFrom('shardrelay.outbox')
        .select(['status', (eb) => eb.fn.countAll<string>().as('n')])
        .where('status', '<>', 'sent')
        .groupBy('status')
        .execute();
      assert.deepEqual(notSent, [], 'every row is sent, none dead');
      const byRoute = await outboxIdsByRoute();
      for (const route of ROUTES) {
        const ids = byRoute.get(route) ?? [];
        await (routes[route].destination as Destination).received.waitForAll(ids, 60_000);
        // The cut route may see a re-send of a message whose confirm the cut swallowed.
        assertExactly(route, ids, route === 'orders');
      }

      // Latency of the other routes: enqueue commit → first receipt by the real consumer.
      const latencies = (from: number, to: number, routesOf: readonly Route[]) => {
        const values: number[] = [];
        for (const route of routesOf) {
          for (const [id, at] of routes[route].receivedAt) {
            const enq = enqueuedAt.get(id);
            if (enq !== undefined && enq >= from && enq < to) values.push(at - enq);
          }
        }
        return values;
      };
      const others: Route[] = ['emails', 'hooks', 'jobs'];
      const before = latencies(t0 + 2_000, cutAt, others);
      const during = latencies(cutAt, healAt, others);
      // After the batches in flight at the cut have met their deadline and the route is down.
      const settled = latencies(cutAt + sendTimeoutMs + 500, healAt, others);
      const receivedDuring = others.reduce(
        (sum, r) =>
          sum + [...routes[r].receivedAt.values()].filter((at) => at >= cutAt && at < healAt).length,
        0,
      );
      const producedDuring = latencies(cutAt, healAt, others).length;
      const ordersDuring = [...routes.orders.receivedAt.values()].filter(
        (at) => at >= cutAt + sendTimeoutMs && at < healAt,
      ).length;
      const ordersCatchUp = Math.max(...[...routes.orders.receivedAt.values()]) - healAt;
      const figures = {
        beforeP50: percentile(before, 50),
        beforeP99: percentile(before, 99),
        beforeMax: Math.max(...before),
        duringP50: percentile(during, 50),
        duringP99: percentile(during, 99),
        duringMax: Math.max(...during),
        settledP99: percentile(settled, 99),
        otherRoutesPerSecondDuringCut: Math.round(receivedDuring / 30),
        producedPerSecondDuringCut: Math.round(producedDuring / 30),
        cutRouteReceivedDuringCut: ordersDuring,
        cutRouteCaughtUpMsAfterHeal: ordersCatchUp,
        drainedMsAfterHeal: drainedAt - healAt,
        cutRouteDuplicates: (routes.orders.destination as Destination).received.duplicates,
      };
      console.log(
        `routing cut (ms): ${JSON.stringify(figures)}; load ${execSync('uptime').toString().trim()}`,
      );
      assert.equal(ordersDuring, 0, 'the cut route delivered nothing while its broker was cut');
      // The bound: once the cut route is down its rows fail fast, and a probe holds a batch of the
      // other routes at most PROBE_BUDGET_MS; 1.5 s more covers this machine's load (2 cores, load
      // 15-25: a tick or a commit can take hundreds of ms).
      assert.ok(
        figures.settledP99 <= figures.beforeP99 + PROBE_BUDGET_MS + 1_500,
        `other routes' p99 during the cut (${figures.settledP99} ms) within ${PROBE_BUDGET_MS + 1_500} ms of before (${figures.beforeP99} ms)`,
      );
      // The batches in flight at the cut wait at most their deadline, then a probe's budget: the
      // worst wait during the cut is the worst wait before it plus those two. The worst before is
      // the machine's own tail (a loaded suite has shown single waits of seconds before any cut);
      // beforeP99 + 1.5 s keeps the bound meaningful where that tail is short.
      const duringMaxBound =
        Math.max(figures.beforeP99 + 1_500, figures.beforeMax) + sendTimeoutMs + PROBE_BUDGET_MS;
      assert.ok(
        figures.duringMax <= duringMaxBound,
        `no event of another route waited past the send deadline and a probe (max ${figures.duringMax} ms > ${duringMaxBound} ms)`,
      );
      assert.ok(
        receivedDuring >= producedDuring * 0.9,
        `the other routes kept up during the cut (${receivedDuring} received of ${producedDuring} produced)`,
      );
    },
  );
});
