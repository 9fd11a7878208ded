/**
 * The AMQP 1.0 sink's link manager, over `rhea`: one connection shared by every batch, with one
 * unsettled sender link per target address. It owns their life and their bookkeeping (which
 * deliveries are unsettled, how much credit is left); what is sent, and what a delivery's terminal
 * state means for a row, is the sink's (amqp10Sink.ts), handed in as `DeliveryOutcomes`.
 *
 * Connection life cycle: like the RabbitMQ link manager's. When the connection dies every
 * unsettled delivery is settled with the sink's `lost` outcome and the next batch reconnects;
 * failed connects back off exponentially and batches during the back-off fail fast. A silent peer
 * is found by AMQP idle time-outs: the manager asks the broker for a frame at least every
 * `idleTimeoutMs / 2` and gives up on a connection after `2 × idleTimeoutMs` without input.
 *
 * Flow control: a sender may only send while it holds link credit (`creditLeft`); beyond that a
 * batch waits for the broker's `sendable` (more credit, `waitForCredit`), up to its deadline.
 */
import rhea, {
  type Connection,
  type ConnectionOptions,
  type Delivery,
  type EventContext,
  type Sender,
  type SenderOptions,
} from 'rhea';
import type { Socket } from 'node:net';
import { raceDeadline } from '../raceDeadline.js';
import { ConnectAttempts } from './connectAttempts.js';
import { ConfigError, ShardRelayError, toError } from '../errors.js';
import { maskSecrets, redact } from '../redact.js';
import type { Logger } from '../logger.js';
import { parseBrokerUrl } from './brokerUrl.js';
import type { SendOutcome } from './sink.js';

/**
 * What the sink makes of each terminal state of a delivery (AMQP 1.0 section 3.4), and of a
 * delivery whose link or connection was lost before it was settled.
 */
export interface DeliveryOutcomes {
  accepted(address: string, delivery: Delivery): SendOutcome;
  rejected(address: string, delivery: Delivery): SendOutcome;
  released(address: string, delivery: Delivery): SendOutcome;
  modified(address: string, delivery: Delivery): SendOutcome;
  lost(address: string, reason: string): SendOutcome;
}

export interface Amqp10LinkOptions {
  /** `amqp://[user:password@]host:5672` or `amqps://...` (TLS). Without a user, SASL ANONYMOUS. */
  readonly url: string;
  /** AMQP idle time-out asked of the broker, ms; a connection silent for twice as long is dropped. */
  readonly idleTimeoutMs: number;
  /** Upper bound of a connect (TCP, SASL, open) and of a link attach. */
  readonly connectTimeoutMs: number;
  /** Back-off between failed reconnect attempts: doubles from `initialMs` up to `maxMs`. */
  readonly reconnectBackoff: { readonly initialMs: number; readonly maxMs: number };
  readonly outcomes: DeliveryOutcomes;
  readonly log: Logger;
}

export type Settle = (outcome: SendOutcome) => void;

/** One sender link and the deliveries it has not seen settled. */
export interface SenderLink {
  readonly address: string;
  readonly sender: Sender;
  /** Resolves when the broker attached the link; rejects with its reason when it refused. */
  readonly opened: Promise<void>;
  readonly unsettled: Map<Delivery, Settle>;
  /** Batches waiting for credit (or for the link to die). */
  readonly creditWaiters: Set<() => void>;
  /**
   * Deliveries handed to rhea but not yet written, oldest first. rhea takes a message whenever the
   * link had credit at the last flow, and only counts the credit down when it writes the transfer
   * (on a later tick); without this count a batch would hand it more than the credit, and those
   * messages would wait in rhea's buffer, then be reported unknown though they never left.
   */
  handedOver: number;
  /** Rejects `opened` (a no-op once it settled). */
  readonly refuse: (error: Error) => void;
  closed: boolean;
}

/** One connection and its senders; replaced as a whole when it dies. */
export interface Amqp10Connection {
  /** 1 for the first connection of this sink, +1 for each reconnect (in the logs as `generation`). */
  readonly generation: number;
  readonly connection: Connection;
  readonly senders: Map<string, SenderLink>;
  closed: boolean;
}

export interface Amqp10Links {
  /** The URL with its credentials masked, for logs and errors. */
  readonly where: string;
  /** An error's message with the password masked (rhea may quote it). */
  describe(error: unknown): string;
  /**
   * Connects within the connect time-out, for the sink's `start()`, and attaches `fixedAddress`
   * when given, so that a refused address shows at start, not as retries.
   */
  start(fixedAddress: string | undefined): Promise<void>;
  /** The live connection, connecting if needed; throws (with the reason) when none can be had in time. */
  current(deadline: number): Promise<Amqp10Connection>;
  /** The open sender for `address` on `target`, attaching it if needed. */
  senderFor(target: Amqp10Connection, address: string): SenderLink;
  close(): Promise<void>;
}

/** How long `close()` waits for the broker's close before destroying the socket. */
const CLOSE_TIMEOUT_MS = 2_000;

export function createAmqp10Links(options: Amqp10LinkOptions): Amqp10Links {
  const parsed = parseBrokerUrl(
    options.url,
    'amqp10 url',
    ['amqp:', 'amqps:'],
    'amqp://user:password@host:5672',
  );
  const { idleTimeoutMs, connectTimeoutMs, outcomes, log } = options;
  const backoff = options.reconnectBackoff;
  if (!Number.isInteger(idleTimeoutMs) || idleTimeoutMs < 0) {
    throw new ConfigError(
      'amqp10 idleTimeoutMs',
      `${idleTimeoutMs} is not a whole number of ms`,
      'use e.g. 10000 (0 disables)',
    );
  }
  const where = redact(options.url);
  const password = decodeURIComponent(parsed.password);
  const scrub = (text: string): string => maskSecrets(text, [password]);
  const describe = (error: unknown): string => scrub(toError(error).message);

  const common = {
    host: parsed.hostname,
    port: parsed.port ? Number(parsed.port) : parsed.protocol === 'amqps:' ? 5671 : 5672,
    ...(parsed.username ? { username: decodeURIComponent(parsed.username), password } : {}),
    // Reconnecting is this manager's job: rhea's own reconnect would re-attach links silently and
    // hide from us that the unsettled deliveries of the old connection are now unknown.
    reconnect: false,
    idle_time_out: idleTimeoutMs,
    container_id: `shardrelay-${process.pid}`,
  };
  const connectionOptions: ConnectionOptions =
    parsed.protocol === 'amqps:' ? { ...common, transport: 'tls', servername: parsed.hostname } : common;

  let link: Amqp10Connection | null = null;
  let generation = 0;
  let closing = false;
  const attempts = new ConnectAttempts<Amqp10Connection>({
    backoff,
    describe,
    onFailure: (attempt, error) => log.warn({ url: where, attempt, error }, 'AMQP 1.0 connect failed'),
  });

  function retire(target: Amqp10Connection, reason: string): void {
    if (target.closed) return;
    target.closed = true;
    if (link === target) link = null;
    let unsettled = 0;
    for (const state of target.senders.values()) unsettled += dropSender(state, reason);
    log.warn(
      { generation: target.generation, reason, unsettled },
      'AMQP 1.0 connection lost; unsettled deliveries are unknown',
    );
    closeConnection(target.connection);
  }

  /** Settles every delivery of the sender as lost and wakes its credit waiters; returns how many. */
  function dropSender(state: SenderLink, reason: string): number {
    if (state.closed) return 0;
    state.closed = true;
    state.refuse(new Error(reason));
    const count = state.unsettled.size;
    const outcome = outcomes.lost(state.address, reason);
    for (const settle of state.unsettled.values()) settle(outcome);
    state.unsettled.clear();
    for (const wake of state.creditWaiters) wake();
    state.creditWaiters.clear();
    return count;
  }

  function openConnection(deadline: number): Promise<Amqp10Connection> {
    const budget = Math.min(connectTimeoutMs, deadline - Date.now());
    if (budget <= 0) return Promise.reject(new Error('no time left before the batch deadline to connect'));
    return new Promise<Amqp10Connection>((resolve, reject) => {
      const container = rhea.create_container({ id: common.container_id });
      const connection = container.connect(connectionOptions);
      const target: Amqp10Connection = {
        generation: ++generation,
        connection,
        senders: new Map(),
        closed: false,
      };
      let opened = false;
      const fail = (reason: string): void => {
        clearTimeout(timer);
        if (!opened) {
          target.closed = true;
          closeConnection(connection);
          reject(new Error(reason));
        } else retire(target, reason);
      };
      const timer = setTimeout(() => fail(`connect did not finish within ${budget} ms`), budget);
      connection.on('connection_open', () => {
        clearTimeout(timer);
        opened = true;
        corkFrameWrites(connection);
        resolve(target);
      });
      connection.on('connection_error', (context: EventContext) => {
        fail(`the broker closed the connection: ${amqpErrorText(context.connection.error)}`);
      });
      connection.on('connection_close', () => fail('the connection was closed'));
      // All senders share rhea's default session: when the broker ends it (RabbitMQ 3.x does so for
      // an address it cannot resolve, then drops the connection), every link is gone.
      connection.on('session_error', (context: EventContext) => {
        fail(`the broker ended the session: ${amqpErrorText(context.session?.error)}`);
      });
      connection.on('session_close', () => fail('the session was closed'));
      connection.on('disconnected', (context: EventContext) => {
        fail(context.error ? `disconnected: ${describe(context.error)}` : 'disconnected');
      });
      // rhea raises unhandled errors as exceptions from its socket callbacks; these listeners keep
      // them inside the sink, where they become the outcomes above.
      connection.on('error', (context: EventContext) => fail(`error: ${describe(context.error)}`));
      connection.on('protocol_error', (context: EventContext) =>
        fail(`protocol error: ${describe(context.error)}`),
      );
    });
  }

  async function current(deadline: number): Promise<Amqp10Connection> {
    if (closing) throw new Error('the sink is closed');
    if (link && !link.closed) return link;
    return attempts.connect(deadline, openConnection, (fresh) => {
      if (closing) {
        retire(fresh, 'sink closed while connecting');
        throw new Error('the sink is closed');
      }
      link = fresh;
      log.info({ generation: fresh.generation, url: where }, 'AMQP 1.0 connected');
      return fresh;
    });
  }

  function senderFor(target: Amqp10Connection, address: string): SenderLink {
    const existing = target.senders.get(address);
    if (existing && !existing.closed) return existing;
    // Unsettled mode: the broker settles each delivery with its outcome, which is the confirm.
    const senderOptions = {
      // A durable terminus: RabbitMQ declares (and checks) a `/queue/...` address as a durable
      // queue only then, and other brokers keep the link's state across their restarts.
      target: { address, durable: 2 },
      snd_settle_mode: 0 as const,
      autosettle: true,
      // rhea reports `modified` as `released` unless told otherwise; both are retryable, but the
      // row's error should say which (undeliverable-here matters to an operator).
      treat_modified_as_released: false,
    };
    // (treat_modified_as_released is read by rhea's Sender but missing from its typings.)
    const sender = target.connection.open_sender(senderOptions as SenderOptions);
    let resolveOpen!: () => void;
    let rejectOpen!: (error: Error) => void;
    const opened = new Promise<void>((resolve, reject) => {
      resolveOpen = resolve;
      rejectOpen = reject;
    });
    opened.catch(() => undefined); // observed by the batches that await it
    const state: SenderLink = {
      address,
      sender,
      opened,
      unsettled: new Map(),
      creditWaiters: new Set(),
      handedOver: 0,
      refuse: rejectOpen,
      closed: false,
    };
    target.senders.set(address, state);
    const settleWith = (
      context: EventContext,
      outcome: (address: string, delivery: Delivery) => SendOutcome,
    ): void => {
      const delivery = context.delivery;
      if (!delivery) return;
      const settle = state.unsettled.get(delivery);
      if (!settle) return;
      state.unsettled.delete(delivery);
      settle(outcome(address, delivery));
    };
    sender.on('sender_open', () => resolveOpen());
    sender.on('sendable', () => {
      for (const wake of state.creditWaiters) wake();
      state.creditWaiters.clear();
    });
    sender.on('accepted', (context: EventContext) => settleWith(context, outcomes.accepted));
    sender.on('rejected', (context: EventContext) => settleWith(context, outcomes.rejected));
    sender.on('released', (context: EventContext) => settleWith(context, outcomes.released));
    sender.on('modified', (context: EventContext) => settleWith(context, outcomes.modified));
    // The outcome events above settle the row. rhea also raises `settled` for every delivery, and
    // passes an event nobody listens to on to the session, the connection and the container, each
    // logging it and building its context: a listener here ends it at the link. Measured with
    // bench/studies/amqp10SinkAllocation.ts, the sink allocated 6,176-6,178 bytes a
    // message before, 5,498-5,508 with it.
    sender.on('settled', () => undefined);
    const lost = (why: string): void => {
      if (target.senders.get(address) === state) target.senders.delete(address);
      const count = dropSender(state, why);
      if (count > 0 || !target.closed) {
        log.warn(
          { generation: target.generation, address, reason: why, unsettled: count },
          'AMQP 1.0 link closed',
        );
      }
    };
    sender.on('sender_error', (context: EventContext) =>
      lost(`the broker detached the link: ${amqpErrorText(context.sender?.error)}`),
    );
    sender.on('sender_close', () => lost('the link was closed'));
    return state;
  }

  return {
    where,
    describe,

    async start(fixedAddress) {
      try {
        const deadline = Date.now() + connectTimeoutMs;
        const target = await current(deadline);
        if (fixedAddress !== undefined) {
          await raceDeadline(
            senderFor(target, fixedAddress).opened,
            deadline,
            `the link to '${fixedAddress}' was not attached within ${connectTimeoutMs} ms`,
          );
        }
      } catch (error) {
        throw new ShardRelayError(
          'SINK_UNAVAILABLE',
          `cannot connect to the AMQP 1.0 broker at ${where}: ${describe(error)}`,
          {
            context: { sink: 'amqp10', url: where },
            // No `cause`: rhea's error objects are not ours to vet for credentials.
            fix: /sasl|auth|unauthori[sz]ed/i.test(describe(error))
              ? 'check the user name and password in the AMQP 1.0 URL'
              : 'check that the broker is running, reachable at that address and speaks AMQP 1.0',
          },
        );
      }
    },

    current,
    senderFor,

    async close() {
      closing = true;
      const inFlight = attempts.inFlight;
      if (inFlight) await inFlight.catch(() => undefined);
      const open = link;
      link = null;
      if (!open) return;
      open.closed = true;
      for (const state of open.senders.values()) dropSender(state, 'the sink was closed');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          destroySocket(open.connection);
          resolve();
        }, CLOSE_TIMEOUT_MS);
        const done = (): void => {
          clearTimeout(timer);
          resolve();
        };
        open.connection.once('connection_close', done);
        open.connection.once('disconnected', done);
        try {
          open.connection.close();
        } catch {
          done();
        }
      });
    },
  };
}

/**
 * Hands an encoded message to the sender (which must have credit); `settle` gets the delivery's
 * outcome. Format 0 is what rhea sends for a message it encodes itself; given a format, it takes
 * the bytes as they are.
 */
export function deliver(state: SenderLink, encoded: Buffer, settle: Settle): void {
  const delivery = state.sender.send(encoded, undefined, 0);
  state.unsettled.set(delivery, settle);
  state.handedOver += 1;
}

/** Link credit not yet spoken for by deliveries rhea has still to write. */
export function creditLeft(state: SenderLink): number {
  if (!state.sender.sendable()) return 0;
  // rhea's own link fields (AMQP's link-credit and delivery-count): it counts a delivery when it
  // writes its transfer, and its credit down with it.
  const link = state.sender as unknown as { credit?: number; delivery_count?: number };
  const written = link.delivery_count ?? 0;
  // A drain (the receiver asking the sender to use up or give back its credit) advances
  // delivery-count without transfers; resynchronise rather than count credit twice.
  if (state.handedOver < written) state.handedOver = written;
  return (link.credit ?? 0) - (state.handedOver - written);
}

/** Resolves when `state` may send (credit), died, or the deadline passed. */
export function waitForCredit(state: SenderLink, deadline: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      state.creditWaiters.delete(done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
    state.creditWaiters.add(done);
  });
}

/** The link's `max-message-size` as the broker announced it at attach; 0 when it set none. */
export function remoteMaxMessageSize(state: SenderLink): number {
  return Number(
    (state.sender as unknown as { remote?: { attach?: { max_message_size?: unknown } } }).remote?.attach
      ?.max_message_size ?? 0,
  );
}

/** `condition: description` of an AMQP error (or of anything else thrown). */
export function amqpErrorText(error: unknown): string {
  if (error === undefined || error === null) return 'no reason given';
  const { condition, description } = error as { condition?: unknown; description?: unknown };
  if (condition !== undefined) {
    return description ? `${String(condition)}: ${String(description)}` : String(condition);
  }
  return toError(error).message;
}

/**
 * rhea writes every pending frame of an output cycle with its own `socket.write`, i.e. a system call
 * per transfer: a batch of 1,000 messages cost 1,000 writes. Corked around the cycle, they leave in
 * one writev. Measured in a V8 profile of the relay draining 10,000 rows into the AMQP 1.0 node
 * (bench phase broker-sinks, load average 17): rhea's socket writes were 2.4 s of 44 s busy (5.5 %).
 * The connection is opened with reconnect off, so its AMQP transport is never replaced.
 *
 * The transfers of a batch are not written in one output cycle, though: rhea's `_process` (one
 * tick that sends every delivery handed over since the last) writes each transfer frame through
 * its own `output()`, so the cork above spanned one frame and each transfer still cost a write.
 * Corked around `_process` too, they leave together. Measured in a V8 profile of the relay
 * draining 30,000 rows into the AMQP 1.0 node (bench broker-sinks, load average 20-25), before
 * this: single-buffer socket writes under rhea's `_process` were 568 ms of 6,968 ms busy (8 %).
 * Counted in the sink alone (20,000 messages in batches of 1,000): 20,000 socket writes before,
 * 10 writevs after.
 *
 * Inside `_process` the per-frame `output()` is also deferred to one call at the end of the
 * cycle: each call re-armed rhea's outgoing heartbeat timer (clearTimeout, setTimeout and a bound
 * function) for every transfer. The frames wait in rhea's transport until that call writes them,
 * as they waited in the corked socket before; the heartbeat is armed from the cycle's last write,
 * as it was. bench/studies/amqp10SinkAllocation.ts: 5,498-5,508 bytes allocated a message before,
 * 4,837-4,863 after (the broker-sinks ratio, old and new alternated twice, moved within its spread).
 */
function corkFrameWrites(connection: Connection): void {
  const internals = connection as unknown as {
    transport?: { write?: (socket: Socket) => void };
    _process?: () => void;
    output?: () => void;
    socket?: Socket;
  };
  const transport = internals.transport;
  const output = internals.output;
  /** True while `_process` runs: `output()` only notes that it was asked for. */
  let inCycle = false;
  let outputAsked = false;
  if (typeof output === 'function') {
    internals.output = (): void => {
      if (inCycle) outputAsked = true;
      else output.call(connection);
    };
  }
  const write = transport?.write;
  if (transport && typeof write === 'function') {
    transport.write = (socket: Socket): void => {
      socket.cork();
      try {
        write.call(transport, socket);
      } finally {
        socket.uncork();
      }
    };
  }
  // rhea schedules `_process` as `this._process.bind(this)`, read when it schedules: replacing
  // the connection's own property is enough. Corks nest: the inner uncorks do not flush.
  const processPending = internals._process;
  if (typeof processPending === 'function') {
    internals._process = (): void => {
      const socket = internals.socket;
      socket?.cork();
      inCycle = true;
      try {
        processPending.call(connection);
      } finally {
        inCycle = false;
        if (outputAsked) {
          outputAsked = false;
          output?.call(connection);
        }
        socket?.uncork();
      }
    };
  }
}

function closeConnection(connection: Connection): void {
  try {
    if (!connection.is_closed()) connection.close();
  } catch {
    // Already gone.
  }
  // A stalled peer never answers the close; do not keep its socket. A peer that does answer ends
  // the wait (and its timer) at once.
  const timer = setTimeout(() => destroySocket(connection), CLOSE_TIMEOUT_MS).unref();
  connection.once('disconnected', () => clearTimeout(timer));
}

function destroySocket(connection: Connection): void {
  const socket = (connection as { socket?: { destroy(): void } }).socket;
  socket?.destroy();
}
