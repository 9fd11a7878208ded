import pg from 'pg';
import { backoffDelayMs } from '../backoff.js';
import { TCP_KEEPALIVE } from '../db/connection.js';
import { toError } from '../errors.js';
import type { Lane } from '../db/schema.js';
import type { Logger } from '../logger.js';

/** Every shard that received rows, of any lane (the insert trigger, every release). */
export const OUTBOX_CHANNEL = 'shardrelay_outbox';
/** The shards that received rows whose `lane` column is 'realtime' (migrations/0015). */
export const REALTIME_CHANNEL = 'shardrelay_outbox_realtime';
export const CONFIG_CHANNEL = 'shardrelay_config';

export interface OutboxListenerOptions {
  readonly connectionString: string;
  readonly logger: Logger;
  /**
   * Shards that received rows (from the insert trigger's payload): of `lane` only, or of any lane
   * when `lane` is undefined.
   */
  readonly onRows: (shards: readonly number[], lane?: Lane) => void;
  /**
   * The lanes this relay runs, when they are told apart by the `lane` column (the default lane
   * predicate): each lane then wakes only for its own rows, where the insert trigger says which
   * are which (see `triggerNamesRealtimeShards`). Absent: every wake-up is for both lanes.
   */
  readonly laneColumnLanes?: readonly Lane[];
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
    /** Whether this session's wake-ups say which lane they are for (found after connecting). */
    let lanesApart = false;
    client.on('notification', (message) => {
      if (message.channel === CONFIG_CHANNEL) return this.#options.onConfigChange();
      const shards = (message.payload ?? '')
        .split(',')
        .map(Number)
        .filter((n) => Number.isInteger(n) && n >= 0);
      if (shards.length === 0) return;
      if (message.channel === REALTIME_CHANNEL) this.#options.onRows(shards, 'realtime');
      else this.#options.onRows(shards, lanesApart ? 'batch' : undefined);
    });
    try {
      await client.connect();
      const lanes = this.#options.laneColumnLanes;
      lanesApart = lanes !== undefined && (await triggerNamesRealtimeShards(client));
      // Told apart, a real-time-only relay (the real-time worker thread) does not even hear the
      // batch rows' wake-ups, and a batch-only relay not the real-time ones.
      if (!lanesApart || lanes?.includes('batch')) await client.query(`LISTEN ${OUTBOX_CHANNEL}`);
      if (lanesApart && lanes?.includes('realtime')) await client.query(`LISTEN ${REALTIME_CHANNEL}`);
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

/**
 * Whether the outbox's insert trigger names real-time rows' shards on `REALTIME_CHANNEL`
 * (migrations/0015): read from the trigger function's source in `pg_proc`, which every role may
 * read, where the migration table may not be readable by the relay's role. False on a database not
 * migrated to 0015 yet: then both lanes wake for every row, as before.
 */
export async function triggerNamesRealtimeShards(client: pg.ClientBase): Promise<boolean> {
  const { rows } = await client.query<{ apart: boolean }>(
    `SELECT coalesce(bool_or(strpos(p.prosrc, $1) > 0), false) AS apart
       FROM pg_proc p WHERE p.oid = to_regprocedure('shardrelay.notify_outbox_insert()')`,
    [REALTIME_CHANNEL],
  );
  return rows[0]?.apart === true;
}
