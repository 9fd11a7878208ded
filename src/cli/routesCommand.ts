import { Command } from 'commander';
import { SETTINGS, loadConfig, type RelayConfig } from '../config.js';
import type { Lane } from '../db/schema.js';
import { ConfigError } from '../errors.js';
import { routeTableOf } from '../routing/loadRoutes.js';
import { routeOf, rowMatches, type RouteMatch, type RouteTable } from '../routing/routes.js';

interface SampleEvent {
  readonly topic: string;
  readonly lane: Lane;
  readonly key: string | null;
  readonly headers: Readonly<Record<string, string>>;
}

/** A topic a pattern matches: `*` becomes one word, `#` one word (it may also match none). */
function sampleTopic(pattern: string | undefined): string {
  if (pattern === undefined) return 'any.topic';
  return pattern
    .split('.')
    .map((word) => (word === '*' || word === '#' ? 'x' : word))
    .join('.');
}

/** One event per rule that the rule matches, and one that no rule names (to show the default). */
function samples(table: RouteTable): SampleEvent[] {
  const fromRule = (match: RouteMatch): SampleEvent => ({
    topic: sampleTopic(match.topic),
    lane: match.lane ?? 'batch',
    key: match.key?.[0] ?? null,
    headers: match.headers ?? {},
  });
  return [
    ...table.rules.map((rule) => fromRule(rule.match)),
    { topic: 'unrouted.example', lane: 'batch', key: null, headers: {} },
  ];
}

function parseEvent(text: string, index: number): SampleEvent {
  const place = `--event #${index + 1}`;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ConfigError(
      place,
      'is not JSON',
      'give an event like {"topic":"orders.created","lane":"batch"}',
    );
  }
  const event = value as Partial<Record<string, unknown>>;
  if (typeof event !== 'object' || event === null || typeof event.topic !== 'string') {
    throw new ConfigError(place, 'has no "topic" string', 'give an event like {"topic":"orders.created"}');
  }
  if (event.lane !== undefined && event.lane !== 'realtime' && event.lane !== 'batch') {
    throw new ConfigError(`${place}.lane`, 'is neither realtime nor batch', 'use "realtime" or "batch"');
  }
  return {
    topic: event.topic,
    lane: (event.lane as Lane | undefined) ?? 'batch',
    key: typeof event.key === 'string' ? event.key : null,
    headers:
      typeof event.headers === 'object' && event.headers !== null
        ? (event.headers as Record<string, string>)
        : {},
  };
}

function describe(table: RouteTable, event: SampleEvent): string {
  const route = routeOf(table, event);
  const rule = table.rules.findIndex((r) => rowMatches(r.match, event));
  const why = route === undefined ? 'no rule, no default' : rule >= 0 ? `rules[${rule}]` : 'default';
  const target = route === undefined ? 'DEAD (no route)' : `${route} (${table.sinks[route]?.type ?? '?'})`;
  const extra = [
    `lane=${event.lane}`,
    ...(event.key !== null ? [`key=${event.key}`] : []),
    ...Object.entries(event.headers).map(([k, v]) => `${k}=${v}`),
  ].join(' ');
  return `${event.topic} [${extra}] -> ${target} by ${why}`;
}

/** `shardrelay routes check`: validates the routes and shows where events would go. */
export function addRoutesCommand(program: Command): void {
  const routes = program.command('routes').description('routing of events to several sinks');
  routes
    .command('check')
    .description('validate the routes and print where sample (or given) events would go')
    .option('--file <path>', `routes file (default: ${SETTINGS.routesFile.env} or ${SETTINGS.routes.env})`)
    .option('--event <json...>', 'events to route, e.g. {"topic":"orders.created","lane":"realtime"}')
    .action((opts: { file?: string; event?: string[] }) => {
      // Only the routes are checked: no database URL needed.
      const config: RelayConfig = loadConfig(opts.file ? { routesFile: opts.file } : {}, process.env, []);
      const table = routeTableOf(config);
      if (!table) {
        throw new ConfigError(
          '--file / SHARDRELAY_ROUTES_FILE / SHARDRELAY_ROUTES',
          'no routes given',
          'pass --file routes.json, or set SHARDRELAY_ROUTES_FILE or SHARDRELAY_ROUTES',
        );
      }
      const events = opts.event ? opts.event.map(parseEvent) : samples(table);
      console.log(
        `routes ok: ${Object.keys(table.sinks).length} sinks, ${table.rules.length} rules, default ${table.default ?? 'none (unmatched rows become dead)'}`,
      );
      for (const [name, spec] of Object.entries(table.sinks)) console.log(`  sink ${name}: ${spec.type}`);
      console.log(opts.event ? 'events:' : 'sample events:');
      for (const event of events) console.log(`  ${describe(table, event)}`);
    });
}
