import type { Lane } from '../db/schema.js';
import type { ErrorCode } from '../errors.js';
import type { RoutePartReport } from '../routing/routingSink.js';
import type { BatchResult } from './deliverBatch.js';
import type { ForwardedOutcomes, ForwardedSend } from '../sinks/forwardingSink.js';
import type { HeldShards } from './shardOwnership.js';

/** Messages between the main thread and the real-time lane's worker thread. */
export type ToRealtimeWorker =
  /**
   * The shards the main thread holds, their generation and until when they stay held; `fence`:
   * the value of the ownership fence it was posted under (relay/ownershipFence.ts).
   */
  | ({ readonly type: 'shards'; readonly fence: number } & HeldShards)
  | { readonly type: 'stop' }
  /** The outcomes of a send the worker forwarded to the main thread's sink. */
  | ({ readonly type: 'sent' } & ForwardedOutcomes);

export type FromRealtimeWorker =
  | { readonly type: 'ready' }
  /** Start failed; the error's code and fix survive the thread boundary (an Error's class does not). */
  | {
      readonly type: 'failed';
      readonly code: ErrorCode | undefined;
      readonly message: string;
      readonly fix: string | undefined;
    }
  | { readonly type: 'batch'; readonly shard: number; readonly lane: Lane; readonly result: BatchResult }
  | { readonly type: 'stopped'; readonly clean: boolean }
  /** Routing only: one route's part of a batch, for the main thread's per-route metrics. */
  | { readonly type: 'routePart'; readonly report: RoutePartReport }
  /** A send for the main thread's sink (a sink whose client loads in one thread only). */
  | ({ readonly type: 'send' } & ForwardedSend);
