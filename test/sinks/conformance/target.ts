/**
 * The sink conformance suite: one set of scenarios every sink runs against its real broker.
 *
 * ## Adding a sink (a "target")
 *
 * 1. Write `test/sinks/conformance/targets/<name>.ts` exporting a `ConformanceTarget` (below). It
 *    knows how to reach (or start) the real broker, how to build the sink pointed at any
 *    host:port (the suite passes either the broker itself or a TCP proxy in front of it), and how
 *    to consume with a real client of that broker, counting deliveries by message id.
 * 2. Add it to `targets/index.ts` (the registry).
 * 3. Add `test/sinks/conformance/<name>.test.ts` with one line:
 *    `runConformance(myTarget);` (imported from `../conformance/suite.js`). One test file per
 *    target lets the runner run targets in parallel; `registry.test.ts` fails when a registered
 *    target has no test file, or a test file no registered target.
 * 4. Run it: `npm test -- test/sinks/conformance/<name>.test.ts`.
 *
 * The scenarios (suite.ts), each with fresh destinations from `destination()`:
 * - delivery: N events in batches, every outcome `confirmed`, the consumer counts each event id
 *   exactly once, and nothing else;
 * - canaries: a row of topic `shardrelay.canary` is confirmed and reaches the consumer;
 * - oversized: a message the broker (or the sink, before sending, where the broker would take
 *   the whole connection down) refuses is `failed` permanent and never delivered; its batch
 *   neighbours are delivered;
 * - broker down: nothing listens at the address → every outcome `failed` retryable, fast;
 * - link cut: the proxy cuts every connection with confirms pending → those are `unknown` (or
 *   retryable if never written), never `confirmed`; a re-send with the same ids is confirmed and
 *   the consumer then holds every id, each copy carrying its own id;
 * - stalled link: the proxy stops forwarding → by its deadline (not later) the batch is `unknown`,
 *   except messages the sink never wrote (queued for a request slot, say), which may be retryable;
 *   at least one is `unknown`; after the heal a re-send is confirmed and consumed;
 * - credentials: the secret the sink was built with appears in no log line, no outcome and no
 *   error, across a delivery, a broker-down start and a cut.
 *
 * A scenario that cannot apply to a target is declared `notApplicable` with the reason, which the
 * test report shows as a skip with that reason (e.g. pg-boss writes inside the claim transaction,
 * so there is no separate link to cut). Everything else must hold for every target.
 *
 * Broker availability: `start()` returns a skip reason when the broker is missing on a developer
 * machine, and must throw under `CI=true` (use `requireBroker` from test/support/brokers.ts), so
 * CI fails instead of passing without having run.
 */
import type { Logger } from 'pino';
import type { RelaySink } from '../../../src/sinks/sink.js';
import type { ReceivedIds } from '../../support/brokers.js';

/** A TCP address on loopback: the broker's own, or the suite's proxy in front of it. */
export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

/** The scenarios a target may opt out of, with a reason. */
export type Scenario = 'oversized' | 'brokerDown' | 'linkCut' | 'stall';

/** What the suite hands a target when it builds a sink. */
export interface SinkRequest {
  /** Where the sink must connect: the broker, a TCP proxy in front of it, or a dead port. */
  readonly via: Endpoint;
  /** A debug-level logger; pass it to the sink (if it logs) so the suite can read every line. */
  readonly log: Logger;
  /**
   * The secret to build the sink with (password, token). The broker may not accept it when the
   * suite only checks for leaks (broker down); for delivery it is the broker's real secret.
   */
  readonly secret: string;
}

/** One isolated destination on the broker (unique exchange/queue/stream/address) and its consumer. */
export interface Destination {
  /**
   * Where this destination's broker listens when it differs per destination (an HTTP receiver per
   * destination); default the broker's `endpoint`.
   */
  readonly endpoint?: Endpoint;
  /** The topic to give messages meant for this destination. */
  readonly topic: string;
  /**
   * Ids received by a real consumer of the broker, counted by the broker-level message id (AMQP
   * message-id, Nats-Msg-Id, STOMP message-id header, pg-boss job id, Kafka key/header, Kinesis
   * record's event id), once per delivery. Messages of topic `shardrelay.canary` sent by a sink of
   * this destination must be received here too.
   */
  readonly received: ReceivedIds;
  /** Builds a sink (not started) that sends this destination's topics to `request.via`. */
  createSink(request: SinkRequest): RelaySink;
  /** Stops the consumer and deletes what `destination()` created. */
  close(): Promise<void>;
}

/** A running broker, as a target reports it from `start()`. */
export interface RunningBroker {
  /** Where the broker listens; the suite's proxy forwards there. */
  readonly endpoint: Endpoint;
  /** The secret the sink needs to deliver here (or an arbitrary one if the broker needs none). */
  readonly secret: string;
  /** A fresh destination with its consumer already subscribed. */
  destination(): Promise<Destination>;
  /** Stops the broker if the target started it; closes admin connections otherwise. */
  stop(): Promise<void>;
}

export interface ConformanceTarget {
  /** The sink's name (`Sink.name`), used in test titles and the registry. */
  readonly name: string;
  /**
   * Starts the broker (in a temp dir, on loopback ports) or checks that it runs. Returns a skip
   * reason when it is missing locally; throws when it is missing under `CI=true`.
   */
  start(context: { readonly databaseUrl: string }): Promise<RunningBroker | string>;
  /**
   * The oversized scenario: a payload the broker refuses permanently. `payloadBytes` is the size
   * of the filler string the suite puts in the payload; `refusedBy` says who refuses it (the
   * broker's answer, or the sink's own limit check configured to match the broker).
   */
  readonly oversized:
    | { readonly payloadBytes: number; readonly refusedBy: 'broker' | 'sink' }
    | { readonly notApplicable: string };
  /** Scenarios that cannot apply to this target, with the reason shown in the report. */
  readonly notApplicable?: Partial<Record<Exclude<Scenario, 'oversized'>, string>>;
  /** Timing knobs; defaults in suite.ts. */
  readonly timing?: {
    /** Batch deadline of the stall scenario. Default 1,500 ms. */
    readonly stallDeadlineMs?: number;
    /** Batch deadline of the cut scenario (the sink may hold unknowns until it). Default 5,000 ms. */
    readonly cutDeadlineMs?: number;
    /** How long a consumer may take to see a set of ids. Default 20,000 ms. */
    readonly receiveTimeoutMs?: number;
  };
}
