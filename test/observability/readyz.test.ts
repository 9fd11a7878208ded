/**
 * /readyz against a real database outage: the readiness check's pool reaches PostgreSQL through a
 * TCP proxy in this file, and cutting the proxy makes the database unreachable for that pool for
 * real (established connections die, new ones are refused or hang), while the database itself keeps
 * running for everyone else.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { startObservabilityServer, type ObservabilityServer } from '../../src/observability/httpServer.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

type ProxyMode = 'open' | 'refuse' | 'blackhole';

interface Proxy {
  readonly port: number;
  /**
   * open: pipe to PostgreSQL. refuse: kill open connections and reset new ones at once.
   * blackhole: kill open connections and accept new ones without ever answering (a dropped route).
   */
  setMode(mode: ProxyMode): void;
  close(): Promise<void>;
}

async function startProxy(target: { host: string; port: number }): Promise<Proxy> {
  let mode: ProxyMode = 'open';
  const sockets = new Set<net.Socket>();
  const track = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // A cut connection errors on both sides (ECONNRESET, EPIPE); that is the point, not a failure.
    socket.on('error', () => {});
  };
  const server = net.createServer((client) => {
    track(client);
    if (mode === 'refuse') {
      client.resetAndDestroy();
      return;
    }
    if (mode === 'blackhole') return; // held open, never answered, destroyed on the next cut
    const upstream = net.connect(target.port, target.host);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo; // a TCP listener always has an AddressInfo
  return {
    port,
    setMode(next) {
      mode = next;
      if (next !== 'open') for (const socket of sockets) socket.destroy();
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface ReadyzAnswer {
  readonly status: number;
  readonly body: { ready: boolean; reason?: string };
}

async function readyz(server: ObservabilityServer): Promise<ReadyzAnswer> {
  const res = await fetch(`${server.url}/readyz`);
  return { status: res.status, body: (await res.json()) as ReadyzAnswer['body'] };
}

/**
 * Polls /readyz until it answers `status` (and a reason matching `reason`, if given), for at most
 * `withinMs`; returns that answer.
 */
async function readyzBecomes(
  server: ObservabilityServer,
  status: number,
  reason?: RegExp,
  withinMs = 10_000,
): Promise<ReadyzAnswer> {
  const deadline = Date.now() + withinMs;
  const matches = (answer: ReadyzAnswer): boolean =>
    answer.status === status && (reason === undefined || reason.test(answer.body.reason ?? ''));
  let last = await readyz(server);
  while (!matches(last)) {
    assert.ok(Date.now() < deadline, `/readyz still answers ${last.status} ${JSON.stringify(last.body)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    last = await readyz(server);
  }
  return last;
}

describe('/readyz during a real database outage', () => {
  let t: TestDatabase;
  let proxy: Proxy;
  let pool: pg.Pool;
  let server: ObservabilityServer;

  before(async () => {
    t = await createTestDatabase('readyz');
    const target = new URL(t.url);
    proxy = await startProxy({ host: target.hostname, port: Number(target.port || 5432) });
    const viaProxy = new URL(t.url);
    viaProxy.hostname = '127.0.0.1';
    viaProxy.port = String(proxy.port);
    pool = new pg.Pool({
      connectionString: viaProxy.toString(),
      max: 2,
      // Short, so a black-holed connection fails the check well inside the server's own timeout.
      connectionTimeoutMillis: 1_000,
      query_timeout: 1_000,
    });
    // Without these, an idle client killed by the cut emits an unhandled 'error' and ends the run.
    pool.on('error', () => {});
    pool.on('connect', (client) => client.on('error', () => {}));

    server = await startObservabilityServer({
      port: 0,
      registry: createMetrics({ replica: 'readyz', sink: 'null', defaultMetrics: false }).registry,
      isAlive: () => true,
      async isReady() {
        try {
          await pool.query('SELECT 1');
          return { ready: true };
        } catch (error) {
          return { ready: false, reason: `database unreachable: ${(error as Error).message}` };
        }
      },
      readyTimeoutMs: 3_000,
    });
  });

  after(async () => {
    await server?.close();
    await pool?.end();
    await proxy?.close();
    await t?.close();
  });

  it('is ready while the database answers', async () => {
    const answer = await readyz(server);
    assert.equal(answer.status, 200);
    assert.deepEqual(answer.body, { ready: true });
  });

  it('fails while connections are refused and recovers after', async () => {
    proxy.setMode('refuse');
    const down = await readyzBecomes(server, 503);
    assert.equal(down.body.ready, false);
    assert.match(down.body.reason ?? '', /^database unreachable: /);
    // Still down on the next probe: the failure is the outage, not a one-off broken connection.
    assert.equal((await readyz(server)).status, 503);
    // The database itself is fine; only this path to it is cut.
    assert.equal((await t.pool.query<{ one: number }>('SELECT 1 AS one')).rows[0]?.one, 1);

    proxy.setMode('open');
    const up = await readyzBecomes(server, 200);
    assert.deepEqual(up.body, { ready: true });
  });

  it('fails while the database does not answer at all and recovers after', async () => {
    proxy.setMode('blackhole');
    // The first probe may still fail fast on a pooled connection the cut just killed; after that,
    // new connections hang until the pool's connection timeout.
    const down = await readyzBecomes(server, 503, /timeout/i);
    assert.equal(down.body.ready, false);
    assert.match(down.body.reason ?? '', /^database unreachable: /);

    proxy.setMode('open');
    const up = await readyzBecomes(server, 200);
    assert.deepEqual(up.body, { ready: true });
  });
});
