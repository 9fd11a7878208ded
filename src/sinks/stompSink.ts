/**
 * STOMP sink, for ActiveMQ Classic and Artemis (and any STOMP 1.2 broker): sends each outbox row as
 * a persistent SEND frame with a receipt, and reports it `confirmed` only when the broker's RECEIPT
 * for that frame arrives. ActiveMQ writes a persistent message to its store before it answers the
 * receipt, so a receipt means "stored".
 *
 * Client: @stomp/stompjs (the maintained STOMP client; it is written for WebSockets) over a plain
 * TCP socket through @stomp/tcp-wrapper, from the same maintainers. Its own reconnection is off:
 * this sink opens one connection at a time itself, like the RabbitMQ sink, so that a batch arriving
 * while the broker is down fails fast instead of waiting on a reconnect timer.
 *
 * Wire format, read by a JMS consumer as usual (ActiveMQ maps these STOMP headers onto JMS):
 * - destination    `/queue/<topic>` by default; a template per topic (`destination`), so topics
 *                  can go to queues or to topics (`/topic/{topic}`) with any prefix;
 * - persistent     `true` (JMSDeliveryMode PERSISTENT);
 * - type           the topic (JMSType);
 * - correlation-id the row's correlation id (JMSCorrelationID);
 * - JMSXGroupID    the row's key, when it has one: ActiveMQ message groups then keep each key's
 *                  messages in order on one consumer, as a partition key does elsewhere;
 * - ce_id, ce_source, ce_type, ce_time, ce_specversion, ... the CloudEvents attributes as string
 *                  properties (`_` rather than `-`, so they are valid JMS property names that
 *                  selectors can use). **`ce_id` is the event id**: ActiveMQ assigns JMSMessageID
 *                  (`message-id` on the STOMP side) itself and ignores one sent by the producer
 *                  (measured on 5.17), so consumers deduplicate on `ce_id`;
 * - body           the payload's JSON, sent without `content-length` so that ActiveMQ delivers a
 *                  TextMessage (with it, a BytesMessage), `content-type: application/json`.
 * The row's own headers travel as string properties; the ones above cannot be overridden by a row.
 *
 * Outcomes, per message:
 * - RECEIPT                          → confirmed
 * - ERROR naming the frame's receipt → failed: permanent when the message says the frame can never
 *                                      be taken (not authorized, a destination that does not exist
 *                                      or is invalid, too large), retryable otherwise (store or
 *                                      memory limits, shutting down). ActiveMQ keeps the connection
 *                                      open after such an ERROR (measured: the next frame's receipt
 *                                      comes), so only that message fails
 * - connection lost with the receipt → unknown: the broker may have stored it; the relay re-sends
 *   pending                            it with the same `ce_id`
 * - no receipt by the batch deadline → unknown (a stalled link; heartbeats then retire it)
 * - body over `maxMessageBytes`      → failed permanent, before sending: ActiveMQ answers a frame
 *                                      over its `maxDataLength` with an ERROR that names no receipt
 *                                      and closes the connection, which would turn every other
 *                                      pending receipt unknown and re-send the big row forever
 * - not sent (link down, back-off)   → failed retryable
 */
import { Client, type IFrame, type StompHeaders } from '@stomp/stompjs';
import { TCPWrapper } from '@stomp/tcp-wrapper';
import type { Socket } from 'node:net';
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

export interface StompSinkOptions {
  /** `stomp://user:password@host:61613`; user and password are sent as STOMP login/passcode. */
  readonly url: string;
  /** Destination of a topic: a template where `{topic}` is replaced. Default `/queue/{topic}`. */
  readonly destination?: string;
  /** CloudEvents `source` attribute. Default `shardrelay`. */
  readonly source?: string;
  /** STOMP heart-beats both ways; a silent link is retired after about twice this. Default 10 000. */
  readonly heartbeatMs?: number;
  /** Upper bound of a connect (TCP and CONNECTED frame). Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  /**
   * Largest body sent; larger rows fail permanently before sending. Keep it at or below the
   * broker's limit (ActiveMQ's STOMP `wireFormat.maxDataLength`, 100 MiB by default).
   */
  readonly maxMessageBytes?: number;
  /**
   * Connections to the broker; concurrent batches go through different ones. Default 4. ActiveMQ
   * handles a connection's frames one after the other and, with its store's default disk syncs,
   * syncs each persistent message before the next: one connection was the bottleneck. Measured on
   * the 2-core development machine (ActiveMQ 5.17, KahaDB, 2,000 pipelined SENDs, load average
   * ~16): 1 connection 470-650 messages/s, 8 connections 920-1,680/s, 16 connections 1,950/s;
   * with disk syncs off, 1 connection reached 7,400/s, so the syncs, not CPU, set the pace.
   */
  readonly connections?: number;
  /** Back-off between failed connect attempts: doubles from `initialMs` up to `maxMs`. */
  readonly reconnectBackoff?: { readonly initialMs: number; readonly maxMs: number };
  /** Pass the relay's logger; default silent. */
  readonly log?: Logger;
}

export const DEFAULT_STOMP_DESTINATION = '/queue/{topic}';

const DEFAULTS = {
  heartbeatMs: 10_000,
  connectTimeoutMs: 10_000,
  connections: 4,
  /** ActiveMQ 5.x StompWireFormat's default maxDataLength. */
  maxMessageBytes: 100 * 1024 * 1024,
  reconnectBackoff: { initialMs: 250, maxMs: 30_000 },
  /** How long `close()` waits for the broker's DISCONNECT receipt before dropping the socket. */
  closeTimeoutMs: 2_000,
} as const;

/**
 * Bytes a batch may leave unsent in the socket before it waits for 'drain'. Far above Node's
 * 16 KiB high-water mark, which a corked batch passes after ~25 frames and would uncork again.
 */
const MAX_BUFFERED_BYTES = 1024 * 1024;

/** Headers this sink sets on every frame; a row's own headers cannot replace them. */
const RESERVED = new Set([
  'destination',
  'receipt',
  'content-length',
  'content-type',
  'persistent',
  'type',
  'correlation-id',
  'message-id',
  'jmsxgroupid',
  'transaction',
  'expires',
  'priority',
  'reply-to',
]);

/** ERROR messages that mean the frame will never be accepted as it is (ActiveMQ and Artemis wording). */
const PERMANENT_ERROR =
  /not authori[sz]ed|security|illegal destination|invalid destination|unknown destination|does not exist|maximum (data|command|frame) length|too large|exceed/i;

/**
 * TCPWrapper that keeps its socket reachable, for back-pressure: stompjs ignores the return value
 * of a write, so without this a large batch would sit in memory unsent.
 */
class TcpLink extends TCPWrapper {
  declare tcp: Socket;
  protected override getSocket(port: number, host: string): Socket {
    const socket = super.getSocket(port, host);
    this.tcp = socket;
    return socket;
  }
}

/** One connection; replaced as a whole when it dies. */
interface Link {
  readonly slot: Slot;
  readonly generation: number;
  readonly client: Client;
  readonly socket: TcpLink;
  closed: boolean;
  /** Outcome setters of the frames whose receipt has not come, by receipt id. */
  readonly pending: Map<string, (outcome: SendOutcome) => void>;
}

/** One of the sink's connections: its live link, the connect in progress, its back-off. */
interface Slot {
  readonly index: number;
  link: Link | null;
  connecting: Promise<Link> | null;
  failedAttempts: number;
  nextAttemptAt: number;
  lastConnectError: string;
}

export function createStompSink(options: StompSinkOptions): Sink {
  const url = parseBrokerUrl(options.url, 'stomp url', ['stomp:'], 'stomp://user:password@host:61613');
  const host = url.hostname;
  const port = url.port ? Number(url.port) : 61613;
  const login = decodeURIComponent(url.username);
  const passcode = decodeURIComponent(url.password);
  const template = validateDestination(options.destination ?? DEFAULT_STOMP_DESTINATION);
  const heartbeatMs = nonNegativeInteger('stomp heartbeatMs', options.heartbeatMs ?? DEFAULTS.heartbeatMs);
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULTS.maxMessageBytes;
  const backoff = options.reconnectBackoff ?? DEFAULTS.reconnectBackoff;
  const source = options.source;
  const log = (options.log ?? silentLogger).child({ sink: 'stomp' });
  const where = redactUrl(options.url);
  const scrub = (text: string): string => (passcode ? text.split(passcode).join('***') : text);
  const describe = (error: unknown): string => scrub(toError(error).message);

  const connections = positiveInteger('stomp connections', options.connections ?? DEFAULTS.connections);
  const slots: Slot[] = Array.from({ length: connections }, (_, index) => ({
    index,
    link: null,
    connecting: null,
    failedAttempts: 0,
    nextAttemptAt: 0,
    lastConnectError: '',
  }));
  let generation = 0;
  let receipts = 0;
  let turn = 0;
  let closing = false;

  function retire(target: Link, reason: string): void {
    if (target.closed) return;
    target.closed = true;
    if (target.slot.link === target) target.slot.link = null;
    const outcome = unknown(`STOMP connection lost with the receipt pending (${reason})`);
    if (target.pending.size > 0) {
      log.warn(
        { generation: target.generation, pending: target.pending.size, reason },
        'STOMP link lost; pending receipts are unknown',
      );
    } else {
      log.warn({ generation: target.generation, reason }, 'STOMP link lost');
    }
    for (const settle of target.pending.values()) settle(outcome);
    target.pending.clear();
    // force: no DISCONNECT handshake on a link that is already dead or stalled.
    void target.client.deactivate({ force: true }).catch(() => undefined);
  }

  function openLink(slot: Slot, deadline: number): Promise<Link> {
    const budget = Math.min(connectTimeoutMs, deadline - Date.now());
    if (budget <= 0) return Promise.reject(new Error('no time left before the batch deadline to connect'));
    return new Promise<Link>((resolve, reject) => {
      let socket: TcpLink | undefined;
      let connected = false;
      let lastError = '';
      const client = new Client({
        webSocketFactory: () => {
          socket = new TcpLink(host, port);
          return socket;
        },
        connectHeaders: { login, passcode, host },
        // Reconnection is this sink's (see the file comment).
        reconnectDelay: 0,
        heartbeatIncoming: heartbeatMs,
        heartbeatOutgoing: heartbeatMs,
        connectionTimeout: budget,
        // A missed heart-beat drops the socket at once instead of waiting for a close handshake.
        discardWebsocketOnCommFailure: true,
        // stompjs's debug output includes the CONNECT frame, passcode included: never log it.
        debug: () => {},
        // With raw logging stompjs passes the frame it already serialised to `debug`; otherwise it
        // serialises every frame a second time for the debug string, which is then dropped.
        logRawCommunication: true,
      });
      const fail = (reason: string): void => {
        if (connected) return;
        connected = true; // settle once
        void client.deactivate({ force: true }).catch(() => undefined);
        reject(new Error(reason));
      };
      client.onConnect = () => {
        if (connected || !socket) return;
        connected = true;
        const fresh: Link = {
          slot,
          generation: ++generation,
          client,
          socket,
          closed: false,
          pending: new Map(),
        };
        client.onWebSocketClose = () => retire(fresh, lastError || 'connection closed');
        client.onStompError = (frame) => onError(fresh, frame);
        client.onHeartbeatLost = () => {
          lastError = `no heart-beat from the broker for over ${2 * heartbeatMs} ms`;
        };
        resolve(fresh);
      };
      client.onStompError = (frame) => fail(`the broker refused the connection: ${errorText(frame)}`);
      client.onWebSocketError = (event: unknown) => {
        lastError = socketError(event);
      };
      client.onWebSocketClose = () =>
        fail(lastError || `connection closed within ${budget} ms before CONNECTED`);
      client.activate();
    });
  }

  function onError(target: Link, frame: IFrame): void {
    const text = errorText(frame);
    const receipt = frame.headers['receipt-id'];
    const settle = receipt === undefined ? undefined : target.pending.get(receipt);
    if (receipt !== undefined && settle) {
      target.pending.delete(receipt);
      settle(errorOutcome(text));
      return;
    }
    // An ERROR about no frame in particular: STOMP brokers close the connection after it.
    log.warn({ generation: target.generation, error: text }, 'STOMP ERROR frame');
    retire(target, `ERROR frame: ${text}`);
  }

  async function ensureLink(slot: Slot, deadline: number): Promise<Link> {
    if (closing) throw new Error('the sink is closed');
    if (slot.link && !slot.link.closed) return slot.link;
    if (!slot.connecting) {
      const wait = slot.nextAttemptAt - Date.now();
      if (wait > 0) {
        throw new Error(
          `reconnecting in ${wait} ms after ${slot.failedAttempts} failed attempt(s): ${slot.lastConnectError}`,
        );
      }
      const connecting = openLink(slot, deadline).then(
        (fresh) => {
          slot.failedAttempts = 0;
          slot.nextAttemptAt = 0;
          if (closing) {
            retire(fresh, 'sink closed while connecting');
            throw new Error('the sink is closed');
          }
          slot.link = fresh;
          log.info({ connection: slot.index, generation: fresh.generation, url: where }, 'STOMP connected');
          return fresh;
        },
        (error: unknown) => {
          slot.failedAttempts += 1;
          slot.lastConnectError = describe(error);
          const delay = Math.min(backoff.maxMs, backoff.initialMs * 2 ** (slot.failedAttempts - 1));
          slot.nextAttemptAt = Date.now() + Math.round(delay * (0.5 + Math.random() / 2));
          log.warn(
            {
              connection: slot.index,
              url: where,
              attempt: slot.failedAttempts,
              error: slot.lastConnectError,
            },
            'STOMP connect failed',
          );
          throw error;
        },
      );
      slot.connecting = connecting;
      const settled = (): void => {
        slot.connecting = null;
      };
      connecting.then(settled, settled);
    }
    return raceDeadline(slot.connecting as Promise<Link>, deadline);
  }

  /**
   * The connection for the next batch: the live one with the fewest receipts outstanding, so
   * concurrent batches (one per shard) write through different connections; when none is live, the
   * next in turn, which connects (or fails fast while it backs off).
   */
  function pickSlot(): Slot {
    let best: Slot | undefined;
    for (const slot of slots) {
      if (!slot.link || slot.link.closed) continue;
      if (!best || slot.link.pending.size < (best.link as Link).pending.size) best = slot;
    }
    if (best && (best.link as Link).pending.size === 0) return best;
    // A busy live link, or none: an idle slot that may connect gets the batch first.
    const idle = slots.find((slot) => !slot.link && slot.nextAttemptAt <= Date.now());
    if (idle && (best === undefined || !idle.connecting)) return idle;
    return best ?? (slots[turn++ % slots.length] as Slot);
  }

  function sendOne(target: Link, message: OutboxMessage): Promise<SendOutcome> {
    let destination: string;
    let body: string;
    let headers: StompHeaders;
    try {
      destination = template.replaceAll('{topic}', message.topic);
      const encoded = encodeBinary(toCloudEvent(message, { source }));
      if (encoded.body.length > maxMessageBytes) {
        return Promise.resolve(
          permanent(`body of ${encoded.body.length} bytes exceeds maxMessageBytes (${maxMessageBytes})`),
        );
      }
      body = encoded.body.toString('utf8');
      headers = {};
      for (const [name, value] of Object.entries({
        ...applicationHeaders(message),
        ...traceHeaders(message),
      })) {
        if (!RESERVED.has(name) && !name.startsWith('ce_')) headers[name] = value;
      }
      for (const [name, value] of Object.entries(encoded.headers)) {
        if (name.startsWith('ce-')) headers[`ce_${name.slice(3)}`] = value;
      }
      headers['content-type'] = encoded.headers['content-type'] ?? DATA_CONTENT_TYPE;
      headers.persistent = 'true';
      headers.type = message.topic;
      if (message.correlationId !== null) headers['correlation-id'] = message.correlationId;
      if (message.key !== null) headers.JMSXGroupID = message.key;
    } catch (error) {
      return Promise.resolve(permanent(`cannot encode the event: ${describe(error)}`));
    }
    const receipt = `${target.generation}.${++receipts}`;
    headers.receipt = receipt;
    return new Promise<SendOutcome>((resolve) => {
      target.pending.set(receipt, resolve);
      target.client.watchForReceipt(receipt, () => {
        const settle = target.pending.get(receipt);
        target.pending.delete(receipt);
        settle?.(confirmed);
      });
      try {
        target.client.publish({ destination, headers, body, skipContentLengthHeader: true });
      } catch (error) {
        // Only a connection that just closed gets here: nothing was written.
        target.pending.delete(receipt);
        resolve(retryable(`not sent: ${describe(error)}`));
      }
    });
  }

  return {
    name: 'stomp',

    async start() {
      try {
        const deadline = Date.now() + connectTimeoutMs;
        await Promise.all(slots.map((slot) => ensureLink(slot, deadline)));
      } catch (error) {
        throw new ShardRelayError(
          'SINK_UNAVAILABLE',
          `cannot connect to STOMP at ${where}: ${describe(error)}`,
          {
            context: { sink: 'stomp', url: where },
            fix: /refused the connection/.test(describe(error))
              ? 'check the login and passcode in the STOMP URL and their rights on the broker'
              : 'check that the broker is running and its STOMP connector is reachable at that address',
          },
        );
      }
    },

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (messages.length === 0) return [];
      let target: Link;
      try {
        target = await ensureLink(pickSlot(), context.deadline);
      } catch (error) {
        const outcome = retryable(`STOMP broker unavailable at ${where}: ${describe(error)}`);
        return messages.map(() => outcome);
      }
      const pending: Promise<SendOutcome>[] = [];
      let drainWaits = 0;
      // stompjs writes each frame with its own socket.write, i.e. a system call per message: the
      // largest item of a CPU profile of the sink (8,000 messages to ActiveMQ: 465 ms in
      // writeUtf8String, about 58 µs a message). Corked, a batch leaves in a few writev calls and
      // that item drops out of the profile's top 15.
      const tcp = target.socket.tcp;
      tcp.cork();
      for (const message of messages) {
        if (target.closed) {
          pending.push(Promise.resolve(retryable('not sent: the STOMP link was lost earlier in this batch')));
          continue;
        }
        if (Date.now() >= context.deadline) {
          pending.push(Promise.resolve(retryable('not sent: back-pressure until the batch deadline')));
          continue;
        }
        pending.push(sendOne(target, message));
        // Bounded memory: past MAX_BUFFERED_BYTES unsent, flush and wait until the socket drains.
        if (tcp.writableLength > MAX_BUFFERED_BYTES) {
          drainWaits += 1;
          tcp.uncork();
          await waitForDrain(tcp, context.deadline);
          tcp.cork();
        }
      }
      tcp.uncork();
      const outcomes = await settleByDeadline(pending, context.deadline);
      log.debug(
        { generation: target.generation, messages: messages.length, drainWaits },
        'STOMP batch settled',
      );
      return outcomes;
    },

    async close() {
      closing = true;
      await Promise.all(slots.map((slot) => closeSlot(slot)));
    },
  };
}

/** Ends a connection of a closing sink: a DISCONNECT (bounded: a stalled broker never answers). */
async function closeSlot(slot: Slot): Promise<void> {
  const inFlight = slot.connecting;
  if (inFlight) await inFlight.catch(() => undefined);
  const current = slot.link;
  slot.link = null;
  if (!current) return;
  current.closed = true;
  for (const settle of current.pending.values()) settle(unknown('the sink closed with the receipt pending'));
  current.pending.clear();
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    current.client.deactivate().catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, DEFAULTS.closeTimeoutMs);
    }),
  ]);
  clearTimeout(timer);
  await current.client.deactivate({ force: true }).catch(() => undefined);
}

/** The outcome of an ERROR frame that names a frame's receipt, from its text. */
export function errorOutcome(text: string): SendOutcome {
  return PERMANENT_ERROR.test(text)
    ? permanent(`the broker refused the message: ${text}`)
    : retryable(`the broker refused the message for now: ${text}`);
}

/** The text of an ERROR frame: its `message` header, then the first line of its body. */
function errorText(frame: IFrame): string {
  const line = frame.body.split('\n', 1)[0]?.trim() ?? '';
  const message = frame.headers.message ?? '';
  return [message, line && line !== message ? line : ''].filter(Boolean).join(': ') || 'ERROR frame';
}

/** @stomp/tcp-wrapper hands the socket's Error as `message` of its error event. */
function socketError(event: unknown): string {
  const inner = (event as { message?: unknown } | null)?.message;
  return inner instanceof Error ? inner.message : String(inner ?? 'socket error');
}

function waitForDrain(socket: Socket, deadline: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
    socket.on('drain', done);
    socket.on('close', done);
  });
}

function raceDeadline<T>(promise: Promise<T>, deadline: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error('the batch deadline passed while connecting')),
      Math.max(0, deadline - Date.now()),
    );
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

function validateDestination(template: string): string {
  if (!template.includes('{topic}')) {
    throw new ConfigError(
      'stomp destination',
      `${template} does not contain {topic}`,
      'use e.g. /queue/{topic} or /topic/events.{topic}',
    );
  }
  return template;
}

function positiveInteger(setting: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 64) {
    throw new ConfigError(setting, `${value} is not a whole number from 1 to 64`, 'use e.g. 4');
  }
  return value;
}

function nonNegativeInteger(setting: string, value: number): number {
  if (!Number.isInteger(value) || value < 0) {
    throw new ConfigError(
      setting,
      `${value} is not a whole number of milliseconds`,
      'use e.g. 10000 (0 disables heart-beats)',
    );
  }
  return value;
}
