/**
 * The conformance scenarios (see target.ts for what they check and how to add a target). Each
 * target's test file calls `runConformance(target)` once, at its top level.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { CANARY_TOPIC } from '../../../src/observability/canary.js';
import type { OutboxMessage, RelaySink, SendOutcome } from '../../../src/sinks/sink.js';
import {
  captureLog,
  outboxMessages,
  sendInTransaction,
  statuses,
  type CapturedLog,
} from '../../support/brokers.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcpProxy.js';
import { createTestDatabase, type TestDatabase } from '../../support/testDatabase.js';
import type { ConformanceTarget, Destination, Endpoint, RunningBroker, Scenario } from './target.js';

/** Events of the delivery scenario: enough for several batches, small enough to keep CI short. */
const DELIVERY_EVENTS = 2_000;
const BATCH = 500;
/**
 * Events of the cut scenario; the cut comes as soon as the consumer has the first one (later, a
 * fast broker such as JetStream had acked the whole batch before the cut).
 */
const CUT_EVENTS = 5_000;
const CUT_AFTER = 1;
/** Re-send rounds allowed after a fault (a sink may refuse fast while it backs off reconnecting). */
const RESEND_ROUNDS = 10;

/** A port on loopback where nothing listens (a proxy's, closed again). */
async function deadEndpoint(): Promise<Endpoint> {
  const proxy = await startTcpProxy('127.0.0.1', 9);
  const port = proxy.port;
  await proxy.close();
  return { host: '127.0.0.1', port };
}

export async function runConformance(target: ConformanceTarget): Promise<void> {
  const t: TestDatabase = await createTestDatabase(`conformance_${target.name}`);
  let started: RunningBroker | string;
  try {
    started = await target.start({ databaseUrl: t.url });
  } catch (error) {
    await t.close();
    throw error;
  }
  const skip = typeof started === 'string' ? started : false;
  const broker = typeof started === 'string' ? undefined : started;
  const stallDeadlineMs = target.timing?.stallDeadlineMs ?? 1_500;
  const cutDeadlineMs = target.timing?.cutDeadlineMs ?? 5_000;
  const receiveTimeoutMs = target.timing?.receiveTimeoutMs ?? 20_000;

  /** Everything a sink or the suite printed, for the credentials scenario. */
  const logs: CapturedLog[] = [];
  const texts: string[] = [];
  const cleanups: (() => Promise<unknown>)[] = [];

  function live(): RunningBroker {
    assert.ok(broker, 'the broker is not running');
    return broker;
  }

  function notApplicable(scenario: Scenario): string | false {
    if (scenario === 'oversized') {
      return 'notApplicable' in target.oversized ? target.oversized.notApplicable : false;
    }
    return target.notApplicable?.[scenario] ?? false;
  }

  async function destination(): Promise<Destination> {
    const d = await live().destination();
    cleanups.push(() => d.close());
    return d;
  }

  function endpointOf(d: Destination): Endpoint {
    return d.endpoint ?? live().endpoint;
  }

  function sinkFor(d: Destination, via: Endpoint, secret = live().secret): RelaySink {
    const capture = captureLog();
    logs.push(capture);
    const sink = d.createSink({ via, log: capture.log, secret });
    cleanups.push(() => sink.close());
    return sink;
  }

  async function send(sink: RelaySink, messages: readonly OutboxMessage[], deadlineMs = 30_000) {
    const outcomes = await sendInTransaction(t.db, sink, messages, deadlineMs);
    assert.equal(outcomes.length, messages.length, 'one outcome per message');
    for (const o of outcomes) if (o.status !== 'confirmed') texts.push(o.error);
    return outcomes;
  }

  /**
   * Sends `messages` until each is confirmed, as the relay would: a message failed retryable,
   * unknown or deferred goes again with the same event id after a short back-off.
   */
  async function sendUntilConfirmed(sink: RelaySink, messages: readonly OutboxMessage[]): Promise<void> {
    let pending = [...messages];
    const history: Record<string, number>[] = [];
    for (let round = 1; round <= RESEND_ROUNDS && pending.length > 0; round++) {
      const outcomes = await send(sink, pending);
      history.push(statuses(outcomes));
      const permanent = outcomes.filter((o) => o.status === 'failed' && !o.retryable);
      assert.deepEqual(permanent, [], 'a re-send after a fault must not fail permanently');
      pending = pending.filter((_, i) => outcomes[i]?.status !== 'confirmed');
      if (pending.length > 0) await new Promise((resolve) => setTimeout(resolve, 200 * round));
    }
    assert.equal(
      pending.length,
      0,
      `still unconfirmed after ${RESEND_ROUNDS} rounds: ${JSON.stringify(history)}`,
    );
  }

  describe(`sink conformance: ${target.name}`, { skip }, () => {
    after(async () => {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
      await broker?.stop();
      await t.close();
    });

    it(
      `delivers ${DELIVERY_EVENTS} events, each confirmed and counted once by a real consumer`,
      { timeout: 120_000 },
      async () => {
        const d = await destination();
        const sink = sinkFor(d, endpointOf(d));
        await sink.start();
        const messages = outboxMessages(DELIVERY_EVENTS, () => ({ topic: d.topic }));
        const outcomes: SendOutcome[] = [];
        for (let i = 0; i < messages.length; i += BATCH) {
          outcomes.push(...(await send(sink, messages.slice(i, i + BATCH))));
        }
        assert.deepEqual(statuses(outcomes), { confirmed: DELIVERY_EVENTS });
        const ids = messages.map((m) => m.eventId);
        await d.received.waitForAll(ids, receiveTimeoutMs);
        assert.equal(d.received.counts.size, DELIVERY_EVENTS, 'the consumer saw exactly the sent ids');
        assert.equal(d.received.duplicates, 0, 'no duplicates without faults');
      },
    );

    it('lets canary events through like any other', { timeout: 60_000 }, async () => {
      const d = await destination();
      const sink = sinkFor(d, endpointOf(d));
      await sink.start();
      const messages = outboxMessages(4, (i) => ({
        topic: i % 2 === 0 ? CANARY_TOPIC : d.topic,
        lane: i < 2 ? 'realtime' : 'batch',
        payload: i % 2 === 0 ? { canary: true } : { index: i },
      }));
      assert.deepEqual(statuses(await send(sink, messages)), { confirmed: 4 });
      await d.received.waitForAll(
        messages.map((m) => m.eventId),
        receiveTimeoutMs,
      );
      assert.equal(d.received.duplicates, 0);
    });

    it(
      'fails an oversized message permanently and delivers its neighbours',
      { timeout: 60_000, skip: notApplicable('oversized') },
      async () => {
        if ('notApplicable' in target.oversized) return;
        const d = await destination();
        const sink = sinkFor(d, endpointOf(d));
        await sink.start();
        const filler = 'x'.repeat(target.oversized.payloadBytes);
        const messages = outboxMessages(5, (i) => ({
          topic: d.topic,
          payload: i === 2 ? { filler } : { index: i },
        }));
        const outcomes = await send(sink, messages);
        const big = outcomes[2];
        assert.ok(big?.status === 'failed' && !big.retryable, `oversized: ${JSON.stringify(big)}`);
        const neighbours = messages.filter((_, i) => i !== 2);
        await sendUntilConfirmed(
          sink,
          neighbours.filter((m) => outcomes[messages.indexOf(m)]?.status !== 'confirmed'),
        );
        await d.received.waitForAll(
          neighbours.map((m) => m.eventId),
          receiveTimeoutMs,
        );
        assert.equal(
          d.received.has(messages[2]?.eventId ?? ''),
          false,
          'the oversized message was delivered',
        );
      },
    );

    it(
      'defers every message (nothing sent, no attempt counted), fast, when the broker is unreachable',
      { timeout: 60_000, skip: notApplicable('brokerDown') },
      async () => {
        const d = await destination();
        const sink = sinkFor(d, await deadEndpoint());
        await sink.start().catch((error: unknown) => texts.push(String(error), JSON.stringify(error)));
        const started = Date.now();
        const outcomes = await send(
          sink,
          outboxMessages(3, () => ({ topic: d.topic })),
          10_000,
        );
        const took = Date.now() - started;
        assert.deepEqual(statuses(outcomes), { deferred: 3 });
        assert.ok(took < 8_000, `a batch against a dead broker took ${took} ms`);
      },
    );

    it(
      'a link cut with confirms pending reports them unknown; a re-send with the same ids delivers all',
      { timeout: 120_000, skip: notApplicable('linkCut') },
      async (context) => {
        const d = await destination();
        const proxy: TcpProxy = await startTcpProxy(endpointOf(d).host, endpointOf(d).port);
        cleanups.push(() => proxy.close());
        const sink = sinkFor(d, { host: '127.0.0.1', port: proxy.port });
        await sink.start();
        const messages = outboxMessages(CUT_EVENTS, () => ({ topic: d.topic }));
        const ids = messages.map((m) => m.eventId);
        const cut = d.received
          .waitForAll(ids.slice(0, CUT_AFTER), receiveTimeoutMs)
          .then(() => proxy.cutAll());
        const outcomes = await send(sink, messages, cutDeadlineMs);
        await cut;
        context.diagnostic(`outcomes at the cut: ${JSON.stringify(statuses(outcomes))}`);

        const confirmedIds = ids.filter((_, i) => outcomes[i]?.status === 'confirmed');
        const others = outcomes.filter((o) => o.status !== 'confirmed');
        assert.ok(others.length > 0, 'the cut came after every confirm; the scenario tested nothing');
        for (const o of others) {
          assert.ok(
            o.status === 'unknown' || o.status === 'deferred' || (o.status === 'failed' && o.retryable),
            JSON.stringify(o),
          );
        }
        assert.ok(
          others.some((o) => o.status === 'unknown'),
          `no confirm was pending at the cut: ${JSON.stringify(statuses(outcomes))}`,
        );
        // What the sink called confirmed really reached the broker.
        await d.received.waitForAll(confirmedIds, receiveTimeoutMs);

        await sendUntilConfirmed(
          sink,
          messages.filter((_, i) => outcomes[i]?.status !== 'confirmed'),
        );
        assert.ok(proxy.connectionCount >= 2, 'the sink reconnected');
        await d.received.waitForAll(ids, receiveTimeoutMs);
        const sent = new Set(ids);
        assert.deepEqual(
          [...d.received.counts.keys()].filter((id) => !sent.has(id)),
          [],
          'every delivery carries the id of a sent event',
        );
        for (const id of confirmedIds) {
          assert.equal(d.received.counts.get(id), 1, `confirmed before the cut, yet delivered again: ${id}`);
        }
      },
    );

    it(
      'a stalled link reports the batch unknown by its deadline; after the heal a re-send delivers',
      { timeout: 120_000, skip: notApplicable('stall') },
      async () => {
        const d = await destination();
        const proxy = await startTcpProxy(endpointOf(d).host, endpointOf(d).port);
        cleanups.push(async () => {
          proxy.resume();
          await proxy.close();
        });
        const sink = sinkFor(d, { host: '127.0.0.1', port: proxy.port });
        await sink.start();
        const messages = outboxMessages(200, () => ({ topic: d.topic }));
        proxy.stall();
        const started = Date.now();
        const outcomes = await send(sink, messages, stallDeadlineMs);
        const took = Date.now() - started;
        assert.ok(
          took < stallDeadlineMs + 2_000,
          `the batch returned ${took} ms after a ${stallDeadlineMs} ms deadline`,
        );
        for (const o of outcomes) {
          assert.ok(
            o.status === 'unknown' || o.status === 'deferred' || (o.status === 'failed' && o.retryable),
            JSON.stringify(o),
          );
        }
        assert.ok(
          outcomes.some((o) => o.status === 'unknown'),
          `nothing was written before the stall: ${JSON.stringify(statuses(outcomes))}`,
        );
        assert.equal(
          messages.filter((m) => d.received.has(m.eventId)).length,
          0,
          'nothing can reach the broker through a stalled link',
        );
        proxy.resume();
        await sendUntilConfirmed(sink, messages);
        await d.received.waitForAll(
          messages.map((m) => m.eventId),
          receiveTimeoutMs,
        );
      },
    );

    it('never shows the credentials in a log line, an outcome or an error', { timeout: 60_000 }, async () => {
      // A start and a batch against a dead address with a distinctive secret: the paths where
      // clients echo connection strings.
      const secret = `conformance-${randomBytes(6).toString('hex')}`;
      const d = await destination();
      const sink = sinkFor(d, await deadEndpoint(), secret);
      await sink
        .start()
        .catch((error: unknown) =>
          texts.push(String(error), JSON.stringify(error), (error as Error).stack ?? ''),
        );
      if (!notApplicable('brokerDown'))
        await send(
          sink,
          outboxMessages(2, () => ({ topic: d.topic })),
          5_000,
        );
      const lines = logs.flatMap((capture) => capture.lines.map((line) => JSON.stringify(line)));
      assert.ok(lines.length + texts.length > 0, 'the scenarios left nothing to check');
      for (const needle of [secret, live().secret]) {
        assert.deepEqual(
          lines.filter((line) => line.includes(needle)),
          [],
          'a log line shows the secret',
        );
        assert.deepEqual(
          texts.filter((text) => text.includes(needle)),
          [],
          'an outcome or error shows the secret',
        );
      }
    });
  });
}
