import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HTTP } from 'cloudevents';
import fc from 'fast-check';
import {
  applicationHeaders,
  encodeBinary,
  encodeStructured,
  toCloudEvent,
  traceHeaders,
} from '../../src/sinks/cloudEvent.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { outboxMessages } from '../support/brokers.js';

const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

function message(fields: Partial<OutboxMessage> = {}): OutboxMessage {
  return (outboxMessages(1, () => fields) as [OutboxMessage])[0];
}

/** Decodes an encoded event the way a consumer using the cloudevents SDK would. */
function decode(encoded: { headers: Readonly<Record<string, string>>; body: Buffer }) {
  const event = HTTP.toEvent({ headers: { ...encoded.headers }, body: encoded.body.toString('utf8') });
  assert.ok(!Array.isArray(event));
  return event;
}

describe('CloudEvent mapping', () => {
  it('maps an outbox row onto CloudEvents 1.0 attributes', () => {
    const row = message({ correlationId: 'corr-1', traceparent, key: 'customer-1' });
    const event = toCloudEvent(row);
    assert.equal(event.specversion, '1.0');
    assert.equal(event.id, row.eventId);
    assert.equal(event.source, 'shardrelay');
    assert.equal(event.type, row.topic);
    assert.equal(event.time, row.createdAt.toISOString());
    assert.equal(event.datacontenttype, 'application/json');
    assert.deepEqual(event.data, row.payload);
    assert.equal(event.correlationid, 'corr-1');
    assert.equal(event.traceparent, traceparent);
    assert.equal(event.partitionkey, 'customer-1');
    assert.equal(toCloudEvent(row, { source: 'urn:shop:orders' }).source, 'urn:shop:orders');
  });

  it('leaves out the extension attributes a row does not have', () => {
    const event = toCloudEvent(message({ key: null }));
    assert.equal('correlationid' in event, false);
    assert.equal('traceparent' in event, false);
    assert.equal('partitionkey' in event, false);
  });

  it('refuses a row that cannot form a valid event', () => {
    assert.throws(() => toCloudEvent(message({ topic: '' })), /type/);
  });

  it('keeps the id and the payload through both encodings, for any JSON payload', () => {
    // Decoded with JSON.parse, not the SDK: its decoder turns top-level scalars (null, 3, true) into
    // strings, which would blame the encoding for a consumer-side quirk.
    fc.assert(
      fc.property(
        fc.jsonValue(),
        fc.option(fc.string({ minLength: 1 }), { nil: null }),
        fc.option(fc.string({ minLength: 1 }), { nil: null }),
        (payload, correlationId, key) => {
          const row = message({ payload, correlationId, key });
          const expected: unknown = JSON.parse(JSON.stringify(payload));
          const event = toCloudEvent(row);
          const binary = encodeBinary(event);
          assert.equal(binary.headers['ce-id'], row.eventId);
          assert.equal(binary.headers['ce-correlationid'], correlationId ?? undefined);
          assert.equal(binary.headers['ce-partitionkey'], key ?? undefined);
          assert.deepEqual(JSON.parse(binary.body.toString('utf8')), expected);
          const structured = JSON.parse(encodeStructured(event).body.toString('utf8')) as Record<
            string,
            unknown
          >;
          assert.equal(structured.id, row.eventId);
          assert.equal(structured.correlationid, correlationId ?? undefined);
          assert.equal(structured.partitionkey, key ?? undefined);
          assert.deepEqual(structured.data, expected);
        },
      ),
    );
  });

  it('both encodings decode with the cloudevents SDK', () => {
    const row = message({ correlationId: 'corr-2', traceparent, payload: { items: [1, 2], note: 'ü' } });
    const event = toCloudEvent(row);
    for (const decoded of [decode(encodeBinary(event)), decode(encodeStructured(event))]) {
      assert.equal(decoded.id, row.eventId);
      assert.equal(decoded.source, 'shardrelay');
      assert.equal(decoded.time, row.createdAt.toISOString());
      assert.equal(decoded.correlationid, 'corr-2');
      assert.equal(decoded.traceparent, traceparent);
      assert.deepEqual(decoded.data, { items: [1, 2], note: 'ü' });
    }
  });

  it('binary mode puts attributes in ce-* headers and only the payload JSON in the body', () => {
    const row = message({ payload: 'text', correlationId: 'c' });
    const encoded = encodeBinary(toCloudEvent(row));
    assert.equal(encoded.headers['ce-id'], row.eventId);
    assert.equal(encoded.headers['ce-correlationid'], 'c');
    assert.equal(encoded.headers['content-type'], 'application/json');
    assert.equal(encoded.body.toString('utf8'), '"text"');
  });

  it('structured mode is one application/cloudevents+json document', () => {
    const row = message({ payload: null });
    const encoded = encodeStructured(toCloudEvent(row));
    assert.equal(encoded.headers['content-type'], 'application/cloudevents+json; charset=utf-8');
    const document = JSON.parse(encoded.body.toString('utf8')) as Record<string, unknown>;
    assert.equal(document.id, row.eventId);
    assert.equal(document.data, null);
  });

  it("passes a row's own headers on, lower-cased, but never ones that would forge the envelope", () => {
    const row = message({
      headers: { 'X-Tenant': 'acme', 'CE-ID': 'forged', 'Content-Type': 'text/plain' },
      traceparent,
    });
    assert.deepEqual(applicationHeaders(row), { 'x-tenant': 'acme' });
    assert.deepEqual(traceHeaders(row), { traceparent });
    assert.deepEqual(traceHeaders(message()), {});
  });
});
