import type { RelayConfig } from '../config.js';
import type { Logger } from '../logger.js';
import { createSink, loadsInOneThreadOnly } from '../sinks/createSink.js';
import { createForwardingSink, type ForwardingLink } from '../sinks/forwardingSink.js';
import type { RelaySink } from '../sinks/sink.js';
import type { RouteTable } from './routes.js';
import { createRoutingSink, type RoutingSink } from './routingSink.js';

/**
 * The sink a configuration names, not yet started: the routing sink of `routes` (the
 * configuration's routes, parsed once per start by routeTableOf, loadRoutes.ts) when there are
 * any, else the one sink of `config.sink`. Routes are read in the routing layer, not with the
 * settings, so that neither the settings nor the sinks depend on routing.
 *
 * `forwardTo`: given in a thread that does not hold the one-thread-only clients (the real-time
 * worker; createSink.ts `loadsInOneThreadOnly`): each such sink, the relay's own or a route's,
 * becomes a forwarding sink over that link, tagged with its route so that the holding thread
 * answers with that route's sink; every other sink is built here as usual.
 */
export async function createConfiguredSink(
  config: RelayConfig,
  routes: RouteTable | undefined,
  logger: Logger,
  forwardTo?: ForwardingLink,
): Promise<RelaySink> {
  const build = async (sinkConfig: RelayConfig, log: Logger, route?: string): Promise<RelaySink> =>
    forwardTo && loadsInOneThreadOnly(sinkConfig.sink)
      ? createForwardingSink(sinkConfig.sink, forwardTo, route)
      : createSink(sinkConfig, log);
  return routes ? buildRoutingSink(config, routes, logger, build) : build(config, logger);
}

/**
 * Whether the relay's sink, or any sink of its routes (parsed, as for createConfiguredSink), loads
 * in one thread of a process only.
 */
export function needsOneSinkThread(
  config: Pick<RelayConfig, 'sink'>,
  routes: RouteTable | undefined,
): boolean {
  return routes
    ? Object.values(routes.sinks).some((spec) => loadsInOneThreadOnly(spec.type))
    : loadsInOneThreadOnly(config.sink);
}

/**
 * The routing sink of a configuration with routes: each route's sink is built by `createSink`
 * from the relay's configuration with that route's type and settings in place of the relay-wide
 * ones, so a routed sink is exactly the sink `--sink` would build with those settings.
 */
export async function buildRoutingSink(
  config: RelayConfig,
  table: RouteTable,
  logger: Logger,
  build: (config: RelayConfig, logger: Logger, route: string) => Promise<RelaySink> = createSink,
): Promise<RoutingSink> {
  // A pg-boss route is an in-database sink by its `kind`, which makes the routing sink one too.
  const sinks = new Map<string, RelaySink>();
  for (const [route, spec] of Object.entries(table.sinks)) {
    const routeConfig: RelayConfig = Object.freeze({
      ...config,
      ...spec.settings,
      sink: spec.type,
      routes: undefined,
      routesFile: undefined,
    });
    sinks.set(route, await build(routeConfig, logger.child({ route }), route));
  }
  return createRoutingSink({ table, sinks });
}
