/**
 * Errors that reach an operator. Each has a stable `code` (for scripts and alerts), the context it
 * happened in (shard, lane, replica, setting) and, where the operator can act, a `fix`.
 */
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'DATABASE_UNREACHABLE'
  | 'EVENT_INVALID'
  | 'SINK_UNAVAILABLE'
  | 'MIGRATION_FAILED'
  | 'SCHEMA_MISSING'
  | 'PERMISSION_DENIED'
  | 'LOCK_TIMEOUT';

export class ShardRelayError extends Error {
  readonly code: ErrorCode;
  readonly context: Readonly<Record<string, unknown>>;
  readonly fix: string | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { context?: Record<string, unknown>; fix?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ShardRelayError';
    this.code = code;
    this.context = Object.freeze({ ...options.context });
    this.fix = options.fix;
  }

  /** One line for a terminal: what went wrong, then how to fix it. */
  describe(): string {
    return this.fix ? `${this.message}\n  fix: ${this.fix}` : this.message;
  }
}

/** Bad configuration: the CLI exits with code 2 and prints the setting and the fix. */
export class ConfigError extends ShardRelayError {
  constructor(setting: string, problem: string, fix: string, cause?: unknown) {
    super('CONFIG_INVALID', `invalid setting ${setting}: ${problem}`, { context: { setting }, fix, cause });
    this.name = 'ConfigError';
  }
}

/** An event refused by `enqueue`; nothing of the call was written. */
export class InvalidEventError extends ShardRelayError {
  constructor(index: number, problem: string, fix: string) {
    super('EVENT_INVALID', `event #${index} is invalid: ${problem}`, { context: { index }, fix });
    this.name = 'InvalidEventError';
  }
}

/** Coerces any thrown value to an Error, so logging and `last_error` always have a message. */
export function toError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  if (typeof thrown === 'string') return new Error(thrown);
  try {
    return new Error(JSON.stringify(thrown));
  } catch {
    return new Error(String(thrown));
  }
}
