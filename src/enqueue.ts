import type { CompiledQuery } from 'kysely';
import { z } from 'zod';
import { queryCompiler } from './db/queryCompiler.js';
import { InvalidEventError } from './errors.js';
import { assertStorableText } from './eventValidation.js';
import { executorKind, type Executor, type KyselyExecutor } from './executor.js';

/** An event to put in the outbox. Only `topic` and `payload` are required. */
export interface OutboxEvent {
  /** Routing: pg-boss queue, AMQP routing key, NATS subject suffix. Letters, digits, `.`, `_`, `-`. */
  readonly topic: string;
  /** Any JSON-serialisable value. */
  readonly payload: unknown;
  readonly key?: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly correlationId?: string;
  /** W3C trace context, forwarded to the broker message. */
  readonly traceparent?: string;
  /** Input of the default lane predicate; default 'batch'. */
  readonly lane?: 'realtime' | 'batch';
  readonly priority?: number;
  /** The message id on every sink; generated when omitted. Give one to make enqueue idempotent. */
  readonly eventId?: string;
  /** Overrides the relay's max attempts for this event. */
  readonly maxAttempts?: number;
}

export interface EnqueueOptions {
  /** Largest accepted payload, in bytes of its JSON text; default 1 MiB. */
  readonly maxPayloadBytes?: number;
}

export interface EnqueuedEvent {
  readonly id: string;
  readonly eventId: string;
}

export type { Executor } from './executor.js';

const TOPIC = /^[A-Za-z0-9_.-]{1,200}$/;
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

const eventSchema = z
  .object({
    topic: z
      .string({ error: 'topic is required (a string)' })
      .regex(TOPIC, 'topic must be 1-200 characters of letters, digits, ".", "_" or "-"'),
    payload: z.unknown(),
    key: z.string().max(1000).optional(),
    headers: z.record(z.string(), z.string()).optional(),
    correlationId: z.string().max(200).optional(),
    traceparent: z.string().regex(TRACEPARENT, 'traceparent must be a W3C trace context').optional(),
    lane: z.enum(['realtime', 'batch']).optional(),
    priority: z.number().int().min(-1_000_000).max(1_000_000).optional(),
    eventId: z.uuid().optional(),
    maxAttempts: z.number().int().min(1).max(1000).optional(),
  })
  .strict();

const BATCH_ROWS = 1000; // 13 parameters a row keeps a statement far below PostgreSQL's 65,535.

function validate(events: readonly OutboxEvent[], maxPayloadBytes: number) {
  return events.map((event, index) => {
    const parsed = eventSchema.safeParse(event);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const field = issue?.path.join('.') || 'event';
      throw new InvalidEventError(
        index,
        `${field}: ${issue?.message ?? 'invalid'}`,
        'correct the field and enqueue again',
      );
    }
    let json: string | undefined;
    try {
      json = JSON.stringify(event.payload);
    } catch (error) {
      throw new InvalidEventError(
        index,
        `payload is not JSON-serialisable (${error instanceof Error ? error.message : String(error)})`,
        'pass plain data: no cycles, BigInt, functions or class instances that cannot be stringified',
      );
    }
    if (json === undefined) {
      throw new InvalidEventError(
        index,
        'payload is missing or not JSON-serialisable',
        'pass a JSON value (use null for none)',
      );
    }
    const bytes = Buffer.byteLength(json);
    if (bytes > maxPayloadBytes) {
      throw new InvalidEventError(
        index,
        `payload is ${bytes} bytes, over the maximum of ${maxPayloadBytes}`,
        'store large data elsewhere and send a reference, or raise SHARDRELAY_MAX_PAYLOAD_BYTES',
      );
    }
    const e = parsed.data;
    assertStorableText(index, e, json);
    return {
      topic: e.topic,
      payload: json,
      key: e.key ?? null,
      headers: JSON.stringify(e.headers ?? {}),
      correlation_id: e.correlationId ?? null,
      traceparent: e.traceparent ?? null,
      lane: e.lane ?? 'batch',
      priority: e.priority ?? 0,
      max_attempts: e.maxAttempts ?? null,
      ...(e.eventId ? { event_id: e.eventId } : {}),
    };
  });
}

/**
 * Writes events to the outbox through the caller's executor, so that inside the caller's
 * transaction the events exist if and only if the business change commits. Every event is validated
 * before anything is written: one bad event rejects the whole call with an InvalidEventError and
 * writes nothing.
 */
export async function enqueue(
  executor: Executor,
  events: readonly OutboxEvent[],
  options: EnqueueOptions = {},
): Promise<EnqueuedEvent[]> {
  const rows = validate(events, options.maxPayloadBytes ?? 1024 * 1024);
  // Recognised by shape, not `instanceof`: the application's Kysely or pg may be another copy
  // (another version, or a second install) than shardrelay's own (src/executor.ts).
  const kind = executorKind(executor);
  // More rows than one statement holds, outside a transaction: wrap them in one, so the call
  // stays all-or-nothing.
  if (rows.length > BATCH_ROWS && kind.type === 'kysely' && !kind.executor.isTransaction) {
    return kind.executor.transaction().execute((trx: KyselyExecutor) => enqueue(trx, events, options));
  }
  if (rows.length > BATCH_ROWS && kind.type === 'pgPool') {
    const client = await kind.executor.connect();
    try {
      await client.query('BEGIN');
      const result = await enqueue(client, events, options);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      await Promise.resolve(client.query('ROLLBACK')).catch(() => {});
      throw error;
    } finally {
      client.release();
    }
  }
  const result: EnqueuedEvent[] = [];
  // Compiled by shardrelay's own compiler, run through the caller's handle.
  const run = async (query: CompiledQuery): Promise<Record<string, unknown>[]> =>
    [
      ...(kind.type === 'kysely'
        ? (await kind.executor.executeQuery(query as never)).rows
        : (await kind.executor.query(query.sql, [...query.parameters])).rows),
    ] as Record<string, unknown>[];
  for (let start = 0; start < rows.length; start += BATCH_ROWS) {
    const inserted = await run(
      queryCompiler
        .insertInto('shardrelay.outbox')
        .values(rows.slice(start, start + BATCH_ROWS))
        .returning(['id', 'event_id'])
        .compile(),
    );
    for (const r of inserted) result.push({ id: String(r.id), eventId: String(r.event_id) });
  }
  return result;
}
