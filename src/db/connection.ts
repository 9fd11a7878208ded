import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { ShardRelayError, toError } from '../errors.js';
import { redact } from '../redact.js';
import { DeferringClient } from './deferringClient.js';
import type { Database } from './schema.js';

// bigint (int8) stays a string: ids may exceed 2^53. count(*) is int8 too; callers Number() it.

/** How long a checkout waits for a free client of a full pool, and a connect for the server. */
export const CONNECTION_TIMEOUT_MS = 10_000;

/**
 * TCP keepalive on every connection to PostgreSQL. Without it, a connection whose server vanished
 * without a reset (host lost, a failover that moved the address, a NAT that forgot the flow) waits
 * for an answer forever: the statement was acknowledged, so TCP has nothing to retransmit, and the
 * batch, lease renewal or LISTEN on it never ends. With it, the kernel probes after 10 s of silence
 * and the connection fails once the probes go unanswered (the system's probe interval and count:
 * Linux defaults, 9 probes 75 s apart), and the relay reconnects. It costs nothing while the
 * connection carries traffic.
 */
export const TCP_KEEPALIVE = { keepAlive: true, keepAliveInitialDelayMillis: 10_000 } as const;

export interface PoolOptions {
  readonly connectionString: string;
  readonly max: number;
  readonly applicationName: string;
  /** Called for errors on idle clients (e.g. PostgreSQL restarted). */
  readonly onError?: (error: Error) => void;
  /** Session settings for every connection of the pool (sent at connect, no extra round trip). */
  readonly settings?: Readonly<Record<string, string | number>>;
  /**
   * Send BEGIN, SAVEPOINT and RELEASE SAVEPOINT without waiting for their answers, pipelined with
   * the next statement (db/deferringClient.ts): the real-time lane's round trips.
   */
  readonly deferTransactionControl?: boolean;
}

/**
 * A pg pool with an 'error' listener on the pool and on every client it creates. Without them, a
 * PostgreSQL restart emits an unhandled 'error' event on an idle client and takes the whole process
 * down; with them, the broken client is discarded and the next checkout reconnects.
 */
export function createPool(options: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.max,
    application_name: options.applicationName,
    connectionTimeoutMillis: CONNECTION_TIMEOUT_MS,
    idleTimeoutMillis: 30_000,
    ...TCP_KEEPALIVE,
    ...(options.deferTransactionControl ? { Client: DeferringClient } : {}),
    ...(options.settings && Object.keys(options.settings).length > 0
      ? {
          options: Object.entries(options.settings)
            // libpq splits `options` at spaces; a backslash keeps one (a replica id may have them).
            .map(([name, value]) => `-c ${name}=${String(value).replace(/[\\ ]/g, '\\$&')}`)
            .join(' '),
        }
      : {}),
  });
  const onError = options.onError ?? (() => {});
  pool.on('error', onError);
  pool.on('connect', (client) => {
    client.on('error', onError);
  });
  return pool;
}

export function createDatabase(pool: pg.Pool): Kysely<Database> {
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
}

/** Fails fast, with the fix, when PostgreSQL cannot be reached (wrong URL, server down, bad login). */
export async function assertReachable<DB>(db: Kysely<DB>, url: string): Promise<void> {
  try {
    await sql`SELECT 1`.execute(db);
  } catch (error) {
    throw new ShardRelayError(
      'DATABASE_UNREACHABLE',
      redact(`cannot reach PostgreSQL at ${url}: ${toError(error).message}`),
      {
        cause: error,
        fix: 'check DATABASE_URL (host, port, user, password, database) and that PostgreSQL is running',
      },
    );
  }
}
