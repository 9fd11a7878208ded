/**
 * The hand-built CloudEvents envelope (src/sinks/cloudEvent.ts) against the cloudevents SDK: for any
 * payload and attribute values, the binary-mode headers (HTTP `ce-*`, Kafka `ce_*`, AMQP
 * `cloudEvents_*`), the body and the structured document equal what the SDK produces from the same
 * row, and decode with the SDK's own decoders. The SDK is the reference here and nowhere on the
 * relay's per-message path.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CloudEvent, HTTP, Kafka } from 'cloudevents';
import fc from 'fast-check';
import {
  CE_DASH,
  CE_UNDERSCORE,
  DATA_CONTENT_TYPE,
  attributeNames,
  encodeBinary,
  encodeStructured,
  eventSource,
  structuredJson,
  writeApplicationHeaders,
  writeAttributes,
} from '../../src/sinks/cloudEvent.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { outboxMessage, payloadText, type MessageShape } from '../support/brokers.js';

const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

function message(fields: MessageShape = {}): OutboxMessage {
  return outboxMessage(fields);
}

/** The event the SDK builds from a row: what the sinks built per message before. */
function sdkEvent(row: OutboxMessage, source = 'shardrelay'): CloudEvent<unknown> {
  return new CloudEvent<unknown>({
    specversion: '1.0',
    id: row.eventId,
    source,
    type: row.topic,
    time: row.createdAt.toISOString(),
    datacontenttype: DATA_CONTENT_TYPE,
    data: JSON.parse(row.payloadJson) as unknown,
    ...(row.correlationId !== null ? { correlationid: row.correlationId } : {}),
    ...(row.traceparent !== null ? { traceparent: row.traceparent } : {}),
    ...(row.key !== null ? { partitionkey: row.key } : {}),
  });
}

/** Defined string headers only (the SDK's serializers also list absent attributes as undefined). */
function defined(headers: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(headers)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => [k, String(v)]),
  );
}

/** Decodes an encoded event the way a consumer using the cloudevents SDK would. */
function decode(encoded: { headers: Readonly<Record<string, string>>; body: Buffer }) {
  const event = HTTP.toEvent({ headers: { ...encoded.headers }, body: encoded.body.toString('utf8') });
  assert.ok(!Array.isArray(event));
  return event;
}

const rows = fc.record({
  payload: fc.jsonValue(),
  topic: fc.string({ minLength: 1 }),
  correlationId: fc.option(fc.string(), { nil: null }),
  key: fc.option(fc.string({ minLength: 1 }), { nil: null }),
  traceparent: fc.option(fc.constant(traceparent), { nil: null }),
  jsonbText: fc.boolean(),
});

describe('CloudEvent envelope, hand-built, against the cloudevents SDK', () => {
  it('binary mode: the same headers as the SDK (HTTP ce-*, Kafka ce_*, AMQP cloudEvents_*) and the payload as body', () => {
    fc.assert(
      fc.property(rows, ({ payload, jsonbText, ...fields }) => {
        // Both texts a claim could hand over: jsonb's own (", " and ": ") and the compact one.
        const row = message({
          ...fields,
          payloadJson: jsonbText ? payloadText(payload) : JSON.stringify(payload),
        });
        const event = sdkEvent(row, 'urn:shop:orders');
        const sdkHttp = HTTP.binary(event);

        const binary = encodeBinary(row, { source: 'urn:shop:orders' });
        assert.deepEqual(binary.headers, defined(sdkHttp.headers));
        assert.equal(
          binary.body.toString('utf8'),
          row.payloadJson,
          'the body is the claimed text, untouched',
        );
        assert.deepEqual(JSON.parse(binary.body.toString('utf8')), event.data);

        // Kafka binding: content-type maps datacontenttype (3.2.1), so the SDK's redundant
        // ce_datacontenttype is the one header it has and the sink does not.
        const kafka: Record<string, string> = {};
        writeAttributes(kafka, row, 'urn:shop:orders', CE_UNDERSCORE);
        kafka['content-type'] = DATA_CONTENT_TYPE;
        const { ce_datacontenttype: _dct, ...sdkKafka } = defined(
          Kafka.binary(event).headers as Record<string, unknown>,
        );
        assert.deepEqual(kafka, sdkKafka);

        // AMQP binding (cloudEvents_ application properties): the same attributes, its prefix.
        const amqp: Record<string, string> = {};
        writeAttributes(amqp, row, 'urn:shop:orders', attributeNames('cloudEvents_'));
        const fromSdk = Object.fromEntries(
          Object.entries(defined(sdkHttp.headers))
            .filter(([name]) => name.startsWith('ce-'))
            .map(([name, value]) => [`cloudEvents_${name.slice(3)}`, value]),
        );
        assert.deepEqual(amqp, fromSdk);
      }),
    );
  });

  it('structured mode: the very document the SDK writes, byte for byte, for a compact payload text', () => {
    fc.assert(
      fc.property(rows, ({ payload, jsonbText, ...fields }) => {
        const row = message({
          ...fields,
          payloadJson: jsonbText ? payloadText(payload) : JSON.stringify(payload),
        });
        const event = sdkEvent(row);
        const sdkStructured = HTTP.structured(event);
        const encoded = encodeStructured(row);
        assert.equal(encoded.headers['content-type'], 'application/cloudevents+json; charset=utf-8');
        assert.equal(sdkStructured.headers['content-type'], 'application/cloudevents+json; charset=utf-8');
        const text = encoded.body.toString('utf8');
        if (!jsonbText) assert.equal(text, sdkStructured.body);
        assert.deepEqual(JSON.parse(text), JSON.parse(sdkStructured.body as string));
        // The same with the source JSON a sink encodes once.
        assert.equal(structuredJson(row, 'shardrelay', '"shardrelay"'), text);
      }),
    );
  });

  it('both encodings decode with the SDK into the row', () => {
    const row = message({ correlationId: 'corr-2', traceparent, payload: { items: [1, 2], note: 'ü' } });
    for (const decoded of [decode(encodeBinary(row)), decode(encodeStructured(row))]) {
      assert.equal(decoded.id, row.eventId);
      assert.equal(decoded.source, 'shardrelay');
      assert.equal(decoded.type, row.topic);
      assert.equal(decoded.time, row.createdAt.toISOString());
      assert.equal(decoded.correlationid, 'corr-2');
      assert.equal(decoded.traceparent, traceparent);
      assert.equal(decoded.partitionkey, row.key);
      assert.deepEqual(decoded.data, { items: [1, 2], note: 'ü' });
    }
  });

  it('leaves out the extension attributes a row does not have', () => {
    const { headers } = encodeBinary(message({ key: null }));
    assert.deepEqual(Object.keys(headers), [
      'ce-id',
      'ce-time',
      'ce-type',
      'ce-source',
      'ce-specversion',
      'content-type',
    ]);
  });

  it('refuses a row the SDK would refuse (empty type), and an invalid source at configuration', () => {
    assert.throws(() => sdkEvent(message({ topic: '' })), /type|invalid/);
    assert.throws(() => encodeBinary(message({ topic: '' })), /type/);
    assert.throws(() => encodeStructured(message({ topic: '' })), /type/);
    assert.throws(() => writeAttributes({}, message({ createdAt: new Date(Number.NaN) }), 's', CE_DASH));
    assert.equal(eventSource(undefined), 'shardrelay');
    assert.equal(eventSource('urn:shop:orders'), 'urn:shop:orders');
    assert.throws(() => eventSource(''), /source/);
  });

  it("passes a row's own headers on, lower-cased, but never ones that would forge the envelope", () => {
    const row = message({
      headers: { 'X-Tenant': 'acme', 'CE-ID': 'forged', 'Content-Type': 'text/plain', Persistent: 'no' },
      traceparent,
    });
    const all: Record<string, string> = {};
    writeApplicationHeaders(all, row);
    assert.deepEqual(all, { 'x-tenant': 'acme', persistent: 'no', traceparent });
    const kept: Record<string, string> = {};
    writeApplicationHeaders(kept, row, (name) => name === 'persistent');
    assert.deepEqual(kept, { 'x-tenant': 'acme', traceparent });
    const none: Record<string, string> = {};
    writeApplicationHeaders(none, message());
    assert.deepEqual(none, {});
  });
});
