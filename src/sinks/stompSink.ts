/**
 * STOMP sink, for ActiveMQ Classic and Artemis (and any STOMP 1.2 broker): sends each outbox row as
 * a persistent SEND frame with a receipt, and reports it `confirmed` only when the broker's RECEIPT
 * for that frame arrives. ActiveMQ writes a persistent message to its store before it answers the
 * receipt, so a receipt means "stored".
 *
 * Client: the sink's own STOMP 1.2 connection (stompWire.ts: CONNECT, heart-beats, a reader for
 * RECEIPT and ERROR frames) over a plain TCP socket; the sink writes its SEND, BEGIN and COMMIT
 * frames itself. It opens its connections itself, like the RabbitMQ sink, and has no reconnect
 * timer, so that a batch arriving while the broker is down fails fast instead of waiting on one.
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
 * - not sent: link down, back-off,   → deferred: nothing written; the row goes back as claimed,
 *   or the socket's back-pressure       no attempt counted (relay/deferralDelay.ts)
 *   lasted to the deadline
 */
import type { Socket } from 'node:net';
import { untilDeadline } from '../raceDeadline.js';
import { ConnectAttempts } from './connectAttempts.js';
import { ConfigError, ShardRelayError, toError } from '../errors.js';
import { maskSecrets, redact } from '../redact.js';
import { silentLogger, type Logger } from '../logger.js';
import { parseBrokerUrl } from './brokerUrl.js';
import { fromTopicTemplate } from './topicTemplate.js';
import {
  CE_UNDERSCORE,
  DATA_CONTENT_TYPE,
  SPEC_VERSION,
  checkEvent,
  eventSource,
  hasOwnHeaders,
  writeApplicationHeaders,
} from './cloudEvent.js';
import {
  confirmed,
  deferred,
  permanent,
  retryable,
  unknown,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
  type Sink,
} from './sink.js';
import {
  connectStomp,
  errorText,
  escapeHeaderValue,
  type StompConnection,
  type StompFrame,
} from './stompWire.js';

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
  /**
   * Connections one batch is spread over, in parallel (at most `connections`; parts of at least
   * 20 messages, a key's rows in one part, in order). Default 4. ActiveMQ handles a connection's
   * frames one after another and syncs its store once per COMMIT (or per SEND without
   * transactions); KahaDB gathers the writes of concurrent connections into one disk sync, so a
   * batch over several connections pays for fewer syncs one after the other. Measured with
   * `npm run bench -- --quick --only activemq` (the seed: 1,000 rows, 8 batches of 125, 2 in
   * flight, through a link adding 20 ms to every answer; shapes interleaved in one run; the
   * 2-core development machine shared with other jobs, load average 19-31), median of 3 runs:
   * transactions of 100, one connection per batch (4 in all) 2,073 ms; a batch over 1
   * connection 2,112, over 2 881, over 4 921, over 8 908 ms. A receipt per SEND: one connection
   * per batch 2,173 ms, a batch over 8 1,454 ms. An earlier run (load 20-27): 1,212 / 1,107 ms
   * one per batch against 858 / 1,150 over 4 and 758 / 902 over 8.
   */
  readonly connectionsPerBatch?: number;
  /**
   * Sends each batch in a STOMP transaction (BEGIN, the SENDs, COMMIT with a receipt); default
   * true. ActiveMQ stores a persistent message sent outside a transaction with a disk sync of its
   * own before it answers the next frame of the connection; inside a transaction the messages
   * are stored at COMMIT, with one sync. Measured on the 2-core development machine (ActiveMQ
   * 5.17, KahaDB defaults, 1,000 SENDs over a link adding 20 ms to every answer, load average
   * 13): one receipt per SEND 2.0-3.1 s over 4 connections and 1.8-5.4 s over 16; one
   * transaction per connection 0.52-0.93 s over 4. Each SEND still carries a receipt (the broker
   * answers it without a sync), so a refused message is told apart from the rest.
   */
  readonly transactions?: boolean;
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
  connectionsPerBatch: 4,
  transactions: true,
  /** ActiveMQ 5.x StompWireFormat's default maxDataLength. */
  maxMessageBytes: 100 * 1024 * 1024,
  reconnectBackoff: { initialMs: 250, maxMs: 30_000 },
  /** How long `close()` waits for the broker's DISCONNECT receipt before dropping the socket. */
  closeTimeoutMs: 2_000,
} as const;

/**
 * Messages per STOMP transaction: a batch is committed in parts, so that a broker too slow to
 * take a whole batch before its deadline still stores (and confirms) its first parts. Seen with
 * one transaction per batch on a 2-core machine at a load average of 40: ActiveMQ took 100-150
 * SENDs a second, 8 batches of 250 never committed within the 10 s deadline, 0 of 6,000 rows
 * were sent in 72 s (with a receipt per SEND the confirmed ones count). 100 keeps the syncs at 1
 * per 100 messages.
 */
const TRANSACTION_MESSAGES = 100;

/**
 * Bytes a batch may leave unsent in the socket before it waits for 'drain': enough for a whole
 * batch of ordinary rows to leave at once.
 */
const MAX_BUFFERED_BYTES = 1024 * 1024;

/** Frames are written in pieces of about this many characters (see sendPart). */
const FLUSH_CHARS = 64 * 1024;

/** A batch is spread over several connections only in parts of at least this many messages. */
const MIN_PART_MESSAGES = 20;

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

/** A row's own header this sink drops: one it sets itself, or one in the CloudEvents namespace. */
function isReserved(lowerCaseName: string): boolean {
  return RESERVED.has(lowerCaseName) || lowerCaseName.startsWith('ce_');
}

/** ERROR messages that mean the frame will never be accepted as it is (ActiveMQ and Artemis wording). */
const PERMANENT_ERROR =
  /not authori[sz]ed|security|illegal destination|invalid destination|unknown destination|does not exist|maximum (data|command|frame) length|too large|exceed/i;

/** Outcome setter of a frame whose receipt has not come. */
type Settle = (outcome: SendOutcome) => void;

/** One connection; replaced as a whole when it dies. */
interface Link {
  readonly slot: Slot;
  readonly generation: number;
  readonly connection: StompConnection;
  readonly socket: Socket;
  /** STOMP 1.2: header values are escaped. */
  readonly escape: boolean;
  closed: boolean;
  /** Receipt ids of this link are `${receipts}`, counted per link. */
  receipts: number;
  /** Outcome setters of the frames whose receipt has not come, by receipt id. */
  readonly pending: Map<string, Settle>;
}

/** One of the sink's connections: its live link, the connect in progress, its back-off. */
interface Slot {
  readonly index: number;
  link: Link | null;
  readonly attempts: ConnectAttempts<Link>;
}

/**
 * The outcomes of one batch, filled as receipts come: one promise per batch rather than one per
 * message (a promise, two callbacks and a watcher per message were a visible share of the sink's
 * CPU profile). Entries past the batch's messages are its COMMITs.
 */
class BatchWait {
  readonly outcomes: (SendOutcome | undefined)[];
  private left: number;
  private sealed = false;
  private wake: () => void = () => undefined;
  readonly done: Promise<void>;

  constructor(messages: number) {
    this.outcomes = new Array<SendOutcome | undefined>(messages).fill(undefined);
    this.left = messages;
    this.done = new Promise<void>((resolve) => {
      this.wake = resolve;
    });
  }

  /** One more outcome to wait for (a COMMIT); its index. */
  add(): number {
    this.left += 1;
    return this.outcomes.push(undefined) - 1;
  }

  settle(index: number, outcome: SendOutcome): void {
    if (this.outcomes[index] !== undefined) return;
    this.outcomes[index] = outcome;
    this.left -= 1;
    if (this.left === 0 && this.sealed) this.wake();
  }

  /** Everything is written: `done` resolves once every outcome is in. */
  seal(): void {
    this.sealed = true;
    if (this.left === 0) this.wake();
  }
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
  const source = eventSource(options.source);
  const log = (options.log ?? silentLogger).child({ sink: 'stomp' });
  const where = redact(options.url);
  const scrub = (text: string): string => maskSecrets(text, [passcode]);
  const describe = (error: unknown): string => scrub(toError(error).message);

  const connections = positiveInteger('stomp connections', options.connections ?? DEFAULTS.connections);
  const perBatch = Math.min(
    connections,
    positiveInteger('stomp connectionsPerBatch', options.connectionsPerBatch ?? DEFAULTS.connectionsPerBatch),
  );
  const transactions = options.transactions ?? DEFAULTS.transactions;
  const encode = sendFrameEncoder(template, source);
  const slots: Slot[] = Array.from({ length: connections }, (_, index) => ({
    index,
    link: null,
    attempts: new ConnectAttempts<Link>({
      backoff,
      describe,
      onFailure: (attempt, error) =>
        log.warn({ connection: index, url: where, attempt, error }, 'STOMP connect failed'),
    }),
  }));
  let generation = 0;
  let transactionIds = 0;
  let turn = 0;
  let closing = false;

  function retire(target: Link, reason: string): void {
    if (target.closed) return;
    target.closed = true;
    if (target.slot.link === target) target.slot.link = null;
    const outcome = unknown(`STOMP connection lost with the receipt pending (${scrub(reason)})`);
    if (target.pending.size > 0) {
      log.warn(
        { generation: target.generation, pending: target.pending.size, reason: scrub(reason) },
        'STOMP link lost; pending receipts are unknown',
      );
    } else {
      log.warn({ generation: target.generation, reason: scrub(reason) }, 'STOMP link lost');
    }
    for (const settle of target.pending.values()) settle(outcome);
    target.pending.clear();
    // No DISCONNECT handshake on a link that is already dead or stalled.
    target.connection.destroy();
  }

  async function openLink(slot: Slot, deadline: number): Promise<Link> {
    const budget = Math.min(connectTimeoutMs, deadline - Date.now());
    if (budget <= 0) throw new Error('no time left before the batch deadline to connect');
    const connection = await connectStomp({ host, port, login, passcode, heartbeatMs, timeoutMs: budget });
    const fresh: Link = {
      slot,
      generation: ++generation,
      connection,
      socket: connection.socket,
      escape: connection.version === '1.2',
      closed: false,
      receipts: 0,
      pending: new Map(),
    };
    connection.events = {
      onReceipt(id) {
        const settle = fresh.pending.get(id);
        if (settle === undefined) return;
        fresh.pending.delete(id);
        settle(confirmed);
      },
      onError: (frame) => onError(fresh, frame),
      onClose: (reason) => retire(fresh, reason),
    };
    return fresh;
  }

  function onError(target: Link, frame: StompFrame): void {
    const text = scrub(errorText(frame));
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
    return slot.attempts.connect(
      deadline,
      (until) => openLink(slot, until),
      (fresh) => {
        if (closing) {
          retire(fresh, 'sink closed while connecting');
          throw new Error('the sink is closed');
        }
        slot.link = fresh;
        log.info({ connection: slot.index, generation: fresh.generation, url: where }, 'STOMP connected');
        return fresh;
      },
    );
  }

  /**
   * The connection for the next part of a batch: the live one with the fewest receipts
   * outstanding, so concurrent batches (one per shard) write through different connections; when
   * none is live, the next in turn, which connects (or fails fast while it backs off). `taken`:
   * slots another part of the same batch has; undefined when every slot is taken.
   */
  function pickSlot(taken: ReadonlySet<Slot>): Slot | undefined {
    let best: Slot | undefined;
    for (const slot of slots) {
      if (!slot.link || slot.link.closed || taken.has(slot)) continue;
      if (!best || slot.link.pending.size < (best.link as Link).pending.size) best = slot;
    }
    if (best && (best.link as Link).pending.size === 0) return best;
    // A busy live link, or none: an idle slot that may connect gets the batch first.
    const idle = slots.find((slot) => !slot.link && !slot.attempts.backingOff() && !taken.has(slot));
    if (idle && (best === undefined || !idle.attempts.inFlight)) return idle;
    if (best) return best;
    for (let tries = 0; tries < slots.length; tries++) {
      const next = slots[turn++ % slots.length] as Slot;
      if (!taken.has(next)) return next;
    }
    return undefined;
  }

  /**
   * Writes one part of a batch (`indexes` into `messages`, all of them when null) through one
   * connection: SENDs with a receipt each, in transactions of TRANSACTION_MESSAGES when
   * transactions are on. Outcomes go into `wait`; `commitOf[i]` becomes the index in `wait` of
   * message i's COMMIT. Returns how often it waited for the socket to drain.
   */
  async function sendPart(
    slot: Slot,
    messages: readonly OutboxMessage[],
    indexes: readonly number[] | null,
    wait: BatchWait,
    commitOf: Int32Array,
    deadline: number,
  ): Promise<number> {
    const count = indexes === null ? messages.length : indexes.length;
    let target: Link;
    try {
      target = await ensureLink(slot, deadline);
    } catch (error) {
      const outcome = deferred(`STOMP broker unavailable at ${where}: ${describe(error)}`);
      for (let k = 0; k < count; k++) wait.settle(indexes === null ? k : (indexes[k] as number), outcome);
      return 0;
    }
    const { socket, pending, escape } = target;
    let drainWaits = 0;
    // Frames are gathered into one string and written in pieces of about FLUSH_CHARS: stompjs wrote
    // each frame with a system call of its own, and a corked socket's writev of a batch's hundreds
    // of small strings was still the largest native item of the sink in a profile (writev, 184 ms
    // of relay CPU for ~10,000 rows).
    let out = '';
    let transaction: string | undefined;
    /** The messages of the open transaction, whose outcome is its COMMIT's. */
    let members: number[] = [];
    const commit = (): void => {
      const index = wait.add();
      for (const member of members) commitOf[member] = index;
      members = [];
      if (target.closed || socket.destroyed || !socket.writable) {
        wait.settle(index, retryable('not committed: the STOMP link was lost'));
      } else {
        const receipt = String(++target.receipts);
        pending.set(receipt, (outcome) =>
          wait.settle(
            index,
            outcome.status === 'failed'
              ? retryable(`the broker refused the COMMIT (nothing was stored): ${outcome.error}`)
              : outcome,
          ),
        );
        out += `COMMIT\ntransaction:${transaction as string}\nreceipt:${receipt}\n\n\0`;
      }
      transaction = undefined;
    };
    for (let k = 0; k < count; k++) {
      const i = indexes === null ? k : (indexes[k] as number);
      const message = messages[i] as OutboxMessage;
      if (target.closed) {
        wait.settle(i, deferred('not sent: the STOMP link was lost earlier in this batch'));
        continue;
      }
      if (socket.destroyed || !socket.writable) {
        wait.settle(i, deferred('not sent: the STOMP connection is closed'));
        continue;
      }
      if (Date.now() >= deadline) {
        wait.settle(i, deferred('not sent: back-pressure until the batch deadline'));
        continue;
      }
      const body = message.payloadJson;
      // The UTF-8 length only when it could matter: a JS string has at most 3 bytes per UTF-16 unit.
      const bytes = body.length * 3 > maxMessageBytes ? Buffer.byteLength(body, 'utf8') : body.length;
      if (bytes > maxMessageBytes) {
        wait.settle(i, permanent(`body of ${bytes} bytes exceeds maxMessageBytes (${maxMessageBytes})`));
        continue;
      }
      if (transactions && transaction === undefined) {
        transaction = `${target.generation}.tx${++transactionIds}`;
      }
      const receipt = String(target.receipts + 1);
      let frame: string;
      try {
        frame = encode(message, escape, transaction, receipt);
      } catch (error) {
        wait.settle(i, permanent(`cannot encode the event: ${describe(error)}`));
        continue;
      }
      target.receipts += 1;
      pending.set(receipt, (outcome) => wait.settle(i, outcome));
      if (transaction !== undefined) {
        // BEGIN with the transaction's first frame (a row that cannot be encoded begins none).
        if (members.length === 0) out += `BEGIN\ntransaction:${transaction}\n\n\0`;
        members.push(i);
      }
      out += frame;
      if (members.length >= TRANSACTION_MESSAGES) commit();
      if (out.length >= FLUSH_CHARS) {
        socket.write(out);
        out = '';
        // Bounded memory: past MAX_BUFFERED_BYTES unsent, wait until the socket drains.
        if (socket.writableLength > MAX_BUFFERED_BYTES) {
          drainWaits += 1;
          await waitForDrain(socket, deadline);
        }
      }
    }
    if (members.length > 0) commit();
    if (out.length > 0 && !target.closed && !socket.destroyed) socket.write(out);
    return drainWaits;
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
      const wait = new BatchWait(messages.length);
      const commitOf = new Int32Array(messages.length).fill(-1);
      const parts = Math.min(perBatch, Math.ceil(messages.length / MIN_PART_MESSAGES));
      const taken = new Set<Slot>();
      const chosen: Slot[] = [];
      for (let p = 0; p < parts; p++) {
        const slot = pickSlot(taken);
        if (slot === undefined) break;
        taken.add(slot);
        chosen.push(slot);
      }
      const split = chosen.length > 1 ? splitByKey(messages, chosen.length) : [null];
      const drainWaits = await Promise.all(
        chosen.map((slot, p) => {
          const indexes = split[p] as number[] | null;
          // A part left empty (all keys hashed elsewhere) needs no connection.
          if (indexes !== null && indexes.length === 0) return 0;
          return sendPart(slot, messages, indexes, wait, commitOf, context.deadline);
        }),
      );
      wait.seal();
      await untilDeadline(wait.done, context.deadline);
      const { outcomes } = wait;
      const result = new Array<SendOutcome>(messages.length);
      for (let i = 0; i < messages.length; i++) {
        const own = outcomes[i] ?? NO_CONFIRM;
        const commitIndex = commitOf[i] as number;
        // A SEND's receipt inside a transaction means "taken", not "stored": the COMMIT's says that.
        result[i] =
          own.status === 'confirmed' && commitIndex >= 0 ? (outcomes[commitIndex] ?? NO_CONFIRM) : own;
      }
      log.debug(
        { messages: messages.length, connections: chosen.length, drainWaits: sum(drainWaits) },
        'STOMP batch settled',
      );
      return result;
    },

    async close() {
      closing = true;
      await Promise.all(slots.map((slot) => closeSlot(slot)));
    },
  };
}

const NO_CONFIRM = unknown('no confirm before the batch deadline');

function sum(values: readonly number[]): number {
  let total = 0;
  for (const value of values) total += value;
  return total;
}

/**
 * The parts of a batch spread over `parts` connections, as indexes into `messages`. A key's rows
 * stay in one part, in their order (ActiveMQ keeps the order of one connection's messages, not
 * across connections); rows without a key are cut into consecutive runs.
 */
function splitByKey(messages: readonly OutboxMessage[], parts: number): number[][] {
  const split: number[][] = Array.from({ length: parts }, () => []);
  const n = messages.length;
  for (let i = 0; i < n; i++) {
    const key = (messages[i] as OutboxMessage).key;
    const part = key === null ? Math.floor((i * parts) / n) : hashOf(key) % parts;
    (split[part] as number[]).push(i);
  }
  return split;
}

/** FNV-1a over the UTF-16 units of a key: cheap and stable within the process. */
function hashOf(key: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** Ends a connection of a closing sink: a DISCONNECT (bounded: a stalled broker never answers). */
async function closeSlot(slot: Slot): Promise<void> {
  const inFlight = slot.attempts.inFlight;
  if (inFlight) await inFlight.catch(() => undefined);
  const current = slot.link;
  slot.link = null;
  if (!current) return;
  current.closed = true;
  for (const settle of current.pending.values()) settle(unknown('the sink closed with the receipt pending'));
  current.pending.clear();
  await current.connection.disconnect(DEFAULTS.closeTimeoutMs);
}

/** Pieces of a topic's frame that do not change from message to message, escaped or not. */
interface TopicLines {
  /** `SEND` and `destination`. */
  readonly head: string;
  /** `ce_type`, `ce_source`, `ce_specversion`. */
  readonly attributes: string;
  /** `content-type`, `persistent`, `type`. */
  readonly fixed: string;
}

/** Topics whose lines are kept; past this the cache starts over (topics are few in practice). */
const TOPIC_CACHE_SIZE = 1_000;

/**
 * Builds SEND frames: byte for byte what stompjs's `client.publish({ destination, headers, body,
 * skipContentLengthHeader: true })` wrote for the headers this sink set (test/sinks/stompSink.test.ts
 * compares the two): `destination` first, the row's own headers, the CloudEvents attributes,
 * `content-type`, `persistent`, `type`, `correlation-id`, `JMSXGroupID`, `transaction`, `receipt`;
 * values escaped when the connection speaks STOMP 1.2; no content-length (ActiveMQ then delivers a
 * TextMessage), the body and the NUL that ends the frame. A topic's fixed lines are built once.
 * Throws for a row that cannot form a valid event (checkEvent).
 */
export function sendFrameEncoder(
  template: string,
  source: string,
): (message: OutboxMessage, escape: boolean, transaction: string | undefined, receipt: string) => string {
  const caches = [new Map<string, TopicLines>(), new Map<string, TopicLines>()] as const;
  const destinationOf = fromTopicTemplate(template);
  const linesOf = (topic: string, escape: boolean): TopicLines => {
    const cache = caches[escape ? 1 : 0];
    let lines = cache.get(topic);
    if (lines === undefined) {
      const e = escape ? escapeHeaderValue : (value: string) => value;
      lines = {
        head: `SEND\ndestination:${e(destinationOf(topic))}\n`,
        attributes:
          `${CE_UNDERSCORE.type}:${e(topic)}\n${CE_UNDERSCORE.source}:${e(source)}\n` +
          `${CE_UNDERSCORE.specversion}:${SPEC_VERSION}\n`,
        fixed: `content-type:${e(DATA_CONTENT_TYPE)}\npersistent:true\ntype:${e(topic)}\n`,
      };
      if (cache.size >= TOPIC_CACHE_SIZE) cache.clear();
      cache.set(topic, lines);
    }
    return lines;
  };
  return (message, escape, transaction, receipt) => {
    const time = checkEvent(message);
    const e = escape ? escapeHeaderValue : (value: string) => value;
    const lines = linesOf(message.topic, escape);
    let frame = lines.head;
    if (message.traceparent !== null || hasOwnHeaders(message)) {
      const own: Record<string, string> = {};
      writeApplicationHeaders(own, message, isReserved);
      for (const name in own) frame += `${name}:${e(own[name] as string)}\n`;
    }
    frame += `${CE_UNDERSCORE.id}:${e(message.eventId)}\n${CE_UNDERSCORE.time}:${e(time)}\n${lines.attributes}`;
    if (message.correlationId !== null)
      frame += `${CE_UNDERSCORE.correlationid}:${e(message.correlationId)}\n`;
    if (message.traceparent !== null) frame += `${CE_UNDERSCORE.traceparent}:${e(message.traceparent)}\n`;
    if (message.key !== null) frame += `${CE_UNDERSCORE.partitionkey}:${e(message.key)}\n`;
    frame += lines.fixed;
    if (message.correlationId !== null) frame += `correlation-id:${e(message.correlationId)}\n`;
    if (message.key !== null) frame += `JMSXGroupID:${e(message.key)}\n`;
    if (transaction !== undefined) frame += `transaction:${e(transaction)}\n`;
    return `${frame}receipt:${receipt}\n\n${message.payloadJson}\0`;
  };
}

/** The outcome of an ERROR frame that names a frame's receipt, from its text. */
export function errorOutcome(text: string): SendOutcome {
  return PERMANENT_ERROR.test(text)
    ? permanent(`the broker refused the message: ${text}`)
    : retryable(`the broker refused the message for now: ${text}`);
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
