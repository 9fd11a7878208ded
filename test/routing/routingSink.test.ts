import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Transaction } from 'kysely';
import { SETTINGS } from '../../src/config.js';
import type { Database } from '../../src/db/schema.js';
import { parseRoutes } from '../../src/routing/routes.js';
import { createRoutingSink, PROBE_BUDGET_MS, PROBE_INTERVAL_MS } from '../../src/routing/routingSink.js';
import {
  confirmed,
  deferred,
  heldBySink,
  type InDatabaseSink,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
  type Sink,
} from '../../src/sinks/sink.js';
import { outboxMessage } from '../support/brokers.js';

const table = parseRoutes(
  {
    sinks: { a: { type: 'null' }, b: { type: 'null' } },
    rules: [
      { match: { topic: 'a.#' }, sink: 'a' },
      { match: { topic: 'b.#' }, sink: 'b' },
    ],
  },
  SETTINGS,
  {},
);

function message(i: number, topic: string): OutboxMessage {
  return outboxMessage({ id: String(i), eventId: `e${i}`, topic, key: null, payload: {} });
}

/** A sink that confirms, or hangs until released (a stalled broker), recording what it was sent. */
function fakeSink() {
  const sent: string[][] = [];
  let hang = false;
  const sink: Sink & { sent: string[][]; hang(on: boolean): void } = {
    name: 'fake',
    sent,
    hang: (on) => (hang = on),
    start: async () => {},
    close: async () => {},
    sendBatch: (messages) => {
      sent.push(messages.map((m) => m.eventId));
      return hang ? new Promise<SendOutcome[]>(() => {}) : Promise.resolve(messages.map(() => confirmed));
    },
  };
  return sink;
}

const context = (deadlineMs: number) => ({ deadline: Date.now() + deadlineMs });

describe('routing sink', () => {
  it('splits by route, merges outcomes in order, and fails a row without a route as permanent', async () => {
    const a = fakeSink();
    const b = fakeSink();
    const sink = createRoutingSink({
      table,
      sinks: new Map([
        ['a', a],
        ['b', b],
      ]),
    });
    const messages = [message(1, 'a.x'), message(2, 'b.x'), message(3, 'c.x'), message(4, 'a.y')];
    const outcomes = await sink.sendBatch(messages, context(1000));
    assert.deepEqual(a.sent, [['e1', 'e4']]);
    assert.deepEqual(b.sent, [['e2']]);
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['confirmed', 'confirmed', 'failed', 'confirmed'],
    );
    assert.match((outcomes[2] as { error: string }).error, /no route: no rule matches topic "c\.x"/);
    assert.equal((outcomes[2] as { retryable: boolean }).retryable, false);
  });

  it('a canary no rule routes is confirmed without a send; a routed canary is sent', async () => {
    const a = fakeSink();
    const sink = createRoutingSink({
      table,
      sinks: new Map([
        ['a', a],
        ['b', fakeSink()],
      ]),
    });
    const canary = { ...message(1, 'shardrelay.canary'), canary: true };
    const routedCanary = { ...message(2, 'a.canary'), canary: true };
    const outcomes = await sink.sendBatch([canary, routedCanary, message(3, 'c.x')], context(1000));
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['confirmed', 'confirmed', 'failed'],
    );
    assert.deepEqual(a.sent, [['e2']], 'only the routed canary reached a sink');
  });

  it('a stalled route settles unknown by the deadline, does not hold the other, then defers at once and is probed', async () => {
    let now = 1_000_000;
    const a = fakeSink();
    const b = fakeSink();
    b.hang(true);
    const sink = createRoutingSink({
      table,
      sinks: new Map([
        ['a', a],
        ['b', b],
      ]),
      now: () => now,
    });
    const started = Date.now();
    const first = await sink.sendBatch([message(1, 'a.x'), message(2, 'b.x')], context(300));
    assert.deepEqual(
      first.map((o) => o.status),
      ['confirmed', 'unknown'],
    );
    assert.ok(Date.now() - started < 300 + 500, 'settled by the deadline');
    assert.ok(sink.isDown('b'));

    // Down: b's rows are deferred at once, to come back after a probe interval at least; its sink is
    // not called (no probe: the interval has not passed).
    now += 10;
    const fast = Date.now();
    const second = await sink.sendBatch([message(3, 'a.x'), message(4, 'b.x')], context(5_000));
    assert.ok(Date.now() - fast < 200, 'no wait on the down route');
    assert.deepEqual(
      second.map((o) => o.status),
      ['confirmed', 'deferred'],
    );
    const deferredRow = second[1];
    assert.ok(deferredRow?.status === 'deferred' && deferredRow.retryAfterMs === PROBE_INTERVAL_MS);
    assert.equal(b.sent.length, 1);

    // After the interval one row probes, with at most the probe budget; the rest are deferred.
    now += PROBE_INTERVAL_MS;
    b.hang(false);
    const third = await sink.sendBatch([message(5, 'b.x'), message(6, 'b.y')], context(60_000));
    assert.deepEqual(b.sent.at(-1), ['e5']);
    assert.deepEqual(
      third.map((o) => o.status),
      ['confirmed', 'deferred'],
    );
    assert.ok(!sink.isDown('b'), 'a confirmed probe takes the route back up');
    const afterProbe = third[1];
    assert.ok(
      afterProbe?.status === 'deferred' && afterProbe.retryAfterMs === undefined,
      'the rest of the probed part is due again soon, not after the wait of a down route',
    );
    assert.ok(PROBE_BUDGET_MS <= 1_000);
  });

  it('a part the sink held back by its own limit leaves the route up; one deferred as unreachable takes it down', async () => {
    const answers: { outcome: SendOutcome }[] = [
      { outcome: heldBySink('not sent: waited for a request slot') },
    ];
    const b: Sink = {
      name: 'busy',
      start: async () => {},
      close: async () => {},
      sendBatch: async (messages) => messages.map(() => (answers[0] as { outcome: SendOutcome }).outcome),
    };
    const sink = createRoutingSink({
      table,
      sinks: new Map([
        ['a', fakeSink()],
        ['b', b],
      ]),
    });
    // A healthy webhook whose request slots other batches hold: nothing of this part was sent.
    const busy = await sink.sendBatch([message(1, 'b.x'), message(2, 'b.y')], context(1_000));
    assert.deepEqual(
      busy.map((o) => o.status),
      ['deferred', 'deferred'],
    );
    assert.ok(!sink.isDown('b'), 'a busy sink taken for a down broker');
    // Connection refused: down.
    (answers[0] as { outcome: SendOutcome }).outcome = deferred('connect ECONNREFUSED 127.0.0.1:9');
    await sink.sendBatch([message(3, 'b.x')], context(1_000));
    assert.ok(sink.isDown('b'));
  });

  it('is an in-database sink if a route is, and hands the transaction to that route alone', async () => {
    const claim = { claim: 'transaction' } as unknown as Transaction<Database>;
    const brokerContexts: SendContext[] = [];
    const broker: Sink = {
      name: 'broker',
      start: async () => {},
      close: async () => {},
      sendBatch: async (messages, context, ...more: unknown[]) => {
        brokerContexts.push(context);
        assert.equal(more.length, 0, 'a broker sink is given no transaction');
        return messages.map(() => confirmed);
      },
    };
    const given: unknown[] = [];
    const jobs: InDatabaseSink = {
      kind: 'in-database',
      name: 'jobs',
      start: async () => {},
      close: async () => {},
      sendBatch: async (messages, _context, transaction) => {
        given.push(transaction);
        return messages.map(() => confirmed);
      },
    };
    const brokersOnly = createRoutingSink({
      table,
      sinks: new Map([
        ['a', broker],
        ['b', fakeSink()],
      ]),
    });
    assert.equal(brokersOnly.kind, undefined, 'over broker routes only: a broker sink');

    const mixed = createRoutingSink({
      table,
      sinks: new Map<string, Sink | InDatabaseSink>([
        ['a', broker],
        ['b', jobs],
      ]),
    });
    assert.ok(mixed.kind === 'in-database', 'an in-database route makes the routing sink in-database');
    const outcomes = await mixed.sendBatch([message(1, 'a.x'), message(2, 'b.x')], context(1000), claim);
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['confirmed', 'confirmed'],
    );
    assert.deepEqual(given, [claim]);
    assert.deepEqual(
      brokerContexts.map((c) => Object.keys(c)),
      [['deadline']],
    );
  });
});
