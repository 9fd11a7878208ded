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

/**
 * Makes dead rows pending again with a fresh attempt budget; they keep their event id, so a
 * consumer that already saw one (e.g. a permanent failure the broker half-accepted) can still
 * de-duplicate. `last_error` is kept until the next attempt overwrites it.
 */
export async function replayDeadLetters(
  db: Kysely<Database>,
  selection: { ids?: readonly string[]; topic?: string; all?: boolean },
): Promise<number> {
  if (!selection.all && !selection.ids?.length && !selection.topic) {
    throw new Error('say which dead letters to replay: ids, a topic, or all');
  }
  let query = db
    .updateTable('shardrelay.outbox')
    .set({ status: 'pending', attempts: 0, available_at: sql<Date>`now()` })
    .where('status', '=', 'dead');
  if (selection.ids?.length) query = query.where('id', 'in', [...selection.ids]);
  if (selection.topic) query = query.where('topic', '=', selection.topic);
  const result = await query.executeTakeFirst();
  return Number(result.numUpdatedRows);
}
