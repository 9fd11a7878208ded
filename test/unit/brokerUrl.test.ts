import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { parseBrokerUrl } from '../../src/sinks/brokerUrl.js';

describe('parseBrokerUrl', () => {
  it('returns the parsed URL of an allowed protocol', () => {
    const url = parseBrokerUrl('amqps://u:p@rabbit:5671/vh', 'rabbitmq url', ['amqp:', 'amqps:'], 'amqp://h');
    assert.equal(url.host, 'rabbit:5671');
  });

  it('refuses a non-URL, naming the setting, without echoing the password', () => {
    assert.throws(
      () => parseBrokerUrl('amqp://user:s3cret@[bad', 'rabbitmq url', ['amqp:'], 'amqp://host:5672'),
      (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.match(error.message, /invalid setting rabbitmq url: .* is not a URL/);
        assert.doesNotMatch(error.message, /s3cret/);
        assert.equal(error.cause, undefined, 'no cause: Node’s URL error would carry the password');
        assert.match(error.fix ?? '', /amqp:\/\/host:5672/);
        return true;
      },
    );
  });

  it('refuses another protocol and says which ones are allowed', () => {
    assert.throws(
      () => parseBrokerUrl('http://nats:4222', 'nats url', ['nats:', 'tls:'], 'nats://host:4222'),
      /protocol http: is not nats: or tls:/,
    );
  });
});
