/**
 * What the tests against real brokers share: where the brokers are, a check that they are up (skip
 * locally, fail in CI), outbox messages to send, and a collector that says when a consumer has seen
 * every expected event id.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { Socket } from 'node:net';
import type { Kysely } from 'kysely';
import { pino, type Logger } from 'pino';
import type { Database } from '../../src/db/schema.js';
import type { OutboxMessage, RelaySink, SendOutcome } from '../../src/sinks/sink.js';

export const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
export const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';

/** Host and port of a broker URL, for `requireBroker` and for pointing a TCP proxy at it. */
export function hostAndPort(url: string, defaultPort: number): { host: string; port: number } {
  const parsed = new URL(url);
  return { host: parsed.hostname, port: parsed.port ? Number(parsed.port) : defaultPort };
}

function canConnect(host: string, port: number, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const finish = (problem: string | null): void => {
      socket.destroy();
      resolve(problem);
    };
    socket.setTimeout(timeoutMs, () => finish(`no answer within ${timeoutMs} ms`));
    socket.once('error', (error) => finish(error.message));
    socket.connect(port, host, () => finish(null));
  });
}

/**
 * Checks that a broker accepts TCP connections. Use the result as the `skip` option of the
 * `describe` (false when the broker is up). When it is down, a local run skips with the reason, but
 * in CI (`CI=true`) this throws, so the test file fails rather than passing without having run.
 */
export async function requireBroker(name: string, host: string, port: number): Promise<false | string> {
  const problem = await canConnect(host, port, 2_000);
  if (problem === null) return false;
  const reason = `${name} is not reachable at ${host}:${port} (${problem})`;
  if (process.env.CI === 'true') {
    throw new Error(`${reason}; CI must provide ${name} for these tests (set the URL environment variable)`);
  }
  return `${reason}; start it to run these tests`;
}

/** A name no other test run uses, for exchanges, queues, streams and subjects. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

/** A message's fields, and `payload` as a value: it becomes `payloadJson` as a claim would give it. */
export type MessageShape = Partial<OutboxMessage> & { readonly payload?: unknown };

/** One message: the first of `outboxMessages`, with `shape`'s fields. */
export function outboxMessage(shape: MessageShape = {}): OutboxMessage {
  return outboxMessages(1, () => shape)[0] as OutboxMessage;
}

/** `count` distinct messages; `shape` can vary any field by index. */
export function outboxMessages(
  count: number,
  shape: (index: number) => MessageShape = () => ({}),
): OutboxMessage[] {
  const createdAt = new Date();
  return Array.from({ length: count }, (_, index) => {
    const { payload, ...fields } = shape(index);
    return {
      id: String(index + 1),
      eventId: randomUUID(),
      topic: 'orders.created',
      key: `customer-${index % 7}`,
      payloadJson: payloadText(payload === undefined ? { index, amount: index * 3, note: 'test' } : payload),
      headers: {},
      correlationId: null,
      traceparent: null,
      lane: 'batch' as const,
      createdAt,
      attempts: 0,
      ...fields,
    };
  });
}

/**
 * A value's JSON text as PostgreSQL prints a jsonb (`payload::text`): `", "` and `": "` between
 * members and elements, so the sinks are tested with the text a claim gives them, not JSON.stringify's.
 */
export function payloadText(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => payloadText(v)).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    const members = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${JSON.stringify(k)}: ${payloadText(v)}`);
    return `{${members.join(', ')}}`;
  }
  return JSON.stringify(value ?? null);
}

/**
 * Sends a batch the way the relay does: inside a claim transaction, handed to an in-database sink
 * only, with a deadline `deadlineMs` from now.
 */
export function sendInTransaction(
  db: Kysely<Database>,
  sink: RelaySink,
  messages: readonly OutboxMessage[],
  deadlineMs = 30_000,
): Promise<SendOutcome[]> {
  return db.transaction().execute((transaction) => {
    const context = { deadline: Date.now() + deadlineMs };
    return sink.kind === 'in-database'
      ? sink.sendBatch(messages, context, transaction)
      : sink.sendBatch(messages, context);
  });
}

/** Counts the event ids a consumer receives, and resolves waiters once all of a set has arrived. */
export class ReceivedIds {
  readonly counts = new Map<string, number>();
  /** Each waiter keeps the ids it still misses, so an arrival costs O(waiters), not O(ids). */
  #waiters = new Set<{ missing: Set<string>; resolve: () => void }>();

  add(id: string): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    for (const waiter of this.#waiters) {
      waiter.missing.delete(id);
      if (waiter.missing.size === 0) {
        this.#waiters.delete(waiter);
        waiter.resolve();
      }
    }
  }

  has(id: string): boolean {
    return this.counts.has(id);
  }

  /** Deliveries beyond the first, summed over all ids. */
  get duplicates(): number {
    let extra = 0;
    for (const n of this.counts.values()) extra += n - 1;
    return extra;
  }

  /** Resolves when every id has been received; rejects after `timeoutMs` saying how many are missing. */
  waitForAll(ids: readonly string[], timeoutMs: number): Promise<void> {
    const missing = new Set(ids.filter((id) => !this.counts.has(id)));
    if (missing.size === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        missing,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new Error(`${missing.size} of ${ids.length} event ids not received within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.add(waiter);
    });
  }
}

export interface CapturedLog {
  /** A debug-level logger to pass as a sink's `log` option. */
  readonly log: Logger;
  /** Every line logged so far, parsed. */
  readonly lines: readonly Record<string, unknown>[];
  /** Resolves with the first line (past or future) whose `msg` includes `text`; rejects after `timeoutMs`. */
  waitFor(text: string, timeoutMs: number): Promise<Record<string, unknown>>;
}

/** A logger whose lines a test can wait on: the signal for events a sink only reports by logging. */
export function captureLog(): CapturedLog {
  const lines: Record<string, unknown>[] = [];
  const waiters: { text: string; resolve: (line: Record<string, unknown>) => void }[] = [];
  const matches = (line: Record<string, unknown>, text: string): boolean =>
    typeof line.msg === 'string' && line.msg.includes(text);
  const log = pino(
    { level: 'debug' },
    {
      write(chunk: string) {
        const line = JSON.parse(chunk) as Record<string, unknown>;
        lines.push(line);
        for (const waiter of waiters.filter((w) => matches(line, w.text))) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      },
    },
  );
  return {
    log,
    lines,
    waitFor(text, timeoutMs) {
      const seen = lines.find((line) => matches(line, text));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = {
          text,
          resolve: (line: Record<string, unknown>) => {
            clearTimeout(timer);
            resolve(line);
          },
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          reject(new Error(`no log line containing "${text}" within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.push(waiter);
      });
    },
  };
}

/** Outcomes counted by kind: confirmed, failed-retryable, failed-permanent, unknown, deferred. */
export function statuses(outcomes: readonly SendOutcome[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const o of outcomes) {
    const key = o.status === 'failed' ? `failed-${o.retryable ? 'retryable' : 'permanent'}` : o.status;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}
