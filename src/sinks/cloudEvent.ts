/**
 * The CloudEvents 1.0 envelope every sink puts around an outbox row, so consumers on any broker see
 * the same attributes: `id` is the row's event id (stable across re-sends, hence the key consumers
 * deduplicate on), `type` the topic, `time` the enqueue time, `data` the JSON payload.
 *
 * Two encodings, because transports differ in what they can carry:
 * - binary mode (`writeAttributes`, `encodeBinary`): the attributes become headers (`ce-*` in the
 *   HTTP binding's names, which AMQP, NATS and STOMP use here; `ce_*` in the Kafka binding's) and the
 *   body is the payload's JSON alone. Consumers that do not know CloudEvents still read a plain JSON
 *   body, and those that do can rebuild the event from the headers (`HTTP.toEvent({ headers, body })`
 *   of the cloudevents SDK decodes the `ce-*` form).
 * - structured mode (`structuredJson`, `encodeStructured`): the whole event is one
 *   `application/cloudevents+json` document. Used by the HTTP and Kinesis sinks.
 *
 * Built by hand, not with the SDK's `CloudEvent` objects. Why: a V8 profile of the relay publishing
 * to RabbitMQ put the SDK's per-message objects (constructor, schema validation, freezing, spread
 * copies) at ~23 % of the relay's busy time (bench/RESULTS.md); the payload also had to be parsed
 * into an object for the SDK and stringified again. Here the payload's JSON text from the claim
 * (OutboxMessage.payloadJson) is put on the wire untouched and the attributes are plain strings
 * written straight into the transport's header object. What the SDK validated per message is
 * checked here (`checkEvent`); `source`, the one attribute from configuration, is validated once
 * with the SDK itself (`eventSource`). Measured (CPU time, 20,000 events of a 200-byte payload, 3
 * rounds, load average 40 on 2 cores): parse + SDK event + binary encoding 8.7-10.3 µs per event,
 * this 1.7-3.2 µs; structured 10.2-10.4 against 2.8-3.1 µs. test/sinks/cloudEvent.test.ts proves
 * with the SDK that both encodings equal what it produces, for any payload and attribute values.
 */
import { CloudEvent } from 'cloudevents';
import { ConfigError, toError } from '../errors.js';
import { isoTime } from './eventTime.js';
import type { OutboxMessage } from './sink.js';

export const DEFAULT_SOURCE = 'shardrelay';

/** Content type of the `data` of every event: outbox payloads are jsonb. */
export const DATA_CONTENT_TYPE = 'application/json';

export const STRUCTURED_CONTENT_TYPE = 'application/cloudevents+json; charset=utf-8';

export const SPEC_VERSION = '1.0';

export interface CloudEventOptions {
  /** The CloudEvents `source` attribute (a URI-reference naming the producer). Default `shardrelay`. */
  readonly source?: string;
}

/** A transport-neutral encoded event: header names are lower case, values strings. */
export interface EncodedEvent {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

/**
 * The `source` attribute a sink will stamp on every event, checked once when the sink is created:
 * an invalid one (not a URI-reference, empty) would make every message fail, so it is a
 * configuration error. Checked by the SDK's own schema, on one sample event.
 */
export function eventSource(source: string | undefined): string {
  const value = source ?? DEFAULT_SOURCE;
  try {
    new CloudEvent({ specversion: SPEC_VERSION, id: 'check', type: 'check', source: value });
  } catch (error) {
    throw new ConfigError(
      'CloudEvents source',
      `${JSON.stringify(value)} is not a valid CloudEvents source (${toError(error).message})`,
      'use a URI-reference such as urn:shop:orders or /orders',
    );
  }
  return value;
}

/**
 * Throws for a row that cannot form a valid event, with the checks the SDK's schema made per
 * message (`id` and `type` non-empty strings, `time` a date-time); sinks report that as a permanent
 * failure of that message, since re-sending cannot fix it. Returns the `time` attribute.
 */
export function checkEvent(message: OutboxMessage): string {
  if (message.topic.length === 0) throw new TypeError('invalid CloudEvent: type (the topic) is empty');
  if (message.eventId.length === 0) throw new TypeError('invalid CloudEvent: id (the event id) is empty');
  // RangeError for an invalid date.
  return isoTime(message.createdAt);
}

/** A binding's header names of the attributes, built once per sink (no string building per message). */
export interface AttributeNames {
  readonly id: string;
  readonly time: string;
  readonly type: string;
  readonly source: string;
  readonly specversion: string;
  readonly correlationid: string;
  readonly traceparent: string;
  readonly partitionkey: string;
}

export function attributeNames(prefix: string): AttributeNames {
  return {
    id: `${prefix}id`,
    time: `${prefix}time`,
    type: `${prefix}type`,
    source: `${prefix}source`,
    specversion: `${prefix}specversion`,
    correlationid: `${prefix}correlationid`,
    traceparent: `${prefix}traceparent`,
    partitionkey: `${prefix}partitionkey`,
  };
}

/** The HTTP binding's names (`ce-id`, ...), used by the AMQP, NATS and HTTP transports. */
export const CE_DASH: AttributeNames = attributeNames('ce-');
/** The Kafka binding's names (`ce_id`, ...); also valid JMS property names (STOMP). */
export const CE_UNDERSCORE: AttributeNames = attributeNames('ce_');

/**
 * Binary mode: writes one header per attribute into `target`, in the order the SDK's binary
 * serializer emits them (id, time, type, source, specversion, then the extensions). Extension names
 * must be lower-case alphanumerics (CloudEvents 1.0, section 3.1.1), hence `correlationid` and
 * `partitionkey`; `traceparent` is the Distributed Tracing extension. `content-type` (the
 * `datacontenttype` attribute) is the transport's business: its own property or header.
 */
export function writeAttributes(
  target: Record<string, string>,
  message: OutboxMessage,
  source: string,
  names: AttributeNames,
): void {
  const time = checkEvent(message);
  target[names.id] = message.eventId;
  target[names.time] = time;
  target[names.type] = message.topic;
  target[names.source] = source;
  target[names.specversion] = SPEC_VERSION;
  if (message.correlationId !== null) target[names.correlationid] = message.correlationId;
  if (message.traceparent !== null) target[names.traceparent] = message.traceparent;
  if (message.key !== null) target[names.partitionkey] = message.key;
}

/** Binary mode as one value: `ce-*` headers and `content-type`; the body is the payload's JSON. */
export function encodeBinary(message: OutboxMessage, options: CloudEventOptions = {}): EncodedEvent {
  const headers: Record<string, string> = {};
  writeAttributes(headers, message, options.source ?? DEFAULT_SOURCE, CE_DASH);
  headers['content-type'] = DATA_CONTENT_TYPE;
  return { headers, body: Buffer.from(message.payloadJson, 'utf8') };
}

/**
 * Structured mode: the `application/cloudevents+json` document as text, members in the order of the
 * SDK's `toJSON()`, with the payload's JSON text spliced in as `data` (a row always has one: jsonb
 * `null` at worst, written explicitly for receivers that require the member). `sourceJson`, the
 * source's JSON text, lets a sink encode its fixed source once instead of per message.
 */
export function structuredJson(message: OutboxMessage, source: string, sourceJson?: string): string {
  const time = checkEvent(message);
  let text =
    `{"id":${JSON.stringify(message.eventId)},"time":"${time}","type":${JSON.stringify(message.topic)}` +
    `,"source":${sourceJson ?? JSON.stringify(source)},"specversion":"${SPEC_VERSION}"` +
    `,"datacontenttype":"${DATA_CONTENT_TYPE}","data":${message.payloadJson}`;
  if (message.correlationId !== null) text += `,"correlationid":${JSON.stringify(message.correlationId)}`;
  if (message.traceparent !== null) text += `,"traceparent":${JSON.stringify(message.traceparent)}`;
  if (message.key !== null) text += `,"partitionkey":${JSON.stringify(message.key)}`;
  return `${text}}`;
}

/** Structured mode as one value: the document and its `content-type`. */
export function encodeStructured(message: OutboxMessage, options: CloudEventOptions = {}): EncodedEvent {
  return {
    headers: { 'content-type': STRUCTURED_CONTENT_TYPE },
    body: Buffer.from(structuredJson(message, options.source ?? DEFAULT_SOURCE), 'utf8'),
  };
}

/**
 * Writes the row's own headers (set by the application at enqueue time) that a transport may carry
 * beside the event into `target`, then the W3C `traceparent` header for transports that propagate
 * it themselves (HTTP, AMQP application properties, NATS headers, ...), beside the CloudEvents
 * `traceparent` attribute, so tracing middleware that knows nothing of CloudEvents still continues
 * the trace. Names are lower-cased; names the envelope owns (`ce-*`, `content-type`) are dropped so a
 * row can never forge the event id or the content type the consumer dedupes and decodes by, and so
 * are those `skip` names (a transport's reserved headers). Most rows have no headers: the loop
 * then costs nothing.
 */
export function writeApplicationHeaders(
  target: Record<string, string>,
  message: OutboxMessage,
  skip?: (lowerCaseName: string) => boolean,
): void {
  const own = message.headers;
  for (const name in own) {
    const lower = name.toLowerCase();
    if (lower.startsWith('ce-') || lower === 'content-type' || skip?.(lower) === true) continue;
    target[lower] = own[name] as string;
  }
  if (message.traceparent !== null && skip?.('traceparent') !== true) {
    target.traceparent = message.traceparent;
  }
}

/** Whether the row carries headers of its own (most rows do not: a sink can skip their loop). */
export function hasOwnHeaders(message: OutboxMessage): boolean {
  for (const _ in message.headers) return true;
  return false;
}
