import pg from 'pg';
import { TCP_KEEPALIVE } from '../db/connection.js';
import { toError } from '../errors.js';
import { takeLivenessLock, type LivenessLockHandle } from './leaseStatements.js';

export interface LivenessLockOptions {
  readonly connectionString: string;
  /**
   * The lock session ended or failed (its 'error' or 'end' event, or a failed statement on it):
   * the lock is gone, or will be the moment PostgreSQL notices. Called once per session.
   */
  readonly onLost: (reason: string) => void;
}

/**
 * The dedicated connection that holds this process's liveness lock (relay/leaseStatements.ts) for
 * as long as the process is a member. Nothing else runs on it except the peer check, which thus
 * doubles as a check that this session still works. Not pooled: a pool would recycle the session,
 * and the lock with it.
 *
 * TCP keepalive is on, so a peer that vanishes without a FIN (a host that lost power) is noticed
 * by the kernel rather than never; PostgreSQL's own `tcp_keepalives_*` settings bound how long the
 * server keeps such a session, and with it the lock, on its side.
 */
export class LivenessLock {
  readonly #options: LivenessLockOptions;
  #client: pg.Client | undefined;
  #handle: LivenessLockHandle | undefined;

  constructor(options: LivenessLockOptions) {
    this.#options = options;
  }

  /** The lock held now; undefined before `acquire`, after a loss and after `close`. */
  get handle(): LivenessLockHandle | undefined {
    return this.#handle;
  }

  /** Opens a new session and takes a lock on it (a fresh key). */
  async acquire(): Promise<LivenessLockHandle> {
    await this.close();
    const client = new pg.Client({
      connectionString: this.#options.connectionString,
      application_name: 'shardrelay-liveness',
      ...TCP_KEEPALIVE,
      connectionTimeoutMillis: 10_000,
    });
    // Without an 'error' listener a dropped connection is an unhandled event that ends the process.
    client.on('error', (error) => this.#lost(client, `liveness session failed: ${error.message}`));
    client.on('end', () => this.#lost(client, 'liveness session ended'));
    this.#client = client;
    try {
      await client.connect();
      const handle = await takeLivenessLock(client);
      if (this.#client !== client) throw new Error('liveness session lost while taking the lock');
      this.#handle = handle;
      return handle;
    } catch (error) {
      if (this.#client === client) this.#client = undefined;
      await client.end().catch(() => {});
      throw error;
    }
  }

  /**
   * Runs `statement` on the lock session (the peer check). A failure there means the session is in
   * doubt: it is closed (the lock goes with it) and reported lost.
   */
  async run<T>(statement: (client: pg.Client) => Promise<T>): Promise<T | undefined> {
    const client = this.#client;
    if (!client || !this.#handle) return undefined;
    try {
      return await statement(client);
    } catch (error) {
      this.#lost(client, `statement on the liveness session failed: ${toError(error).message}`);
      return undefined;
    }
  }

  #lost(client: pg.Client, reason: string): void {
    if (this.#client !== client) return; // a closed session's late events
    this.#client = undefined;
    const had = this.#handle !== undefined;
    this.#handle = undefined;
    client.end().catch(() => {});
    if (had) this.#options.onLost(reason);
  }

  /** Ends the session, and with it the lock (graceful leave, after the leases were given back). */
  async close(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    this.#handle = undefined;
    await client?.end().catch(() => {});
  }
}
