/**
 * The back-off formula lives in src/backoff.ts, below the relay, so that sinks (pg-boss's retry
 * delays) use it without importing the relay. This re-export keeps the relay's imports unchanged.
 */
export { backoffDelayMs, type BackoffPolicy } from '../backoff.js';
