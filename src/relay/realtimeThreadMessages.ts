import type { Lane } from '../db/schema.js';
import type { BatchResult } from './batchRunner.js';

/** Messages between the main thread and the real-time lane's worker thread. */
export type ToRealtimeWorker =
  { readonly type: 'shards'; readonly shards: readonly number[] } | { readonly type: 'stop' };

export type FromRealtimeWorker =
  | { readonly type: 'ready' }
  | { readonly type: 'batch'; readonly shard: number; readonly lane: Lane; readonly result: BatchResult }
  | { readonly type: 'stopped'; readonly clean: boolean };
