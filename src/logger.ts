import { destination, pino, type Logger } from 'pino';
import { redact } from './redact.js';

export type { Logger };

/**
 * Structured JSON logs on stderr (stdout stays free for command output such as `status --json`).
 * Failures carry shard, lane, replica and, for event-level problems, the event's correlation id and
 * traceparent, so a log line can be joined to the application's trace.
 */
export function createLogger(level: string = 'info', bindings: Record<string, unknown> = {}): Logger {
  // Every line passes through redact: a URL with credentials can reach a log inside any error text.
  return pino(
    { level, base: { service: 'shardrelay', ...bindings }, hooks: { streamWrite: (line) => redact(line) } },
    destination(2),
  );
}

export const silentLogger: Logger = pino({ level: 'silent' });
