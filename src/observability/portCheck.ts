import net from 'node:net';
import { ConfigError } from '../errors.js';

/**
 * Binds the metrics address for a moment and lets it go, before the relay starts anything. The
 * observability server binds only after the database, the sink, the shard leases and the worker
 * thread are up (seconds, and a lease taken); a port already in use found then means an abrupt
 * stop after all that work. Found here, it is a one-line configuration error and nothing was
 * started. (Another process can still take the port in between: the server's own bind then fails
 * the start with the same message.)
 */
export async function assertPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return; // 0 asks the system for a free port
  await new Promise<void>((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (error: NodeJS.ErrnoException) => reject(portError(host, port, error)));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve()));
  });
}

/** The configuration error for a metrics address that cannot be bound, with the fix. */
export function portError(host: string, port: number, error: NodeJS.ErrnoException): Error {
  const setting = '--metrics-port / SHARDRELAY_METRICS_PORT';
  switch (error.code) {
    case 'EADDRINUSE':
      return new ConfigError(
        setting,
        `port ${port} on ${host} is already in use`,
        `stop what listens there (\`ss -ltnp 'sport = :${port}'\` shows it; often another replica on the same host) or choose another port; 0 picks a free one`,
        error,
      );
    case 'EACCES':
      return new ConfigError(
        setting,
        `no permission to listen on port ${port} of ${host}`,
        'use a port from 1024 up',
        error,
      );
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
      return new ConfigError(
        '--metrics-host / SHARDRELAY_METRICS_HOST',
        `${host} is no address of this machine`,
        'use 127.0.0.1, 0.0.0.0 (every interface) or an address of this host',
        error,
      );
    default:
      return error;
  }
}
