/**
 * Routes: which sink each outbox row goes to, as typed configuration (never SQL, never code).
 *
 * ```json
 * {
 *   "sinks": {
 *     "orders": { "type": "kafka", "kafkaBrokers": "kafka-1:9092", "kafkaTopic": "{topic}" },
 *     "emails": { "type": "rabbitmq", "amqpUrl": "amqp://relay:…@rabbit:5672", "amqpExchange": "emails" }
 *   },
 *   "rules": [
 *     { "match": { "topic": "orders.#" }, "sink": "orders" },
 *     { "match": { "topic": "emails.*", "lane": "realtime" }, "sink": "emails" }
 *   ],
 *   "default": "orders"
 * }
 * ```
 *
 * A sink's settings are the relay's own settings of that sink type, by their configuration names
 * (`amqpExchange`, `kafkaBrokers`, … as in the README's settings table), validated with the same
 * schemas; a setting not given takes its default, never the relay-wide value, so two sinks of one
 * type cannot silently share a broker. A value may be `{ "env": "NAME" }` to read a secret from
 * the environment instead of the file.
 *
 * Rules are tried in order; the first whose every condition holds wins. A row no rule matches
 * goes to `default`, or, with no default, becomes dead with a reason naming the missing route.
 *
 * Every refusal is a ConfigError naming the place (`routes.rules[2].match.topic`) and the fix;
 * the CLI exits with code 2 before connecting to anything.
 */
import { z } from 'zod';
import type { RelayConfig, SinkName } from '../config.js';
import { ConfigError, toError } from '../errors.js';
import type { OutboxMessage } from '../sinks/sink.js';
import { topicMatches, topicPatternCovers, topicPatternProblem } from './topicPattern.js';

/** The settings each sink type reads; a named sink may set these and no others. */
export const SINK_SETTING_KEYS = {
  null: [],
  pgboss: ['pgBossSchema'],
  rabbitmq: ['amqpUrl', 'amqpExchange'],
  jetstream: ['natsUrl', 'natsStream'],
  http: ['webhookUrl'],
  amqp10: ['amqp10Url', 'amqp10Address'],
  kafka: [
    'kafkaBrokers',
    'kafkaTopic',
    'kafkaCompression',
    'kafkaSaslMechanism',
    'kafkaSaslUsername',
    'kafkaSaslPassword',
  ],
  kinesis: ['kinesisStream', 'kinesisRegion', 'kinesisEndpoint'],
  stomp: ['stompUrl', 'stompDestination', 'stompConnections', 'stompBatchSpread', 'stompTransactions'],
} as const satisfies Record<SinkName, readonly (keyof RelayConfig)[]>;

/** Settings a sink of that type cannot start without (no default). */
const REQUIRED_SETTINGS: Partial<Record<SinkName, readonly (keyof RelayConfig)[]>> = {
  http: ['webhookUrl'],
};

export interface RouteMatch {
  /** An AMQP-style topic pattern (`orders.*`, `orders.#`). */
  readonly topic?: string;
  readonly lane?: 'realtime' | 'batch';
  /** The row's key is one of these. */
  readonly key?: readonly string[];
  /** Every header named here is present with exactly this value. */
  readonly headers?: Readonly<Record<string, string>>;
}

export interface RouteRule {
  readonly match: RouteMatch;
  readonly sink: string;
}

export interface RouteSinkSpec {
  readonly type: SinkName;
  /** The sink's settings, validated, with defaults filled in (relay setting names). */
  readonly settings: Readonly<Partial<RelayConfig>>;
}

/** Validated routes. Plain data, so it crosses into the real-time worker thread unchanged. */
export interface RouteTable {
  readonly sinks: Readonly<Record<string, RouteSinkSpec>>;
  readonly rules: readonly RouteRule[];
  readonly default: string | undefined;
}

const SINK_NAME = /^[a-z][a-z0-9_-]{0,39}$/;
const SINK_NAME_FIX =
  'name sinks with a lower-case letter then letters, digits, _ or - (at most 40); the name is the route label in metrics';

const shape = z
  .object({
    sinks: z.record(z.string(), z.record(z.string(), z.unknown())),
    rules: z.array(z.unknown()).max(1000).default([]),
    default: z.string().optional(),
  })
  .strict();

const matchShape = z
  .object({
    topic: z.string().optional(),
    lane: z.enum(['realtime', 'batch']).optional(),
    key: z.union([z.string(), z.array(z.string()).min(1).max(1000)]).optional(),
    headers: z.record(z.string(), z.string()).optional(),
  })
  .strict();

const ruleShape = z.object({ match: z.unknown(), sink: z.string() }).strict();

function placeOf(base: string, path: readonly PropertyKey[]): string {
  return path.reduce<string>(
    (at, part) => (typeof part === 'number' ? `${at}[${part}]` : `${at}.${String(part)}`),
    base,
  );
}

function refuse(place: string, problem: string, fix: string): never {
  throw new ConfigError(place, problem, fix);
}

function zodRefusal(base: string, error: z.ZodError, fix: string): never {
  const issue = error.issues[0];
  refuse(placeOf(base, issue?.path ?? []), issue?.message ?? 'invalid', fix);
}

/** Resolves `{ "env": "NAME" }` values from the environment (secrets stay out of the file). */
function resolveValue(value: unknown, place: string, env: NodeJS.ProcessEnv): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  const keys = Object.keys(value);
  const name = (value as { env?: unknown }).env;
  if (keys.length !== 1 || typeof name !== 'string') {
    refuse(
      place,
      'an object value must be { "env": "NAME" }',
      'give the value itself, or { "env": "NAME" } to read it from the environment',
    );
  }
  const found = env[name];
  if (found === undefined || found === '') {
    refuse(place, `environment variable ${name} is not set`, `set ${name}, or give the value in the routes`);
  }
  return found;
}

type SettingsTable = {
  readonly [K in keyof RelayConfig]: {
    readonly schema: z.ZodType<RelayConfig[K]>;
    readonly default?: () => RelayConfig[K];
    readonly fix: string;
    readonly env: string;
  };
};

function parseSink(
  name: string,
  raw: Record<string, unknown>,
  settings: SettingsTable,
  env: NodeJS.ProcessEnv,
): RouteSinkSpec {
  const place = `routes.sinks.${name}`;
  if (!SINK_NAME.test(name)) refuse(place, `"${name}" is not a usable sink name`, SINK_NAME_FIX);
  const type = raw.type;
  const types = Object.keys(SINK_SETTING_KEYS) as SinkName[];
  if (typeof type !== 'string' || !types.includes(type as SinkName)) {
    refuse(
      `${place}.type`,
      type === undefined ? 'is missing' : `"${String(type)}" is not a sink type`,
      `use one of: ${types.join(', ')}`,
    );
  }
  const sinkType = type as SinkName;
  const allowed: readonly (keyof RelayConfig)[] = SINK_SETTING_KEYS[sinkType];
  const result: Record<string, unknown> = {};
  for (const [key, given] of Object.entries(raw)) {
    if (key === 'type') continue;
    if (!allowed.includes(key as keyof RelayConfig)) {
      refuse(
        `${place}.${key}`,
        `is not a setting of the ${sinkType} sink`,
        allowed.length ? `use only: ${allowed.join(', ')}` : `the ${sinkType} sink takes no settings`,
      );
    }
    const setting = settings[key as keyof RelayConfig];
    const value = resolveValue(given, `${place}.${key}`, env);
    const parsed = setting.schema.safeParse(value);
    if (!parsed.success) {
      refuse(`${place}.${key}`, parsed.error.issues[0]?.message ?? 'invalid value', setting.fix);
    }
    result[key] = parsed.data;
  }
  for (const key of allowed) {
    if (result[key] !== undefined) continue;
    const setting = settings[key];
    if (setting.default) result[key] = setting.default();
    else if (REQUIRED_SETTINGS[sinkType]?.includes(key)) {
      refuse(
        `${place}.${key}`,
        `is required by the ${sinkType} sink but not set`,
        `add "${key}" to ${place} (the value as for ${setting.env}: ${setting.fix})`,
      );
    }
  }
  if (sinkType === 'kafka') {
    const sasl = [result.kafkaSaslMechanism, result.kafkaSaslUsername, result.kafkaSaslPassword];
    if (sasl.some((v) => v !== undefined) && sasl.some((v) => v === undefined)) {
      refuse(
        `${place}.kafkaSasl*`,
        'only some of kafkaSaslMechanism, kafkaSaslUsername, kafkaSaslPassword are set',
        'set all three for SASL, or none',
      );
    }
  }
  return Object.freeze({ type: sinkType, settings: Object.freeze(result) });
}

function parseMatch(raw: unknown, place: string): RouteMatch {
  const parsed = matchShape.safeParse(raw);
  if (!parsed.success) {
    zodRefusal(
      place,
      parsed.error,
      'a match takes topic (pattern), lane (realtime|batch), key (a string or a list) and headers ({"name":"value"})',
    );
  }
  const { topic, lane, key, headers } = parsed.data;
  if (topic !== undefined) {
    const problem = topicPatternProblem(topic);
    if (problem) {
      refuse(
        `${place}.topic`,
        `"${topic}" ${problem}`,
        'write words separated by dots; * stands for exactly one word, # for zero or more (orders.*, orders.#)',
      );
    }
  }
  return Object.freeze({
    ...(topic !== undefined ? { topic } : {}),
    ...(lane !== undefined ? { lane } : {}),
    ...(key !== undefined ? { key: typeof key === 'string' ? [key] : key } : {}),
    ...(headers !== undefined ? { headers } : {}),
  });
}

/** Whether every row `inner` matches is matched by `outer` too. */
export function matchCovers(outer: RouteMatch, inner: RouteMatch): boolean {
  if (
    outer.topic !== undefined &&
    (inner.topic === undefined || !topicPatternCovers(outer.topic, inner.topic))
  )
    return false;
  if (outer.lane !== undefined && outer.lane !== inner.lane) return false;
  if (outer.key !== undefined && (inner.key === undefined || !inner.key.every((k) => outer.key?.includes(k))))
    return false;
  for (const [name, value] of Object.entries(outer.headers ?? {})) {
    if (inner.headers?.[name] !== value) return false;
  }
  return true;
}

/**
 * Validates routes (already JSON-parsed). `settings` is the relay's settings table, whose schemas
 * and fixes the sinks' settings reuse; `env` resolves `{ "env": "NAME" }` values.
 */
export function parseRoutes(
  input: unknown,
  settings: SettingsTable,
  env: NodeJS.ProcessEnv = process.env,
): RouteTable {
  const top = shape.safeParse(input);
  if (!top.success) {
    zodRefusal(
      'routes',
      top.error,
      'give {"sinks": {"name": {"type": "...", ...}}, "rules": [{"match": {...}, "sink": "name"}], "default": "name"} (see the README, "Routing")',
    );
  }
  const names = Object.keys(top.data.sinks);
  if (names.length === 0)
    refuse('routes.sinks', 'names no sink', 'name at least one sink, e.g. {"main": {"type": "rabbitmq"}}');
  const sinks: Record<string, RouteSinkSpec> = {};
  for (const name of names)
    sinks[name] = parseSink(name, top.data.sinks[name] as Record<string, unknown>, settings, env);

  const unknownSink = (place: string, name: string): never =>
    refuse(
      place,
      `names sink "${name}", which routes.sinks does not define`,
      `use one of: ${names.join(', ')} (or add "${name}" to routes.sinks)`,
    );

  const rules: RouteRule[] = [];
  for (const [i, raw] of top.data.rules.entries()) {
    const place = `routes.rules[${i}]`;
    const rule = ruleShape.safeParse(raw);
    if (!rule.success) zodRefusal(place, rule.error, 'a rule is {"match": {...}, "sink": "name"}');
    if (!(rule.data.sink in sinks)) unknownSink(`${place}.sink`, rule.data.sink);
    const match = parseMatch(rule.data.match ?? {}, `${place}.match`);
    const earlier = rules.findIndex((r) => matchCovers(r.match, match));
    if (earlier >= 0) {
      refuse(
        `${place}.match`,
        `can never match: routes.rules[${earlier}] comes first and matches every row this rule matches`,
        `move this rule above routes.rules[${earlier}], narrow routes.rules[${earlier}], or remove this rule`,
      );
    }
    rules.push(Object.freeze({ match, sink: rule.data.sink }));
  }
  const fallback = top.data.default;
  if (fallback !== undefined && !(fallback in sinks)) unknownSink('routes.default', fallback);
  const used = new Set([...rules.map((r) => r.sink), ...(fallback !== undefined ? [fallback] : [])]);
  for (const name of names) {
    if (!used.has(name)) {
      refuse(
        `routes.sinks.${name}`,
        'no rule and not the default route to it',
        `route to "${name}" from a rule or the default, or remove it`,
      );
    }
  }
  return Object.freeze({ sinks: Object.freeze(sinks), rules: Object.freeze(rules), default: fallback });
}

/** Whether a row satisfies every condition of a match. */
export function rowMatches(
  match: RouteMatch,
  row: Pick<OutboxMessage, 'topic' | 'lane' | 'key' | 'headers'>,
): boolean {
  if (match.topic !== undefined && !topicMatches(match.topic, row.topic)) return false;
  if (match.lane !== undefined && match.lane !== row.lane) return false;
  if (match.key !== undefined && (row.key === null || !match.key.includes(row.key))) return false;
  for (const [name, value] of Object.entries(match.headers ?? {})) {
    if (row.headers[name] !== value) return false;
  }
  return true;
}

/** The sink name a row goes to (first matching rule, else the default), or undefined: no route. */
export function routeOf(
  table: RouteTable,
  row: Pick<OutboxMessage, 'topic' | 'lane' | 'key' | 'headers'>,
): string | undefined {
  for (const rule of table.rules) if (rowMatches(rule.match, row)) return rule.sink;
  return table.default;
}

/** The dead reason of a row no route takes. */
export function noRouteReason(row: Pick<OutboxMessage, 'topic' | 'lane'>): string {
  return `no route: no rule matches topic "${row.topic}" (lane ${row.lane}) and the routes name no default; add a rule or a "default" sink, then replay the dead letter`;
}

/** Reads routes from JSON text (a file's or SHARDRELAY_ROUTES'), naming `source` when it is not JSON. */
export function parseRoutesJson(
  text: string,
  source: string,
  settings: SettingsTable,
  env: NodeJS.ProcessEnv,
): RouteTable {
  let input: unknown;
  try {
    input = JSON.parse(text);
  } catch (error) {
    refuse(
      source,
      `is not JSON (${toError(error).message})`,
      'write the routes as JSON (see the README, "Routing")',
    );
  }
  return parseRoutes(input, settings, env);
}
