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
import { createRoutingSink, PROBE_BUDGET_MS, PROBE_INTERVAL_MS } from '../../src/routing/routingSink.js';
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

  /** Event ids the relay sent more than once (a send not confirmed, then retried), from its record. */
  async function resentIds(): Promise<Set<string>> {
    const rows = await t.db
      .selectFrom('shardrelay.sent_event')
      .select('event_id')
      .where('attempts', '>', 1)
      .execute();
    return new Set(rows.map((r) => r.event_id));
  }

  /**
   * The route's consumer holds exactly its events. A duplicate is allowed only of an event the
   * relay itself re-sent (at-least-once: an attempt that ended unconfirmed, e.g. at the batch
   * deadline on a loaded machine); an event sent once and received twice would be a routing bug.
   */
  function assertExactly(route: Route, ids: readonly string[], resent: ReadonlySet<string>): void {
    const received = (routes[route].destination as Destination).received;
    const expected = new Set(ids);
    const foreign = [...received.counts.keys()].filter((id) => !expected.has(id));
    assert.deepEqual(foreign, [], `${route}: received only the events of its route`);
    assert.equal(received.counts.size, expected.size, `${route}: received every event of its route`);
    const unexplained = [...received.counts].filter(([id, n]) => n > 1 && !resent.has(id));
    assert.deepEqual(unexplained, [], `${route}: no event received twice that the relay sent once`);
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
      const resent = await resentIds();
      for (const route of ROUTES) {
        const ids = byRoute.get(route) ?? [];
        assert.equal(ids.length, 5_000);
        await (routes[route].destination as Destination).received.waitForAll(ids, 60_000);
        assertExactly(route, ids, resent);
      }
      // Re-sends are not faults of routing, but they are reported: on a quiet machine there are
      // none. A loaded CI run (drain 56 s, 7.5 s quiet) had 14 webhook events twice, fewer than
      // the sink's 16 request slots, which 8 concurrent batches share: most likely a batch that
      // waited past its 30 s deadline behind the others', whose requests in flight ended unknown.
      const duplicates = ROUTES.map(
        (r) => `${r} ${(routes[r].destination as Destination).received.duplicates}`,
      );
      console.log(
        `routing 20,000 events over 4 brokers: drained in ${seconds.toFixed(1)} s (${Math.round(20_000 / seconds)}/s); re-sent ${resent.size}; duplicates ${duplicates.join(', ')}; load ${execSync('uptime').toString().trim()}`,
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
      // Every part of the cut route the routing sink handled: when, how long, and whether the
      // route was down after it (a failed-fast part takes 0 s; one that touched the sink, more).
      const ordersParts: { at: number; seconds: number; down: boolean }[] = [];
      const relay = await startRelay({
        // A short deadline so the first batches that meet the cut wait little; many attempts and
        // a retry cap of one probe interval so the cut route's rows keep coming back (and none
        // goes dead) for 30 s, each time a probe may have found the broker back.
        config: testConfig(t.url, {
          sendTimeoutMs,
          maxAttempts: 1000,
          retryBaseMs: 100,
          retryCapMs: PROBE_INTERVAL_MS,
        }),
        sink: routingSink(proxy),
        lanes: ['realtime'],
        hooks: {
          onRoutePart: (report) => {
            if (report.route === 'orders')
              ordersParts.push({ at: Date.now(), seconds: report.seconds, down: report.down });
          },
        },
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
      const resent = await resentIds();
      for (const route of ROUTES) {
        const ids = byRoute.get(route) ?? [];
        await (routes[route].destination as Destination).received.waitForAll(ids, 60_000);
        // The cut route may see a re-send of a message whose confirm the cut swallowed.
        assertExactly(route, ids, resent);
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
      const settledFrom = cutAt + sendTimeoutMs + 500;
      const settled = latencies(settledFrom, healAt, others);
      const settledParts = ordersParts.filter((p) => p.at - p.seconds * 1000 >= settledFrom && p.at < healAt);
      const probes = settledParts.filter((p) => p.seconds > 0).map((p) => Math.round(p.seconds * 1000));
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
        settledP50: percentile(settled, 50),
        settledP99: percentile(settled, 99),
        otherRoutesPerSecondDuringCut: Math.round(receivedDuring / 30),
        producedPerSecondDuringCut: Math.round(producedDuring / 30),
        cutRouteReceivedDuringCut: ordersDuring,
        cutRouteCaughtUpMsAfterHeal: ordersCatchUp,
        drainedMsAfterHeal: drainedAt - healAt,
        cutRouteDuplicates: (routes.orders.destination as Destination).received.duplicates,
        cutRouteProbes: probes.length,
        probeMedianMs: percentile(probes, 50),
        probeMaxMs: Math.max(...probes),
      };
      console.log(
        `routing cut (ms): ${JSON.stringify(figures)}; load ${execSync('uptime').toString().trim()}`,
      );
      assert.equal(ordersDuring, 0, 'the cut route delivered nothing while its broker was cut');

      // What bounds the other routes' wait, asserted as such: once the batches in flight at the
      // cut have met their deadline, the cut route stays down, its rows fail fast (0 s), and only
      // a one-row probe touches its sink, at most once per PROBE_INTERVAL_MS, for at most
      // PROBE_BUDGET_MS. (The median probe, so a single late timer on a loaded machine does not
      // decide; a probe not held to its budget waits the 2 s send deadline every time.)
      assert.ok(settledParts.length > 0, 'the cut route had rows during the cut');
      assert.ok(
        settledParts.every((p) => p.down),
        'the cut route stayed down while its broker was cut',
      );
      const probeLimit = Math.ceil((healAt - settledFrom) / PROBE_INTERVAL_MS) + 1;
      assert.ok(
        probes.length >= 1 && probes.length <= probeLimit,
        `the cut route's sink was probed ${probes.length} times in ${healAt - settledFrom} ms (1 to ${probeLimit}: one per ${PROBE_INTERVAL_MS} ms)`,
      );
      assert.ok(
        figures.probeMedianMs <= PROBE_BUDGET_MS + 500,
        `a probe holds a batch about PROBE_BUDGET_MS (${PROBE_BUDGET_MS} ms), not the send deadline: median ${figures.probeMedianMs} ms, max ${figures.probeMaxMs} ms`,
      );
      // The other routes' typical wait does not grow by more than a probe. Their p99 and max are
      // reported, not asserted: over a 27 s window they follow what the other test files do at
      // the time (one CI run: p99 701 ms before the cut, 7,259 ms during it; with 12 CPU-bound
      // processes beside the test here it stayed within 1.1 s of before in four runs).
      assert.ok(
        figures.settledP50 <= figures.beforeP50 + PROBE_BUDGET_MS,
        `other routes' median wait during the cut (${figures.settledP50} ms) within a probe (${PROBE_BUDGET_MS} ms) of before (${figures.beforeP50} ms)`,
      );
      assert.ok(
        receivedDuring >= producedDuring * 0.9,
        `the other routes kept up during the cut (${receivedDuring} received of ${producedDuring} produced)`,
      );
    },
  );
});
