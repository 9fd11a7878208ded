/**
 * Per-route metrics of a routing sink, on the relay's own registry. The `route` label is bounded:
 * its values are the sink names of the routes configuration (at most a handful, fixed at start).
 *
 * - shardrelay_route_events_total{route, outcome}: rows handed to a route and how each ended
 *   (confirmed, retryable, permanent, unknown, deferred: not offered to the broker). A down route
 *   shows deferred (or retryable, unknown) growing while its confirmed stays flat; the alert
 *   "ShardRelayRouteDown" reads exactly that.
 * - shardrelay_route_send_duration_seconds{route}: one part's send, to its confirms.
 * - shardrelay_route_down{route}: 1 while the route's breaker is open (see routingSink.ts).
 */
import { Counter, Gauge, Histogram } from 'prom-client';
import type { RelayMetrics } from './metrics.js';
import type { RoutePartReport, RoutingSink } from '../routing/routingSink.js';

const OUTCOMES = ['confirmed', 'retryable', 'permanent', 'unknown', 'deferred'] as const;
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function observeRoutes(sink: RoutingSink, metrics: RelayMetrics): void {
  const registers = [metrics.registry];
  const events = new Counter({
    name: 'shardrelay_route_events_total',
    help: 'Rows handed to a route, by how their delivery attempt ended.',
    labelNames: ['replica', 'route', 'outcome'] as const,
    registers,
  });
  const duration = new Histogram({
    name: 'shardrelay_route_send_duration_seconds',
    help: "Seconds a route's sink takes to confirm its part of a batch.",
    labelNames: ['replica', 'route'] as const,
    buckets: BUCKETS,
    registers,
  });
  const down = new Gauge({
    name: 'shardrelay_route_down',
    help: "1 while a route's broker is taken as down (its rows are retried without waiting on it).",
    labelNames: ['replica', 'route'] as const,
    registers,
  });
  const replica = metrics.replica;
  // Zero-valued series from the start, so the first failures of a fresh process show in increase().
  for (const route of sink.routes) {
    for (const outcome of OUTCOMES) events.inc({ replica, route, outcome }, 0);
    down.set({ replica, route }, 0);
  }
  sink.onPart = (report: RoutePartReport) => {
    const { route } = report;
    for (const outcome of report.outcomes) {
      const kind =
        outcome.status !== 'failed' ? outcome.status : outcome.retryable ? 'retryable' : 'permanent';
      events.inc({ replica, route, outcome: kind });
    }
    if (report.seconds > 0) duration.observe({ replica, route }, report.seconds);
    down.set({ replica, route }, report.down ? 1 : 0);
  };
}
