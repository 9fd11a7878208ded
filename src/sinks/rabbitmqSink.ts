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
 * - not published (link down, blocked → deferred: nothing left this process; the row waits
 *   before the batch, back-pressure     without an attempt counted (relay/deferralDelay.ts), so an
 *   until the deadline)                 outage dead-letters nothing
 *
 * The connection, its confirm channel and their life (reconnect, back-off, heartbeats, the hard
 * drop when a batch's shard lease lapses) are the link manager's (rabbitmqLink.ts); this file
 * publishes through it and maps what the broker answered to outcomes.
 */
import type { Options } from 'amqplib';
import { ConfigError, toError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import {
  CE_DASH,
  eventSource,
  writeApplicationHeaders,
  writeAttributes,
  DATA_CONTENT_TYPE,
} from './cloudEvent.js';
import { BatchOutcomes } from './deadline.js';
import { createRabbitMqLinks, takeReturn, waitForDrain, type RabbitMqLink } from './rabbitmqLink.js';
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
} as const;

/** AMQP short strings (routing key, message id, header names...) are at most 255 bytes. */
const SHORTSTR_MAX_BYTES = 255;

/** The error amqplib hands a confirm callback for a basic.nack (lib/channel.js). */
const AMQPLIB_NACK_MESSAGE = 'message nacked';

export function createRabbitMqSink(options: RabbitMqSinkOptions): Sink {
  const exchange = options.exchange ?? DEFAULT_EXCHANGE;
  const declareExchange = options.declareExchange ?? true;
  const routingKeyOf = options.routingKey ?? ((message: OutboxMessage) => message.topic);
  const source = eventSource(options.source);
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULTS.maxMessageBytes;
  const log = (options.log ?? silentLogger).child({ sink: 'rabbitmq' });
  const links = createRabbitMqLinks({
    url: options.url,
    exchange,
    declareExchange,
    heartbeatSeconds: options.heartbeatSeconds ?? DEFAULTS.heartbeatSeconds,
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
    reconnectBackoff: options.reconnectBackoff ?? DEFAULTS.reconnectBackoff,
    log,
  });
  // Every publish carries the source as its app-id, a short string: too long a source would make
  // each publish throw, so refuse it here.
  const sourceProblem = shortstrProblem('source', source);
  if (sourceProblem) throw new ConfigError('rabbitmq source', sourceProblem, 'use a shorter URI-reference');
  const { where, describe } = links;

  /**
   * Publishes message `index` of a batch; its outcome is recorded in `outcomes` (at once when it
   * cannot be published, else when the broker confirms). Returns amqplib's `writable`.
   */
  function publishOne(
    target: RabbitMqLink,
    message: OutboxMessage,
    outcomes: BatchOutcomes,
    index: number,
  ): boolean {
    let routingKey: string;
    let body: Buffer;
    let publishOptions: Options.Publish;
    let headers: Record<string, string>;
    try {
      routingKey = routingKeyOf(message);
      // Binary mode, written straight into the one headers object amqplib encodes (no CloudEvent
      // object, no intermediate header objects); the content type travels as the AMQP property.
      headers = {};
      writeApplicationHeaders(headers, message);
      writeAttributes(headers, message, source, CE_DASH);
      body = Buffer.from(message.payloadJson, 'utf8');
      publishOptions = {
        persistent: true,
        mandatory: true,
        messageId: message.eventId,
        contentType: DATA_CONTENT_TYPE,
        type: message.topic,
        timestamp: Math.floor(message.createdAt.getTime() / 1000),
        correlationId: message.correlationId ?? undefined,
        appId: source,
        headers,
      };
    } catch (error) {
      outcomes.settle(index, permanent(`cannot encode the event: ${describe(error)}`));
      return true;
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
    if (problem) {
      outcomes.settle(index, permanent(problem));
      return true;
    }

    const route = `exchange '${exchange}', routing key '${routingKey}'`;
    const settle = (outcome: SendOutcome): void => outcomes.settle(index, outcome);
    try {
      return target.channel.publish(exchange, routingKey, body, publishOptions, (error: unknown) => {
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
      links.retire(target, `publish threw: ${describe(error)}`);
      settle(retryable(`not published: ${describe(error)}`));
      return true;
    }
  }

  return {
    name: 'rabbitmq',

    start: () => links.start(),

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (messages.length === 0) return [];
      let target: RabbitMqLink;
      try {
        target = await links.current(context.deadline);
      } catch (error) {
        const outcome = deferred(`RabbitMQ unavailable at ${where}: ${describe(error)}`);
        return messages.map(() => outcome);
      }
      if (target.blockedReason !== null) {
        // Publishing now would only fill the socket buffer and hold the rows' locks until the deadline.
        const outcome = deferred(
          `RabbitMQ is blocking publishers (${target.blockedReason}); nothing was sent`,
        );
        return messages.map(() => outcome);
      }
      const batch = new BatchOutcomes(messages.length);
      let drainWaits = 0;
      // A lapsed lease drops the link hard, before more bytes go out (see watchLease); the rest
      // of the batch then finds it closed and is not published.
      const lease = links.watchLease(target, context.mayContinue);
      let outcomes: SendOutcome[];
      try {
        for (const [index, message] of messages.entries()) {
          lease.check();
          if (target.closed) {
            batch.settle(index, deferred('not published: the RabbitMQ link was lost earlier in this batch'));
            continue;
          }
          if (Date.now() >= context.deadline) {
            batch.settle(
              index,
              deferred('not published: back-pressure from RabbitMQ until the batch deadline'),
            );
            continue;
          }
          const writable = publishOne(target, message, batch, index);
          // amqplib never refuses a publish; `false` means its socket buffer is over the high-water
          // mark. Waiting for 'drain' keeps memory bounded when the broker reads slower than we write.
          if (!writable) {
            drainWaits += 1;
            await waitForDrain(target, context.deadline);
          }
        }
        outcomes = await batch.byDeadline(context.deadline);
      } finally {
        lease.stop();
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
      log.debug({ link: target.number, messages: messages.length, drainWaits }, 'RabbitMQ batch settled');
      return result;
    },

    close: () => links.close(),
  };
}

function shortstrProblem(what: string, value: string): string | undefined {
  const bytes = Buffer.byteLength(value, 'utf8');
  return bytes > SHORTSTR_MAX_BYTES
    ? `${what} is ${bytes} bytes; AMQP allows at most ${SHORTSTR_MAX_BYTES}`
    : undefined;
}
