import { CompiledQuery, sql, type Transaction } from 'kysely';
import PgBoss from 'pg-boss';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import {
  confirmed,
  retryable,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
  type Sink,
} from './sink.js';

export interface PgBossSinkOptions {
  readonly connectionString: string;
  /** The schema pg-boss lives in (installed by pg-boss on start if missing). */
  readonly schema?: string;
  readonly onError?: (error: Error) => void;
}

/** The job payload: the event as the consumer needs it (CloudEvents attribute names). */
export interface PgBossEventJob {
  readonly id: string;
  readonly type: string;
  readonly time: string;
  readonly data: unknown;
  readonly partitionkey?: string;
  readonly correlationid?: string;
  readonly traceparent?: string;
  readonly headers?: Readonly<Record<string, string>>;
}

function toJob(m: OutboxMessage): PgBoss.JobInsert<PgBossEventJob> {
  return {
    id: m.eventId,
    name: m.topic,
    data: {
      id: m.eventId,
      type: m.topic,
      time: m.createdAt.toISOString(),
      data: m.payload,
      ...(m.key ? { partitionkey: m.key } : {}),
      ...(m.correlationId ? { correlationid: m.correlationId } : {}),
      ...(m.traceparent ? { traceparent: m.traceparent } : {}),
      ...(Object.keys(m.headers).length > 0 ? { headers: m.headers } : {}),
    },
  };
}

/** pg-boss's `db` option: runs its SQL on the relay's claim transaction. */
function transactionExecutor(trx: Transaction<Database>): PgBoss.Db {
  return {
    // pg-boss's own declared signature uses `any` for rows and values; we pass them through untouched.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    executeSql: async (text: string, values: any[]) => {
      const result = await trx.executeQuery(CompiledQuery.raw(text, values));
      return { rows: [...result.rows] };
    },
  };
}

/**
 * The default sink: pg-boss in the same database. Jobs are inserted through the relay's own claim
 * transaction, so the hand-off is exactly-once: the job exists if and only if the outbox row is
 * recorded as sent (one commit). The job id is the event id; pg-boss ignores a second insert of
 * the same id (ON CONFLICT DO NOTHING), so even a replayed row cannot make a second job while the
 * first is retained. The queue is the event's topic, created on first use.
 */
export function createPgBossSink(options: PgBossSinkOptions): Sink & { readonly boss: () => PgBoss } {
  const schema = options.schema ?? 'pgboss';
  const knownQueues = new Set<string>();
  let boss: PgBoss | undefined;

  async function ensureQueues(topics: Iterable<string>): Promise<void> {
    for (const topic of topics) {
      if (knownQueues.has(topic) || !boss) continue;
      // Idempotent (ON CONFLICT DO NOTHING in pg-boss); it runs on pg-boss's own connection and
      // commits at once, so the queue exists before our transaction inserts into it. pg-boss
      // silently drops jobs for a queue that does not exist, hence this step.
      await boss.createQueue(topic);
      knownQueues.add(topic);
    }
  }

  return {
    name: 'pgboss',
    boss: () => {
      if (!boss) throw new Error('pg-boss sink is not started');
      return boss;
    },
    async start() {
      boss = new PgBoss({
        connectionString: options.connectionString,
        schema,
        max: 2,
        // The relay only inserts; maintenance and cron belong to the consumers' pg-boss instances.
        supervise: false,
        schedule: false,
        migrate: true,
        application_name: 'shardrelay-pgboss',
      });
      boss.on('error', (error) => options.onError?.(toError(error)));
      await boss.start();
    },
    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (!boss) throw new Error('pg-boss sink is not started');
      await ensureQueues(new Set(messages.map((m) => m.topic)));
      // A savepoint keeps the claim transaction usable if the insert fails (an aborted
      // transaction could not record the retry), so a failed insert becomes a retry, not a crash.
      await sql`SAVEPOINT shardrelay_pgboss`.execute(context.transaction);
      try {
        await boss.insert(messages.map(toJob), { db: transactionExecutor(context.transaction) });
        await sql`RELEASE SAVEPOINT shardrelay_pgboss`.execute(context.transaction);
        return messages.map(() => confirmed);
      } catch (error) {
        await sql`ROLLBACK TO SAVEPOINT shardrelay_pgboss`.execute(context.transaction);
        const reason = `pg-boss insert failed: ${toError(error).message}`;
        return messages.map(() => retryable(reason));
      }
    },
    async close() {
      await boss?.stop({ graceful: false, wait: true, close: true });
      boss = undefined;
    },
  };
}
