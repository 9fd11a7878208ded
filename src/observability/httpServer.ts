/**
 * The observability endpoint: Prometheus metrics plus liveness and readiness probes, on plain
 * node:http so it adds no dependency and cannot be slowed by a framework's middleware.
 *
 * - GET /metrics  the registry in Prometheus text format
 * - GET /healthz  200 while the relay's loop is alive, else 503 (a liveness probe restarts us)
 * - GET /readyz   200 when ready (database reachable, shards held or standing by), else 503 with
 *                 a JSON body saying why (a readiness probe takes us out of service, no restart)
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { EXPIRED, untilDeadline } from '../raceDeadline.js';
import { toError } from '../errors.js';

export interface Readiness {
  readonly ready: boolean;
  readonly reason?: string;
}

export interface ObservabilityServerOptions {
  /** Bind address. Default 127.0.0.1: metrics are not for the whole network unless asked for. */
  readonly host?: string;
  /** TCP port; 0 picks a free one (read it back from `port`). */
  readonly port: number;
  readonly registry: Registry;
  /** Whether the relay's process loop is still turning. Must be cheap: it answers every /healthz. */
  isAlive(): boolean;
  /** Whether this replica can do its job now. Called once per /readyz request. */
  isReady(): Promise<Readiness>;
  /**
   * How long /readyz waits for isReady before answering 503. Default 2000 ms: shorter than a
   * typical probe timeout, so a hung database check reads as "not ready", not as a probe failure.
   */
  readonly readyTimeoutMs?: number;
  /** Told about errors that cannot be answered to a client (e.g. a failed metrics collection). */
  readonly onError?: (error: unknown) => void;
}

export interface ObservabilityServer {
  readonly host: string;
  /** The bound port (the real one when 0 was asked for). */
  readonly port: number;
  /** http://host:port, with IPv6 hosts bracketed. */
  readonly url: string;
  /** Stops listening and ends open connections, including idle keep-alive ones. */
  close(): Promise<void>;
}

const JSON_TYPE = 'application/json; charset=utf-8';

function send(res: http.ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': Buffer.byteLength(body),
    // Probes and scrapes must see the live state, never a cached answer.
    'cache-control': 'no-store',
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  send(res, status, JSON_TYPE, `${JSON.stringify(body)}\n`);
}

function message(error: unknown): string {
  return toError(error).message;
}

async function readiness(isReady: () => Promise<Readiness>, timeoutMs: number): Promise<Readiness> {
  const answer = await untilDeadline(
    isReady().catch((error: unknown) => ({
      ready: false,
      reason: `readiness check failed: ${message(error)}`,
    })),
    Date.now() + timeoutMs,
  );
  return answer === EXPIRED
    ? { ready: false, reason: `readiness check did not answer within ${timeoutMs} ms` }
    : answer;
}

export async function startObservabilityServer(
  options: ObservabilityServerOptions,
): Promise<ObservabilityServer> {
  const host = options.host ?? '127.0.0.1';
  const readyTimeoutMs = options.readyTimeoutMs ?? 2000;
  const onError = options.onError ?? (() => {});
  const { registry, isAlive, isReady } = options;

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    // Only the path matters; a scraper may add query parameters.
    const path = (req.url ?? '/').split('?', 1)[0];
    const known = path === '/metrics' || path === '/healthz' || path === '/readyz';
    if (!known) {
      sendJson(res, 404, { error: 'not found', paths: ['/metrics', '/healthz', '/readyz'] });
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      sendJson(res, 405, { error: 'method not allowed' });
      return;
    }
    if (path === '/metrics') {
      send(res, 200, registry.contentType, await registry.metrics());
    } else if (path === '/healthz') {
      let alive: boolean;
      try {
        alive = isAlive();
      } catch (error) {
        onError(error);
        alive = false;
      }
      sendJson(res, alive ? 200 : 503, { alive });
    } else {
      const state = await readiness(isReady, readyTimeoutMs);
      sendJson(res, state.ready ? 200 : 503, state.reason === undefined ? { ready: state.ready } : state);
    }
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      onError(error);
      if (!res.headersSent) sendJson(res, 500, { error: message(error) });
      else res.destroy();
    });
  });
  // A probe should not hold a socket for long; this also keeps close() quick.
  server.keepAliveTimeout = 5_000;

  await new Promise<void>((resolve, reject) => {
    const onListenError = (error: Error): void => reject(error);
    server.once('error', onListenError);
    server.listen(options.port, host, () => {
      server.off('error', onListenError);
      resolve();
    });
  });
  server.on('error', onError);

  const address = server.address() as AddressInfo; // listening on TCP, so never a string or null
  const urlHost = address.address.includes(':') ? `[${address.address}]` : address.address;
  return {
    host: address.address,
    port: address.port,
    url: `http://${urlHost}:${address.port}`,
    close() {
      return new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        // close() alone waits for keep-alive sockets to time out; end them now.
        server.closeAllConnections();
      });
    },
  };
}
