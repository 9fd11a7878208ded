import { CompiledQuery, sql, type Transaction } from 'kysely';
import PgBoss from 'pg-boss';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import { backoffDelayMs } from '../backoff.js';
import {
  confirmed,
  retryable,
  type InDatabaseSink,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
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
      // pg-boss stringifies the whole job list itself (JSON.stringify(jobs) in its insert), so the
      // payload must be a value here: the one sink that parses the claimed JSON text.
      data: JSON.parse(m.payloadJson) as unknown,
      ...(m.key ? { partitionkey: m.key } : {}),
      ...(m.correlationId ? { correlationid: m.correlationId } : {}),
      ...(m.traceparent ? { traceparent: m.traceparent } : {}),
      ...(Object.keys(m.headers).length > 0 ? { headers: m.headers } : {}),
    },
  };
}

const DEADLOCK_DETECTED = '40P01';

/**
 * pg-boss's create_queue inserts the queue row, then adds foreign keys that lock the whole queue
 * table: two sessions creating two new queues at the same moment deadlock, and PostgreSQL aborts
 * one of them. The relay's own creators are serialised (ensureQueues); a consumer's pg-boss can
 * still collide with them. Nothing is half-created (the aborted call rolled back), so it is run
 * again after a short random pause.
 */
async function createQueueRetryingDeadlocks(boss: PgBoss, topic: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await boss.createQueue(topic);
      return;
    } catch (error) {
      const code = (error as { code?: unknown } | null)?.code;
      if (code !== DEADLOCK_DETECTED || attempt >= 5) throw error;
      await new Promise((resolve) =>
        setTimeout(resolve, backoffDelayMs({ baseMs: 20, capMs: 500 }, attempt)),
      );
    }
  }
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
export function createPgBossSink(
  options: PgBossSinkOptions,
): InDatabaseSink & { readonly boss: () => PgBoss } {
  const schema = options.schema ?? 'pgboss';
  const knownQueues = new Set<string>();
  let boss: PgBoss | undefined;

  async function ensureQueues(topics: Iterable<string>, trx: Transaction<Database>): Promise<void> {
    const missing = [...topics].filter((topic) => !knownQueues.has(topic));
    if (missing.length === 0 || !boss) return;
    // One queue creator at a time across every relay process: pg-boss's create_queue deadlocks
    // with itself (see createQueueRetryingDeadlocks), and under a burst of new topics retries alone
    // kept colliding (measured: 4 sinks creating 40 queues, 1 to 3 of 160 batches failed after
    // 5 attempts). The lock is taken by the claim transaction, which waits for nothing else while
    // pg-boss creates the queue on its own connection, and ends with it.
    await sql`SELECT pg_advisory_xact_lock(hashtext('shardrelay.pgboss.create_queue'))`.execute(trx);
    for (const topic of missing) {
      // Idempotent (ON CONFLICT DO NOTHING in pg-boss); it runs on pg-boss's own connection and
      // commits at once, so the queue exists before our transaction inserts into it. pg-boss
      // silently drops jobs for a queue that does not exist, hence this step.
      await createQueueRetryingDeadlocks(boss, topic);
      knownQueues.add(topic);
    }
  }

  return {
    name: 'pgboss',
    kind: 'in-database',
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
    async sendBatch(
      messages: readonly OutboxMessage[],
      // The deadline is not raced: the insert runs on the claim's own connection, and the batch
      // must not commit while it still writes there.
      _context: SendContext,
      transaction: Transaction<Database>,
    ): Promise<SendOutcome[]> {
      if (!boss) throw new Error('pg-boss sink is not started');
      await ensureQueues(new Set(messages.map((m) => m.topic)), transaction);
      // A savepoint keeps the claim transaction usable if the insert fails (an aborted
      // transaction could not record the retry), so a failed insert becomes a retry, not a crash.
      await sql`SAVEPOINT shardrelay_pgboss`.execute(transaction);
      try {
        await boss.insert(messages.map(toJob), { db: transactionExecutor(transaction) });
        await sql`RELEASE SAVEPOINT shardrelay_pgboss`.execute(transaction);
        return messages.map(() => confirmed);
      } catch (error) {
        await sql`ROLLBACK TO SAVEPOINT shardrelay_pgboss`.execute(transaction);
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
