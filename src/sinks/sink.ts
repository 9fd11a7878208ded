import type { Transaction } from 'kysely';
import type { Database, Lane } from '../db/schema.js';

/** What a sink is given for each claimed outbox row. */
export interface OutboxMessage {
  /** Outbox row id (bigint as a string); the shard key. Not sent to brokers. */
  readonly id: string;
  /** The message id on every sink: stable across re-sends, so duplicates can be recognised. */
  readonly eventId: string;
  readonly topic: string;
  readonly key: string | null;
  readonly payload: unknown;
  readonly headers: Readonly<Record<string, string>>;
  readonly correlationId: string | null;
  readonly traceparent: string | null;
  readonly lane: Lane;
  readonly createdAt: Date;
  /** Delivery attempts made before this one. */
  readonly attempts: number;
}

/**
 * The outcome of one message. Only `confirmed` lets the row become `sent`.
 * - `failed` + retryable: the broker said no for now (nack, 5xx, back-pressure); retried with backoff.
 * - `failed` + permanent: it will never be accepted (4xx, unroutable, too large); the row becomes dead.
 * - `unknown`: no answer before the deadline or the connection died with the confirm pending; the
 *   broker may or may not hold it, so the row is sent again later with the same event id.
 */
export type SendOutcome =
  | { readonly status: 'confirmed'; readonly duplicate?: boolean }
  | { readonly status: 'failed'; readonly retryable: boolean; readonly error: string }
  | { readonly status: 'unknown'; readonly error: string };

export interface SendContext {
  /**
   * The claim transaction, which holds the rows' locks. Only sinks that live in the same database
   * (pg-boss) write through it; broker sinks must not touch it.
   */
  readonly transaction: Transaction<Database>;
  /** Epoch milliseconds by which every outcome must be settled; later ones count as `unknown`. */
  readonly deadline: number;
  /**
   * False once this replica may no longer hold the batch's shard (its lease deadline passed, e.g.
   * the process was paused). A broker sink checks it before each publish and while it waits, and
   * then drops its link hard (no flush of buffered publishes): another replica may own the rows.
   */
  readonly mayContinue?: () => boolean;
}

/**
 * A destination with confirmed delivery. `sendBatch` sends all messages concurrently (confirms are
 * pipelined: a batch costs about one round trip) and resolves with one outcome per message, in the
 * same order. It must not throw for a message-level problem; a throw fails the whole batch as
 * `unknown`.
 */
export interface Sink {
  readonly name: string;
  /**
   * True for a sink that writes through the claim transaction (pg-boss): its confirms are undone
   * with the transaction, so a completion lost with the connection must not be recorded elsewhere.
   */
  readonly writesInTransaction?: boolean;
  /** Connects and declares what the sink needs (queues, exchanges, streams). */
  start(): Promise<void>;
  sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]>;
  close(): Promise<void>;
}

export const confirmed: SendOutcome = Object.freeze({ status: 'confirmed' });

export function retryable(error: string): SendOutcome {
  return { status: 'failed', retryable: true, error };
}

export function permanent(error: string): SendOutcome {
  return { status: 'failed', retryable: false, error };
}

export function unknown(error: string): SendOutcome {
  return { status: 'unknown', error };
}
