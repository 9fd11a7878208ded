import { sql, type Kysely } from 'kysely';
import type { Database } from './db/schema.js';

export interface DeadLetter {
  readonly id: string;
  readonly eventId: string;
  readonly topic: string;
  readonly attempts: number;
  readonly lastError: string | null;
  readonly createdAt: Date;
  readonly correlationId: string | null;
}

export async function listDeadLetters(
  db: Kysely<Database>,
  options: { limit?: number; topic?: string } = {},
): Promise<DeadLetter[]> {
  let query = db
    .selectFrom('shardrelay.outbox')
    .select(['id', 'event_id', 'topic', 'attempts', 'last_error', 'created_at', 'correlation_id'])
    .where('status', '=', 'dead')
    .orderBy('id')
    .limit(options.limit ?? 100);
  if (options.topic) query = query.where('topic', '=', options.topic);
  const rows = await query.execute();
  return rows.map((r) => ({
    id: r.id,
    eventId: r.event_id,
    topic: r.topic,
    attempts: r.attempts,
    lastError: r.last_error,
    createdAt: r.created_at,
    correlationId: r.correlation_id,
  }));
}

/** Which dead letters `replay` and `discard` act on: ids, a topic (both: the ids of that topic), or all. */
export interface DeadLetterSelection {
  readonly ids?: readonly string[];
  readonly topic?: string;
  readonly all?: boolean;
}

function assertSelected(selection: DeadLetterSelection, verb: string): void {
  if (!selection.all && !selection.ids?.length && !selection.topic) {
    throw new Error(`say which dead letters to ${verb}: ids, a topic, or all`);
  }
}

/**
 * Deletes dead rows for good (`shardrelay dead discard`): the operator has decided they will never
 * be sent. Only rows still dead are touched (a row replayed meanwhile is pending and stays). They
 * leave no sent record, so their event ids may be enqueued again.
 */
export async function discardDeadLetters(
  db: Kysely<Database>,
  selection: DeadLetterSelection,
): Promise<number> {
  assertSelected(selection, 'discard');
  let query = db.deleteFrom('shardrelay.outbox').where('status', '=', 'dead').where('canary', '=', false);
  if (selection.ids?.length) query = query.where('id', 'in', [...selection.ids]);
  if (selection.topic) query = query.where('topic', '=', selection.topic);
  const result = await query.executeTakeFirst();
  return Number(result.numDeletedRows);
}

/**
 * Makes dead rows pending again with a fresh attempt budget; they keep their event id, so a
 * consumer that already saw one (e.g. a permanent failure the broker half-accepted) can still
 * de-duplicate. `last_error` is kept until the next attempt overwrites it.
 */
export async function replayDeadLetters(
  db: Kysely<Database>,
  selection: DeadLetterSelection,
): Promise<number> {
  assertSelected(selection, 'replay');
  let query = db
    .updateTable('shardrelay.outbox')
    .set({ status: 'pending', attempts: 0, available_at: sql<Date>`shardrelay.now()` })
    .where('status', '=', 'dead');
  if (selection.ids?.length) query = query.where('id', 'in', [...selection.ids]);
  if (selection.topic) query = query.where('topic', '=', selection.topic);
  const result = await query.executeTakeFirst();
  return Number(result.numUpdatedRows);
}
