import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  CE_UNDERSCORE,
  DATA_CONTENT_TYPE,
  writeApplicationHeaders,
  writeAttributes,
} from '../../src/sinks/cloudEvent.js';
import { isCloudEventsHeader, KafkaHeaders } from '../../src/sinks/kafkaHeaders.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { outboxMessage } from '../support/brokers.js';

function message(overrides: Partial<OutboxMessage> = {}): OutboxMessage {
  return outboxMessage({
    eventId: '0190f3b2-7c1e-7a00-8000-000000000001',
    key: null,
    createdAt: new Date('2026-12-03T04:30:00.123Z'),
    ...overrides,
  });
}

/** The headers as the Kafka sink wrote them before: one record, then one object per entry. */
function reference(m: OutboxMessage, source: string): [string, string][] {
  const all: Record<string, string> = {};
  writeApplicationHeaders(all, m, isCloudEventsHeader);
  writeAttributes(all, m, source, CE_UNDERSCORE);
  all['content-type'] = DATA_CONTENT_TYPE;
  return Object.entries(all);
}

/** Each header object as the binding reads it: its first own property, the value as UTF-8 text. */
function asWritten(headers: readonly Record<string, string | Buffer>[]): [string, string][] {
  return headers.map((header) => {
    const names = Object.getOwnPropertyNames(header);
    assert.equal(names.length, 1, 'the binding reads one name per header object');
    const name = names[0] as string;
    const value = header[name] as string | Buffer;
    return [name, Buffer.isBuffer(value) ? value.toString('utf8') : value];
  });
}

describe('Kafka record headers', () => {
  const cases: [string, OutboxMessage][] = [
    ['a bare event', message()],
    ['a keyed event', message({ key: 'customer-1' })],
    [
      'every attribute and extension',
      message({
        key: 'k',
        correlationId: 'corr-1',
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      }),
    ],
    [
      'own headers, among them ones that try to forge the envelope',
      message({
        key: 'k',
        headers: {
          'X-Tenant': 'acme',
          ce_id: 'forged',
          CE_TYPE: 'forged',
          'Content-Type': 'text/plain',
          'x-b': 'ü',
        },
      }),
    ],
    [
      'a traceparent without own headers',
      message({ traceparent: '00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00' }),
    ],
    ['non-ASCII text', message({ topic: 'bestellung.überprüft', key: 'schlüssel' })],
  ];
  for (const [name, m] of cases) {
    it(`writes the same headers in the same order as the attribute record: ${name}`, () => {
      for (const source of ['shardrelay', 'urn:example:büro']) {
        assert.deepEqual(asWritten(new KafkaHeaders(source).of(m)), reference(m, source));
      }
    });
  }

  it('shares the fixed headers between records without letting one record change another', () => {
    const headers = new KafkaHeaders('shardrelay');
    const first = headers.of(message({ eventId: 'a' }));
    const second = headers.of(message({ eventId: 'b' }));
    assert.notEqual(first, second);
    assert.deepEqual(
      asWritten(first).find(([n]) => n === 'ce_id'),
      ['ce_id', 'a'],
    );
    assert.deepEqual(
      asWritten(second).find(([n]) => n === 'ce_id'),
      ['ce_id', 'b'],
    );
  });

  it('throws for a row that cannot form an event, as the attribute record does', () => {
    const headers = new KafkaHeaders('shardrelay');
    assert.throws(() => headers.of(message({ eventId: '' })), /id \(the event id\) is empty/);
    assert.throws(() => headers.of(message({ createdAt: new Date(Number.NaN) })), RangeError);
  });
});
