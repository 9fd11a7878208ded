/**
 * The observer of one relay replica: it connects the relay to its Prometheus metrics, keeps the
 * samples the SQL views need, and runs the canaries. Folding and pruning those samples is
 * housekeeping (maintenance/housekeeping.ts), not the observer's.
 *
 * - Batches: `recordBatch` counts every committed batch (wiring/relay.ts calls it from its batch hook).
 *   In flight: `trackInflight` wraps the sink and counts messages between hand-over and outcome.
 * - Every `intervalMs` (default 5 s), or less often while that read is costly (observePacing.ts),
 *   one observe cycle: a single statement reads `shardrelay.health` (which includes the lag),
 *   records the lag of the shards this replica owns into `lag_minute` (the history behind WARN
 *   and the status trend) and samples max(id) into `produced_minute`; a second reads
 *   `shardrelay.canaries`. From their answers it sets the lag, status, ownership,
 *   canary and outbox-id gauges, so the metrics show what the views show, at most one cycle late.
 *   Why 5 s and not every tick: the lag counts pending rows, which costs in proportion to the
 *   backlog (see sql/lag.sql); Prometheus scrapes every 15 s or so, and the views answer live anyway.
 * - With `config.metricsPort` set: the HTTP server (/metrics, /healthz, /readyz).
 *
 * Each replica exports the gauges of the shards it owns, plus STOP for shards nobody owns (so the
 * "unowned" alert fires whichever replica is left), and drops the gauges of shards it gave up.
 */
import { sql, type Kysely } from 'kysely';
import type { RelayConfig } from '../config.js';
import type { Database, Lane } from '../db/schema.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { RelaySink } from '../sinks/sink.js';
import { startCanaries, type Canaries } from './canary.js';
import { startObservabilityServer, type ObservabilityServer } from './httpServer.js';
import { syncLaneFunction } from './lanes.js';
import { createMetrics, type RelayMetrics } from './metrics.js';
import { observePeriodMs } from './observePacing.js';
import { toHealthRow, type HealthRow, type RawHealth } from './views.js';

export interface ObserverOptions {
  /** The relay's control connections (not a lane's). */
  readonly db: Kysely<Database>;
  readonly config: RelayConfig;
  readonly sinkName: string;
  /** The lanes this relay runs (canaries are injected for these). */
  readonly lanes: readonly Lane[];
  readonly logger: Logger;
  /**
   * Run the observe cycle. Default true. A relay that runs beside another one in the same replica
   * (the real-time lane's worker thread) sets false: the main relay observes for both.
   */
  readonly observe?: boolean;
  /** Period of the observe cycle; default 5000 ms. */
  readonly intervalMs?: number;
}

/**
 * What the observer reads of a batch's outcome. The relay's `BatchResult` (relay/deliverBatch.ts) is
 * one; it is declared here, by what is read, so that observability does not import the relay it
 * observes (layers point one way: the relay's wiring hands results down to the observer).
 */
export interface ObservedBatch {
  readonly claimed: number;
  readonly deferred: number;
  readonly sent: number;
  readonly dead: number;
  readonly failures: { readonly retryable: number; readonly permanent: number; readonly unknown: number };
  readonly batchMs: number;
  readonly sendMs: number;
  readonly latenciesMs: readonly number[];
}

/** What the observer reads of the relay's scheduler (relay/scheduler.ts's `Scheduler` is one). */
export interface ObservedShards {
  /** Undefined until the shard config has been read once. */
  readonly config: { readonly shardCount: number; readonly generation: string } | undefined;
  /** The shards this replica owns now. */
  readonly ownedShards: readonly number[];
  /** Epoch ms at which the last tick ended, successfully or not (0 before the first): liveness. */
  readonly lastTickEndedAt: number;
}

export interface Observer {
  /** Undefined when `metricsPort` is not set. */
  readonly metrics: RelayMetrics | undefined;
  /** Set once started, when `metricsPort` is set. */
  readonly server: ObservabilityServer | undefined;
  readonly canaries: Canaries | undefined;
  /** The sink, counting messages in flight for the inflight gauge. */
  trackInflight(sink: RelaySink): RelaySink;
  recordBatch(shard: number, lane: Lane, result: ObservedBatch): void;
  start(scheduler: ObservedShards): Promise<void>;
  /** Runs one observe cycle now (tests, and the first one at start). */
  observe(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * One round trip: reads shardrelay.health, records the owned shards' lag into lag_minute (lowest,
 * highest and last count of the minute) and samples max(id) into produced_minute.
 */
async function observeHealth(
  db: Kysely<Database>,
  owned: readonly number[],
): Promise<{ health: HealthRow[]; maxId: string | null }> {
  const { rows } = await sql<RawHealth & { max_id: string | null }>`
    WITH h AS MATERIALIZED (
      SELECT * FROM shardrelay.health
    ), lag_sample AS (
      INSERT INTO shardrelay.lag_minute AS m
        (minute, shard, lane, pending_min, pending_max, pending_last, sampled_at)
      SELECT date_trunc('minute', shardrelay.now()), shard, lane, pending_rows, pending_rows, pending_rows,
             shardrelay.now()
        FROM h WHERE shard = ANY(${[...owned]}::integer[])
      ON CONFLICT (minute, shard, lane) DO UPDATE SET
        pending_min  = LEAST(m.pending_min, EXCLUDED.pending_min),
        pending_max  = GREATEST(m.pending_max, EXCLUDED.pending_max),
        pending_last = EXCLUDED.pending_last,
        sampled_at   = EXCLUDED.sampled_at
    ), produced_sample AS (
      INSERT INTO shardrelay.produced_minute AS p (minute, max_id, sampled_at)
      -- The identity sequence, not max(id): sent rows leave the outbox at completion, so max(id)
      -- falls back once the newest rows are sent. An id drawn by a rolled-back insert counts as
      -- produced here (as it did below max(id) before). USAGE on the sequence is enough.
      SELECT date_trunc('minute', shardrelay.now()),
             coalesce(pg_sequence_last_value(pg_get_serial_sequence('shardrelay.outbox', 'id')::regclass), 0),
             shardrelay.now()
      ON CONFLICT (minute) DO UPDATE SET max_id = GREATEST(p.max_id, EXCLUDED.max_id), sampled_at = EXCLUDED.sampled_at
      RETURNING max_id
    )
    SELECT h.*, (SELECT max_id FROM produced_sample)::text AS max_id FROM h`.execute(db);
  return { health: rows.map(toHealthRow), maxId: rows[0]?.max_id ?? null };
}

interface CanaryRow {
  shard: number;
  lane: Lane;
  last_sent_at: Date | null;
  last_latency_seconds: number | null;
  oldest_outstanding_seconds: number | null;
  /** Canaries given up (dead) that housekeeping has not deleted yet; bigint, as text. */
  dead: string;
  last_error: string | null;
}

/** Canaries are overdue after this many intervals without coming back. */
const CANARY_OVERDUE_INTERVALS = 3;

export function createObserver(options: ObserverOptions): Observer {
  const { db, config, logger } = options;
  const intervalMs = options.intervalMs ?? 5_000;
  const metrics =
    config.metricsPort === undefined
      ? undefined
      : createMetrics({ replica: config.replicaId, sink: options.sinkName });
  let scheduler: ObservedShards | undefined;
  let server: ObservabilityServer | undefined;
  let canaries: Canaries | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let cycle: Promise<void> | undefined;
  let inflight = 0;
  /** Shards whose gauges this replica exports, to drop those it no longer should. */
  let exported = new Set<number>();
  const lastCanary = new Map<string, number>();
  const overdue = new Set<string>();
  /** Dead canaries per shard and lane at the last observation: a rise is a canary given up. */
  const deadCanaries = new Map<string, number>();

  async function observeOnce(): Promise<void> {
    if (!scheduler?.config) return;
    const owned = scheduler.ownedShards;
    const { health, maxId } = await observeHealth(db, owned);
    const canaryRows =
      config.canaryIntervalSeconds > 0
        ? (
            await sql<CanaryRow>`
              SELECT shard, lane, last_sent_at, last_latency_seconds, oldest_outstanding_seconds, dead, last_error
                FROM shardrelay.canaries WHERE shard = ANY(${[...owned]}::integer[])`.execute(db)
          ).rows
        : [];
    watchCanaries(canaryRows);
    if (!metrics) return;

    const ownedSet = new Set(owned);
    const unowned = new Set(health.filter((h) => h.status === 'STOP').map((h) => h.shard));
    metrics.setShardsOwned(owned.length);
    metrics.setUnownedShards(unowned.size);
    const now = new Set<number>();
    for (const h of health) {
      if (ownedSet.has(h.shard)) {
        metrics.setLag({ shard: h.shard, lane: h.lane, events: h.dueRows, seconds: h.lagSeconds });
        metrics.setShardStatus(h.shard, h.lane, h.status);
        now.add(h.shard);
      } else if (h.status === 'STOP') {
        metrics.setShardStatus(h.shard, h.lane, 'STOP');
        now.add(h.shard);
      }
    }
    for (const shard of exported) if (!now.has(shard)) metrics.dropShard(shard);
    exported = now;
    if (maxId !== null) metrics.setOutboxMaxId(maxId);
  }

  function watchCanaries(rows: readonly CanaryRow[]): void {
    const limit = CANARY_OVERDUE_INTERVALS * config.canaryIntervalSeconds;
    for (const row of rows) {
      const key = `${row.shard}/${row.lane}`;
      const sentAt = row.last_sent_at?.getTime();
      if (sentAt !== undefined && row.last_latency_seconds !== null && lastCanary.get(key) !== sentAt) {
        lastCanary.set(key, sentAt);
        metrics?.observeCanary(row.shard, row.lane, Math.max(0, row.last_latency_seconds));
      }
      // A canary can die before it is overdue (a permanent refusal, or max_attempts spent by quick
      // retries): not delivered either. Counted from the first observation on; housekeeping's
      // deletions lower the count and are not reported.
      const dead = Number(row.dead);
      const deadBefore = deadCanaries.get(key);
      deadCanaries.set(key, dead);
      if (deadBefore !== undefined && dead > deadBefore) {
        logger.warn(
          { shard: row.shard, lane: row.lane, given: dead - deadBefore, lastError: row.last_error },
          'canary event given up (dead) without being delivered: delivery on this shard and lane is broken; lastError says why',
        );
      }
      const age = row.oldest_outstanding_seconds ?? 0;
      if (age > limit) {
        if (!overdue.has(key)) {
          overdue.add(key);
          logger.warn(
            { shard: row.shard, lane: row.lane, outstandingSeconds: Math.round(age), limitSeconds: limit },
            'canary event not delivered within 3 canary intervals: delivery on this shard and lane is broken or very slow',
          );
        }
        // Its latency is at least its age: the gauge rises while it is missing, so the slow-canary
        // alert fires, and the last-success timestamp stays where it was.
        metrics?.handles.canaryLatency.set(
          { replica: config.replicaId, shard: String(row.shard), lane: row.lane },
          age,
        );
      } else if (overdue.delete(key)) {
        logger.info({ shard: row.shard, lane: row.lane }, 'canary events are coming back again');
      }
    }
  }

  /** The last cycle's duration, which paces the next (observePacing.ts). */
  let lastCycleMs = 0;
  let lastCycleFailed = false;
  let stretched = false;
  const observe = (): Promise<void> => {
    const started = performance.now();
    return (cycle ??= observeOnce()
      .then(
        () => {
          lastCycleFailed = false;
        },
        (error: unknown) => {
          lastCycleFailed = true;
          logger.warn(
            { err: toError(error).message },
            'observing the views failed; metrics keep their last values',
          );
        },
      )
      .finally(() => {
        cycle = undefined;
        lastCycleMs = performance.now() - started;
      }));
  };

  /** Runs a cycle, then schedules the next at the paced period; stops with `stop`. */
  const observeAndSchedule = async (): Promise<void> => {
    await observe();
    if (stopped) return;
    const periodMs = observePeriodMs(intervalMs, lastCycleMs, lastCycleFailed);
    // Said when the period doubles and when it is back, not at every cycle near the threshold.
    if (stretched ? periodMs <= intervalMs : periodMs >= 2 * intervalMs) {
      stretched = !stretched;
      const figures = { cycleMs: Math.round(lastCycleMs), periodMs: Math.round(periodMs), intervalMs };
      if (stretched)
        logger.info(
          figures,
          'observing less often: reading shardrelay.health (it counts every pending row) took cycleMs; metrics now refresh every periodMs',
        );
      else logger.info(figures, 'observing at the configured interval again');
    }
    timer = setTimeout(() => void observeAndSchedule(), Math.max(0, periodMs - lastCycleMs));
    timer.unref();
  };

  return {
    metrics,
    get server() {
      return server;
    },
    get canaries() {
      return canaries;
    },

    trackInflight(sink) {
      if (!metrics) return sink;
      const counted = async <T>(count: number, send: () => Promise<T>): Promise<T> => {
        inflight += count;
        metrics.setInflight(inflight);
        try {
          return await send();
        } finally {
          inflight -= count;
          metrics.setInflight(inflight);
        }
      };
      const lifecycle = { name: sink.name, start: () => sink.start(), close: () => sink.close() };
      // Of the same kind as the sink, so that the relay still hands the transaction to it alone.
      return sink.kind === 'in-database'
        ? {
            ...lifecycle,
            kind: 'in-database',
            sendBatch: (messages, context, transaction) =>
              counted(messages.length, () => sink.sendBatch(messages, context, transaction)),
          }
        : {
            ...lifecycle,
            sendBatch: (messages, context) =>
              counted(messages.length, () => sink.sendBatch(messages, context)),
          };
    },

    recordBatch(shard, lane, result) {
      if (!metrics || result.claimed === 0) return;
      metrics.recordBatch({
        shard,
        lane,
        sent: result.sent,
        failedRetryable: result.failures.retryable,
        failedPermanent: result.failures.permanent,
        unknown: result.failures.unknown,
        dead: result.dead,
        deferred: result.deferred,
        batchSeconds: result.batchMs / 1000,
        confirmSeconds: result.sendMs / 1000,
        latenciesSeconds: result.latenciesMs.map((ms) => ms / 1000),
      });
    },

    async start(started) {
      scheduler = started;
      if (options.observe ?? true) await syncLaneFunction(db, config.lanePredicate, logger);
      canaries = startCanaries({
        db,
        replicaId: config.replicaId,
        intervalSeconds: config.canaryIntervalSeconds,
        lanes: options.lanes,
        lanePredicate: config.lanePredicate,
        owned: () =>
          started.config ? { shardCount: started.config.shardCount, shards: started.ownedShards } : undefined,
        logger,
      });
      if (metrics && config.metricsPort !== undefined) {
        const aliveWithinMs = Math.max(3 * config.tickSeconds * 1000, 15_000);
        server = await startObservabilityServer({
          host: config.metricsHost,
          port: config.metricsPort,
          registry: metrics.registry,
          // Alive while ticks keep ending, successfully or not: a tick that fails because PostgreSQL
          // is down still ends (a restart would not bring the database back); a wedged tick does not.
          isAlive: () => Date.now() - started.lastTickEndedAt < aliveWithinMs,
          isReady: async () => {
            try {
              await sql`SELECT 1`.execute(db);
            } catch (error) {
              return { ready: false, reason: `database unreachable: ${toError(error).message}` };
            }
            // Holding shards or standing by (more replicas than shards) are both ready; not having
            // read the shard configuration yet is not.
            return started.config
              ? { ready: true }
              : { ready: false, reason: 'starting: shard configuration not read yet' };
          },
          onError: (error) => logger.warn({ err: toError(error).message }, 'observability endpoint error'),
        });
        logger.info({ url: server.url }, 'serving /metrics, /healthz and /readyz');
      }
      if (options.observe ?? true) await observeAndSchedule();
      if (config.canaryIntervalSeconds > 0) {
        void canaries
          .inject()
          .catch((error: unknown) =>
            logger.warn({ err: toError(error).message }, 'injecting canary events failed'),
          );
      }
    },

    observe,

    async stop() {
      stopped = true;
      clearTimeout(timer);
      await canaries?.stop();
      await cycle;
      await server?.close();
    },
  };
}
