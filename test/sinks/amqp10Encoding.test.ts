/**
 * The AMQP 1.0 sink's own message encoding writes exactly the bytes rhea's `message.encode` writes
 * for the same message, for any text (multi-byte, empty, past the 255-byte switch to the 4-byte
 * length forms), with and without a correlation id, and for creation times before 1970.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import rhea, { type Message } from 'rhea';
import { encodeAmqp10Message, type Amqp10Message } from '../../src/sinks/amqp10Encoding.js';

/** The same message as rhea's object, the way the sink built it before it encoded its own. */
function asRheaMessage(message: Amqp10Message): Message {
  return {
    message_id: message.messageId,
    durable: true,
    subject: message.subject,
    content_type: message.contentType,
    creation_time: message.creationTime,
    ...(message.correlationId !== null ? { correlation_id: message.correlationId } : {}),
    application_properties: message.applicationProperties,
    body: rhea.message.data_section(Buffer.from(message.body, 'utf8')),
  } as Message;
}

const rheaEncode = (message: Message): Buffer =>
  (rhea.message as unknown as { encode(message: Message): Buffer }).encode(message);

/** Text around the 255-byte boundary, in one- to four-byte characters. */
const text = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'grapheme', minLength: 60, maxLength: 140 }),
  fc.string({ minLength: 250, maxLength: 300 }),
  fc.string({ unit: 'binary', maxLength: 400 }),
);

const messages: fc.Arbitrary<Amqp10Message> = fc.record({
  messageId: text,
  subject: text,
  correlationId: fc.option(text, { nil: null }),
  contentType: fc.constantFrom('application/json', 'application/cloudevents+json', 'x'.repeat(300)),
  creationTime: fc.date({ min: new Date(-1e14), max: new Date(1e14), noInvalidDate: true }),
  // Names that are not array indices: a JS object would move those first, for both encoders.
  applicationProperties: fc.dictionary(
    text.map((key) => `p_${key}`),
    text,
    { maxKeys: 12 },
  ),
  body: fc.oneof(text, fc.string({ minLength: 1000, maxLength: 3000 })),
});

describe('AMQP 1.0 message encoding', () => {
  it("writes the bytes rhea's message.encode writes", () => {
    fc.assert(
      fc.property(messages, (message) => {
        assert.deepEqual(encodeAmqp10Message(message), rheaEncode(asRheaMessage(message)));
      }),
      { numRuns: 2_000 },
    );
  });

  it('reads back through rhea as the message it was built from', () => {
    const message: Amqp10Message = {
      messageId: '0193a5f2-7c1e-7000-8000-000000000001',
      subject: 'orders.created',
      correlationId: 'corr-1',
      contentType: 'application/json',
      creationTime: new Date('2026-12-01T12:00:00.123Z'),
      applicationProperties: { cloudEvents_specversion: '1.0', cloudEvents_source: 'shardrelay' },
      body: '{"amount": 3, "note": "été"}',
    };
    const decoded = rhea.message.decode(encodeAmqp10Message(message)) as unknown as Message & {
      body: { content: Buffer };
    };
    assert.equal(decoded.message_id, message.messageId);
    assert.equal(decoded.subject, message.subject);
    assert.equal(decoded.correlation_id, message.correlationId);
    assert.equal(decoded.content_type, message.contentType);
    assert.equal(decoded.durable, true);
    assert.deepEqual(decoded.creation_time, message.creationTime);
    assert.deepEqual(decoded.application_properties, message.applicationProperties);
    assert.equal(decoded.body.content.toString('utf8'), message.body);
  });

  it('refuses an invalid creation time', () => {
    assert.throws(
      () =>
        encodeAmqp10Message({
          messageId: 'm',
          subject: 's',
          correlationId: null,
          contentType: 'application/json',
          creationTime: new Date(Number.NaN),
          applicationProperties: {},
          body: '{}',
        }),
      /not a valid date/,
    );
  });
});
