/**
 * AMQP 1.0 sink (the ISO/OASIS protocol of ActiveMQ Artemis, Azure Service Bus, Solace, Qpid and
 * RabbitMQ's AMQP 1.0 plugin), over `rhea`. One connection, one unsettled sender link per target
 * address; a row is `confirmed` only when the broker settles its delivery as `accepted`.
 *
 * Wire format: CloudEvents' AMQP binding, binary mode. The body is one data section holding the
 * payload's JSON; `content-type: application/json`; the other attributes travel as application
 * properties prefixed `cloudEvents_` (the binding's prefix since 1.0.1). The AMQP properties repeat
 * what AMQP tooling reads: `message-id` = event id (the key consumers deduplicate on), `subject` =
 * topic, `correlation-id`, `creation-time` = enqueue time; the header says `durable`.
 *
 * Outcomes, per message (the delivery's terminal state, AMQP 1.0 section 3.4):
 * - accepted                           → confirmed
 * - rejected                           → failed permanent (the broker will not take this message;
 *                                        its error condition is in the row's error)
 * - released, modified                 → failed retryable (not processed; may be sent again)
 * - link or connection lost with the   → unknown: the broker may hold it; the relay re-sends it with
 *   delivery unsettled                   the same message id
 * - no settlement by the batch deadline → unknown
 * - not sent (no credit from the broker → failed retryable: nothing left this process
 *   until the deadline, link refused,
 *   connection down)
 * - larger than the link's or the       → failed permanent, before sending
 *   configured maximum message size
 *
 * Flow control: a sender may only send while it holds link credit (`sendable()`); beyond that the
 * batch waits for the broker's `sendable` (more credit), up to its deadline. A broker that grants
 * no credit therefore costs a batch its deadline and ends it retryable, never unknown.
 *
 * Connection life cycle: like the RabbitMQ sink. One connection shared by every batch; when it
 * dies every unsettled delivery becomes `unknown` and the next batch reconnects; failed connects
 * back off exponentially and batches during the back-off fail fast as retryable. A silent peer is
 * found by AMQP idle time-outs: the sink asks the broker for a frame at least every
 * `idleTimeoutMs / 2` and gives up on a connection after `2 × idleTimeoutMs` without input.
 */
import rhea, {
  type Connection,
  type ConnectionOptions,
  type Delivery,
  type EventContext,
  type Message,
  type Sender,
} from 'rhea';
import { ConfigError, ShardRelayError, redactUrl, toError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { parseBrokerUrl } from './brokerUrl.js';
import {
  applicationHeaders,
  encodeBinary,
  toCloudEvent,
  traceHeaders,
  DATA_CONTENT_TYPE,
} from './cloudEvent.js';
import { settleByDeadline } from './deadline.js';
import {
  confirmed,
  permanent,
  retryable,
  unknown,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
  type Sink,
} from './sink.js';

export interface Amqp10SinkOptions {
  /** `amqp://[user:password@]host:5672` or `amqps://...` (TLS). Without a user, SASL ANONYMOUS. */
  readonly url: string;
  /**
   * Target address of a message; `{topic}` is replaced by its topic. Default `{topic}`. Broker
   * conventions differ: RabbitMQ 3.x wants `/queue/<name>`, `/exchange/<name>/<key>` or
   * `/topic/<key>`; Artemis and Qpid take queue or address names; Service Bus a queue or topic.
   */
  readonly address?: string;
  /** CloudEvents `source` attribute. Default `shardrelay`. */
  readonly source?: string;
  /** AMQP idle time-out asked of the broker, ms; a connection silent for twice as long is dropped. Default 10 000. */
  readonly idleTimeoutMs?: number;
  /** Upper bound of a connect (TCP, SASL, open) and of a link attach. Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  /**
   * Largest encoded body; larger rows fail permanently before sending. The link's own
   * `max-message-size`, when the broker announces one, applies too. Default 16 MiB.
   */
  readonly maxMessageBytes?: number;
  /** Back-off between failed reconnect attempts: doubles from `initialMs` up to `maxMs`. */
  readonly reconnectBackoff?: { readonly initialMs: number; readonly maxMs: number };
  /** Pass the relay's logger; default silent. */
  readonly log?: Logger;
}

export const DEFAULT_AMQP10_ADDRESS = '{topic}';

const DEFAULTS = {
  idleTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  maxMessageBytes: 16 * 1024 * 1024,
  reconnectBackoff: { initialMs: 250, maxMs: 30_000 },
  /** How long `close()` waits for the broker's close before destroying the socket. */
  closeTimeoutMs: 2_000,
} as const;

/** The CloudEvents AMQP binding's application-property prefix (binding 1.0.1+; `cloudEvents:` before). */
const CE_PREFIX = 'cloudEvents_';

type Settle = (outcome: SendOutcome) => void;

/** One sender link and the deliveries it has not seen settled. */
interface SenderLink {
  readonly address: string;
  readonly sender: Sender;
  /** Resolves when the broker attached the link; rejects with its reason when it refused. */
  readonly opened: Promise<void>;
  readonly unsettled: Map<Delivery, Settle>;
  /** Batches waiting for credit (or for the link to die). */
  readonly creditWaiters: Set<() => void>;
  /** Rejects `opened` (a no-op once it settled). */
  readonly refuse: (error: Error) => void;
  closed: boolean;
}

/** One connection and its senders; replaced as a whole when it dies. */
interface Link {
  readonly generation: number;
  readonly connection: Connection;
  readonly senders: Map<string, SenderLink>;
  closed: boolean;
}

export function createAmqp10Sink(options: Amqp10SinkOptions): Sink {
  const parsed = parseBrokerUrl(
    options.url,
    'amqp10 url',
    ['amqp:', 'amqps:'],
    'amqp://user:password@host:5672',
  );
  const addressTemplate = options.address ?? DEFAULT_AMQP10_ADDRESS;
  const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs;
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULTS.maxMessageBytes;
  const backoff = options.reconnectBackoff ?? DEFAULTS.reconnectBackoff;
  const source = options.source;
  const log = (options.log ?? silentLogger).child({ sink: 'amqp10' });
  validate(addressTemplate, idleTimeoutMs, maxMessageBytes);
  const where = redactUrl(options.url);
  const password = decodeURIComponent(parsed.password);
  const scrub = (text: string): string => (password ? text.split(password).join('***') : text);
  const describe = (error: unknown): string => scrub(toError(error).message);

  const common = {
    host: parsed.hostname,
    port: parsed.port ? Number(parsed.port) : parsed.protocol === 'amqps:' ? 5671 : 5672,
    ...(parsed.username ? { username: decodeURIComponent(parsed.username), password } : {}),
    // Reconnecting is this sink's job: rhea's own reconnect would re-attach links silently and
    // hide from us that the unsettled deliveries of the old connection are now unknown.
    reconnect: false,
    idle_time_out: idleTimeoutMs,
    container_id: `shardrelay-${process.pid}`,
  };
  const connectionOptions: ConnectionOptions =
    parsed.protocol === 'amqps:' ? { ...common, transport: 'tls', servername: parsed.hostname } : common;

  let link: Link | null = null;
  let connecting: Promise<Link> | null = null;
  let generation = 0;
  let failedAttempts = 0;
  let nextAttemptAt = 0;
  let lastConnectError = '';
  let closing = false;

  function retire(target: Link, reason: string): void {
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

  /** Settles every delivery of the sender `unknown` and wakes its credit waiters; returns how many. */
  function dropSender(state: SenderLink, reason: string): number {
    if (state.closed) return 0;
    state.closed = true;
    state.refuse(new Error(reason));
    const count = state.unsettled.size;
    const outcome = unknown(
      `AMQP 1.0 link to '${state.address}' lost with the delivery unsettled (${reason})`,
    );
    for (const settle of state.unsettled.values()) settle(outcome);
    state.unsettled.clear();
    for (const wake of state.creditWaiters) wake();
    state.creditWaiters.clear();
    return count;
  }

  function openLink(deadline: number): Promise<Link> {
    const budget = Math.min(connectTimeoutMs, deadline - Date.now());
    if (budget <= 0) return Promise.reject(new Error('no time left before the batch deadline to connect'));
    return new Promise<Link>((resolve, reject) => {
      const container = rhea.create_container({ id: common.container_id });
      const connection = container.connect(connectionOptions);
      const target: Link = { generation: ++generation, connection, senders: new Map(), closed: false };
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

  async function ensureLink(deadline: number): Promise<Link> {
    if (closing) throw new Error('the sink is closed');
    if (link && !link.closed) return link;
    if (!connecting) {
      const wait = nextAttemptAt - Date.now();
      if (wait > 0) {
        throw new Error(
          `reconnecting in ${wait} ms after ${failedAttempts} failed attempt(s): ${lastConnectError}`,
        );
      }
      connecting = openLink(deadline).then(
        (fresh) => {
          failedAttempts = 0;
          nextAttemptAt = 0;
          if (closing) {
            retire(fresh, 'sink closed while connecting');
            throw new Error('the sink is closed');
          }
          link = fresh;
          log.info({ generation: fresh.generation, url: where }, 'AMQP 1.0 connected');
          return fresh;
        },
        (error: unknown) => {
          failedAttempts += 1;
          lastConnectError = describe(error);
          const delay = Math.min(backoff.maxMs, backoff.initialMs * 2 ** (failedAttempts - 1));
          nextAttemptAt = Date.now() + Math.round(delay * (0.5 + Math.random() / 2));
          log.warn(
            { url: where, attempt: failedAttempts, error: lastConnectError },
            'AMQP 1.0 connect failed',
          );
          throw error;
        },
      );
      const settled = (): void => {
        connecting = null;
      };
      connecting.then(settled, settled);
    }
    return raceDeadline(connecting, deadline, 'the batch deadline passed while connecting');
  }

  /** The open sender for `address` on `target`, attaching it if needed. */
  function senderFor(target: Link, address: string): SenderLink {
    const existing = target.senders.get(address);
    if (existing && !existing.closed) return existing;
    // Unsettled mode: the broker settles each delivery with its outcome, which is the confirm.
    const sender = target.connection.open_sender({
      // A durable terminus: RabbitMQ declares (and checks) a `/queue/...` address as a durable
      // queue only then, and other brokers keep the link's state across their restarts.
      target: { address, durable: 2 },
      snd_settle_mode: 0,
      autosettle: true,
    });
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
      refuse: rejectOpen,
      closed: false,
    };
    target.senders.set(address, state);
    const settleWith = (context: EventContext, outcome: (delivery: Delivery) => SendOutcome): void => {
      const delivery = context.delivery;
      if (!delivery) return;
      const settle = state.unsettled.get(delivery);
      if (!settle) return;
      state.unsettled.delete(delivery);
      settle(outcome(delivery));
    };
    sender.on('sender_open', () => resolveOpen());
    sender.on('sendable', () => {
      for (const wake of state.creditWaiters) wake();
      state.creditWaiters.clear();
    });
    sender.on('accepted', (context: EventContext) => settleWith(context, () => confirmed));
    sender.on('rejected', (context: EventContext) =>
      settleWith(context, (delivery) =>
        permanent(
          `the broker rejected the message at '${address}': ${amqpErrorText(outcomeError(delivery))}`,
        ),
      ),
    );
    sender.on('released', (context: EventContext) =>
      settleWith(context, () => retryable(`the broker released the message at '${address}' (not processed)`)),
    );
    sender.on('modified', (context: EventContext) =>
      settleWith(context, (delivery) =>
        retryable(
          `the broker returned the message at '${address}' as modified${
            (delivery.remote_state as { undeliverable_here?: boolean } | undefined)?.undeliverable_here
              ? ' (undeliverable here)'
              : ''
          }`,
        ),
      ),
    );
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

  /** Resolves when `state` may send (credit), died, or the deadline passed. */
  function waitForCredit(state: SenderLink, deadline: number): Promise<void> {
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

  function encode(message: OutboxMessage): Message | string {
    let event;
    let encoded;
    try {
      event = toCloudEvent(message, { source });
      encoded = encodeBinary(event);
    } catch (error) {
      return `cannot encode the event: ${describe(error)}`;
    }
    const properties: Record<string, string> = { ...applicationHeaders(message), ...traceHeaders(message) };
    for (const [name, value] of Object.entries(encoded.headers)) {
      if (name.startsWith('ce-')) properties[`${CE_PREFIX}${name.slice(3)}`] = value;
    }
    return {
      message_id: message.eventId,
      durable: true,
      subject: message.topic,
      content_type: DATA_CONTENT_TYPE,
      creation_time: message.createdAt,
      ...(message.correlationId !== null ? { correlation_id: message.correlationId } : {}),
      application_properties: properties,
      body: rhea.message.data_section(encoded.body),
    } as Message;
  }

  /** Sends the messages of one address in order; each gets its outcome promise. */
  async function sendToAddress(
    target: Link,
    address: string,
    items: readonly { message: Message; bytes: number; index: number }[],
    outcomes: Promise<SendOutcome>[],
    deadline: number,
  ): Promise<void> {
    const state = senderFor(target, address);
    const notSent = (error: string): void => {
      for (const item of items) outcomes[item.index] ??= Promise.resolve(retryable(`not sent: ${error}`));
    };
    try {
      await raceDeadline(state.opened, deadline, 'the batch deadline passed while attaching the link');
    } catch (error) {
      notSent(`the link to '${address}' could not be attached: ${describe(error)}`);
      return;
    }
    const remoteMax = Number(
      (state.sender as unknown as { remote?: { attach?: { max_message_size?: unknown } } }).remote?.attach
        ?.max_message_size ?? 0,
    );
    for (const item of items) {
      const limit = remoteMax > 0 ? Math.min(remoteMax, maxMessageBytes) : maxMessageBytes;
      if (item.bytes > limit) {
        outcomes[item.index] = Promise.resolve(
          permanent(
            `message of about ${item.bytes} bytes exceeds the maximum of ${limit} bytes for '${address}'`,
          ),
        );
        continue;
      }
      while (!state.closed && !state.sender.sendable() && Date.now() < deadline) {
        await waitForCredit(state, deadline);
      }
      if (state.closed) {
        outcomes[item.index] = Promise.resolve(
          retryable(`not sent: the link to '${address}' was lost earlier in this batch`),
        );
        continue;
      }
      if (!state.sender.sendable()) {
        outcomes[item.index] = Promise.resolve(
          retryable(`not sent: no link credit from the broker for '${address}' before the batch deadline`),
        );
        continue;
      }
      outcomes[item.index] = new Promise<SendOutcome>((resolve) => {
        const delivery = state.sender.send(item.message);
        state.unsettled.set(delivery, resolve);
      });
    }
  }

  return {
    name: 'amqp10',

    async start() {
      try {
        const deadline = Date.now() + connectTimeoutMs;
        const target = await ensureLink(deadline);
        // A fixed address is attached now, so a refused address shows at start, not as retries.
        if (!addressTemplate.includes('{topic}')) {
          await raceDeadline(
            senderFor(target, addressTemplate).opened,
            deadline,
            `the link to '${addressTemplate}' was not attached within ${connectTimeoutMs} ms`,
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

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (messages.length === 0) return [];
      let target: Link;
      try {
        target = await ensureLink(context.deadline);
      } catch (error) {
        const outcome = retryable(`AMQP 1.0 broker unavailable at ${where}: ${describe(error)}`);
        return messages.map(() => outcome);
      }
      const outcomes: Promise<SendOutcome>[] = new Array<Promise<SendOutcome>>(messages.length);
      const byAddress = new Map<string, { message: Message; bytes: number; index: number }[]>();
      messages.forEach((message, index) => {
        const encoded = encode(message);
        if (typeof encoded === 'string') {
          outcomes[index] = Promise.resolve(permanent(encoded));
          return;
        }
        const address = addressTemplate.split('{topic}').join(message.topic);
        const bytes = approximateSize(encoded);
        const items = byAddress.get(address);
        if (items) items.push({ message: encoded, bytes, index });
        else byAddress.set(address, [{ message: encoded, bytes, index }]);
      });
      await Promise.all(
        [...byAddress].map(([address, items]) =>
          sendToAddress(target, address, items, outcomes, context.deadline),
        ),
      );
      return settleByDeadline(outcomes, context.deadline);
    },

    async close() {
      closing = true;
      const inFlight = connecting;
      if (inFlight) await inFlight.catch(() => undefined);
      const current = link;
      link = null;
      if (!current) return;
      current.closed = true;
      for (const state of current.senders.values()) dropSender(state, 'the sink was closed');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          destroySocket(current.connection);
          resolve();
        }, DEFAULTS.closeTimeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          resolve();
        };
        current.connection.once('connection_close', done);
        current.connection.once('disconnected', done);
        try {
          current.connection.close();
        } catch {
          done();
        }
      });
    },
  };
}

/** Body plus properties, near enough to the encoded size for a size check (encoding twice costs CPU). */
function approximateSize(message: Message): number {
  const body = (message.body as { content?: Buffer }).content;
  let size = (body?.length ?? 0) + 256;
  for (const [name, value] of Object.entries(message.application_properties as Record<string, string>)) {
    size += name.length + value.length + 8;
  }
  return size;
}

function outcomeError(delivery: Delivery): unknown {
  return (delivery.remote_state as { error?: unknown } | undefined)?.error;
}

/** `condition: description` of an AMQP error (or of anything else thrown). */
function amqpErrorText(error: unknown): string {
  if (error === undefined || error === null) return 'no reason given';
  const { condition, description } = error as { condition?: unknown; description?: unknown };
  if (condition !== undefined) {
    return description ? `${String(condition)}: ${String(description)}` : String(condition);
  }
  return toError(error).message;
}

function closeConnection(connection: Connection): void {
  try {
    if (!connection.is_closed()) connection.close();
  } catch {
    // Already gone.
  }
  // A stalled peer never answers the close; do not keep its socket.
  setTimeout(() => destroySocket(connection), DEFAULTS.closeTimeoutMs).unref();
}

function destroySocket(connection: Connection): void {
  const socket = (connection as { socket?: { destroy(): void } }).socket;
  socket?.destroy();
}

function raceDeadline<T>(promise: Promise<T>, deadline: number, reason: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(reason)), Math.max(0, deadline - Date.now()));
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

function validate(addressTemplate: string, idleTimeoutMs: number, maxMessageBytes: number): void {
  if (addressTemplate.length === 0) {
    throw new ConfigError('amqp10 address', 'is empty', 'give an address such as {topic} or /queue/{topic}');
  }
  if (!Number.isInteger(idleTimeoutMs) || idleTimeoutMs < 0) {
    throw new ConfigError(
      'amqp10 idleTimeoutMs',
      `${idleTimeoutMs} is not a whole number of ms`,
      'use e.g. 10000 (0 disables)',
    );
  }
  if (!Number.isInteger(maxMessageBytes) || maxMessageBytes < 1) {
    throw new ConfigError(
      'amqp10 maxMessageBytes',
      `${maxMessageBytes} is not a positive whole number`,
      'use e.g. 16777216',
    );
  }
}
