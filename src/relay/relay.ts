import type { Kysely } from 'kysely';
import type pg from 'pg';
import type { RelayConfig } from '../config.js';
import { assertReachable, createDatabase, createPool } from '../db/connection.js';
import type { Database, Lane } from '../db/schema.js';
import { ShardRelayError, toError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { createSink } from '../sinks/createSink.js';
import type { Sink } from '../sinks/sink.js';
import { runBatch, type BatchResult } from './batchRunner.js';
import { OutboxListener } from './outboxListener.js';
import { Scheduler, type LaneRunner } from './scheduler.js';
import { allShards, type ShardOwnership } from './shardOwnership.js';

export interface RelayHooks {
  /** After every committed batch that claimed rows. */
  readonly onBatch?: (shard: number, lane: Lane, result: BatchResult) => void;
}

export interface StartRelayOptions {
  readonly config: RelayConfig;
  /** Defaults to the sink named by `config.sink`. */
  readonly sink?: Sink;
  readonly logger?: Logger;
  /** Defaults to every shard (a single replica). */
  readonly ownership?: ShardOwnership;
  readonly hooks?: RelayHooks;
  /** Which lanes to run; default both. */
  readonly lanes?: readonly Lane[];
}

export interface Relay {
  readonly replicaId: string;
  readonly sink: Sink;
  readonly scheduler: Scheduler;
  readonly listener: OutboxListener;
  /** Resolves once no row is pending (sent or dead only); checked every tick and after batches. */
  whenDrained(): Promise<void>;
  /** Finishes in-flight batches (bounded by `shutdownTimeoutMs`), releases shards, closes everything. */
  stop(): Promise<{ readonly clean: boolean }>;
}

async function checkDatabase(db: Kysely<Database>, url: string): Promise<void> {
  await assertReachable(db, url);
  try {
    await db.selectFrom('shardrelay.shard_config').select('shard_count').executeTakeFirstOrThrow();
  } catch (error) {
    throw new ShardRelayError('MIGRATION_FAILED', 'the shardrelay schema is missing or incomplete', {
      cause: error,
      fix: 'run `shardrelay migrate` against this database first',
    });
  }
}

/**
 * Starts a relay replica: one connection pool per lane (so batch work can never take the
 * connections real-time needs), the LISTEN wake-up connection, the scheduler and the sink.
 */
export async function startRelay(options: StartRelayOptions): Promise<Relay> {
  const { config } = options;
  const logger = options.logger ?? silentLogger;
  const lanes = options.lanes ?? (['realtime', 'batch'] as const);
  const pools: pg.Pool[] = [];
  const onPoolError = (error: Error) =>
    logger.warn({ err: error.message }, 'idle PostgreSQL connection lost');
  const newPool = (max: number, name: string) => {
    const pool = createPool({
      connectionString: config.databaseUrl,
      max,
      applicationName: `shardrelay-${name}`,
      onError: onPoolError,
      // A transaction left idle (a hung sink) is ended by PostgreSQL soon after the send deadline,
      // which releases its row locks; the sink's deadline normally ends the wait first.
      idleInTransactionTimeoutMs: config.sendTimeoutMs + 5_000,
    });
    pools.push(pool);
    return pool;
  };
  const controlDb = createDatabase(newPool(2, 'control'));
  try {
    await checkDatabase(controlDb, config.databaseUrl);
  } catch (error) {
    await Promise.all(pools.map((p) => p.end()));
    throw error;
  }

  const sink = options.sink ?? (await createSink(config, logger));
  try {
    await sink.start();
  } catch (error) {
    await Promise.all(pools.map((p) => p.end()));
    throw new ShardRelayError(
      'SINK_UNAVAILABLE',
      `sink ${sink.name} could not start: ${toError(error).message}`,
      {
        cause: error,
        fix: 'check the sink connection settings and that the broker is running',
      },
    );
  }

  const retry = { maxAttempts: config.maxAttempts, baseMs: config.retryBaseMs, capMs: config.retryCapMs };
  let drainedWaiters: (() => void)[] = [];
  const laneRunners: LaneRunner[] = lanes.map((lane) => {
    const db = createDatabase(newPool(config.connectionsPerLane, lane));
    const batchSize = lane === 'realtime' ? config.realtimeBatchSize : config.batchBatchSize;
    return {
      lane,
      runBatch: async (shard, shardCount) => {
        const result = await runBatch(db, sink, shard, shardCount, lane, {
          lanePredicate: config.lanePredicate,
          batchSize,
          retry,
          sendTimeoutMs: config.sendTimeoutMs,
        });
        if (result.claimed > 0) options.hooks?.onBatch?.(shard, lane, result);
        if (result.dead > 0) logger.warn({ shard, lane, dead: result.dead }, 'rows moved to dead letters');
        return { full: result.claimed >= batchSize };
      },
    };
  });

  const checkDrained = async () => {
    if (drainedWaiters.length === 0) return;
    const pending = await controlDb
      .selectFrom('shardrelay.outbox')
      .select('id')
      .where('status', '=', 'pending')
      .limit(1)
      .executeTakeFirst();
    if (pending) return;
    const waiters = drainedWaiters;
    drainedWaiters = [];
    for (const resolve of waiters) resolve();
  };

  const scheduler = new Scheduler({
    db: controlDb,
    lanes: laneRunners,
    ownership: options.ownership ?? allShards(),
    tickSeconds: config.tickSeconds,
    logger,
    afterTick: checkDrained,
  });
  const listener = new OutboxListener({
    connectionString: config.databaseUrl,
    logger,
    onRows: (shards) => scheduler.wake(shards),
    onConfigChange: () => void scheduler.tick(),
  });
  await scheduler.start();
  listener.start();
  logger.info({ replica: config.replicaId, sink: sink.name, lanes }, 'relay started');

  let stopping: Promise<{ clean: boolean }> | undefined;
  return {
    replicaId: config.replicaId,
    sink,
    scheduler,
    listener,
    whenDrained: () =>
      new Promise<void>((resolve) => {
        drainedWaiters.push(resolve);
        void checkDrained().catch(() => {});
      }),
    stop: () =>
      (stopping ??= (async () => {
        await listener.stop();
        const clean = await scheduler.stop(config.shutdownTimeoutMs);
        if (!clean) {
          logger.warn(
            { timeoutMs: config.shutdownTimeoutMs },
            'in-flight batches did not finish in time; their transactions are rolled back and the rows stay pending',
          );
        }
        await options.ownership
          ?.release()
          .catch((error: unknown) => logger.warn({ err: error }, 'releasing shards failed'));
        await sink.close().catch((error: unknown) => logger.warn({ err: error }, 'closing the sink failed'));
        await Promise.all(pools.map((p) => p.end().catch(() => {})));
        logger.info({ clean }, 'relay stopped');
        return { clean };
      })()),
  };
}
