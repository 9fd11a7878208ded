/**
 * RabbitMQ sink: publishes each outbox row to a topic exchange on a confirm channel and reports a
 * row `confirmed` only when the broker has acked it and did not return it.
 *
 * Wire format: CloudEvents binary mode. The body is the payload's JSON; the attributes travel as
 * `ce-*` headers; the AMQP properties repeat what AMQP tooling looks at: `message-id` = event id (the
 * key consumers deduplicate on), `type` = topic, `correlation-id`, `timestamp` = enqueue time,
 * `content-type: application/json`, delivery mode 2 (persistent).
 *
 * Outcomes, per message:
 * - ack                               → confirmed
 * - basic.return, then ack            → failed permanent: no queue is bound for its routing key, so a
 *                                       re-send would be dropped the same way (`mandatory` makes the
 *                                       broker say so instead of discarding it silently).
 * - nack                              → failed retryable: a queue refused it (`x-overflow:
 *                                       reject-publish` at its limit) or the broker could not store it.
 * - channel or connection lost with   → unknown: the broker may hold it; the relay re-sends it with
 *   the confirm pending                 the same message id.
 * - no confirm by the batch deadline  → unknown (a blocked connection, a stalled network).
 * - not published (link down, blocked → failed retryable: nothing left this process.
 *   before the batch, back-pressure
 *   until the deadline)
 *
 * Connection life cycle: one connection with one confirm channel, shared by every batch (confirms
 * are per channel, so concurrent batches pipeline on it). When either dies, every pending confirm
 * is settled `unknown` (amqplib calls the callbacks of a closed channel with an error) and the
 * next batch reconnects; failed attempts back off exponentially, and batches arriving during the
 * back-off fail fast as retryable instead of holding their row locks on a broker that is down.
 * A half-open TCP connection (the peer vanished without a FIN) is found by AMQP heartbeats, which
 * this sink asks for at 10 s unless the URL says otherwise (amqplib would accept the server's
 * 60 s, i.e. two minutes before a dead peer is noticed).
 */
import type { Socket } from 'node:net';
import amqplib, { type ChannelModel, type ConfirmChannel, type Options } from 'amqplib';
import { ConfigError, ShardRelayError, redactUrl, toError } from '../errors.js';
import { parseBrokerUrl } from './brokerUrl.js';
import { silentLogger, type Logger } from '../logger.js';
import {
  applicationHeaders,
  encodeBinary,
  toCloudEvent,
  traceHeaders,
  DATA_CONTENT_TYPE,
  DEFAULT_SOURCE,
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

export interface RabbitMqSinkOptions {
  /** `amqp://user:password@host:port/vhost`; a `heartbeat` query parameter overrides `heartbeatSeconds`. */
  readonly url: string;
  /** Exchange to publish to. Default `shardrelay`. */
  readonly exchange?: string;
  /**
   * Declare the exchange (durable, type topic) at connect when it is missing. Default true. Set false
   * when operators own the topology; the exchange must then exist, which `start()` checks.
   */
  readonly declareExchange?: boolean;
  /** Routing key of a message. Default: its topic. */
  readonly routingKey?: (message: OutboxMessage) => string;
  /** CloudEvents `source` attribute (also the AMQP `app-id`). Default `shardrelay`. */
  readonly source?: string;
  /** AMQP heartbeat asked of the broker; a dead peer is detected after two missed beats. Default 10. */
  readonly heartbeatSeconds?: number;
  /** Upper bound of a connect (TCP, handshake, channel, declare). Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  /**
   * Largest body sent; larger rows fail permanently before publishing. It must not exceed the
   * broker's `max_message_size` (128 MiB by default in RabbitMQ 3.10): the broker closes the whole
   * channel on an oversized message, which would turn every other confirm of the batch `unknown`
   * and make the row a poison pill for its shard. Default 128 MiB.
   */
  readonly maxMessageBytes?: number;
  /** Back-off between failed reconnect attempts: doubles from `initialMs` up to `maxMs`. */
  readonly reconnectBackoff?: { readonly initialMs: number; readonly maxMs: number };
  /** Pass the relay's logger; default silent. */
  readonly log?: Logger;
}

export const DEFAULT_EXCHANGE = 'shardrelay';

const DEFAULTS = {
  heartbeatSeconds: 10,
  connectTimeoutMs: 10_000,
  maxMessageBytes: 128 * 1024 * 1024,
  reconnectBackoff: { initialMs: 250, maxMs: 30_000 },
  /** How long `close()` waits for the broker's close-ok before destroying the socket. */
  closeTimeoutMs: 2_000,
} as const;

/** AMQP short strings (routing key, message id, header names...) are at most 255 bytes. */
const SHORTSTR_MAX_BYTES = 255;

/** The error amqplib hands a confirm callback for a basic.nack (lib/channel.js). */
const AMQPLIB_NACK_MESSAGE = 'message nacked';

/** What amqplib emits as 'return' (the parts this sink reads). */
interface ReturnedMessage {
  readonly fields: { readonly replyCode: number; readonly replyText: string };
  readonly properties: { readonly messageId?: unknown };
}

/** One connection and its confirm channel; replaced as a whole when either dies. */
interface Link {
  readonly generation: number;
  readonly model: ChannelModel;
  readonly channel: ConfirmChannel;
  closed: boolean;
  /** Set between the broker's connection.blocked and connection.unblocked (a resource alarm). */
  blockedReason: string | null;
  /**
   * basic.return frames not yet matched to their ack, by message id. The broker sends the return
   * before the ack of the same message on the same channel, and amqplib handles frames in order,
   * so when an ack arrives, a pending return for its id belongs to it.
   */
  readonly returns: Map<string, string[]>;
}

export function createRabbitMqSink(options: RabbitMqSinkOptions): Sink {
  const exchange = options.exchange ?? DEFAULT_EXCHANGE;
  const declareExchange = options.declareExchange ?? true;
  const routingKeyOf = options.routingKey ?? ((message: OutboxMessage) => message.topic);
  const source = options.source;
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULTS.maxMessageBytes;
  const backoff = options.reconnectBackoff ?? DEFAULTS.reconnectBackoff;
  const log = (options.log ?? silentLogger).child({ sink: 'rabbitmq' });
  const connectUrl = withHeartbeat(options.url, options.heartbeatSeconds ?? DEFAULTS.heartbeatSeconds);
  // Every publish carries the source as its app-id, a short string: too long a source would make
  // each publish throw, so refuse it here.
  const sourceProblem = shortstrProblem('source', source ?? DEFAULT_SOURCE);
  if (sourceProblem) throw new ConfigError('rabbitmq source', sourceProblem, 'use a shorter URI-reference');
  const where = redactUrl(options.url);
  const scrub = secretScrubber(options.url);

  let link: Link | null = null;
  let connecting: Promise<Link> | null = null;
  let generation = 0;
  let failedAttempts = 0;
  let nextAttemptAt = 0;
  let lastConnectError = '';
  let closing = false;

  function describe(error: unknown): string {
    return scrub(toError(error).message);
  }

  function retire(target: Link, reason: string): void {
    if (target.closed) return;
    target.closed = true;
    if (link === target) link = null;
    log.warn({ generation: target.generation, reason }, 'RabbitMQ link lost; pending confirms are unknown');
    // A channel can die alone (e.g. the exchange was deleted); drop its connection too so the next
    // batch starts from a clean link, and so a stalled socket is not left open.
    void closeModel(target.model);
  }

  /**
   * Drops the link without a flush: the socket is destroyed first, so publishes still buffered
   * in amqplib or Node are never written. For a replica whose shard lease lapsed mid-batch (it
   * was paused): another replica may have sent and recorded these rows meanwhile.
   */
  function abandon(target: Link, reason: string): void {
    if (target.closed) return;
    socketOf(target.model)?.destroy();
    retire(target, reason);
  }

  async function openLink(deadline: number): Promise<Link> {
    const budget = Math.min(connectTimeoutMs, deadline - Date.now());
    if (budget <= 0) throw new Error('no time left before the batch deadline to connect');
    const attempt = (async () => {
      const model = await amqplib.connect(connectUrl, {
        timeout: budget,
        clientProperties: { connection_name: 'shardrelay' },
      });
      // Listeners first: an 'error' event without a listener would crash the process. The errors are
      // kept to explain the 'close' that always follows them.
      const errors: string[] = [];
      model.on('error', (error: unknown) => errors.push(describe(error)));
      let channel: ConfirmChannel;
      try {
        channel = await model.createConfirmChannel();
        channel.on('error', (error: unknown) => errors.push(describe(error)));
        if (declareExchange && exchange !== '') {
          await channel.assertExchange(exchange, 'topic', { durable: true });
        } else if (exchange !== '') {
          await channel.checkExchange(exchange);
        }
      } catch (error) {
        void closeModel(model);
        throw error;
      }
      return wire(model, channel, errors);
    })();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`connect did not finish within ${budget} ms`)), budget);
    });
    try {
      return await Promise.race([attempt, timedOut]);
    } catch (error) {
      // The attempt may still succeed later; close that connection instead of leaking it.
      attempt.then(
        (late) => retire(late, 'connect finished after its timeout'),
        () => {},
      );
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  function wire(model: ChannelModel, channel: ConfirmChannel, errors: readonly string[]): Link {
    const target: Link = {
      generation: ++generation,
      model,
      channel,
      closed: false,
      blockedReason: null,
      returns: new Map(),
    };
    const lastError = (): string => errors.at(-1) ?? 'closed';
    model.on('close', () => retire(target, `connection closed: ${lastError()}`));
    model.on('blocked', (reason: unknown) => {
      target.blockedReason = String(reason);
      log.warn(
        { generation: target.generation, reason: target.blockedReason },
        'RabbitMQ blocked publishing',
      );
    });
    model.on('unblocked', () => {
      target.blockedReason = null;
      log.info({ generation: target.generation }, 'RabbitMQ unblocked publishing');
    });
    channel.on('close', () => retire(target, `channel closed: ${lastError()}`));
    // Typed here: @types/amqplib describes delivered messages, whose fields lack replyCode/replyText.
    channel.on('return', (returned: ReturnedMessage) => {
      const id = typeof returned.properties.messageId === 'string' ? returned.properties.messageId : '';
      const reason = `${returned.fields.replyCode} ${returned.fields.replyText}`;
      const queue = target.returns.get(id);
      if (queue) queue.push(reason);
      else target.returns.set(id, [reason]);
    });
    return target;
  }

  /** The live link, connecting if needed; throws (with the reason) when none can be had in time. */
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
          log.info({ generation: fresh.generation, url: where, exchange }, 'RabbitMQ connected');
          return fresh;
        },
        (error: unknown) => {
          failedAttempts += 1;
          lastConnectError = describe(error);
          const delay = Math.min(backoff.maxMs, backoff.initialMs * 2 ** (failedAttempts - 1));
          nextAttemptAt = Date.now() + Math.round(delay * (0.5 + Math.random() / 2));
          log.warn(
            { url: where, attempt: failedAttempts, error: lastConnectError },
            'RabbitMQ connect failed',
          );
          throw error;
        },
      );
      const settled = (): void => {
        connecting = null;
      };
      connecting.then(settled, settled);
    }
    return raceDeadline(connecting, deadline);
  }

  function publishOne(
    target: Link,
    message: OutboxMessage,
  ): { outcome: Promise<SendOutcome>; writable: boolean } {
    let routingKey: string;
    let body: Buffer;
    let publishOptions: Options.Publish;
    let headers: Record<string, string>;
    try {
      routingKey = routingKeyOf(message);
      const event = toCloudEvent(message, { source });
      const encoded = encodeBinary(event);
      body = encoded.body;
      const { 'content-type': _contentType, ...ceHeaders } = encoded.headers;
      headers = { ...applicationHeaders(message), ...traceHeaders(message), ...ceHeaders };
      publishOptions = {
        persistent: true,
        mandatory: true,
        messageId: message.eventId,
        contentType: DATA_CONTENT_TYPE,
        type: message.topic,
        timestamp: Math.floor(message.createdAt.getTime() / 1000),
        correlationId: message.correlationId ?? undefined,
        appId: event.source,
        headers,
      };
    } catch (error) {
      return {
        outcome: Promise.resolve(permanent(`cannot encode the event: ${describe(error)}`)),
        writable: true,
      };
    }
    // Checked here, not left to amqplib: it registers the confirm callback before encoding the
    // frame, so a publish that throws on a live channel shifts every later callback onto the wrong
    // delivery tag. And the broker closes the channel on an oversized body, taking the batch with it.
    const problem =
      shortstrProblem('routing key', routingKey) ??
      shortstrProblem('message id', message.eventId) ??
      shortstrProblem('type (topic)', message.topic) ??
      shortstrProblem('correlation id', message.correlationId ?? '') ??
      Object.keys(headers)
        .map((name) => shortstrProblem('header name', name))
        .find((p) => p !== undefined) ??
      (body.length > maxMessageBytes
        ? `body of ${body.length} bytes exceeds maxMessageBytes (${maxMessageBytes})`
        : undefined);
    if (problem) return { outcome: Promise.resolve(permanent(problem)), writable: true };

    const route = `exchange '${exchange}', routing key '${routingKey}'`;
    let settle!: (outcome: SendOutcome) => void;
    const outcome = new Promise<SendOutcome>((resolve) => {
      settle = resolve;
    });
    let writable: boolean;
    try {
      writable = target.channel.publish(exchange, routingKey, body, publishOptions, (error: unknown) => {
        const returned = takeReturn(target, message.eventId);
        if (error === null || error === undefined) {
          settle(
            returned === undefined
              ? confirmed
              : permanent(
                  `RabbitMQ returned the message as unroutable (${returned}): no queue is bound for ${route}`,
                ),
          );
        } else if (toError(error).message === AMQPLIB_NACK_MESSAGE) {
          settle(
            retryable(
              `RabbitMQ nacked the message (${route}): a queue refused it or the broker could not store it`,
            ),
          );
        } else {
          settle(unknown(`RabbitMQ link lost with the confirm pending (${describe(error)})`));
        }
      });
    } catch (error) {
      // Only a closed channel should get here (inputs were checked above); either way the channel's
      // confirm bookkeeping can no longer be trusted, so retire it.
      retire(target, `publish threw: ${describe(error)}`);
      return { outcome: Promise.resolve(retryable(`not published: ${describe(error)}`)), writable: true };
    }
    return { outcome, writable };
  }

  return {
    name: 'rabbitmq',

    async start() {
      try {
        await ensureLink(Date.now() + connectTimeoutMs);
      } catch (error) {
        throw startError(error, where, exchange, declareExchange, scrub);
      }
    },

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (messages.length === 0) return [];
      let target: Link;
      try {
        target = await ensureLink(context.deadline);
      } catch (error) {
        const outcome = retryable(`RabbitMQ unavailable at ${where}: ${describe(error)}`);
        return messages.map(() => outcome);
      }
      if (target.blockedReason !== null) {
        // Publishing now would only fill the socket buffer and hold the rows' locks until the deadline.
        const outcome = retryable(
          `RabbitMQ is blocking publishers (${target.blockedReason}); nothing was sent`,
        );
        return messages.map(() => outcome);
      }
      const pending: Promise<SendOutcome>[] = [];
      let drainWaits = 0;
      const stopIfLapsed = (): void => {
        if (context.mayContinue?.() === false)
          abandon(
            target,
            'the shard lease lapsed during the batch (was the process paused?); buffered publishes dropped',
          );
      };
      // On waking from a pause, whichever runs first of these drops the link before more bytes
      // go out: the check before each publish (a pause inside this loop), the socket's 'drain'
      // (prepended, so it runs before amqplib's own flush) and a short timer (anything else).
      // Bytes already in the kernel's buffer went out during the pause; nothing can stop those.
      const socket = context.mayContinue ? socketOf(target.model) : undefined;
      socket?.prependListener('drain', stopIfLapsed);
      const watchdog = context.mayContinue ? setInterval(stopIfLapsed, LEASE_WATCH_MS) : undefined;
      let outcomes: SendOutcome[];
      try {
        for (const message of messages) {
          stopIfLapsed();
          if (target.closed) {
            pending.push(
              Promise.resolve(retryable('not published: the RabbitMQ link was lost earlier in this batch')),
            );
            continue;
          }
          if (Date.now() >= context.deadline) {
            pending.push(
              Promise.resolve(
                retryable('not published: back-pressure from RabbitMQ until the batch deadline'),
              ),
            );
            continue;
          }
          const { outcome, writable } = publishOne(target, message);
          pending.push(outcome);
          // amqplib never refuses a publish; `false` means its socket buffer is over the high-water
          // mark. Waiting for 'drain' keeps memory bounded when the broker reads slower than we write.
          if (!writable) {
            drainWaits += 1;
            await waitForDrain(target, context.deadline);
          }
        }
        outcomes = await settleByDeadline(pending, context.deadline);
      } finally {
        clearInterval(watchdog);
        socket?.off('drain', stopIfLapsed);
      }
      const blocked = target.blockedReason;
      const result =
        blocked === null
          ? outcomes
          : outcomes.map((o) =>
              o.status === 'unknown'
                ? unknown(`${o.error}; RabbitMQ was blocking publishers (${blocked})`)
                : o,
            );
      log.debug(
        { generation: target.generation, messages: messages.length, drainWaits },
        'RabbitMQ batch settled',
      );
      return result;
    },

    async close() {
      closing = true;
      const inFlight = connecting;
      if (inFlight) await inFlight.catch(() => undefined);
      const current = link;
      link = null;
      if (current) {
        current.closed = true;
        await closeModel(current.model);
      }
    },
  };
}

/** How often a batch in flight checks its shard lease (a timer: costs nothing measurable). */
const LEASE_WATCH_MS = 20;

/** amqplib has no public handle on its socket; its Connection keeps it as `stream`. */
function socketOf(model: ChannelModel): Socket | undefined {
  return (model.connection as unknown as { stream?: Socket }).stream;
}

/** Consumes the oldest unmatched basic.return of `id`, if any, and returns its reason. */
function takeReturn(target: Link, id: string): string | undefined {
  const queue = target.returns.get(id);
  if (!queue) return undefined;
  const reason = queue.shift();
  if (queue.length === 0) target.returns.delete(id);
  return reason;
}

/** Resolves on the channel's 'drain', its close, or the deadline, whichever comes first. */
function waitForDrain(target: Link, deadline: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      target.channel.off('drain', done);
      target.channel.off('close', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
    target.channel.on('drain', done);
    target.channel.on('close', done);
  });
}

/**
 * Closes a connection, but no longer than `closeTimeoutMs`: a stalled broker never answers
 * connection.close, and shutdown must not hang on it.
 */
async function closeModel(model: ChannelModel): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), DEFAULTS.closeTimeoutMs);
  });
  try {
    const result = await Promise.race([model.close().then(() => 'closed' as const), timedOut]);
    if (result === 'timeout') {
      // amqplib has no public way to abort a close; its Connection keeps the socket as `stream`.
      const socket = (model.connection as unknown as { stream?: { destroy(): void } }).stream;
      socket?.destroy();
    }
  } catch {
    // Already closed (amqplib rejects close() on a closed connection): nothing left to release.
  } finally {
    clearTimeout(timer);
  }
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

function shortstrProblem(what: string, value: string): string | undefined {
  const bytes = Buffer.byteLength(value, 'utf8');
  return bytes > SHORTSTR_MAX_BYTES
    ? `${what} is ${bytes} bytes; AMQP allows at most ${SHORTSTR_MAX_BYTES}`
    : undefined;
}

/** Validates the URL and adds the heartbeat unless the URL sets one. */
function withHeartbeat(url: string, heartbeatSeconds: number): string {
  const parsed = parseBrokerUrl(
    url,
    'rabbitmq url',
    ['amqp:', 'amqps:'],
    'amqp://user:password@host:5672/vhost',
  );
  if (!Number.isInteger(heartbeatSeconds) || heartbeatSeconds < 0) {
    throw new ConfigError(
      'rabbitmq heartbeatSeconds',
      `${heartbeatSeconds} is not a whole number of seconds`,
      'use e.g. 10 (0 disables heartbeats)',
    );
  }
  if (!parsed.searchParams.has('heartbeat')) parsed.searchParams.set('heartbeat', String(heartbeatSeconds));
  return parsed.toString();
}

/** Replaces the URL's password wherever a library might have echoed it. */
function secretScrubber(url: string): (text: string) => string {
  let secret = '';
  try {
    secret = decodeURIComponent(new URL(url).password);
  } catch {
    // Not a URL: withHeartbeat reports it.
  }
  return (text) => (secret ? text.split(secret).join('***') : text);
}

function startError(
  error: unknown,
  where: string,
  exchange: string,
  declared: boolean,
  scrub: (text: string) => string,
): ShardRelayError {
  const message = scrub(toError(error).message);
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 404 && !declared) {
    return new ConfigError(
      'rabbitmq exchange',
      `exchange '${exchange}' does not exist on ${where}`,
      'declare it (durable, type topic), or let shardrelay declare it (declareExchange: true)',
    );
  }
  if (code === 406) {
    return new ConfigError(
      'rabbitmq exchange',
      `exchange '${exchange}' exists with other settings: ${message}`,
      'use a durable topic exchange, or configure another exchange name',
    );
  }
  return new ShardRelayError('SINK_UNAVAILABLE', `cannot connect to RabbitMQ at ${where}: ${message}`, {
    context: { sink: 'rabbitmq', url: where, exchange },
    // No `cause`: the library's error object is not ours to vet for credentials; its message is
    // included above, scrubbed.
    fix: /ACCESS.REFUSED|403/.test(message)
      ? "check the user name and password in the RabbitMQ URL and the user's permissions on the vhost"
      : 'check that RabbitMQ is running and reachable at that address',
  });
}
