/**
 * The public API of the `shardrelay` package. Everything else under src/ is internal and may
 * change in any release; the `exports` map of package.json blocks deep imports.
 *
 * - Producers: `enqueue` writes events in the application's own transaction.
 * - Operators who run the relay from code instead of the CLI: `loadConfig`, `migrate`,
 *   `startReplica` (what `shardrelay run` starts).
 * - Custom sinks: the `Sink` interface (a broker; `InDatabaseSink` for one that writes through the
 *   claim transaction) and its outcome helpers, passed as `startReplica({ sink })`.
 */
export {
  enqueue,
  type EnqueueOptions,
  type EnqueuedEvent,
  type EnqueueResult,
  type Executor,
  type OutboxEvent,
} from './enqueue.js';
export type { KyselyExecutor, PgQueryable } from './executor.js';
export { ConfigError, InvalidEventError, ShardRelayError, type ErrorCode } from './errors.js';
export {
  SETTINGS,
  SINK_NAMES,
  loadConfig,
  type ConfigOverrides,
  type RelayConfig,
  type SinkName,
} from './config.js';
export { DEFAULT_MIGRATIONS_DIR, migrate, type MigrateOptions, type MigrateResult } from './db/migrate.js';
export { startReplica } from './wiring/replica.js';
export type { Relay, RelayHooks, StartRelayOptions } from './wiring/relay.js';
export type { BatchResult } from './relay/deliverBatch.js';
export { createLogger, type Logger } from './logger.js';
export {
  confirmed,
  deferred,
  heldBySink,
  permanent,
  retryable,
  unknown,
  type InDatabaseSink,
  type OutboxMessage,
  type RelaySink,
  type SendContext,
  type SendOutcome,
  type Sink,
} from './sinks/sink.js';
export type { LanePredicate } from './lanes/lanePredicate.js';
export type { Lane } from './db/schema.js';
