/**
 * Prometheus metrics of one relay instance.
 *
 * Every instance gets its own prom-client `Registry` (never the library's global one) so that tests,
 * and a process that runs the real-time lane in a worker thread, can hold several relays side by
 * side without "metric already registered" errors or mixed-up values.
 *
 * Labels are bounded on purpose: `replica` and `sink` are fixed per instance, `lane` has two values,
 * `shard` is at most the configured shard count, `kind` and `status` are closed enums. There is no
 * topic, key or event id label: those grow without bound and would take Prometheus down with them.
 * Histograms carry `lane` but not `shard`, because every label value multiplies the bucket series.
 *
 * The relay reports through the small methods at the bottom of `createMetrics`; the raw handles are
 * exposed for the rare case those do not cover.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Lane } from '../db/schema.js';

/** Health classes of a (shard, lane), as the status views and `shardrelay status` classify them. */
export type ShardStatus = 'OK' | 'WARN' | 'STALL' | 'STOP' | 'ERROR';
export const SHARD_STATUSES: readonly ShardStatus[] = ['OK', 'WARN', 'STALL', 'STOP', 'ERROR'];

/** Why a delivery attempt did not end in a confirm (see `SendOutcome` in src/sinks/sink.ts). */
export type FailureKind = 'retryable' | 'permanent' | 'unknown';
export const FAILURE_KINDS: readonly FailureKind[] = ['retryable', 'permanent', 'unknown'];

const LANE_VALUES: readonly Lane[] = ['realtime', 'batch'];

/*
 * Histogram buckets, in seconds.
 *
 * End-to-end latency (created_at → broker confirm): the real-time lane aims at tens of milliseconds
 * (a LISTEN wake-up plus one pipelined confirm), so the low end is dense from 5 ms; the batch lane
 * under a backlog waits for seconds to minutes, so the top reaches 2 minutes. Anything slower lands
 * in +Inf, and the lag gauges say how far behind a shard really is.
 */
const END_TO_END_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
/*
 * Batch duration (claim → sink confirms → commit) and confirm duration (sink.sendBatch alone): a
 * batch of up to ~1000 rows takes about one round trip to the broker plus one to PostgreSQL, from
 * 1 ms on the null sink to a few seconds against a slow webhook; the top buckets catch the sink's
 * send deadline (tens of seconds) so timeouts show up as a bucket, not only in +Inf.
 */
const BATCH_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export interface MetricsOptions {
  /** This relay's replica id (the same name it heartbeats with in shardrelay.replica). */
  readonly replica: string;
  /** The sink's name (pgboss, rabbitmq, nats, webhook, null). */
  readonly sink: string;
  /** Adds Node's process metrics (CPU, memory, event loop lag, GC). Default true. */
  readonly defaultMetrics?: boolean;
}

export interface BatchRecord {
  readonly shard: number;
  readonly lane: Lane;
  /** Rows confirmed by the sink and marked sent. */
  readonly sent: number;
  /** Delivery attempts that failed, by kind. A permanent failure usually also counts in `dead`. */
  readonly failedRetryable: number;
  readonly failedPermanent: number;
  readonly unknown: number;
  /** Rows moved to dead letters in this batch (permanent error or attempts exhausted). */
  readonly dead: number;
  /**
   * Rows claimed but not offered to the broker (outcome `deferred`: unreachable, or the batch
   * deadline came first): pending again, no attempt counted. Default 0.
   */
  readonly deferred?: number;
  /** Claim to commit, in seconds. */
  readonly batchSeconds: number;
  /** The sink's sendBatch alone, in seconds; omit for a batch that sent nothing. */
  readonly confirmSeconds?: number;
  /** created_at → confirm, one value per confirmed row. */
  readonly latenciesSeconds: readonly number[];
}

export interface LagRecord {
  readonly shard: number;
  readonly lane: Lane;
  /** Pending rows that are due (available_at <= now). */
  readonly events: number;
  /** Age of the oldest due pending row, in seconds (0 when none is due). */
  readonly seconds: number;
}

type ReplicaLabel = 'replica';
type SinkLabels = 'replica' | 'sink';
type ShardLabels = 'replica' | 'shard' | 'lane';
type SinkShardLabels = 'replica' | 'sink' | 'shard' | 'lane';
type SinkLaneLabels = 'replica' | 'sink' | 'lane';

export interface RelayMetrics {
  readonly registry: Registry;
  readonly replica: string;
  readonly sink: string;
  /** The raw prom-client handles, one per metric name. */
  readonly handles: {
    readonly eventsSent: Counter<SinkShardLabels>;
    readonly eventsFailed: Counter<SinkShardLabels | 'kind'>;
    readonly eventsDead: Counter<SinkShardLabels>;
    readonly eventsDeferred: Counter<SinkShardLabels>;
    readonly lagEvents: Gauge<ShardLabels>;
    readonly lagSeconds: Gauge<ShardLabels>;
    readonly endToEndLatency: Histogram<SinkLaneLabels>;
    readonly batchDuration: Histogram<SinkLaneLabels>;
    readonly confirmDuration: Histogram<SinkLaneLabels>;
    readonly inflightUnconfirmed: Gauge<SinkLabels>;
    readonly shardsOwned: Gauge<ReplicaLabel>;
    readonly unownedShards: Gauge<ReplicaLabel>;
    readonly canaryLatency: Gauge<ShardLabels>;
    readonly canaryLastSuccess: Gauge<ShardLabels>;
    readonly shardStatus: Gauge<ShardLabels | 'status'>;
    readonly outboxMaxId: Gauge<ReplicaLabel>;
  };
  /** Counts one completed batch of one (shard, lane). */
  recordBatch(batch: BatchRecord): void;
  setLag(lag: LagRecord): void;
  setShardsOwned(count: number): void;
  /** Shards without a live lease, as this replica sees the lease table. */
  setUnownedShards(count: number): void;
  /** Sets the series of `status` to 1 and the other four classes to 0. */
  setShardStatus(shard: number, lane: Lane, status: ShardStatus): void;
  /** Messages handed to the sink whose confirm has not come back yet. */
  setInflight(count: number): void;
  /** A canary row of this (shard, lane) was confirmed `seconds` after it was enqueued. */
  observeCanary(shard: number, lane: Lane, seconds: number): void;
  /** The highest outbox id seen: a proxy for "produced", since applications insert the rows. */
  setOutboxMaxId(id: number | bigint | string): void;
  /**
   * Creates the zero-valued series of a (shard, lane) this replica just took over. A counter series
   * that first appears with a value of 1 shows no `increase()` in Prometheus, so without this the
   * first dead letter of a fresh process would never fire the dead-letter alert.
   */
  trackShard(shard: number, lane: Lane): void;
  /**
   * Removes the gauges of a shard this replica no longer owns, so the new owner's values are the
   * only ones left and a stale lag or STALL from here cannot keep an alert firing. Counters stay:
   * they are totals of what this replica did, and `rate()` handles the series going quiet.
   */
  dropShard(shard: number): void;
}

function shardLabel(shard: number): string {
  // A bounded label needs a bounded set of values: only non-negative integers below the shard count.
  if (!Number.isSafeInteger(shard) || shard < 0)
    throw new RangeError(`shard must be a non-negative integer, got ${shard}`);
  return String(shard);
}

function checkLane(lane: Lane): Lane {
  if (!LANE_VALUES.includes(lane))
    throw new RangeError(`lane must be one of ${LANE_VALUES.join(', ')}, got ${String(lane)}`);
  return lane;
}

function count(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0)
    throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
  return value;
}

function seconds(name: string, value: number): number {
  if (!Number.isFinite(value) || value < 0)
    throw new RangeError(`${name} must be a finite number >= 0, got ${value}`);
  return value;
}

export function createMetrics(options: MetricsOptions): RelayMetrics {
  const { replica, sink } = options;
  if (!replica) throw new RangeError('metrics need a replica name');
  if (!sink) throw new RangeError('metrics need a sink name');
  const registry = new Registry();
  const registers = [registry];
  if (options.defaultMetrics ?? true) {
    // The replica label lets a dashboard put a replica's memory or event-loop lag beside its lag.
    collectDefaultMetrics({ register: registry, labels: { replica } });
  }

  const sinkShardLabels = ['replica', 'sink', 'shard', 'lane'] as const;
  const shardLabels = ['replica', 'shard', 'lane'] as const;
  const sinkLaneLabels = ['replica', 'sink', 'lane'] as const;

  const handles = {
    eventsSent: new Counter({
      name: 'shardrelay_events_sent_total',
      help: 'Outbox rows confirmed by the sink and marked sent.',
      labelNames: sinkShardLabels,
      registers,
    }),
    eventsFailed: new Counter({
      name: 'shardrelay_events_failed_total',
      help: 'Delivery attempts without a confirm, by kind: retryable (retried with backoff), permanent (dead-lettered), unknown (no confirm before the deadline; re-sent with the same event id).',
      labelNames: [...sinkShardLabels, 'kind'] as const,
      registers,
    }),
    eventsDeferred: new Counter({
      name: 'shardrelay_events_deferred_total',
      help: 'Outbox rows claimed but not offered to the broker, because it could not be reached (an outage) or the batch deadline came first (no request slot, no credit, back-pressure); pending again with no attempt counted. Growing while rows are sent: the sink cannot take what the relay claims; with nothing sent: an outage.',
      labelNames: sinkShardLabels,
      registers,
    }),
    eventsDead: new Counter({
      name: 'shardrelay_events_dead_total',
      help: 'Outbox rows moved to dead letters (permanent error or attempts exhausted).',
      labelNames: sinkShardLabels,
      registers,
    }),
    lagEvents: new Gauge({
      name: 'shardrelay_lag_events',
      help: 'Pending outbox rows that are due, per owned shard and lane.',
      labelNames: shardLabels,
      registers,
    }),
    lagSeconds: new Gauge({
      name: 'shardrelay_lag_seconds',
      help: 'Age in seconds of the oldest due pending row, per owned shard and lane (0 when none is due).',
      labelNames: shardLabels,
      registers,
    }),
    endToEndLatency: new Histogram({
      name: 'shardrelay_end_to_end_latency_seconds',
      help: 'Seconds from an outbox row being created to the sink confirming it, per lane.',
      labelNames: sinkLaneLabels,
      buckets: END_TO_END_BUCKETS,
      registers,
    }),
    batchDuration: new Histogram({
      name: 'shardrelay_batch_duration_seconds',
      help: 'Seconds one batch takes from claim to commit, per lane.',
      labelNames: sinkLaneLabels,
      buckets: BATCH_BUCKETS,
      registers,
    }),
    confirmDuration: new Histogram({
      name: 'shardrelay_confirm_duration_seconds',
      help: "Seconds the sink takes to send a batch and return every message's confirm, per lane.",
      labelNames: sinkLaneLabels,
      buckets: BATCH_BUCKETS,
      registers,
    }),
    inflightUnconfirmed: new Gauge({
      name: 'shardrelay_inflight_unconfirmed',
      help: 'Messages handed to the sink whose confirm has not come back yet.',
      labelNames: ['replica', 'sink'] as const,
      registers,
    }),
    shardsOwned: new Gauge({
      name: 'shardrelay_shards_owned',
      help: 'Shards this replica holds a live lease on (0 while standing by).',
      labelNames: ['replica'] as const,
      registers,
    }),
    unownedShards: new Gauge({
      name: 'shardrelay_unowned_shards',
      help: 'Shards without a live lease, as this replica sees the lease table.',
      labelNames: ['replica'] as const,
      registers,
    }),
    canaryLatency: new Gauge({
      name: 'shardrelay_canary_latency_seconds',
      help: 'Seconds from enqueue to confirm of the latest canary row, per shard and lane.',
      labelNames: shardLabels,
      registers,
    }),
    canaryLastSuccess: new Gauge({
      name: 'shardrelay_canary_last_success_timestamp_seconds',
      help: 'Unix time at which the latest canary row of this shard and lane was confirmed.',
      labelNames: shardLabels,
      registers,
    }),
    shardStatus: new Gauge({
      name: 'shardrelay_shard_status',
      help: 'Health class of a shard and lane: 1 on the current class (OK, WARN, STALL, STOP, ERROR), 0 on the others.',
      labelNames: [...shardLabels, 'status'] as const,
      registers,
    }),
    outboxMaxId: new Gauge({
      name: 'shardrelay_outbox_max_id',
      help: 'Highest outbox id seen; its rate of change approximates events produced per second.',
      labelNames: ['replica'] as const,
      registers,
    }),
  };

  // Known to be true from the start: a replica that has not taken any shard owns none and has
  // nothing in flight. Exporting these at once lets "no live replica" rely on shards_owned existing.
  handles.shardsOwned.set({ replica }, 0);
  handles.inflightUnconfirmed.set({ replica, sink }, 0);

  const tracked = new Set<string>();

  function trackShard(shard: number, lane: Lane): void {
    const key = `${shardLabel(shard)}/${checkLane(lane)}`;
    if (tracked.has(key)) return;
    tracked.add(key);
    const labels = { replica, sink, shard: shardLabel(shard), lane };
    handles.eventsSent.inc(labels, 0);
    handles.eventsDead.inc(labels, 0);
    handles.eventsDeferred.inc(labels, 0);
    for (const kind of FAILURE_KINDS) handles.eventsFailed.inc({ ...labels, kind }, 0);
  }

  return {
    registry,
    replica,
    sink,
    handles,
    trackShard,

    recordBatch(batch) {
      // Validate everything before touching a metric, so a bad call cannot leave half a batch counted.
      const shard = shardLabel(batch.shard);
      const lane = checkLane(batch.lane);
      const sent = count('sent', batch.sent);
      const failed: Record<FailureKind, number> = {
        retryable: count('failedRetryable', batch.failedRetryable),
        permanent: count('failedPermanent', batch.failedPermanent),
        unknown: count('unknown', batch.unknown),
      };
      const dead = count('dead', batch.dead);
      const deferred = count('deferred', batch.deferred ?? 0);
      const batchSeconds = seconds('batchSeconds', batch.batchSeconds);
      const confirmSeconds =
        batch.confirmSeconds === undefined ? undefined : seconds('confirmSeconds', batch.confirmSeconds);
      for (const latency of batch.latenciesSeconds) {
        if (!Number.isFinite(latency))
          throw new RangeError(`latenciesSeconds must be finite, got ${latency}`);
      }

      trackShard(batch.shard, lane);
      const labels = { replica, sink, shard, lane };
      if (sent > 0) handles.eventsSent.inc(labels, sent);
      for (const kind of FAILURE_KINDS) {
        if (failed[kind] > 0) handles.eventsFailed.inc({ ...labels, kind }, failed[kind]);
      }
      if (dead > 0) handles.eventsDead.inc(labels, dead);
      if (deferred > 0) handles.eventsDeferred.inc(labels, deferred);
      const laneLabels = { replica, sink, lane };
      handles.batchDuration.observe(laneLabels, batchSeconds);
      if (confirmSeconds !== undefined) handles.confirmDuration.observe(laneLabels, confirmSeconds);
      // created_at comes from the database's clock and the confirm time from this host's, so a small
      // skew can make a latency negative; it belongs in the lowest bucket, not in an exception.
      for (const latency of batch.latenciesSeconds) {
        handles.endToEndLatency.observe(laneLabels, Math.max(0, latency));
      }
    },

    setLag(lag) {
      trackShard(lag.shard, lag.lane);
      const labels = { replica, shard: shardLabel(lag.shard), lane: lag.lane };
      handles.lagEvents.set(labels, count('events', lag.events));
      handles.lagSeconds.set(labels, seconds('seconds', lag.seconds));
    },

    setShardsOwned(n) {
      handles.shardsOwned.set({ replica }, count('shards owned', n));
    },

    setUnownedShards(n) {
      handles.unownedShards.set({ replica }, count('unowned shards', n));
    },

    setShardStatus(shard, lane, status) {
      if (!SHARD_STATUSES.includes(status)) {
        throw new RangeError(`status must be one of ${SHARD_STATUSES.join(', ')}, got ${String(status)}`);
      }
      trackShard(shard, lane);
      const labels = { replica, shard: shardLabel(shard), lane };
      for (const s of SHARD_STATUSES) handles.shardStatus.set({ ...labels, status: s }, s === status ? 1 : 0);
    },

    setInflight(n) {
      handles.inflightUnconfirmed.set({ replica, sink }, count('inflight', n));
    },

    observeCanary(shard, lane, secs) {
      const labels = { replica, shard: shardLabel(shard), lane: checkLane(lane) };
      handles.canaryLatency.set(labels, seconds('canary seconds', secs));
      handles.canaryLastSuccess.set(labels, Date.now() / 1000);
    },

    setOutboxMaxId(id) {
      // Ids are bigint in PostgreSQL; a gauge is a float64, exact up to 2^53, which is plenty for a
      // rate. Reject garbage rather than export NaN.
      const value = typeof id === 'number' ? id : Number(id);
      if (!Number.isFinite(value) || value < 0)
        throw new RangeError(`outbox max id must be >= 0, got ${String(id)}`);
      handles.outboxMaxId.set({ replica }, value);
    },

    dropShard(shard) {
      const shardValue = shardLabel(shard);
      for (const lane of LANE_VALUES) {
        const labels = { replica, shard: shardValue, lane };
        handles.lagEvents.remove(labels);
        handles.lagSeconds.remove(labels);
        handles.canaryLatency.remove(labels);
        handles.canaryLastSuccess.remove(labels);
        for (const status of SHARD_STATUSES) handles.shardStatus.remove({ ...labels, status });
        tracked.delete(`${shardValue}/${lane}`);
      }
    },
  };
}
