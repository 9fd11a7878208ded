import os from 'node:os';
import { z } from 'zod';
import { ConfigError, toError } from './errors.js';
import { redact } from './redact.js';
import { DEFAULT_LANE_PREDICATE, parseLanePredicate, type LanePredicate } from './lanes/lanePredicate.js';

export const SINK_NAMES = [
  'pgboss',
  'null',
  'rabbitmq',
  'jetstream',
  'http',
  'amqp10',
  'kafka',
  'kinesis',
  'stomp',
] as const;
export type SinkName = (typeof SINK_NAMES)[number];

/**
 * Every setting of the relay, validated and frozen. Each comes from a flag, else an environment
 * variable, else its default (see SETTINGS below and the README's configuration reference).
 */
export interface RelayConfig {
  readonly databaseUrl: string;
  readonly sink: SinkName;
  readonly replicaId: string;
  readonly lanePredicate: LanePredicate;
  readonly realtimeBatchSize: number;
  readonly batchBatchSize: number;
  readonly tickSeconds: number;
  readonly realtimeTickSeconds: number;
  readonly connectionsPerLane: number;
  /** Batch lane: least ms from a partial batch's start to the next on its shard (wake-ups gather rows). */
  readonly batchGatherMs: number;
  /**
   * `shardrelay run`: how much lower than the real-time thread the batch lane's thread runs on the
   * CPU (a nice increment; 0, the default, = the same). wiring/batchLanePriority.ts.
   */
  readonly batchLaneNice: number;
  readonly maxAttempts: number;
  /**
   * Per-key ordering: 'off' (default) shards by `id % N` and sends a batch concurrently; 'key'
   * shards keyed rows by their key's hash and never sends a row of a key before the key's earlier
   * rows are sent (or dead, see `orderingDead`); relay/claims.ts `claimOrdered`.
   */
  readonly ordering: 'off' | 'key';
  /** With ordering on: whether a dead row lets its key's later rows go ('release') or holds them until replayed or discarded ('hold'). */
  readonly orderingDead: 'release' | 'hold';
  readonly retryBaseMs: number;
  readonly retryCapMs: number;
  readonly sendTimeoutMs: number;
  readonly shutdownTimeoutMs: number;
  readonly leaseTimeoutSeconds: number;
  readonly maxPayloadBytes: number;
  readonly pgBossSchema: string;
  readonly amqpUrl: string;
  readonly amqpExchange: string;
  readonly natsUrl: string;
  readonly natsStream: string;
  readonly natsSubjectPrefix: string;
  readonly webhookUrl: string | undefined;
  readonly stompUrl: string;
  readonly stompDestination: string;
  readonly stompConnections: number;
  readonly stompBatchSpread: number;
  readonly stompTransactions: 'on' | 'off';
  readonly metricsPort: number | undefined;
  readonly metricsHost: string;
  readonly canaryIntervalSeconds: number;
  /** How long a sent event stays recorded (shardrelay.sent_event), in seconds; 0 = not recorded. */
  readonly sentRetentionSeconds: number;
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  readonly amqp10Url: string;
  readonly amqp10Address: string;
  readonly kafkaBrokers: string;
  readonly kafkaTopic: string;
  readonly kafkaCompression: 'none' | 'gzip' | 'snappy' | 'lz4' | 'zstd';
  readonly kafkaSaslMechanism: 'PLAIN' | 'SCRAM-SHA-256' | 'SCRAM-SHA-512' | undefined;
  readonly kafkaSaslUsername: string | undefined;
  readonly kafkaSaslPassword: string | undefined;
  readonly kinesisStream: string;
  readonly kinesisRegion: string | undefined;
  readonly kinesisEndpoint: string | undefined;
  /**
   * Routes to several sinks (replaces `sink` when set), as the JSON text given; see
   * src/routing/routes.ts. Parsed where the sink is built (routing/loadRoutes.ts, `routeTableOf`),
   * so that settings do not depend on routing; the CLI parses them before starting anything.
   */
  readonly routes: string | undefined;
  readonly routesFile: string | undefined;
}

const positiveInt = (max: number) => z.coerce.number().int().min(1).max(max);

/**
 * Connections per lane by default: the machine's cores, at least 2. The batch lane runs at most
 * this many batches at once, each keeping a PostgreSQL backend and the relay busy; where
 * PostgreSQL shares the relay's cores, more than one per core only adds CPU contention that the
 * real-time lane waits behind. Same run, interleaved, loaded 2-core machine (load average
 * 23-49), 200,000-row backlog: real-time p99 under backlog 5,793 ms with 8 connections and no
 * gathering, 3,447 ms with these defaults (0.60×); the batch lane alone drained 1,586 and 2,208
 * rows/s (bench/RESULTS.md, "Issue 14"; to be re-measured on a quiet machine).
 */
export function defaultConnectionsPerLane(cores: number = os.availableParallelism()): number {
  return Math.max(2, Math.min(256, cores));
}

/**
 * How long a batch-lane loop gathers rows after a partial batch (ShardLoop `gatherMs`). Every
 * insert statement NOTIFYs; without gathering, under a steady load each wake-up claimed the ~250
 * rows that arrived during one batch, paying BEGIN, claim, completion and COMMIT per ~250 rows
 * (bench/RESULTS.md, "Max sustainable throughput"). A loop's batch is then at least what its
 * shard receives in 100 ms (2,500 rows/s per shard fill 250 rows; 10,000 fill a 1,000-row batch)
 * plus what arrives while it waits for one of the lane's connections (8 shards share 2 on 2
 * cores); the batch lane's added latency stays under 100 ms. Its effect on the max sustainable
 * rate is not measured yet (`npm run bench -- --only max-sustainable --batch-gather-ms 0` against
 * the default, same machine state).
 */
export const DEFAULT_BATCH_GATHER_MS = 100;

/**
 * Off by default: the main thread also runs the leases and takeovers (wiring/batchLanePriority.ts
 * has the measurements for and against).
 */
export const DEFAULT_BATCH_LANE_NICE = 0;

/**
 * What is wrong with a URL setting, most specific first: `new URL()` refuses a port of 99999 just
 * as it refuses a missing scheme, and "must be a URL starting with postgres://" would send the
 * operator looking at the wrong part.
 */
function urlProblem(value: string, protocols: readonly string[]): string | undefined {
  const expected = `must be a URL starting with ${protocols.map((p) => `${p}://`).join(' or ')}`;
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(value)?.[1]?.toLowerCase();
  if (scheme === undefined || !protocols.includes(scheme)) return expected;
  // scheme://[user-info@]host[:port] — the host may be an [IPv6] literal.
  const port = /^[^:]+:\/\/(?:[^@/?#]*@)?(?:\[[^\]]*\]|[^:/?#]*)(?::([^/?#]*))?/.exec(value)?.[1];
  if (port !== undefined && port !== '' && !(/^\d{1,5}$/.test(port) && Number(port) <= 65535)) {
    return `port ${port} is not a port number (a whole number from 1 to 65535)`;
  }
  try {
    new URL(value);
  } catch {
    return `is not a valid URL (${expected}; characters such as @ : / ? # in the user name or password must be percent-encoded)`;
  }
  return undefined;
}

const url = (protocols: readonly string[]) =>
  z.string().superRefine((value, ctx) => {
    const problem = urlProblem(value, protocols);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });

const DURATION_UNITS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** `0`, or a whole number with a unit s, m, h or d (`90s`, `1h`, `7d`), in seconds. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d{1,9})(s|m|h|d)?$/.exec(text.trim());
  if (!match) return undefined;
  const n = Number(match[1]);
  if (match[2] === undefined) return n === 0 ? 0 : undefined;
  return n * (DURATION_UNITS[match[2]] ?? Number.NaN);
}

interface Setting<K extends keyof RelayConfig> {
  readonly env: string;
  readonly flag: string;
  readonly schema: z.ZodType<RelayConfig[K]>;
  readonly default?: () => RelayConfig[K];
  readonly fix: string;
}

type Settings = { readonly [K in keyof RelayConfig]: Setting<K> };

/** The configuration reference. `fix` is printed when a value is refused. */
export const SETTINGS: Settings = {
  databaseUrl: {
    env: 'DATABASE_URL',
    flag: '--database-url',
    schema: url(['postgres', 'postgresql']),
    fix: 'set DATABASE_URL (or --database-url) to postgres://user:password@host:5432/database',
  },
  sink: {
    env: 'SHARDRELAY_SINK',
    flag: '--sink',
    schema: z.enum(SINK_NAMES),
    default: () => 'pgboss',
    fix: `use one of: ${SINK_NAMES.join(', ')}`,
  },
  replicaId: {
    env: 'SHARDRELAY_REPLICA_ID',
    flag: '--replica-id',
    schema: z.string().min(1).max(200),
    default: () => `${os.hostname()}-${process.pid}`,
    fix: 'give a non-empty name of at most 200 characters, unique per running replica',
  },
  lanePredicate: {
    env: 'SHARDRELAY_LANE_PREDICATE',
    flag: '--lane-predicate',
    schema: z.unknown().transform((value, ctx) => {
      try {
        return parseLanePredicate(typeof value === 'string' ? JSON.parse(value) : value);
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: toError(error).message });
        return z.NEVER;
      }
    }),
    default: () => DEFAULT_LANE_PREDICATE,
    fix: 'give JSON like {"column":"priority","op":">=","value":5}, combinable with {"and":[...]}, {"or":[...]}, {"not":...}',
  },
  realtimeBatchSize: {
    env: 'SHARDRELAY_REALTIME_BATCH_SIZE',
    flag: '--realtime-batch-size',
    schema: positiveInt(10_000),
    default: () => 100,
    fix: 'use a whole number from 1 to 10000',
  },
  batchBatchSize: {
    env: 'SHARDRELAY_BATCH_SIZE',
    flag: '--batch-size',
    schema: positiveInt(10_000),
    default: () => 1000,
    fix: 'use a whole number from 1 to 10000',
  },
  tickSeconds: {
    env: 'SHARDRELAY_TICK_SECONDS',
    flag: '--tick-seconds',
    schema: positiveInt(59),
    default: () => 1,
    fix: 'use a whole number of seconds from 1 to 59',
  },
  realtimeTickSeconds: {
    env: 'SHARDRELAY_REALTIME_TICK_SECONDS',
    flag: '--realtime-tick-seconds',
    schema: positiveInt(59),
    default: () => 1,
    fix: 'use a whole number of seconds from 1 to 59 (the real-time lane is woken by NOTIFY; this is its fallback poll)',
  },
  connectionsPerLane: {
    env: 'SHARDRELAY_CONNECTIONS_PER_LANE',
    flag: '--connections-per-lane',
    schema: positiveInt(256),
    default: () => defaultConnectionsPerLane(),
    fix: 'use a whole number from 1 to 256 (at most the shard count is useful)',
  },
  batchGatherMs: {
    env: 'SHARDRELAY_BATCH_GATHER_MS',
    flag: '--batch-gather-ms',
    schema: z.coerce.number().int().min(0).max(10_000),
    default: () => DEFAULT_BATCH_GATHER_MS,
    fix: 'use a whole number of milliseconds from 0 to 10000 (0 = claim at every wake-up)',
  },
  batchLaneNice: {
    env: 'SHARDRELAY_BATCH_LANE_NICE',
    flag: '--batch-lane-nice',
    schema: z.coerce.number().int().min(0).max(19),
    default: () => DEFAULT_BATCH_LANE_NICE,
    fix: "use a whole number from 0 to 19 (a nice increment for the batch lane's thread; 0 = same priority as the real-time lane)",
  },
  maxAttempts: {
    env: 'SHARDRELAY_MAX_ATTEMPTS',
    flag: '--max-attempts',
    schema: positiveInt(1000),
    default: () => 10,
    fix: 'use a whole number from 1 to 1000',
  },
  ordering: {
    env: 'SHARDRELAY_ORDERING',
    flag: '--ordering',
    schema: z.enum(['off', 'key']),
    default: () => 'off',
    fix: "use off (the default: id % N, no order between a batch's rows) or key (rows of one key are sent in enqueue order; give every replica the same value)",
  },
  orderingDead: {
    env: 'SHARDRELAY_ORDERING_DEAD',
    flag: '--ordering-dead',
    schema: z.enum(['release', 'hold']),
    default: () => 'release',
    fix: 'use release (the default: a dead row lets its key go on) or hold (the key waits until the dead row is replayed or discarded)',
  },
  retryBaseMs: {
    env: 'SHARDRELAY_RETRY_BASE_MS',
    flag: '--retry-base-ms',
    schema: positiveInt(3_600_000),
    default: () => 1000,
    fix: 'use a whole number of milliseconds from 1 to 3600000',
  },
  retryCapMs: {
    env: 'SHARDRELAY_RETRY_CAP_MS',
    flag: '--retry-cap-ms',
    schema: positiveInt(86_400_000),
    default: () => 300_000,
    fix: 'use a whole number of milliseconds from 1 to 86400000',
  },
  sendTimeoutMs: {
    env: 'SHARDRELAY_SEND_TIMEOUT_MS',
    flag: '--send-timeout-ms',
    schema: z.coerce.number().int().min(100).max(600_000),
    default: () => 10_000,
    fix: 'use a whole number of milliseconds from 100 to 600000',
  },
  shutdownTimeoutMs: {
    env: 'SHARDRELAY_SHUTDOWN_TIMEOUT_MS',
    flag: '--shutdown-timeout-ms',
    schema: z.coerce.number().int().min(0).max(600_000),
    default: () => 10_000,
    fix: 'use a whole number of milliseconds from 0 to 600000',
  },
  leaseTimeoutSeconds: {
    env: 'SHARDRELAY_LEASE_TIMEOUT_SECONDS',
    flag: '--lease-timeout-seconds',
    schema: z.coerce.number().int().min(2).max(3600),
    default: () => 10,
    fix: 'use a whole number of seconds from 2 to 3600',
  },
  maxPayloadBytes: {
    env: 'SHARDRELAY_MAX_PAYLOAD_BYTES',
    flag: '--max-payload-bytes',
    schema: positiveInt(64 * 1024 * 1024),
    default: () => 1024 * 1024,
    fix: 'use a whole number of bytes from 1 to 67108864',
  },
  pgBossSchema: {
    env: 'SHARDRELAY_PGBOSS_SCHEMA',
    flag: '--pgboss-schema',
    schema: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/),
    default: () => 'pgboss',
    fix: 'use a lower-case SQL identifier (letters, digits, underscore)',
  },
  amqpUrl: {
    env: 'AMQP_URL',
    flag: '--amqp-url',
    schema: url(['amqp', 'amqps']),
    default: () => 'amqp://guest:guest@127.0.0.1:5672',
    fix: 'set AMQP_URL to amqp://user:password@host:5672/vhost',
  },
  amqpExchange: {
    env: 'SHARDRELAY_AMQP_EXCHANGE',
    flag: '--amqp-exchange',
    schema: z.string().min(1).max(255),
    default: () => 'shardrelay',
    fix: 'give a non-empty exchange name',
  },
  natsUrl: {
    env: 'NATS_URL',
    flag: '--nats-url',
    schema: url(['nats', 'tls']),
    default: () => 'nats://127.0.0.1:4222',
    fix: 'set NATS_URL to nats://host:4222',
  },
  natsStream: {
    env: 'SHARDRELAY_NATS_STREAM',
    flag: '--nats-stream',
    schema: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
    default: () => 'SHARDRELAY',
    fix: 'use letters, digits, _ or - (no dots or spaces)',
  },
  natsSubjectPrefix: {
    env: 'SHARDRELAY_NATS_SUBJECT_PREFIX',
    flag: '--nats-subject-prefix',
    // NATS subject tokens: no wildcards, whitespace or empty tokens.
    schema: z.string().regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/),
    default: () => 'shardrelay',
    fix: 'use dot-separated tokens of letters, digits, _ or -, e.g. shardrelay or orders.events (events go to <prefix>.<topic>)',
  },
  webhookUrl: {
    env: 'WEBHOOK_URL',
    flag: '--webhook-url',
    schema: url(['http', 'https']).optional(),
    fix: 'set WEBHOOK_URL to http(s)://host/path',
  },
  stompUrl: {
    env: 'STOMP_URL',
    flag: '--stomp-url',
    schema: url(['stomp']),
    default: () => 'stomp://127.0.0.1:61613',
    fix: "set STOMP_URL to stomp://user:password@host:61613 (the broker's STOMP connector)",
  },
  stompDestination: {
    env: 'SHARDRELAY_STOMP_DESTINATION',
    flag: '--stomp-destination',
    schema: z.string().min(1).includes('{topic}', { message: 'must contain {topic}' }),
    default: () => '/queue/{topic}',
    fix: 'give a destination template containing {topic}, e.g. /queue/{topic} or /topic/events.{topic}',
  },
  stompConnections: {
    env: 'SHARDRELAY_STOMP_CONNECTIONS',
    flag: '--stomp-connections',
    schema: positiveInt(64),
    default: () => 4,
    fix: 'use a whole number from 1 to 64',
  },
  stompBatchSpread: {
    env: 'SHARDRELAY_STOMP_BATCH_SPREAD',
    flag: '--stomp-batch-spread',
    schema: positiveInt(64),
    // The sink's own default (stompSink.ts, where the measurement behind it is).
    default: () => 4,
    fix: 'use a whole number from 1 to 64 (at most --stomp-connections is used)',
  },
  stompTransactions: {
    env: 'SHARDRELAY_STOMP_TRANSACTIONS',
    flag: '--stomp-transactions',
    schema: z.enum(['on', 'off']),
    default: () => 'on',
    fix: 'use on (a STOMP transaction per batch, one store sync on ActiveMQ) or off (a receipt per SEND only)',
  },
  metricsPort: {
    env: 'SHARDRELAY_METRICS_PORT',
    flag: '--metrics-port',
    schema: z.coerce.number().int().min(0).max(65535).optional(),
    fix: 'use a port number from 0 to 65535 (0 picks a free port); leave unset to serve no metrics',
  },
  metricsHost: {
    env: 'SHARDRELAY_METRICS_HOST',
    flag: '--metrics-host',
    schema: z.string().min(1),
    default: () => '127.0.0.1',
    fix: 'give an address to bind, e.g. 127.0.0.1 or 0.0.0.0',
  },
  canaryIntervalSeconds: {
    env: 'SHARDRELAY_CANARY_INTERVAL_SECONDS',
    flag: '--canary-interval-seconds',
    schema: z.coerce.number().int().min(0).max(86_400),
    default: () => 30,
    fix: 'use a whole number of seconds from 0 (no canaries) to 86400',
  },
  sentRetentionSeconds: {
    env: 'SHARDRELAY_SENT_RETENTION',
    flag: '--sent-retention',
    schema: z.string().transform((value, ctx) => {
      const seconds = parseDuration(value);
      if (seconds === undefined || seconds > 366 * 86_400) {
        ctx.addIssue({ code: 'custom', message: 'not a duration of at most 366d' });
        return z.NEVER;
      }
      return seconds;
    }),
    default: () => 3600,
    fix: 'use 0 (forget sent events at once) or a duration such as 90s, 30m, 1h, 7d (at most 366d)',
  },
  logLevel: {
    env: 'SHARDRELAY_LOG_LEVEL',
    flag: '--log-level',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    default: () => 'info',
    fix: 'use one of: fatal, error, warn, info, debug, trace, silent',
  },
  amqp10Url: {
    env: 'AMQP10_URL',
    flag: '--amqp10-url',
    schema: url(['amqp', 'amqps']),
    default: () => 'amqp://127.0.0.1:5672',
    fix: 'set AMQP10_URL to amqp://user:password@host:5672 (amqps:// for TLS; no user: SASL ANONYMOUS)',
  },
  amqp10Address: {
    env: 'SHARDRELAY_AMQP10_ADDRESS',
    flag: '--amqp10-address',
    schema: z.string().min(1).max(1000),
    default: () => '{topic}',
    fix: 'give the target address, {topic} standing for the event topic, e.g. {topic}, /queue/{topic} or /exchange/events/{topic}',
  },
  kafkaBrokers: {
    env: 'KAFKA_BROKERS',
    flag: '--kafka-brokers',
    schema: z.string().regex(/^\s*[A-Za-z0-9.[\]:_-]+:\d{1,5}\s*(,\s*[A-Za-z0-9.[\]:_-]+:\d{1,5}\s*)*$/),
    default: () => '127.0.0.1:9092',
    fix: 'give bootstrap brokers as host:port separated by commas, e.g. kafka-1:9092,kafka-2:9092',
  },
  kafkaTopic: {
    env: 'SHARDRELAY_KAFKA_TOPIC',
    flag: '--kafka-topic',
    schema: z.string().regex(/^([A-Za-z0-9._-]|\{topic\})+$/),
    default: () => '{topic}',
    fix: 'give a Kafka topic name (letters, digits, . _ -), {topic} standing for the event topic',
  },
  kafkaCompression: {
    env: 'SHARDRELAY_KAFKA_COMPRESSION',
    flag: '--kafka-compression',
    schema: z.enum(['none', 'gzip', 'snappy', 'lz4', 'zstd']),
    default: () => 'none',
    fix: 'use one of: none, gzip, snappy, lz4, zstd',
  },
  kafkaSaslMechanism: {
    env: 'KAFKA_SASL_MECHANISM',
    flag: '--kafka-sasl-mechanism',
    schema: z.enum(['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512']).optional(),
    fix: 'use one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (with KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD; SASL always runs over TLS)',
  },
  kafkaSaslUsername: {
    env: 'KAFKA_SASL_USERNAME',
    flag: '--kafka-sasl-username',
    schema: z.string().min(1).optional(),
    fix: 'give the SASL user name (with KAFKA_SASL_MECHANISM and KAFKA_SASL_PASSWORD)',
  },
  kafkaSaslPassword: {
    env: 'KAFKA_SASL_PASSWORD',
    flag: '--kafka-sasl-password',
    schema: z.string().min(1).optional(),
    fix: 'give the SASL password (with KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME); prefer the environment variable to the flag',
  },
  kinesisStream: {
    env: 'KINESIS_STREAM',
    flag: '--kinesis-stream',
    schema: z.string().regex(/^([A-Za-z0-9._-]|\{topic\}){1,128}$/),
    default: () => 'shardrelay',
    fix: 'give a stream name (letters, digits, . _ -, at most 128), {topic} standing for the event topic',
  },
  kinesisRegion: {
    env: 'AWS_REGION',
    flag: '--kinesis-region',
    schema: z
      .string()
      .regex(/^[a-z]{2}(-[a-z]+)+-\d+$/)
      .optional(),
    fix: 'give an AWS region such as eu-west-1; leave unset for the SDK default (profile, else us-east-1)',
  },
  kinesisEndpoint: {
    env: 'KINESIS_ENDPOINT',
    flag: '--kinesis-endpoint',
    schema: url(['http', 'https']).optional(),
    fix: "set KINESIS_ENDPOINT to http(s)://host:port, or leave it unset for the region's endpoint",
  },
  routes: {
    env: 'SHARDRELAY_ROUTES',
    flag: '--routes',
    // Taken as text here; routeTableOf (routing/loadRoutes.ts) parses it, naming the exact place.
    schema: z.string().optional(),
    fix: 'give routes as JSON (see the README, "Routing"), or use --routes-file',
  },
  routesFile: {
    env: 'SHARDRELAY_ROUTES_FILE',
    flag: '--routes-file',
    schema: z.string().min(1).optional(),
    fix: 'give the path of a JSON routes file (see the README, "Routing")',
  },
};

/** Values given on the command line, by setting name; undefined when not given. */
export type ConfigOverrides = { readonly [K in keyof RelayConfig]?: unknown };

function redactForMessage(key: keyof RelayConfig, value: unknown): string {
  if (/password/i.test(key)) return '***';
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return /url/i.test(key) ? redact(text) : text;
}

/**
 * Builds the configuration from flags, then environment variables, then defaults. Throws a
 * ConfigError naming the flag and variable and saying how to fix it; the CLI exits with code 2.
 */
export function loadConfig(
  overrides: ConfigOverrides = {},
  env: NodeJS.ProcessEnv = process.env,
  required: readonly (keyof RelayConfig)[] = ['databaseUrl'],
): RelayConfig {
  const result: Partial<Record<keyof RelayConfig, unknown>> = {};
  for (const key of Object.keys(SETTINGS) as (keyof RelayConfig)[]) {
    const setting = SETTINGS[key] as Setting<typeof key>;
    const given = overrides[key] ?? env[setting.env];
    const name = `${setting.flag} / ${setting.env}`;
    if (given === undefined || given === '') {
      if (setting.default) result[key] = setting.default();
      else if (required.includes(key)) throw new ConfigError(name, 'is required but not set', setting.fix);
      continue;
    }
    const parsed = setting.schema.safeParse(given);
    if (!parsed.success) {
      const problem = parsed.error.issues[0]?.message ?? 'invalid value';
      throw new ConfigError(name, `${redactForMessage(key, given)} (${problem})`, setting.fix);
    }
    result[key] = parsed.data;
  }
  if ((result.sink === 'http' || required.includes('webhookUrl')) && result.webhookUrl === undefined) {
    throw new ConfigError(
      '--webhook-url / WEBHOOK_URL',
      'is required by the http sink',
      SETTINGS.webhookUrl.fix,
    );
  }
  const sasl = [result.kafkaSaslMechanism, result.kafkaSaslUsername, result.kafkaSaslPassword];
  if (sasl.some((v) => v !== undefined) && sasl.some((v) => v === undefined)) {
    throw new ConfigError(
      '--kafka-sasl-mechanism / KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD',
      'only some of the three are set',
      'set all three for SASL, or none for a plain connection',
    );
  }
  return Object.freeze(result as RelayConfig);
}
