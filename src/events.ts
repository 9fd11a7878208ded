import type { Kysely } from 'kysely';
import type { Database, Lane, OutboxStatus } from './db/schema.js';

/** What the database knows of one event: `shardrelay event <event-id>`. */
export interface EventRecord {
  readonly eventId: string;
  readonly id: string;
  readonly topic: string;
  readonly key: string | null;
  readonly shard: number;
  readonly lane: Lane;
  readonly status: OutboxStatus;
  readonly attempts: number;
  readonly createdAt: Date;
  readonly sentAt: Date | null;
  /** The replica that sent it; null when not sent or sent by a release that did not record it. */
  readonly replica: string | null;
  readonly sink: string | null;
  readonly lastError: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isEventId(text: string): boolean {
  return UUID.test(text);
}

/**
 * Looks an event up in shardrelay.events (sql/events.sql): pending or dead in the outbox, or sent
 * within the retention window. Undefined when the database does not know it: never enqueued, sent
 * longer ago than the retention window, or a discarded dead letter.
 */
export async function findEvent(db: Kysely<Database>, eventId: string): Promise<EventRecord | undefined> {
  const r = await db
    .selectFrom('shardrelay.events')
    .selectAll()
    .where('event_id', '=', eventId.toLowerCase())
    .executeTakeFirst();
  if (!r) return undefined;
  return {
    eventId: r.event_id,
    id: r.id,
    topic: r.topic,
    key: r.key,
    shard: r.shard,
    lane: r.lane,
    status: r.status,
    attempts: r.attempts,
    createdAt: r.created_at,
    sentAt: r.sent_at,
    replica: r.replica,
    sink: r.sink,
    lastError: r.last_error,
  };
}
