import type { Kysely } from 'kysely';
import type pg from 'pg';
import type { RelayConfig } from '../config.js';
import { CONNECTION_TIMEOUT_MS, assertReachable, createDatabase, createPool } from '../db/connection.js';
import { assertRelayPrivileges } from '../db/privileges.js';
import { outboxVacuumProblem } from '../db/vacuumCheck.js';
import type { Database, Lane } from '../db/schema.js';
import { ShardRelayError, toError } from '../errors.js';
import { assertLanePredicateFitsColumns } from '../lanes/lanePredicateTypes.js';
import { silentLogger, type Logger } from '../logger.js';
import { createObserver, type Observer } from '../observability/observer.js';
import { isRoutingSink, type RoutePartReport } from '../routing/routingSink.js';
import { createSink } from '../sinks/createSink.js';
import type { Sink } from '../sinks/sink.js';
import { runBatch, type BatchResult } from './batchRunner.js';
import { CLAIM_SESSION_SETTINGS } from './claims.js';
import { OutboxListener } from './outboxListener.js';
import { isPoolCheckoutTimeout, poolWaitReporter } from './poolWait.js';
import { logBatchProblems } from './problemLog.js';
import { Scheduler, type LaneRunner } from './scheduler.js';
import { SentPruner } from './sentPruner.js';
import { ShardLeases } from './shardLeases.js';
import type { ShardOwnership } from './shardOwnership.js';

export interface RelayHooks {
  /** After every committed batch that claimed rows. */
  readonly onBatch?: (shard: number, lane: Lane, result: BatchResult) => void;
  /** Shard ownership may have changed: after every tick, and between ticks (a lost liveness lock). */
  readonly onOwnershipChange?: () => void;
  /**
   * Routing only: each route's part of a batch, for a relay that exports no metrics itself (the
   * real-time worker thread forwards them to the main thread's per-route metrics).
   */
  readonly onRoutePart?: (report: RoutePartReport) => void;
}

export interface StartRelayOptions {
  readonly config: RelayConfig;
  /** Defaults to the sink named by `config.sink`. */
  readonly sink?: Sink;
  readonly logger?: Logger;
  /** Defaults to shard leases in PostgreSQL (relay/shardLeases.ts); a lone replica holds every shard. */
  readonly ownership?: ShardOwnership;
  readonly hooks?: RelayHooks;
  /** Which lanes to run; default both. */
  readonly lanes?: readonly Lane[];
  /**
   * Run the observe cycle (views to metrics, lag and produced samples, housekeeping); default true.
   * A second relay of the same replica (the real-time worker thread) sets false.
   */
  readonly observe?: boolean;
  /** Period of the observe cycle; default 5000 ms (observability/observer.ts). */
  readonly observeIntervalMs?: number;
}

export interface Relay {
  readonly replicaId: string;
  readonly sink: Sink;
  readonly scheduler: Scheduler;
  readonly listener: OutboxListener;
  /** Metrics, the /metrics /healthz /readyz server and the canaries of this relay. */
  readonly observer: Observer;
  /** Resolves once no row is pending (sent or dead only); checked every tick and after batches. */
  whenDrained(): Promise<void>;
  /** Finishes in-flight batches (bounded by `shutdownTimeoutMs`), releases shards, closes everything. */
  stop(): Promise<{ readonly clean: boolean }>;
}

async function checkDatabase(db: Kysely<Database>, url: string): Promise<void> {
  await assertReachable(db, url);
  await assertRelayPrivileges(db);
  try {
    await db.selectFrom('shardrelay.shard_config').select('shard_count').executeTakeFirstOrThrow();
  } catch (error) {
    throw new ShardRelayError('SCHEMA_MISSING', 'the shardrelay schema is missing or incomplete', {
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
  const newPool = (max: number, name: string, settings: Record<string, string | number> = {}) => {
    const pool = createPool({
      connectionString: config.databaseUrl,
      max,
      applicationName: `shardrelay-${name}`,
      onError: onPoolError,
      // A transaction left idle (a hung sink) is ended by PostgreSQL soon after the send deadline,
      // which releases its row locks; the sink's deadline normally ends the wait first.
      // shardrelay.pid tells a database-side audit which relay process made a change (hostname
      // and pid of each process are in shardrelay.replicas).
      settings: {
        idle_in_transaction_session_timeout: config.sendTimeoutMs + 5_000,
        'shardrelay.pid': process.pid,
        ...settings,
      },
    });
    pools.push(pool);
    return pool;
  };
  const controlDb = createDatabase(newPool(2, 'control'));
  try {
    await checkDatabase(controlDb, config.databaseUrl);
    await assertLanePredicateFitsColumns(controlDb, config.lanePredicate);
  } catch (error) {
    await Promise.all(pools.map((p) => p.end()));
    throw error;
  }
  // Said once per process: the real-time worker thread's relay (observe: false) stays quiet.
  const vacuumProblem =
    options.observe === false ? undefined : await outboxVacuumProblem(controlDb).catch(() => undefined);
  if (vacuumProblem)
    logger.warn(
      {
        fix: 'turn autovacuum on; meanwhile the relay vacuums shardrelay.outbox and shardrelay.sent_event itself every 10 s',
      },
      vacuumProblem,
    );

  const sink = options.sink ?? (await createSink(config, logger));
  try {
    await sink.start();
  } catch (error) {
    await Promise.all(pools.map((p) => p.end()));
    // A sink that knows what went wrong (refused login, missing exchange) says so with its own fix;
    // only an error without one gets the generic advice.
    if (error instanceof ShardRelayError) throw error;
    throw new ShardRelayError(
      'SINK_UNAVAILABLE',
      `sink ${sink.name} could not start: ${toError(error).message}`,
      {
        cause: error,
        fix: 'check the sink connection settings and that the broker is running',
      },
    );
  }

  // Its own connection, so a slow view query never delays a tick or a lease renewal.
  const observer = createObserver({
    db: createDatabase(newPool(1, 'observer')),
    config,
    sinkName: sink.name,
    lanes,
    logger,
    observe: options.observe,
    intervalMs: options.observeIntervalMs,
  });
  if (observer.metrics && isRoutingSink(sink)) {
    const { observeRoutes } = await import('../routing/routeMetrics.js');
    observeRoutes(sink, observer.metrics);
  } else if (isRoutingSink(sink) && options.hooks?.onRoutePart) {
    sink.onPart = options.hooks.onRoutePart;
  }
  const deliverySink = observer.trackInflight(sink);

  const retry = { maxAttempts: config.maxAttempts, baseMs: config.retryBaseMs, capMs: config.retryCapMs };
  let drainedWaiters: (() => void)[] = [];
  const laneRunners: LaneRunner[] = lanes.map((lane) => {
    // Real-time commits do not wait for the WAL flush, which under a batch backlog carries the
    // batch lane's large updates (measured: see replica.ts). Safe: if PostgreSQL crashes, the
    // last commits are lost, their rows are pending again and are re-sent with the same event
    // id, the failure mode every crash already has. The application's own commits are untouched.
    const db = createDatabase(
      newPool(config.connectionsPerLane, lane, {
        ...CLAIM_SESSION_SETTINGS,
        ...(lane === 'realtime' ? { synchronous_commit: 'off' } : {}),
        // Read by shardrelay.complete_batch (migrations/0007_sent_record.ts): whether to keep a
        // record of each sent event, and who sent it.
        'shardrelay.sent_record': config.sentRetentionSeconds > 0 ? 'on' : 'off',
        'shardrelay.replica': config.replicaId,
        'shardrelay.sink': sink.name,
      }),
    );
    const batchSize = lane === 'realtime' ? config.realtimeBatchSize : config.batchBatchSize;
    const reportPoolWait = poolWaitReporter(logger, lane, config.connectionsPerLane, CONNECTION_TIMEOUT_MS);
    return {
      lane,
      runBatch: async (shard, shardCount, mayClaim) => {
        let result: BatchResult;
        try {
          result = await runBatch(db, deliverySink, shard, shardCount, lane, {
            lanePredicate: config.lanePredicate,
            batchSize,
            retry,
            sendTimeoutMs: config.sendTimeoutMs,
            logger,
            ...(mayClaim ? { mayClaim } : {}),
          });
        } catch (error) {
          // No free connection: nothing was claimed, so this is a wait, not a failed batch.
          if (!isPoolCheckoutTimeout(error)) throw error;
          reportPoolWait(shard);
          return { full: false };
        }
        if (result.claimed > 0) options.hooks?.onBatch?.(shard, lane, result);
        observer.recordBatch(shard, lane, result);
        logBatchProblems(logger, shard, lane, result);
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

  const ownership =
    options.ownership ??
    new ShardLeases({
      db: controlDb,
      replicaId: config.replicaId,
      leaseTimeoutSeconds: config.leaseTimeoutSeconds,
      tickSeconds: config.tickSeconds,
      logger,
      requestRefresh: () => void scheduler.tick(),
      connectionString: config.databaseUrl,
      onChange: () => options.hooks?.onOwnershipChange?.(),
    });
  const scheduler = new Scheduler({
    db: controlDb,
    lanes: laneRunners,
    ownership,
    tickSeconds: config.tickSeconds,
    logger,
    afterTick: async () => {
      // The real-time worker learns of shards taken in this tick now, not at its next poll.
      options.hooks?.onOwnershipChange?.();
      await checkDrained();
    },
  });
  const listener = new OutboxListener({
    connectionString: config.databaseUrl,
    logger,
    onRows: (shards) => scheduler.wake(shards),
    onConfigChange: () => void scheduler.tick(),
  });
  // Retention of sent events: one process per replica prunes (the real-time worker thread's relay
  // does not), and one replica at a time across all of them (relay/sentPruner.ts).
  const pruner =
    options.observe === false
      ? undefined
      : new SentPruner({
          db: createDatabase(newPool(1, 'pruner')),
          retentionSeconds: config.sentRetentionSeconds,
          logger,
          // Autovacuum off: a queue table that is never vacuumed decays within minutes (measured in
          // db/vacuumCheck.ts); vacuuming it ourselves keeps it flat (bench/RESULTS.md, soak).
          ...(vacuumProblem ? { selfVacuumIntervalMs: 10_000 } : {}),
        });
  await scheduler.start();
  listener.start();
  pruner?.start();
  logger.info({ sink: sink.name, lanes }, 'relay started');

  let stopping: Promise<{ clean: boolean }> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await observer.stop();
      await pruner?.stop();
      await listener.stop();
      const clean = await scheduler.stop(config.shutdownTimeoutMs);
      if (!clean) {
        logger.warn(
          { timeoutMs: config.shutdownTimeoutMs },
          'in-flight batches did not finish in time; their transactions are rolled back and the rows stay pending',
        );
      }
      await ownership
        .release()
        .catch((error: unknown) => logger.warn({ err: error }, 'releasing shards failed'));
      await sink.close().catch((error: unknown) => logger.warn({ err: error }, 'closing the sink failed'));
      await Promise.all(pools.map((p) => p.end().catch(() => {})));
      logger.info({ clean }, 'relay stopped');
      return { clean };
    })());
  try {
    await observer.start(scheduler);
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    replicaId: config.replicaId,
    sink,
    scheduler,
    listener,
    observer,
    whenDrained: () =>
      new Promise<void>((resolve) => {
        drainedWaiters.push(resolve);
        void checkDrained().catch(() => {});
      }),
    stop,
  };
}
