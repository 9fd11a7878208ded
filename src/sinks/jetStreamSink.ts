/**
 * NATS JetStream sink: publishes each outbox row to `<subjectPrefix>.<topic>` and reports it
 * `confirmed` when the stream's publish ack arrives. All messages of a batch are published at once
 * and their acks awaited concurrently, so a batch costs about one round trip.
 *
 * Wire format: CloudEvents binary mode. The body is the payload's JSON; the attributes travel as
 * `ce-*` headers (the binary mode of the NATS protocol binding); `Nats-Msg-Id` = event id.
 *
 * Deduplication and the relay's retry schedule. JetStream drops a message whose `Nats-Msg-Id` it
 * has stored within the stream's duplicate window (default here 2 minutes) and acks it with
 * `duplicate: true`, which this sink reports as `confirmed` with `duplicate: true` and counts in
 * `sink.duplicates`. So a re-send soon after an unknown outcome (lost ack, connection cut, deadline)
 * stores nothing twice. But the relay re-sends with exponential back-off, and a row whose earlier
 * copy was stored more than a window ago (late attempts, an outage longer than the window, a
 * stalled connection whose bytes arrive later) is stored again: the window narrows duplicates, it
 * does not rule them out. Consumers must still deduplicate on the CloudEvent id (= `Nats-Msg-Id`).
 * A longer window costs server memory in proportion to the publish rate times the window.
 *
 * Outcomes: ack → confirmed (duplicate flag as above); no ack before the deadline or the
 * connection lost with the ack pending → unknown; no stream captures the subject ("no responders")
 * or a 5xx from JetStream (e.g. a stream at its limits with discard-new) → retryable; a 4xx from
 * JetStream (message larger than the stream allows) or a message the client refuses (over the
 * server's max_payload, a topic that is no valid subject) → permanent.
 *
 * Connection: the nats client reconnects by itself, forever. While it is disconnected, batches end
 * at once as deferred (nothing sent, no attempt counted) instead of piling publishes into the
 * client's reconnect buffer and holding their rows' locks until the deadline. Pings every 10 s
 * (two missed → reconnect) find a connection that went silent.
 *
 * Finding or creating the stream is jetStreamStream.ts; the client options built from the URLs
 * (credentials) and the diagnosis of a failed start are jetStreamConnection.ts.
 */
import {
  ErrorCode,
  Events,
  connect,
  headers as natsHeaders,
  NatsError,
  type JetStreamClient,
  type MsgHdrs,
  type NatsConnection,
  type PubAck,
} from 'nats';
import { raceDeadline } from '../raceDeadline.js';
import { ShardRelayError, toError } from '../errors.js';
import { redact } from '../redact.js';
import { silentLogger, type Logger } from '../logger.js';
import {
  CE_DASH,
  DATA_CONTENT_TYPE,
  eventSource,
  writeApplicationHeaders,
  writeAttributes,
} from './cloudEvent.js';
import { settleByDeadline } from './deadline.js';
import { connectionOptions, redactedServers, startError } from './jetStreamConnection.js';
import { provisionStream, validateStreamSettings } from './jetStreamStream.js';
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

export interface JetStreamSinkOptions {
  /** `nats://[user:password@]host:4222`; several servers separated by commas. */
  readonly url: string;
  /** Stream that stores the events. Default `SHARDRELAY`. */
  readonly stream?: string;
  /** Events go to `<subjectPrefix>.<topic>`; a created stream captures `<subjectPrefix>.>`. Default `shardrelay`. */
  readonly subjectPrefix?: string;
  /**
   * Duplicate window of a stream this sink creates (see the file comment for how it relates to
   * re-sends). An existing stream keeps its own; a mismatch is logged. Default 120 000 ms.
   */
  readonly duplicateWindowMs?: number;
  /** Create the stream (file storage, limits retention) when it is missing. Default true. */
  readonly ensureStream?: boolean;
  /** CloudEvents `source` attribute. Default `shardrelay`. */
  readonly source?: string;
  /** Upper bound of connecting and of the stream check in `start()`. Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  /** Client ping interval; two unanswered pings and the client reconnects. Default 10 000 ms. */
  readonly pingIntervalMs?: number;
  /** Pass the relay's logger; default silent. */
  readonly log?: Logger;
}

export interface JetStreamSink extends Sink {
  /** Publishes JetStream acknowledged as duplicates (already stored within the window) since start. */
  readonly duplicates: number;
}

export const DEFAULT_STREAM = 'SHARDRELAY';
export const DEFAULT_SUBJECT_PREFIX = 'shardrelay';
export const DEFAULT_DUPLICATE_WINDOW_MS = 2 * 60 * 1000;

const DEFAULTS = { connectTimeoutMs: 10_000, pingIntervalMs: 10_000 } as const;

export function createJetStreamSink(options: JetStreamSinkOptions): JetStreamSink {
  const stream = options.stream ?? DEFAULT_STREAM;
  const prefix = options.subjectPrefix ?? DEFAULT_SUBJECT_PREFIX;
  const duplicateWindowMs = options.duplicateWindowMs ?? DEFAULT_DUPLICATE_WINDOW_MS;
  const ensureStream = options.ensureStream ?? true;
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  const log = (options.log ?? silentLogger).child({ sink: 'jetstream' });
  const source = eventSource(options.source);
  const connection = connectionOptions(
    options.url,
    connectTimeoutMs,
    options.pingIntervalMs ?? DEFAULTS.pingIntervalMs,
  );
  const where = redactedServers(options.url);
  const scrub = (text: string): string => redact(text, options.url);
  validateStreamSettings(stream, prefix, duplicateWindowMs);

  let nc: NatsConnection | null = null;
  let js: JetStreamClient | null = null;
  /** False between the client's 'disconnect' and 'reconnect' events. */
  let connected = false;
  let closing = false;
  let duplicates = 0;
  /** The connect in progress, shared so concurrent batches do not open a connection each. */
  let opening: Promise<void> | null = null;

  const describe = (error: unknown): string => scrub(toError(error).message);

  function watch(conn: NatsConnection): void {
    void (async () => {
      for await (const status of conn.status()) {
        if (status.type === Events.Disconnect) {
          connected = false;
          log.warn({ server: String(status.data) }, 'NATS disconnected; the client is reconnecting');
        } else if (status.type === Events.Reconnect) {
          connected = true;
          log.info({ server: String(status.data) }, 'NATS reconnected');
        } else if (status.type === Events.Error) {
          log.warn({ error: scrub(String(status.data)) }, 'NATS asynchronous error');
        }
      }
    })().catch(() => undefined);
    void conn.closed().then((error) => {
      if (nc === conn) {
        nc = null;
        js = null;
        connected = false;
      }
      if (!closing) log.warn({ error: error ? describe(error) : undefined }, 'NATS connection closed');
    });
  }

  function open(): Promise<void> {
    opening ??= openConnection().finally(() => {
      opening = null;
    });
    return opening;
  }

  async function openConnection(): Promise<void> {
    const conn = await connect(connection);
    try {
      const jsm = await conn.jetstreamManager({ timeout: connectTimeoutMs });
      const info = await provisionStream(jsm.streams, {
        stream,
        prefix,
        duplicateWindowMs,
        ensureStream,
        where,
        log,
      });
      if (closing) throw new Error('the sink is closed');
      nc = conn;
      js = conn.jetstream({ timeout: connectTimeoutMs });
      connected = true;
      watch(conn);
      log.info({ url: where, stream, subjects: info.config.subjects }, 'NATS JetStream connected');
    } catch (error) {
      await conn.close().catch(() => undefined);
      throw error;
    }
  }

  function subjectOf(message: OutboxMessage): string {
    const tokens = message.topic.split('.');
    if (tokens.some((t) => t === '' || t === '*' || t === '>' || /[\s]/.test(t))) {
      throw new Error(
        `topic '${message.topic}' is no valid NATS subject part (empty token, whitespace or a wildcard)`,
      );
    }
    return `${prefix}.${message.topic}`;
  }

  async function publishOne(
    client: JetStreamClient,
    message: OutboxMessage,
    deadline: number,
  ): Promise<SendOutcome> {
    let subject: string;
    let body: Buffer;
    let hdrs: MsgHdrs;
    try {
      subject = subjectOf(message);
      const all: Record<string, string> = {};
      writeApplicationHeaders(all, message);
      writeAttributes(all, message, source, CE_DASH);
      all['content-type'] = DATA_CONTENT_TYPE;
      body = Buffer.from(message.payloadJson, 'utf8');
      hdrs = natsHeaders();
      for (const name in all) hdrs.set(name, all[name] as string);
    } catch (error) {
      return permanent(`cannot encode the event: ${describe(error)}`);
    }
    let ack: PubAck;
    try {
      ack = await client.publish(subject, body, {
        msgID: message.eventId,
        headers: hdrs,
        timeout: Math.max(1, deadline - Date.now()),
      });
    } catch (error) {
      return failureOutcome(error, subject);
    }
    if (ack.duplicate) {
      duplicates += 1;
      return { status: 'confirmed', duplicate: true };
    }
    return confirmed;
  }

  function failureOutcome(error: unknown, subject: string): SendOutcome {
    const text = describe(error);
    if (!(error instanceof NatsError)) return unknown(`JetStream publish to ${subject} failed: ${text}`);
    const api = error.api_error;
    if (api) {
      const code = api.err_code ? `${api.code}/${api.err_code}` : String(api.code);
      const detail = `JetStream refused ${subject}: ${api.description} (${code})`;
      return api.code >= 500 || api.code === 408 || api.code === 429 ? retryable(detail) : permanent(detail);
    }
    switch (error.code) {
      case ErrorCode.NoResponders:
        return retryable(
          `no JetStream stream answered for ${subject} (no responders): is it captured by stream ${stream}?`,
        );
      case ErrorCode.MaxPayloadExceeded:
      case ErrorCode.BadPayload:
      case ErrorCode.BadSubject:
      case ErrorCode.BadHeader:
      case ErrorCode.InvalidPayload:
        return permanent(`NATS refused the message for ${subject}: ${text}`);
      case ErrorCode.Timeout:
        return unknown(`no JetStream ack for ${subject} before the deadline`);
      default:
        // Connection closed or lost with the ack pending: the stream may hold the message.
        return unknown(`JetStream ack for ${subject} lost: ${text}`);
    }
  }

  return {
    name: 'jetstream',

    get duplicates() {
      return duplicates;
    },

    async start() {
      if (nc) return;
      try {
        await open();
      } catch (error) {
        if (error instanceof ShardRelayError) throw error;
        throw startError(error, where, describe(error));
      }
    },

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (messages.length === 0) return [];
      if (!nc && !closing) {
        // The connection was closed under us (the client gave up or the server refused us): try
        // a fresh one, bounded by the batch deadline.
        try {
          await raceDeadline(open(), context.deadline, 'the batch deadline passed while connecting');
        } catch (error) {
          const outcome = deferred(`NATS unavailable at ${where}: ${describe(error)}`);
          return messages.map(() => outcome);
        }
      }
      const client = js;
      if (!client || !connected) {
        const outcome = deferred(
          `NATS connection to ${where} is down (the client is reconnecting); nothing was sent`,
        );
        return messages.map(() => outcome);
      }
      return settleByDeadline(
        messages.map((message) => publishOne(client, message, context.deadline)),
        context.deadline,
      );
    },

    async close() {
      closing = true;
      const conn = nc;
      nc = null;
      js = null;
      connected = false;
      // drain() would wait for pending acks; the relay awaited its batches, so close at once.
      if (conn) await conn.close().catch(() => undefined);
    },
  };
}
