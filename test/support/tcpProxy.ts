/**
 * A TCP proxy on 127.0.0.1 for fault injection between a client and a real server:
 * - `cutAll()` destroys every proxied connection at once (a broker restart, a dropped link);
 * - `stall()` stops forwarding bytes in both directions while keeping the sockets open (a hung
 *   broker, a black-holed network): the client sees no error, only silence;
 * - `resume()` forwards again, including what piled up during the stall;
 * - `refuse()` stops listening and drops every connection (a broker that is down: connections are
 *   refused), `accept()` listens again on the same port.
 * New connections are still accepted and proxied after a cut, so clients can reconnect; a connection
 * opened during a stall is stalled too.
 *
 * Bytes are forwarded by hand rather than with `pipe()`: pipe resumes a paused source on 'drain',
 * which would silently end a stall.
 */
import net from 'node:net';

export interface TcpProxy {
  /** The port the proxy listens on, on 127.0.0.1. */
  readonly port: number;
  /** Connections accepted so far (clients reconnecting show up here). */
  readonly connectionCount: number;
  /** Bytes forwarded from clients to the server so far. */
  readonly clientBytes: number;
  cutAll(): void;
  stall(): void;
  resume(): void;
  refuse(): Promise<void>;
  accept(): Promise<void>;
  close(): Promise<void>;
}

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let stalled = false;
  let accepted = 0;
  let clientBytes = 0;

  /** Forwards `from` → `to`, pausing `from` while `to` is full (and never resuming during a stall). */
  function forward(from: net.Socket, to: net.Socket, counted: boolean): void {
    from.on('data', (chunk: Buffer) => {
      if (counted) clientBytes += chunk.length;
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => {
      if (!stalled) from.resume();
    });
    from.on('end', () => to.end());
  }

  const proxy = (client: net.Socket): void => {
    accepted += 1;
    const upstream = net.connect(targetPort, targetHost);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => {
        // A reset from either side ends both; the peer learns of it through the destroy below.
      });
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
      if (stalled) socket.pause();
    }
    forward(client, upstream, true);
    forward(upstream, client, false);
  };

  const listen = async (port: number): Promise<net.Server> => {
    const server = net.createServer(proxy);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server;
  };
  let server: net.Server | null = await listen(0);
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('the TCP proxy has no port');
  const stop = async (): Promise<void> => {
    const closing = server;
    server = null;
    for (const socket of sockets) socket.destroy();
    if (closing) await new Promise<void>((resolve) => closing.close(() => resolve()));
  };

  return {
    port: address.port,
    get connectionCount() {
      return accepted;
    },
    get clientBytes() {
      return clientBytes;
    },
    cutAll() {
      for (const socket of sockets) socket.destroy();
    },
    stall() {
      stalled = true;
      for (const socket of sockets) socket.pause();
    },
    resume() {
      stalled = false;
      for (const socket of sockets) socket.resume();
    },
    refuse: stop,
    async accept() {
      server ??= await listen(address.port);
    },
    close: stop,
  };
}
