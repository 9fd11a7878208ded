/**
 * The forwarding sink (src/sinks/forwardingSink.ts) over a real MessageChannel, as between the
 * real-time worker thread and the main thread: outcomes come back in order as plain data; late
 * ones, and those of a closed channel, are `unknown`; a send the shard may no longer make is not
 * forwarded.
 */
import assert from 'node:assert/strict';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { afterEach, describe, it } from 'node:test';
import {
  answerForwardedSend,
  createForwardingSink,
  type ForwardedOutcomes,
  type ForwardedSend,
} from '../../src/sinks/forwardingSink.js';
import {
  confirmed,
  permanent,
  retryable,
  unknown,
  type OutboxMessage,
  type SendOutcome,
  type Sink,
} from '../../src/sinks/sink.js';
import { outboxMessages } from '../support/brokers.js';

const channels: MessageChannel[] = [];
afterEach(() => {
  for (const c of channels.splice(0)) {
    c.port1.close();
    c.port2.close();
  }
});

/** A forwarding sink on port1; `serve` answers on port2 (or never, when it returns null). */
function forwarding(serve: (send: ForwardedSend) => Promise<ForwardedOutcomes> | null) {
  const channel = new MessageChannel();
  channels.push(channel);
  const received: ForwardedSend[] = [];
  channel.port2.on('message', (send: ForwardedSend) => {
    received.push(send);
    void serve(send)?.then((answer) => channel.port2.postMessage(answer));
  });
  const port: MessagePort = channel.port1;
  const sink = createForwardingSink('kafka', {
    post: (send) => port.postMessage(send),
    onOutcomes: (handler) => port.on('message', handler),
    onClose: (handler) => port.on('close', handler),
  });
  return { sink, received, channel };
}

function fakeSink(outcome: (m: OutboxMessage, i: number) => SendOutcome, delayMs = 0): Sink {
  return {
    name: 'fake',
    async start() {},
    async sendBatch(messages) {
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      return messages.map(outcome);
    },
    async close() {},
  };
}

describe('forwarding sink', () => {
  it('returns the other thread sink outcomes, in order, for messages that crossed as plain data', async () => {
    const mixed = (_: OutboxMessage, i: number) =>
      [confirmed, retryable('busy', 500), permanent('too large'), unknown('timed out')][i % 4] as SendOutcome;
    const { sink, received } = forwarding((send) => answerForwardedSend(fakeSink(mixed), send));
    const messages = outboxMessages(8);
    const outcomes = await sink.sendBatch(messages, { deadline: Date.now() + 5_000 });
    assert.deepEqual(outcomes, messages.map(mixed));
    assert.equal(received.length, 1);
    assert.deepEqual(received[0]?.messages, messages, 'the messages arrive whole (dates included)');
  });

  it('makes outcomes not back by the deadline unknown', async () => {
    const { sink } = forwarding(() => null);
    const started = Date.now();
    const outcomes = await sink.sendBatch(outboxMessages(3), { deadline: started + 150 });
    assert.ok(Date.now() - started < 2_000, 'it did not wait past the deadline');
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['unknown', 'unknown', 'unknown'],
    );
  });

  it('makes pending and later sends unknown once the other thread is gone', async () => {
    const { sink, channel } = forwarding(() => null);
    const pending = sink.sendBatch(outboxMessages(2), { deadline: Date.now() + 30_000 });
    setTimeout(() => channel.port2.close(), 50);
    const started = Date.now();
    const outcomes = await pending;
    assert.ok(Date.now() - started < 10_000, 'settled by the close, not the deadline');
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['unknown', 'unknown'],
    );
    const later = await sink.sendBatch(outboxMessages(1), {
      deadline: Date.now() + 30_000,
    });
    assert.equal(later[0]?.status, 'unknown');
  });

  it('does not forward a send the shard may no longer make', async () => {
    const { sink, received } = forwarding((send) =>
      answerForwardedSend(
        fakeSink(() => confirmed),
        send,
      ),
    );
    const outcomes = await sink.sendBatch(outboxMessages(2), {
      deadline: Date.now() + 5_000,
      mayContinue: () => false,
    });
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['unknown', 'unknown'],
    );
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(received.length, 0);
  });
});

describe('answering a forwarded send', () => {
  const send = (deadline: number): ForwardedSend => ({ id: 7, messages: outboxMessages(2), deadline });

  it('is unknown while the sink is not started, when it throws, and past the deadline', async () => {
    const none = await answerForwardedSend(null, send(Date.now() + 5_000));
    assert.equal(none.id, 7);
    assert.deepEqual(
      none.outcomes.map((o) => o.status),
      ['unknown', 'unknown'],
    );
    const throwing: Sink = {
      ...fakeSink(() => confirmed),
      sendBatch: () => Promise.reject(new Error('boom')),
    };
    const thrown = await answerForwardedSend(throwing, send(Date.now() + 5_000));
    assert.deepEqual(thrown.outcomes, [unknown('boom'), unknown('boom')]);
    const slow = await answerForwardedSend(
      fakeSink(() => confirmed, 1_000),
      send(Date.now() + 100),
    );
    assert.deepEqual(
      slow.outcomes.map((o) => o.status),
      ['unknown', 'unknown'],
    );
  });
});
