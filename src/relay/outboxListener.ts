import pg from 'pg';
import { backoffDelayMs } from '../backoff.js';
import { TCP_KEEPALIVE } from '../db/connection.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';

export const OUTBOX_CHANNEL = 'shardrelay_outbox';
export const CONFIG_CHANNEL = 'shardrelay_config';

export interface OutboxListenerOptions {
  readonly connectionString: string;
  readonly logger: Logger;
  /** Shards that received rows (from the insert trigger's payload). */
  readonly onRows: (shards: readonly number[]) => void;
  /** The shard count changed (set_shard_count). */
  readonly onConfigChange: () => void;
  readonly onStateChange?: (connected: boolean) => void;
  readonly maxBackoffMs?: number;
}

/**
 * A dedicated connection that LISTENs for new outbox rows and shard-count changes, so real-time
 * rows are claimed within milliseconds instead of at the next tick. Losing it never loses rows:
 * the scheduler's ticks keep polling. It reconnects by itself with exponential backoff (capped,
 * jittered), e.g. after `pg_terminate_backend` or a PostgreSQL restart.
 */
export class OutboxListener {
  #client: pg.Client | undefined;
  #stopped = false;
  #attempt = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #connected = false;
  readonly #options: OutboxListenerOptions;

  constructor(options: OutboxListenerOptions) {
    this.#options = options;
  }

  get connected(): boolean {
    return this.#connected;
  }

  start(): void {
    void this.#connect();
  }

  async #connect(): Promise<void> {
    if (this.#stopped) return;
    const client = new pg.Client({
      connectionString: this.#options.connectionString,
      application_name: 'shardrelay-listener',
      ...TCP_KEEPALIVE,
    });
    this.#client = client;
    // Without an 'error' listener a dropped connection is an unhandled event that kills the process.
    client.on('error', (error) => this.#lost(client, error));
    client.on('end', () => this.#lost(client, new Error('connection ended')));
    client.on('notification', (message) => {
      if (message.channel === CONFIG_CHANNEL) return this.#options.onConfigChange();
      const shards = (message.payload ?? '')
        .split(',')
        .map(Number)
        .filter((n) => Number.isInteger(n) && n >= 0);
      if (shards.length > 0) this.#options.onRows(shards);
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${OUTBOX_CHANNEL}`);
      await client.query(`LISTEN ${CONFIG_CHANNEL}`);
      if (this.#stopped || this.#client !== client) return void client.end().catch(() => {});
      this.#attempt = 0;
      this.#setConnected(true);
      // Rows may have arrived while we were not listening; let the loops look now.
      this.#options.onConfigChange();
    } catch (error) {
      this.#lost(client, toError(error));
    }
  }

  #setConnected(connected: boolean): void {
    if (this.#connected === connected) return;
    this.#connected = connected;
    this.#options.onStateChange?.(connected);
  }

  #lost(client: pg.Client, error: Error): void {
    if (this.#client !== client) return; // a stale client's late events
    this.#client = undefined;
    this.#setConnected(false);
    client.end().catch(() => {});
    if (this.#stopped) return;
    this.#attempt++;
    const cap = this.#options.maxBackoffMs ?? 10_000;
    const delay = backoffDelayMs({ baseMs: 100, capMs: cap }, this.#attempt + 1);
    this.#options.logger.warn(
      { err: error.message, retryInMs: Math.round(delay) },
      'LISTEN connection lost; polling continues, reconnecting',
    );
    this.#retryTimer = setTimeout(() => void this.#connect(), delay);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    const client = this.#client;
    this.#client = undefined;
    this.#setConnected(false);
    await client?.end().catch(() => {});
  }
}
