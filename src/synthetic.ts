import type { OutboxEvent } from './enqueue.js';

/** Synthetic events for demos, tests and benchmarks: a JSON payload padded to about `payloadBytes`. */
export function syntheticEvents(
  count: number,
  options: { topic?: string; payloadBytes?: number; lane?: 'realtime' | 'batch'; startAt?: number } = {},
): OutboxEvent[] {
  const padding = 'x'.repeat(Math.max(0, (options.payloadBytes ?? 200) - 40));
  const start = options.startAt ?? 0;
  return Array.from({ length: count }, (_, i) => ({
    topic: options.topic ?? 'demo.event',
    payload: { n: start + i, padding },
    ...(options.lane ? { lane: options.lane } : {}),
  }));
}
