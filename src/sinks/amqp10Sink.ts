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
 * - not sent: link refused              → failed retryable: nothing left this process
 * - not sent: connection down, link     → deferred: nothing left this process; the row goes back
 *   lost earlier in the batch, no credit  as claimed, no attempt counted (relay/deferralDelay.ts)
 *   from the broker until the deadline
 * - larger than the link's or the       → failed permanent, before sending
 *   configured maximum message size
 *
 * Flow control: a sender may only send while it holds link credit; beyond that the batch waits
 * for more, up to its deadline. A broker that grants no credit therefore costs a batch its
 * deadline and ends it deferred, never unknown.
 *
 * The connection, its sender links and their life (reconnect, back-off, idle time-outs, credit and
 * unsettled-delivery bookkeeping) are the link manager's (amqp10Link.ts); this file encodes (the
 * bytes are written by amqp10Encoding.ts), sends through it and says what each delivery state means
 * for a row (`deliveryOutcomes`).
 */
import type { Delivery } from 'rhea';
import { raceDeadline } from '../raceDeadline.js';
import { ConfigError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { encodeAmqp10Message } from './amqp10Encoding.js';
import {
  amqpErrorText,
  createAmqp10Links,
  creditLeft,
  deliver,
  remoteMaxMessageSize,
  waitForCredit,
  type Amqp10Connection,
  type DeliveryOutcomes,
} from './amqp10Link.js';
import {
  attributeNames,
  eventSource,
  writeApplicationHeaders,
  writeAttributes,
  DATA_CONTENT_TYPE,
} from './cloudEvent.js';
import { BatchOutcomes } from './deadline.js';
import { fromTopicTemplate } from './topicTemplate.js';
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
} as const;

/** The CloudEvents AMQP binding's application-property prefix (binding 1.0.1+; `cloudEvents:` before). */
const CE_NAMES = attributeNames('cloudEvents_');

/**
 * What each terminal state of a delivery means for its row (see the list at the top of this file).
 * Called by the link manager as the broker settles deliveries.
 */
const deliveryOutcomes: DeliveryOutcomes = {
  accepted: () => confirmed,
  rejected: (address, delivery) =>
    permanent(`the broker rejected the message at '${address}': ${amqpErrorText(outcomeError(delivery))}`),
  released: (address) => retryable(`the broker released the message at '${address}' (not processed)`),
  modified: (address, delivery) =>
    retryable(
      `the broker returned the message at '${address}' as modified${
        (delivery.remote_state as { undeliverable_here?: boolean } | undefined)?.undeliverable_here
          ? ' (undeliverable here)'
          : ''
      }`,
    ),
  lost: (address, reason) =>
    unknown(`AMQP 1.0 link to '${address}' lost with the delivery unsettled (${reason})`),
};

export function createAmqp10Sink(options: Amqp10SinkOptions): Sink {
  const log = (options.log ?? silentLogger).child({ sink: 'amqp10' });
  const links = createAmqp10Links({
    url: options.url,
    idleTimeoutMs: options.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs,
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
    reconnectBackoff: options.reconnectBackoff ?? DEFAULTS.reconnectBackoff,
    outcomes: deliveryOutcomes,
    log,
  });
  const addressTemplate = options.address ?? DEFAULT_AMQP10_ADDRESS;
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULTS.maxMessageBytes;
  const source = eventSource(options.source);
  validate(addressTemplate, maxMessageBytes);
  const { where, describe } = links;
  const addressOf = fromTopicTemplate(addressTemplate);

  /** The message's AMQP 1.0 bytes, or why it cannot be encoded. */
  function encode(message: OutboxMessage): Buffer | string {
    const properties: Record<string, string> = {};
    try {
      writeApplicationHeaders(properties, message);
      writeAttributes(properties, message, source, CE_NAMES);
      return encodeAmqp10Message({
        messageId: message.eventId,
        subject: message.topic,
        correlationId: message.correlationId,
        contentType: DATA_CONTENT_TYPE,
        creationTime: message.createdAt,
        applicationProperties: properties,
        body: message.payloadJson,
      });
    } catch (error) {
      return `cannot encode the event: ${describe(error)}`;
    }
  }

  /** Sends the messages of one address in order; each gets its outcome promise. */
  async function sendToAddress(
    target: Amqp10Connection,
    address: string,
    items: readonly { message: Buffer; index: number }[],
    outcomes: BatchOutcomes,
    deadline: number,
  ): Promise<void> {
    const state = links.senderFor(target, address);
    const notSent = (error: string): void => {
      const outcome = retryable(`not sent: ${error}`);
      for (const item of items) outcomes.settle(item.index, outcome);
    };
    try {
      await raceDeadline(state.opened, deadline, 'the batch deadline passed while attaching the link');
    } catch (error) {
      notSent(`the link to '${address}' could not be attached: ${describe(error)}`);
      return;
    }
    const remoteMax = remoteMaxMessageSize(state);
    for (const item of items) {
      const limit = remoteMax > 0 ? Math.min(remoteMax, maxMessageBytes) : maxMessageBytes;
      if (item.message.length > limit) {
        outcomes.settle(
          item.index,
          permanent(
            `message of ${item.message.length} bytes exceeds the maximum of ${limit} bytes for '${address}'`,
          ),
        );
        continue;
      }
      while (!state.closed && creditLeft(state) <= 0 && Date.now() < deadline) {
        await waitForCredit(state, deadline);
      }
      if (state.closed) {
        outcomes.settle(
          item.index,
          deferred(`not sent: the link to '${address}' was lost earlier in this batch`),
        );
        continue;
      }
      if (creditLeft(state) <= 0) {
        outcomes.settle(
          item.index,
          deferred(`not sent: no link credit from the broker for '${address}' before the batch deadline`),
        );
        continue;
      }
      const index = item.index;
      deliver(state, item.message, (outcome) => outcomes.settle(index, outcome));
    }
  }

  return {
    name: 'amqp10',

    // A fixed address is attached now, so a refused address shows at start, not as retries.
    start: () => links.start(addressTemplate.includes('{topic}') ? undefined : addressTemplate),

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (messages.length === 0) return [];
      let target: Amqp10Connection;
      try {
        target = await links.current(context.deadline);
      } catch (error) {
        const outcome = deferred(`AMQP 1.0 broker unavailable at ${where}: ${describe(error)}`);
        return messages.map(() => outcome);
      }
      const outcomes = new BatchOutcomes(messages.length);
      const byAddress = new Map<string, { message: Buffer; index: number }[]>();
      messages.forEach((message, index) => {
        const encoded = encode(message);
        if (typeof encoded === 'string') {
          outcomes.settle(index, permanent(encoded));
          return;
        }
        const address = addressOf(message.topic);
        const items = byAddress.get(address);
        if (items) items.push({ message: encoded, index });
        else byAddress.set(address, [{ message: encoded, index }]);
      });
      await Promise.all(
        [...byAddress].map(([address, items]) =>
          sendToAddress(target, address, items, outcomes, context.deadline),
        ),
      );
      return outcomes.byDeadline(context.deadline);
    },

    close: () => links.close(),
  };
}

function outcomeError(delivery: Delivery): unknown {
  return (delivery.remote_state as { error?: unknown } | undefined)?.error;
}

function validate(addressTemplate: string, maxMessageBytes: number): void {
  if (addressTemplate.length === 0) {
    throw new ConfigError('amqp10 address', 'is empty', 'give an address such as {topic} or /queue/{topic}');
  }
  if (!Number.isInteger(maxMessageBytes) || maxMessageBytes < 1) {
    throw new ConfigError(
      'amqp10 maxMessageBytes',
      `${maxMessageBytes} is not a positive whole number`,
      'use e.g. 16777216',
    );
  }
}
