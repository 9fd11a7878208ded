import { readFileSync } from 'node:fs';
import { SETTINGS, type RelayConfig } from '../config.js';
import { ConfigError, toError } from '../errors.js';
import { parseRoutes, parseRoutesJson, type RouteTable } from './routes.js';

export type { RouteTable } from './routes.js';

type SettingsTable = Parameters<typeof parseRoutes>[1];

/**
 * The routes of `--routes` / SHARDRELAY_ROUTES (JSON text) or `--routes-file` /
 * SHARDRELAY_ROUTES_FILE (a JSON file), validated; undefined when neither is set (one sink, as
 * `--sink` says). Both at once are refused: which one wins would be a guess.
 */
export function readRoutes(
  text: string | undefined,
  file: string | undefined,
  settings: SettingsTable,
  env: NodeJS.ProcessEnv,
): RouteTable | undefined {
  if (text !== undefined && file !== undefined) {
    throw new ConfigError(
      '--routes / SHARDRELAY_ROUTES and --routes-file / SHARDRELAY_ROUTES_FILE',
      'both are set',
      'give the routes one way only',
    );
  }
  if (text !== undefined) return parseRoutesJson(text, '--routes / SHARDRELAY_ROUTES', settings, env);
  if (file === undefined) return undefined;
  let content: string;
  try {
    content = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(
      '--routes-file / SHARDRELAY_ROUTES_FILE',
      `cannot read ${file} (${toError(error).message})`,
      'give the path of a readable JSON routes file',
    );
  }
  return parseRoutesJson(content, `routes file ${file}`, settings, env);
}

/**
 * The routes of a configuration, parsed and validated (ConfigError naming the place and the fix);
 * undefined without routes. `{ "env": "NAME" }` values are read from `env`. Called once per
 * start: `shardrelay run` calls it right after loadConfig, so bad routes stop the command before it
 * connects to anything, and hands the table to startReplica, which parses only when not given one
 * and passes the table on to both lanes' threads (wiring/replica.ts).
 */
export function routeTableOf(
  config: Pick<RelayConfig, 'routes' | 'routesFile'>,
  env: NodeJS.ProcessEnv = process.env,
): RouteTable | undefined {
  return readRoutes(config.routes, config.routesFile, SETTINGS, env);
}
