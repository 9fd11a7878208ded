import type { Kysely } from 'kysely';
import type pg from 'pg';
import type { RelayConfig } from '../config.js';
import { CONNECTION_TIMEOUT_MS, assertReachable, createDatabase, createPool } from '../db/connection.js';
import { assertRelayPrivileges } from '../db/privileges.js';
import { outboxVacuumProblem } from '../db/vacuumCheck.js';
import type { Database, Lane } from '../db/schema.js';
import { ShardRelayError, toError } from '../errors.js';
import { isLaneColumnPredicate } from '../lanes/lanePredicate.js';
import { assertLanePredicateFitsColumns } from '../lanes/lanePredicateTypes.js';
import { silentLogger, type Logger } from '../logger.js';
import { startHousekeeping } from '../maintenance/housekeeping.js';
import { RelayVacuum, vacuumPlan } from '../maintenance/vacuum.js';
import { SentPruner } from '../maintenance/sentPruner.js';
import { createObserver, type Observer } from '../observability/observer.js';
import { createConfiguredSink } from '../routing/buildRoutingSink.js';
import { routeTableOf, type RouteTable } from '../routing/loadRoutes.js';
import { isRoutingSink, type RoutePartReport } from '../routing/routingSink.js';
import type { RelaySink } from '../sinks/sink.js';
import { ClaimCursors } from '../relay/claimCursor.js';
import { ClaimSize, logClaimSizeChange } from '../relay/claimSize.js';
import { claimsAgainAtOnce, deliverBatch, type BatchResult } from '../relay/deliverBatch.js';
import { DeferralDelay } from '../relay/deferralDelay.js';
import { CLAIM_SESSION_SETTINGS, shardsWithDueRows } from '../relay/claims.js';
import { holdOrderingMode, type OrderingModeHold } from '../relay/orderingMode.js';
import { OutboxListener } from '../relay/outboxListener.js';
import { isPoolCheckoutTimeout, poolWaitReporter } from '../relay/poolWait.js';
import { DeferralLog, logBatchProblems } from '../relay/problemLog.js';
import { retryWakeDelays } from '../relay/retryWakes.js';
import { Scheduler, type LaneRunner } from '../relay/scheduler.js';
import { ShardLeases } from '../relay/shardLeases.js';
import type { ShardOwnership } from '../relay/shardOwnership.js';

/**
 * A retried row is claimed at most this long after its retry is due (relay/retryWakes.ts), with at
 * most RETRY_WAKES_PER_BATCH timers per batch: a batch's retries share one attempt count and spread
 * over [delay/2, delay] by the jitter, 10 wakes for the default first retry of 1 s.
 */
const RETRY_WAKE_SPACING_MS = 50;
const RETRY_WAKES_PER_BATCH = 20;

/**
 * How long a statement of the control pool (lease writes, the due-rows probe, the shard count) or
 * of the observer may wait for a lock. Theirs take milliseconds; a longer wait is someone else's
 * transaction holding a relay table (an operator's `LOCK TABLE`, a migration, a stuck session).
 * Without it, measured: an open transaction holding `LOCK TABLE shardrelay.shard_lease` for 30 s
 * left the relay silent for those 30 s (the lease renewal waited; batches stopped when the leases'
 * trust ran out, and nothing said why), and the observer's read, which waited too, counted as a
 * 29 s read and paced the next metrics refresh ten minutes out. With it, the statement fails
 * within 2 s with PostgreSQL's "canceling statement due to lock timeout", the tick or the
 * observation logs it, and the next one tries again.
 */
const LOCK_WAIT_LIMIT_MS = 2_000;

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
  readonly sink?: RelaySink;
  readonly logger?: Logger;
  /** Defaults to shard leases in PostgreSQL (relay/shardLeases.ts); a lone replica holds every shard. */
  readonly ownership?: ShardOwnership;
  readonly hooks?: RelayHooks;
  /** Which lanes to run; default both. */
  readonly lanes?: readonly Lane[];
  /**
   * Run the observe cycle (views to metrics, lag and produced samples) and housekeeping; default true.
   * A second relay of the same replica (the real-time worker thread) sets false.
   */
  readonly observe?: boolean;
  /** Period of the observe cycle; default 5000 ms (observability/observer.ts). */
  readonly observeIntervalMs?: number;
  /**
   * The routes of `config`, already parsed (routing/loadRoutes.ts `routeTableOf`): a start parses
   * them once and hands the table on. Parsed here when absent and `config` has routes.
   */
  readonly routeTable?: RouteTable;
}

export interface Relay {
  readonly replicaId: string;
  readonly sink: RelaySink;
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
 * Starts the relay's lanes in this thread: one connection pool per lane (so batch work can never
 * take the connections real-time needs), the LISTEN wake-up connection, the scheduler and the
 * sink. A whole replica, as `shardrelay run` starts it, is `startReplica` (wiring/replica.ts),
 * which runs the real-time lane through this on a worker thread of its own.
 */
export async function startRelay(options: StartRelayOptions): Promise<Relay> {
  const { config } = options;
  const logger = options.logger ?? silentLogger;
  const lanes = options.lanes ?? (['realtime', 'batch'] as const);
  // Parsed before anything is opened, so bad routes leave nothing to close.
  const routeTable = options.sink ? undefined : (options.routeTable ?? routeTableOf(config));
  const pools: pg.Pool[] = [];
  const onPoolError = (error: Error) =>
    logger.warn({ err: error.message }, 'idle PostgreSQL connection lost');
  const newPool = (
    max: number,
    name: string,
    settings: Record<string, string | number> = {},
    deferTransactionControl = false,
  ) => {
    const pool = createPool({
      deferTransactionControl,
      connectionString: config.databaseUrl,
      max,
      applicationName: `shardrelay-${name}`,
      onError: onPoolError,
      // A transaction left idle (a hung sink) is ended by PostgreSQL soon after the send deadline,
      // which releases its row locks; the sink's deadline normally ends the wait first.
      // shardrelay.pid tells a database-side audit which relay process made a change (hostname
      // and pid of each process are in shardrelay.replicas).
      settings: {
        // The driver decodes every text as UTF-8; a role or database default of another client
        // encoding would garble every non-ASCII character. With UTF-8, a row holding a character
        // that has none makes its claim fail instead, which the relay isolates (deliverBatch.ts).
        client_encoding: 'UTF8',
        idle_in_transaction_session_timeout: config.sendTimeoutMs + 5_000,
        'shardrelay.pid': process.pid,
        ...settings,
      },
    });
    pools.push(pool);
    return pool;
  };
  const controlDb = createDatabase(
    newPool(2, 'control', {
      lock_timeout: LOCK_WAIT_LIMIT_MS,
      // A control statement that outlasts a lease is of no use to the lease it was for.
      statement_timeout: config.leaseTimeoutSeconds * 1000,
    }),
  );
  let orderingHold: OrderingModeHold | undefined;
  try {
    await checkDatabase(controlDb, config.databaseUrl);
    await assertLanePredicateFitsColumns(controlDb, config.lanePredicate);
    // One per process: the real-time worker thread's relay (observe: false) claims only shards the
    // main thread's leases hold, so the main thread's check covers it (relay/orderingMode.ts).
    if (options.observe !== false)
      orderingHold = await holdOrderingMode({
        connectionString: config.databaseUrl,
        mode: config.ordering,
        replicaId: config.replicaId,
        logger,
      });
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

  const sink =
    options.sink ??
    (await createConfiguredSink(config, routeTable, logger).catch(async (error: unknown) => {
      await Promise.all(pools.map((p) => p.end()));
      await orderingHold?.close();
      throw error;
    }));
  try {
    await sink.start();
  } catch (error) {
    await Promise.all(pools.map((p) => p.end()));
    await orderingHold?.close();
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
    // No statement timeout: its read of shardrelay.health grows with the backlog (observePacing.ts).
    db: createDatabase(newPool(1, 'observer', { lock_timeout: LOCK_WAIT_LIMIT_MS })),
    config,
    sinkName: sink.name,
    lanes,
    logger,
    observe: options.observe,
    intervalMs: options.observeIntervalMs,
  });
  if (observer.metrics && isRoutingSink(sink)) {
    const { observeRoutes } = await import('../observability/routeMetrics.js');
    observeRoutes(sink, observer.metrics);
  } else if (isRoutingSink(sink) && options.hooks?.onRoutePart) {
    sink.onPart = options.hooks.onRoutePart;
  }
  const deliverySink = observer.trackInflight(sink);

  const retry = { maxAttempts: config.maxAttempts, baseMs: config.retryBaseMs, capMs: config.retryCapMs };
  const ordering = config.ordering === 'key' ? { holdDead: config.orderingDead === 'hold' } : undefined;
  let drainedWaiters: (() => void)[] = [];
  const batchCursors = new ClaimCursors();
  const laneRunners: LaneRunner[] = lanes.map((lane) => {
    // Real-time commits do not wait for the WAL flush, which under a batch backlog carries the
    // batch lane's large updates (measured: see replica.ts). Safe: if PostgreSQL crashes, the
    // last commits are lost, their rows are pending again and are re-sent with the same event
    // id, the failure mode every crash already has. The application's own commits are untouched.
    const db = createDatabase(
      newPool(
        config.connectionsPerLane,
        lane,
        {
          ...CLAIM_SESSION_SETTINGS,
          ...(lane === 'realtime' ? { synchronous_commit: 'off' } : {}),
          // Read by shardrelay.complete_batch (migrations/0007_sent_record.ts): whether to keep a
          // record of each sent event, and who sent it.
          'shardrelay.sent_record': config.sentRetentionSeconds > 0 ? 'on' : 'off',
          'shardrelay.replica': config.replicaId,
          'shardrelay.sink': sink.name,
        },
        // Real-time: BEGIN, SAVEPOINT and RELEASE go pipelined with the statement after them,
        // three round trips per batch instead of six (db/deferringClient.ts; bench/RESULTS.md).
        lane === 'realtime',
      ),
    );
    const claimSize = new ClaimSize(lane === 'realtime' ? config.realtimeBatchSize : config.batchBatchSize);
    const reportPoolWait = poolWaitReporter(logger, lane, config.connectionsPerLane, CONNECTION_TIMEOUT_MS);
    // One per lane: the lane's batches share the sink, whose outage they see together.
    const deferralDelay = new DeferralDelay(retry);
    const deferralLog = new DeferralLog();
    return {
      lane,
      // Real-time rows go at once; batch-lane wake-ups gather rows so that batches stay full.
      ...(lane === 'batch' ? { gatherMs: config.batchGatherMs } : {}),
      // On the control pool, with the tick: it takes no lock and must not wait behind the lane's batches.
      dueShards: (shards, shardCount) =>
        shardsWithDueRows(controlDb, {
          shards,
          shardCount,
          lane,
          lanePredicate: config.lanePredicate,
          ordering: ordering !== undefined,
        }),
      runShardBatch: async (shard, shardCount, guards) => {
        let result: BatchResult;
        try {
          result = await deliverBatch(db, deliverySink, shard, shardCount, lane, {
            lanePredicate: config.lanePredicate,
            // Read when the batch has its connection (the lane's 8 shards share its few).
            batchSize: () => claimSize.current,
            retry,
            sendTimeoutMs: config.sendTimeoutMs,
            logger,
            deferralDelay,
            ...(ordering ? { ordering } : {}),
            // The batch lane, ordering off: claims start past the rows a drain already sent.
            ...(lane === 'batch' && !ordering ? { cursor: batchCursors.of(shard, shardCount) } : {}),
            ...(guards ?? {}),
          });
        } catch (error) {
          // No free connection: nothing was claimed, so this is a wait, not a failed batch.
          if (!isPoolCheckoutTimeout(error)) throw error;
          reportPoolWait(shard);
          return { full: false };
        }
        if (result.claimed > 0) {
          deferralDelay.record(result);
          logClaimSizeChange(logger, lane, claimSize, claimSize.record(result), result.deferredReason);
          options.hooks?.onBatch?.(shard, lane, result);
        }
        wakeAtRetries(shard, lane, result);
        observer.recordBatch(shard, lane, result);
        logBatchProblems(logger, shard, lane, result, deferralLog);
        return { full: claimsAgainAtOnce(result) };
      },
    };
  });

  /**
   * A failed row is claimed again when its retry is due, not at the next tick's poll (up to
   * `tickSeconds` later). With ordering on it matters more: the row holds its key's later rows
   * until then. A loop already running folds a wake in. Timers: relay/retryWakes.ts.
   */
  const wakeAtRetries = (shard: number, lane: Lane, result: BatchResult) => {
    const delays = result.problems.flatMap((p) => (p.retryInMs === undefined ? [] : [p.retryInMs]));
    if (result.deferredDueInMs !== undefined) delays.push(result.deferredDueInMs);
    if (delays.length === 0) return;
    // A few ms late: available_at is stamped at the completion, after this batch's send. The
    // retried rows lie below the shard's claim cursor: its next claim reads from the first entry.
    for (const ms of retryWakeDelays(delays, RETRY_WAKE_SPACING_MS, RETRY_WAKES_PER_BATCH))
      setTimeout(() => {
        if (lane === 'batch') batchCursors.reset(shard);
        scheduler.wake([shard], lane);
      }, ms + 5).unref();
  };

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
    // Connects only while a build runs (a shard-count change), and closes when idle. The
    // real-time worker thread's relay (observe: false) leaves the builds to the main thread's.
    indexDb: options.observe === false ? null : createDatabase(newPool(1, 'index')),
    lanes: laneRunners,
    ownership,
    tickSeconds: config.tickSeconds,
    logger,
    ordering: ordering !== undefined,
    afterTick: async () => {
      // The real-time worker learns of shards taken in this tick now, not at its next poll.
      options.hooks?.onOwnershipChange?.();
      await checkDrained();
    },
  });
  const listener = new OutboxListener({
    connectionString: config.databaseUrl,
    logger,
    onRows: (shards, lane) => scheduler.wake(shards, lane),
    // With the default predicate a row's lane is its `lane` column, which the insert trigger reads.
    ...(isLaneColumnPredicate(config.lanePredicate) ? { laneColumnLanes: lanes } : {}),
    onConfigChange: () => void scheduler.tick(),
  });
  // Housekeeping: one process per replica does it (the real-time worker thread's relay does not).
  // Retention of sent events, one replica at a time across all of them (maintenance/sentPruner.ts);
  // folding and pruning the observability samples (maintenance/housekeeping.ts).
  const housekeepingDb = options.observe === false ? undefined : createDatabase(newPool(1, 'pruner'));
  const pruner =
    housekeepingDb === undefined
      ? undefined
      : new SentPruner({
          db: housekeepingDb,
          retentionSeconds: config.sentRetentionSeconds,
          logger,
        });
  // Autovacuum off: the outbox and the sent record vacuumed by us alone; on: the outbox between
  // its visits, once a minute at most (maintenance/vacuum.ts).
  const vacuum =
    housekeepingDb === undefined
      ? undefined
      : new RelayVacuum({ db: housekeepingDb, logger, plan: vacuumPlan(vacuumProblem === undefined) });
  await scheduler.start();
  listener.start();
  pruner?.start();
  vacuum?.start();
  const housekeeping = housekeepingDb && startHousekeeping({ db: housekeepingDb, logger });
  logger.info({ sink: sink.name, lanes }, 'relay started');

  let stopping: Promise<{ clean: boolean }> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await observer.stop();
      await pruner?.stop();
      await vacuum?.stop();
      await housekeeping?.stop();
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
      // Last: until this replica's batches are done, a replica of the other mode must not start.
      await orderingHold?.close();
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
