/**
 * The routing sink: one Sink in front of several, chosen per row by the routes (routes.ts).
 *
 * A claimed batch is split by route; each part goes to its sink concurrently under the batch's
 * own deadline; the outcomes are merged back per row, in order, so the batch still ends in one
 * completion. A row no route takes fails `permanent` with a reason naming the missing route
 * (dead at once: retrying cannot route it).
 *
 * ## A down broker must not hold the other routes' rows
 *
 * Each part's outcomes settle by the deadline (settleByDeadline; unsettled → `unknown`, re-sent
 * later with the same event id). That alone bounds the harm to one deadline per batch, but every
 * batch that holds a row of the down route would wait that long, and with rows spread over all
 * shards that is every batch: the healthy routes' throughput would fall to one batch per deadline
 * per connection. So each route has a breaker:
 *
 * - `up`: parts are sent as they come.
 * - a part that settles with no confirm and at least one `unknown`, retryable or deferred outcome
 *   (a stall, a refused connection, a nack storm) turns the route `down`. A row the sink held back
 *   by its own limit (`heldBySink`: its request slots all busy until the deadline) is no sign of a
 *   down broker and does not count: before, a healthy webhook saturated by concurrent batches was
 *   taken down, and sent only probes, until one confirmed.
 * - `down`: the route's rows are deferred at once ("route down"), without touching its sink (no
 *   attempt counted; back after half the time the route has been down), except one probe: at most
 *   every PROBE_INTERVAL_MS and never two at a time, the first row of a part is sent with a
 *   deadline of at most PROBE_BUDGET_MS. A probe confirmed turns the route `up`.
 *
 * So while a route is down the other routes' batches wait at most PROBE_BUDGET_MS, once per
 * PROBE_INTERVAL_MS per sink instance, instead of the whole send timeout on every batch.
 *
 * ## In-database routes
 *
 * A route to a sink that writes through the claim transaction (pg-boss, an `InDatabaseSink`)
 * makes the routing sink itself an in-database sink: the relay then hands it the transaction,
 * which it passes to those routes only; its broker routes see the same context as any broker
 * sink. Without such a route it is a broker sink and never receives the transaction. A part of an
 * in-database route is never abandoned at the deadline (the transaction must not be committed
 * while it still writes) and never runs beside another such part (their savepoints would
 * interleave on the one connection): those parts run one after the other, each awaited to the
 * end, concurrently with the broker parts.
 */
import type { Transaction } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import { settleByDeadline } from '../sinks/deadline.js';
import {
  confirmed,
  deferred,
  permanent,
  unknown,
  type InDatabaseSink,
  type OutboxMessage,
  type RelaySink,
  type SendContext,
  type SendOutcome,
  type Sink,
} from '../sinks/sink.js';
import { noRouteReason, routeOf, type RouteTable } from './routes.js';

/** A probe of a down route gives other routes' rows at most this long to wait. */
export const PROBE_BUDGET_MS = 1_000;
/** A down route is probed at most this often per sink instance. */
export const PROBE_INTERVAL_MS = 2_000;

/** Per-route figures, for metrics: one call per part sent (or failed fast). */
export interface RoutePartReport {
  readonly route: string;
  readonly outcomes: readonly SendOutcome[];
  /** Seconds the part took; 0 when failed fast. */
  readonly seconds: number;
  readonly down: boolean;
}

export interface RoutingSinkOptions {
  readonly table: RouteTable;
  /** One started-or-not sink per route name of `table.sinks`, of either kind. */
  readonly sinks: ReadonlyMap<string, RelaySink>;
  readonly now?: () => number;
}

/** What the routing sink adds to the sink it is. */
export interface Routes {
  readonly routes: readonly string[];
  /** Called after every part; the relay points it at its metrics. */
  onPart: ((report: RoutePartReport) => void) | undefined;
  /** Whether a route is down (its breaker open). */
  isDown(route: string): boolean;
  /** The sink of one route (another thread's forwarded send goes straight to it). */
  sinkOf(route: string): RelaySink | undefined;
}

/** A broker sink when every route is one; an in-database sink when any route is (see above). */
export type RoutingSink = (Sink & Routes) | (InDatabaseSink & Routes);

interface RouteState {
  down: boolean;
  /** When the route went down (meaningful while `down`). */
  downSince: number;
  probing: boolean;
  lastProbeAt: number;
}

/** Over broker sinks only, the routing sink is a broker sink. */
export function createRoutingSink(
  options: RoutingSinkOptions & { readonly sinks: ReadonlyMap<string, Sink> },
): Sink & Routes;
export function createRoutingSink(options: RoutingSinkOptions): RoutingSink;
export function createRoutingSink(options: RoutingSinkOptions): RoutingSink {
  const { table, sinks } = options;
  const now = options.now ?? Date.now;
  const states = new Map<string, RouteState>();
  for (const name of Object.keys(table.sinks)) {
    if (!sinks.has(name)) throw new Error(`routing sink: no sink built for route ${name}`);
    states.set(name, { down: false, downSince: 0, probing: false, lastProbeAt: 0 });
  }
  // Parts of in-database routes run one after the other on this chain.
  let transactionChain: Promise<unknown> = Promise.resolve();

  const routing = {
    name: 'routes',
    routes: [...states.keys()],
    onPart: undefined as RoutingSink['onPart'],
    isDown: (route: string) => states.get(route)?.down ?? false,
    sinkOf: (route: string) => sinks.get(route),

    async start() {
      // All at once; a sink that cannot start fails the relay's start, naming its route.
      await Promise.all(
        [...sinks].map(([route, sink]) =>
          sink.start().catch((error: unknown) => {
            throw new Error(`route ${route}: ${toError(error).message}`, {
              cause: error,
            });
          }),
        ),
      );
    },

    async close() {
      await Promise.allSettled([...sinks.values()].map((sink) => sink.close()));
    },

    // The transaction comes only when this is an in-database sink (the relay gives it by `kind`).
    async sendBatch(
      messages: readonly OutboxMessage[],
      context: SendContext,
      transaction?: Transaction<Database>,
    ): Promise<SendOutcome[]> {
      const outcomes: (SendOutcome | undefined)[] = new Array(messages.length).fill(undefined);
      const parts = new Map<string, number[]>();
      messages.forEach((message, i) => {
        const route = routeOf(table, message);
        // A canary (relay/canary.ts) that no rule routes has no broker to cross: it is confirmed
        // here, so it still measures claim to completion instead of filling the dead letters
        // every canary interval. A rule that matches its topic sends it like any other row.
        if (route === undefined)
          outcomes[i] = isCanary(message) ? confirmed : permanent(noRouteReason(message));
        else parts.set(route, [...(parts.get(route) ?? []), i]);
      });
      await Promise.all(
        [...parts].map(async ([route, indexes]) => {
          const part = indexes.map((i) => messages[i] as OutboxMessage);
          const results = await sendPart(route, part, context, transaction);
          indexes.forEach((i, k) => (outcomes[i] = results[k]));
        }),
      );
      return outcomes.map((o) => o ?? unknown('routing: no outcome'));
    },
  };
  const inDatabase = [...sinks.values()].some((sink) => sink.kind === 'in-database');
  const self: RoutingSink = inDatabase ? { ...routing, kind: 'in-database' } : routing;

  async function sendPart(
    route: string,
    part: readonly OutboxMessage[],
    context: SendContext,
    transaction: Transaction<Database> | undefined,
  ): Promise<SendOutcome[]> {
    const state = states.get(route) as RouteState;
    const sink = sinks.get(route) as RelaySink;
    let toSend = part;
    let deadline = context.deadline;
    const started = now();
    if (state.down) {
      const probe = !state.probing && started - state.lastProbeAt >= PROBE_INTERVAL_MS;
      if (!probe) {
        const outcome = downOutcome(route, state, started);
        const outcomes = part.map(() => outcome);
        self.onPart?.({ route, outcomes, seconds: 0, down: true });
        return outcomes;
      }
      state.probing = true;
      state.lastProbeAt = started;
      toSend = part.slice(0, 1);
      deadline = Math.min(deadline, started + PROBE_BUDGET_MS);
    }
    let sent: SendOutcome[];
    try {
      sent = await sendWithin(route, sink, toSend, context, deadline, transaction);
    } finally {
      state.probing = false;
    }
    const confirmedAny = sent.some((o) => o.status === 'confirmed');
    // Anything but a confirm or a permanent refusal: the broker stalled, refused the connection or
    // the messages, or could not be reached in time.
    const transient = sent.some(
      (o) =>
        o.status === 'unknown' ||
        (o.status === 'deferred' && !o.ownLimit) ||
        (o.status === 'failed' && o.retryable),
    );
    if (confirmedAny) state.down = false;
    else if (transient && !state.down) {
      // The failed send counts as the last probe: the next one comes PROBE_INTERVAL_MS later.
      state.down = true;
      state.downSince = now();
      state.lastProbeAt = state.downSince;
    }
    // The rest of a probed part: still down, or back up with this probe (then due again soon).
    const restOutcome = state.down
      ? downOutcome(route, state, now())
      : deferred(`route ${route} came back up with this batch's probe; not sent in it`);
    const rest = part.slice(toSend.length).map(() => restOutcome);
    const outcomes = [...sent, ...rest];
    self.onPart?.({ route, outcomes, seconds: (now() - started) / 1000, down: state.down });
    return outcomes;
  }

  /**
   * A row of a down route not sent: deferred (no attempt counted: the broker never saw it), back in
   * half the time the route has been down, at least one probe interval (the relay caps it at the
   * retry cap). So a route down for an hour dead-letters nothing, and its rows come back less and
   * less often meanwhile instead of filling every batch.
   */
  function downOutcome(route: string, state: RouteState, at: number): SendOutcome {
    return deferred(
      `route ${route} is down (its broker failed or stalled); not sent`,
      Math.max(PROBE_INTERVAL_MS, (at - state.downSince) / 2),
    );
  }

  async function sendWithin(
    route: string,
    sink: RelaySink,
    part: readonly OutboxMessage[],
    context: SendContext,
    deadline: number,
    transaction: Transaction<Database> | undefined,
  ): Promise<SendOutcome[]> {
    const label = (outcome: SendOutcome): SendOutcome =>
      outcome.status === 'confirmed' ? outcome : { ...outcome, error: `route ${route}: ${outcome.error}` };
    if (sink.kind === 'in-database') {
      // Not reached: a routing sink with such a route is itself in-database, given the transaction.
      if (!transaction) return part.map(() => label(unknown('no claim transaction was given')));
      // Awaited to the end and one at a time: see the comment at the top.
      const run = transactionChain.then(() => sink.sendBatch(part, context, transaction));
      transactionChain = run.catch(() => undefined);
      try {
        const results = await run;
        return part.map((_, k) => label(results[k] ?? unknown('the sink returned too few outcomes')));
      } catch (error) {
        return part.map(() => label(unknown(toError(error).message)));
      }
    }
    const whole = sink.sendBatch(part, { ...context, deadline });
    const each = part.map((_, k) =>
      whole.then((results) => results[k] ?? unknown('the sink returned too few outcomes')),
    );
    return (await settleByDeadline(each, deadline)).map(label);
  }

  return self;
}

function isCanary(message: OutboxMessage): boolean {
  return (message as { readonly canary?: boolean }).canary === true;
}

export function isRoutingSink(sink: RelaySink): sink is RoutingSink {
  return 'routes' in sink && 'onPart' in sink;
}
