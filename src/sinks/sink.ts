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
  /**
   * The payload as JSON text, exactly as PostgreSQL prints the jsonb column (`payload::text`). It
   * travels to the wire as it is: no sink parses it to build a body, and a sink that needs the
   * value (pg-boss's job document) parses it itself. Selected as text, a claim no longer runs
   * JSON.parse per row and a sink no longer runs JSON.stringify per message.
   */
  readonly payloadJson: string;
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
 *   `retryAfterMs` is the broker's own "not before" (HTTP Retry-After): the retry waits at least
 *   that long, within the retry cap.
 * - `failed` + permanent: it will never be accepted (4xx, unroutable, too large); the row becomes dead.
 * - `unknown`: no answer before the deadline or the connection died with the confirm pending; the
 *   broker may or may not hold it, so the row is sent again later with the same event id.
 * - `deferred`: nothing of the message left this process, for a reason that is not the message's:
 *   the broker cannot be reached (connection refused, link down before the message's turn), or
 *   its batch's deadline came first (a request slot, a PutRecords call, link credit or socket
 *   back-pressure from a busy broker). The row goes back as it was claimed, no attempt counted,
 *   due again after a delay (relay/deferralDelay.ts). Without it a broker outage or a slow
 *   receiver at peak turned rows no broker ever saw into dead letters once `max_attempts` such
 *   turns had passed. A sink must not defer a message it wrote anywhere, even partly: once bytes
 *   may have reached the broker, the outcome is `unknown`.
 */
export type SendOutcome =
  | { readonly status: 'confirmed'; readonly duplicate?: boolean }
  | {
      readonly status: 'failed';
      readonly retryable: boolean;
      readonly error: string;
      readonly retryAfterMs?: number;
    }
  | { readonly status: 'unknown'; readonly error: string }
  | {
      readonly status: 'deferred';
      readonly error: string;
      /** The sink's own "not before" (a route's breaker): the row waits at least that long. */
      readonly retryAfterMs?: number;
      /**
       * Held by the sink's own limit (its request slots, its calls per batch, its check of the
       * receiver's answer time), not by the broker: it says nothing of the broker's health, so a
       * route's breaker does not count it as a failure (routing/routingSink.ts). See `heldBySink`.
       */
      readonly ownLimit?: true;
    };

/**
 * What every sink is given with a batch. The claim transaction is not in it: a broker sink has no
 * business with the relay's database connection, so it cannot reach it (an in-database sink is
 * handed the transaction as an argument of its own, see `InDatabaseSink`).
 */
export interface SendContext {
  /** Epoch milliseconds by which every outcome must be settled; later ones count as `unknown`. */
  readonly deadline: number;
  /**
   * False once this replica may no longer hold the batch's shard (its lease deadline passed, e.g.
   * the process was paused). A broker sink checks it before each publish and while it waits, and
   * then drops its link hard (no flush of buffered publishes): another replica may own the rows.
   */
  readonly mayContinue?: () => boolean;
}

/** What every kind of sink has besides `sendBatch`. */
interface SinkLifecycle {
  readonly name: string;
  /** Connects and declares what the sink needs (queues, exchanges, streams). */
  start(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A destination with confirmed delivery outside the relay's database (a broker, a webhook): the
 * usual sink, and the one a sink of your own implements. `sendBatch` sends all messages
 * concurrently (confirms are pipelined: a batch costs about one round trip) and resolves with one
 * outcome per message, in the same order. It must not throw for a message-level problem; a throw
 * fails the whole batch as `unknown`.
 */
export interface Sink extends SinkLifecycle {
  /** Absent or `broker`: the discriminant against `InDatabaseSink` (see `RelaySink`). */
  readonly kind?: 'broker';
  sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]>;
}

/**
 * A sink that writes into the relay's own database through the claim transaction, which holds the
 * rows' locks (pg-boss): its writes commit with the rows' completion or not at all. So its
 * confirms are undone with the transaction, and a completion lost with the connection must not be
 * recorded elsewhere (relay/deliverBatch.ts). The transaction cannot cross threads, so such a sink
 * is never forwarded to another thread (forwardingSink.ts).
 */
export interface InDatabaseSink extends SinkLifecycle {
  readonly kind: 'in-database';
  /** As `Sink.sendBatch`, writing through `transaction`, the batch's claim transaction. */
  sendBatch(
    messages: readonly OutboxMessage[],
    context: SendContext,
    transaction: Transaction<Database>,
  ): Promise<SendOutcome[]>;
}

/** Either kind; the relay tells them apart by `kind`, and only an in-database sink gets the transaction. */
export type RelaySink = Sink | InDatabaseSink;

export const confirmed: SendOutcome = Object.freeze({ status: 'confirmed' });

export function retryable(error: string, retryAfterMs?: number): SendOutcome {
  return retryAfterMs === undefined
    ? { status: 'failed', retryable: true, error }
    : { status: 'failed', retryable: true, error, retryAfterMs };
}

export function permanent(error: string): SendOutcome {
  return { status: 'failed', retryable: false, error };
}

export function unknown(error: string): SendOutcome {
  return { status: 'unknown', error };
}

/** Not offered to the broker (see `SendOutcome`); the reason says why nothing was sent. */
export function deferred(error: string, retryAfterMs?: number): SendOutcome {
  return retryAfterMs === undefined
    ? { status: 'deferred', error }
    : { status: 'deferred', error, retryAfterMs };
}

/**
 * Deferred by the sink's own limit, with the broker not involved: a message still waiting for one
 * of the sink's request slots at the deadline, or not started because the batch had too little time
 * left for the receiver's recent answer time. A busy but healthy receiver then does not look down.
 */
export function heldBySink(error: string): SendOutcome {
  return { status: 'deferred', error, ownLimit: true };
}
