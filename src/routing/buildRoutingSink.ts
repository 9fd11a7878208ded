import type { RelayConfig } from '../config.js';
import type { Logger } from '../logger.js';
import type { Sink } from '../sinks/sink.js';
import type { RouteTable } from './routes.js';
import { createRoutingSink, type RoutingSink } from './routingSink.js';

/**
 * The routing sink of a configuration with routes: each route's sink is built by `createSink`
 * from the relay's configuration with that route's type and settings in place of the relay-wide
 * ones, so a routed sink is exactly the sink `--sink` would build with those settings.
 */
export async function buildRoutingSink(
  config: RelayConfig,
  table: RouteTable,
  logger: Logger,
  createSink: (config: RelayConfig, logger: Logger) => Promise<Sink>,
): Promise<RoutingSink> {
  const sinks = new Map<string, Sink>();
  const transactional = new Set<string>();
  for (const [route, spec] of Object.entries(table.sinks)) {
    const routeConfig: RelayConfig = Object.freeze({
      ...config,
      ...spec.settings,
      sink: spec.type,
      routes: undefined,
    });
    sinks.set(route, await createSink(routeConfig, logger.child({ route })));
    // pg-boss inserts through the claim transaction (see routingSink.ts).
    if (spec.type === 'pgboss') transactional.add(route);
  }
  return createRoutingSink({ table, sinks, transactional });
}
