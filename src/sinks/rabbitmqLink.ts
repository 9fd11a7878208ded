/**
 * The RabbitMQ sink's link manager: one connection with one confirm channel (a "link"), shared by
 * every batch (confirms are per channel, so concurrent batches pipeline on it). It owns the link's
 * life; what is published on it, and what a confirm means for a row, is the sink's
 * (rabbitmqSink.ts).
 *
 * When the connection or the channel dies, the link is retired as a whole: amqplib then calls the
 * callbacks of every pending confirm with an error, and the next batch reconnects. Failed attempts
 * back off exponentially, and batches arriving during the back-off fail fast instead of holding
 * their row locks on a broker that is down. A half-open TCP connection (the peer vanished without
 * a FIN) is found by AMQP heartbeats, which this manager asks for at 10 s unless the URL says
 * otherwise (amqplib would accept the server's 60 s, i.e. two minutes before a dead peer is
 * noticed). A batch whose shard lease lapses mid-way (the process was paused) drops the link hard,
 * without flushing what is still buffered: see `watchLease`.
 */
import type { Socket } from 'node:net';
import amqplib, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import { EXPIRED, raceDeadline, untilDeadline } from '../raceDeadline.js';
import { ConnectAttempts } from './connectAttempts.js';
import { ConfigError, ShardRelayError, toError } from '../errors.js';
import { redact } from '../redact.js';
import type { Logger } from '../logger.js';
import { parseBrokerUrl } from './brokerUrl.js';

export interface RabbitMqLinkOptions {
  /** `amqp://user:password@host:port/vhost`; a `heartbeat` query parameter overrides `heartbeatSeconds`. */
  readonly url: string;
  /** Exchange the sink publishes to; '' is the default exchange, which is never declared or checked. */
  readonly exchange: string;
  /** Declare the exchange (durable, type topic) at connect when it is missing; else check that it exists. */
  readonly declareExchange: boolean;
  /** AMQP heartbeat asked of the broker; a dead peer is detected after two missed beats. */
  readonly heartbeatSeconds: number;
  /** Upper bound of a connect (TCP, handshake, channel, declare). */
  readonly connectTimeoutMs: number;
  /** Back-off between failed reconnect attempts: doubles from `initialMs` up to `maxMs`. */
  readonly reconnectBackoff: { readonly initialMs: number; readonly maxMs: number };
  readonly log: Logger;
}

/** One connection and its confirm channel; replaced as a whole when either dies. */
export interface RabbitMqLink {
  /** 1 for the first connection of this sink, +1 for each reconnect (in the logs as `link`). */
  readonly number: number;
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

/** Checks a batch's shard lease while it publishes; see `RabbitMqLinks.watchLease`. */
export interface LeaseWatch {
  /** Drops the link hard if the lease lapsed; call before each publish. */
  check(): void;
  /** Ends the watch (the batch is settled). */
  stop(): void;
}

export interface RabbitMqLinks {
  /** The URL with its credentials masked, for logs and errors. */
  readonly where: string;
  /** An error's message with the URL's credentials masked (a library may quote them). */
  describe(error: unknown): string;
  /**
   * Connects within the connect time-out, for the sink's `start()`; a refusal becomes an error
   * that says what to fix (user, vhost, permissions, exchange).
   */
  start(): Promise<void>;
  /** The live link, connecting if needed; throws (with the reason) when none can be had in time. */
  current(deadline: number): Promise<RabbitMqLink>;
  /** Gives up on a link whose confirm bookkeeping can no longer be trusted; the next batch reconnects. */
  retire(target: RabbitMqLink, reason: string): void;
  /**
   * Watches `mayContinue` for a batch publishing on `target`; once it says false, the link is
   * dropped hard (`abandon`). Without `mayContinue` the watch does nothing.
   */
  watchLease(target: RabbitMqLink, mayContinue: (() => boolean) | undefined): LeaseWatch;
  close(): Promise<void>;
}

/** How long `close()` waits for the broker's close-ok before destroying the socket. */
const CLOSE_TIMEOUT_MS = 2_000;

/** How often a batch in flight checks its shard lease (a timer: costs nothing measurable). */
const LEASE_WATCH_MS = 20;

/** What amqplib emits as 'return' (the parts this manager reads). */
interface ReturnedMessage {
  readonly fields: { readonly replyCode: number; readonly replyText: string };
  readonly properties: { readonly messageId?: unknown };
}

const NOT_WATCHING: LeaseWatch = Object.freeze({ check() {}, stop() {} });

export function createRabbitMqLinks(options: RabbitMqLinkOptions): RabbitMqLinks {
  const { exchange, declareExchange, connectTimeoutMs, log } = options;
  const backoff = options.reconnectBackoff;
  const connectUrl = withHeartbeat(options.url, options.heartbeatSeconds);
  const where = redact(options.url);
  const scrub = (text: string): string => redact(text, options.url);

  let link: RabbitMqLink | null = null;
  let linksOpened = 0;
  let closing = false;

  function describe(error: unknown): string {
    return scrub(toError(error).message);
  }

  const attempts = new ConnectAttempts<RabbitMqLink>({
    backoff,
    describe,
    onFailure: (attempt, error) => log.warn({ url: where, attempt, error }, 'RabbitMQ connect failed'),
  });

  function retire(target: RabbitMqLink, reason: string): void {
    if (target.closed) return;
    target.closed = true;
    if (link === target) link = null;
    log.warn({ link: target.number, reason }, 'RabbitMQ link lost; pending confirms are unknown');
    // A channel can die alone (e.g. the exchange was deleted); drop its connection too so the next
    // batch starts from a clean link, and so a stalled socket is not left open.
    void closeModel(target.model);
  }

  /**
   * Drops the link without a flush: the socket is destroyed first, so publishes still buffered
   * in amqplib or Node are never written. For a replica whose shard lease lapsed mid-batch (it
   * was paused): another replica may have sent and recorded these rows meanwhile.
   */
  function abandon(target: RabbitMqLink, reason: string): void {
    if (target.closed) return;
    socketOf(target.model)?.destroy();
    retire(target, reason);
  }

  async function openLink(deadline: number): Promise<RabbitMqLink> {
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
    try {
      return await raceDeadline(attempt, Date.now() + budget, `connect did not finish within ${budget} ms`);
    } catch (error) {
      // The attempt may still succeed later; close that connection instead of leaking it.
      attempt.then(
        (late) => retire(late, 'connect finished after its timeout'),
        () => {},
      );
      throw error;
    }
  }

  function wire(model: ChannelModel, channel: ConfirmChannel, errors: readonly string[]): RabbitMqLink {
    const target: RabbitMqLink = {
      number: ++linksOpened,
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
      log.warn({ link: target.number, reason: target.blockedReason }, 'RabbitMQ blocked publishing');
    });
    model.on('unblocked', () => {
      target.blockedReason = null;
      log.info({ link: target.number }, 'RabbitMQ unblocked publishing');
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

  async function current(deadline: number): Promise<RabbitMqLink> {
    if (closing) throw new Error('the sink is closed');
    if (link && !link.closed) return link;
    return attempts.connect(deadline, openLink, (fresh) => {
      if (closing) {
        retire(fresh, 'sink closed while connecting');
        throw new Error('the sink is closed');
      }
      link = fresh;
      log.info({ link: fresh.number, url: where, exchange }, 'RabbitMQ connected');
      return fresh;
    });
  }

  function watchLease(target: RabbitMqLink, mayContinue: (() => boolean) | undefined): LeaseWatch {
    if (!mayContinue) return NOT_WATCHING;
    const stopIfLapsed = (): void => {
      if (mayContinue() === false)
        abandon(
          target,
          'the shard lease lapsed during the batch (was the process paused?); buffered publishes dropped',
        );
    };
    // On waking from a pause, whichever runs first of these drops the link before more bytes
    // go out: the check before each publish (a pause inside the batch's loop), the socket's 'drain'
    // (prepended, so it runs before amqplib's own flush) and a short timer (anything else).
    // Bytes already in the kernel's buffer went out during the pause; nothing can stop those.
    const socket = socketOf(target.model);
    socket?.prependListener('drain', stopIfLapsed);
    const watchdog = setInterval(stopIfLapsed, LEASE_WATCH_MS);
    return {
      check: stopIfLapsed,
      stop() {
        clearInterval(watchdog);
        socket?.off('drain', stopIfLapsed);
      },
    };
  }

  return {
    where,
    describe,

    async start() {
      try {
        await current(Date.now() + connectTimeoutMs);
      } catch (error) {
        throw startError(error, where, exchange, declareExchange, scrub, connectUrl);
      }
    },

    current,
    retire,
    watchLease,

    async close() {
      closing = true;
      const inFlight = attempts.inFlight;
      if (inFlight) await inFlight.catch(() => undefined);
      const open = link;
      link = null;
      if (open) {
        open.closed = true;
        await closeModel(open.model);
      }
    },
  };
}

/** Consumes the oldest unmatched basic.return of `id`, if any, and returns its reason. */
export function takeReturn(target: RabbitMqLink, id: string): string | undefined {
  const queue = target.returns.get(id);
  if (!queue) return undefined;
  const reason = queue.shift();
  if (queue.length === 0) target.returns.delete(id);
  return reason;
}

/** Resolves on the channel's 'drain', its close, or the deadline, whichever comes first. */
export function waitForDrain(target: RabbitMqLink, deadline: number): Promise<void> {
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

/** amqplib has no public handle on its socket; its Connection keeps it as `stream`. */
function socketOf(model: ChannelModel): Socket | undefined {
  return (model.connection as unknown as { stream?: Socket }).stream;
}

/**
 * Closes a connection, but no longer than `CLOSE_TIMEOUT_MS`: a stalled broker never answers
 * connection.close, and shutdown must not hang on it.
 */
async function closeModel(model: ChannelModel): Promise<void> {
  try {
    const result = await untilDeadline(model.close(), Date.now() + CLOSE_TIMEOUT_MS);
    if (result === EXPIRED) {
      // amqplib has no public way to abort a close.
      socketOf(model)?.destroy();
    }
  } catch {
    // Already closed (amqplib rejects close() on a closed connection): nothing left to release.
  }
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

function startError(
  error: unknown,
  where: string,
  exchange: string,
  declared: boolean,
  scrub: (text: string) => string,
  url: string,
): ShardRelayError {
  const message = scrub(toError(error).message);
  const parsed = new URL(url);
  const user = decodeURIComponent(parsed.username) || 'guest';
  // amqplib's default vhost is '/', written as an empty path; '/%2F' is the same vhost.
  const vhost = decodeURIComponent(parsed.pathname.slice(1)) || '/';
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
    fix: rabbitMqFix(message, user, vhost),
  });
}

/**
 * What to do about a refused start, from the broker's reply. RabbitMQ refuses a wrong user name or
 * password at the handshake (403 ACCESS_REFUSED, "Login was refused"), a missing vhost or one the
 * user may not use when the connection opens (530 NOT_ALLOWED, which amqplib reports only as
 * "Expected ConnectionOpenOk; got <ConnectionClose ...>"), and a resource the user has no
 * permission on when it is declared (403 ACCESS_REFUSED, "access to exchange ... refused").
 */
function rabbitMqFix(message: string, user: string, vhost: string): string {
  if (/Login was refused|ACCESS.REFUSED.*(?:PLAIN|AMQPLAIN|mechanism)/i.test(message)) {
    return `RabbitMQ refused the login of user '${user}': check the user name and password in the URL (amqp://user:password@host:5672/vhost); the broker log names the reason`;
  }
  if (/NOT.ALLOWED|got <ConnectionClose/i.test(message)) {
    return `vhost '${vhost}' does not exist or user '${user}' may not use it: create it (rabbitmqctl add_vhost '${vhost}') or grant it (rabbitmqctl set_permissions -p '${vhost}' '${user}' '.*' '.*' '.*'), or correct the vhost (the URL's path)`;
  }
  if (/ACCESS.REFUSED|\b403\b/.test(message)) {
    return `user '${user}' lacks permissions in vhost '${vhost}': rabbitmqctl set_permissions -p '${vhost}' '${user}' '.*' '.*' '.*' (configure for the exchange declaration, write to publish)`;
  }
  return 'check that RabbitMQ is running and reachable at that address';
}
