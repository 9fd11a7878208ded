import { sql, type CompiledQuery } from 'kysely';
import { z } from 'zod';
import { queryCompiler } from './db/queryCompiler.js';
import { InvalidEventError, toError } from './errors.js';
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

/**
 * The events written, in order, plus `skipped`: the event ids given by the caller that were not
 * written because the database already knows them (see `enqueue`).
 */
export interface EnqueueResult extends Array<EnqueuedEvent> {
  readonly skipped: readonly string[];
}

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
        `payload is not JSON-serialisable (${toError(error).message})`,
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
 *
 * Idempotent by `eventId`: an event whose id is already in the outbox (pending, dead, or sent by an
 * earlier release) or in the sent record (sent within the retention window,
 * SHARDRELAY_SENT_RETENTION) is skipped, not an error, so a retried business transaction does not
 * abort on a unique violation; its id is listed in the result's `skipped`. (Outside the window an
 * id is not remembered; a row being completed at the very moment it is enqueued again can slip
 * through, and is then delivered a second time with the same event id, which consumers de-duplicate.)
 */
export async function enqueue(
  executor: Executor,
  events: readonly OutboxEvent[],
  options: EnqueueOptions = {},
): Promise<EnqueueResult> {
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
  const skipped: string[] = [];
  // Compiled by shardrelay's own compiler, run through the caller's handle.
  const run = async (query: CompiledQuery): Promise<Record<string, unknown>[]> =>
    [
      ...(kind.type === 'kysely'
        ? (await kind.executor.executeQuery(query as never)).rows
        : (await kind.executor.query(query.sql, [...query.parameters])).rows),
    ] as Record<string, unknown>[];
  for (let start = 0; start < rows.length; start += BATCH_ROWS) {
    let chunk = rows.slice(start, start + BATCH_ROWS);
    // PostgreSQL returns uuids in lower case; compare in lower case.
    const given = chunk.flatMap((r) => (r.event_id ? [r.event_id.toLowerCase()] : []));
    if (given.length > 0) {
      // Ids sent within the retention window live in the sent record, not the outbox.
      const sent = await run(
        queryCompiler
          .selectFrom('shardrelay.sent_event')
          .select('event_id')
          .where(sql<boolean>`event_id = ANY(${given}::uuid[])`)
          .compile(),
      );
      const known = new Set(sent.map((r) => String(r.event_id)));
      if (known.size > 0) chunk = chunk.filter((r) => !r.event_id || !known.has(r.event_id.toLowerCase()));
    }
    // Ids in the outbox (and repeats within the call) are skipped by the unique index.
    const inserted =
      chunk.length === 0
        ? []
        : await run(
            queryCompiler
              .insertInto('shardrelay.outbox')
              .values(chunk)
              .onConflict((oc) => oc.column('event_id').doNothing())
              .returning(['id', 'event_id'])
              .compile(),
          );
    const written = new Map<string, number>();
    for (const r of inserted) {
      const eventId = String(r.event_id);
      result.push({ id: String(r.id), eventId });
      written.set(eventId, (written.get(eventId) ?? 0) + 1);
    }
    for (const eventId of given) {
      const left = written.get(eventId) ?? 0;
      if (left > 0) written.set(eventId, left - 1);
      else skipped.push(eventId);
    }
  }
  return Object.assign(result, { skipped });
}
