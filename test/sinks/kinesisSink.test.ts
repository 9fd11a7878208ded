/**
 * The Kinesis sink's own scenarios (the shared ones are in conformance/kinesis.test.ts), against
 * kinesalite (test/brokers/kinesalite.ts):
 * - 20,000 events through the whole relay, counted once each by shard-iterator readers;
 * - at most 500 records a call, partition key = key else event id;
 * - per-record failures (kinesalite never produces them) through a wrapped client;
 * - no call started that the batch deadline would likely cut off (a slow Kinesis, wrapped).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  GetRecordsCommand,
  GetShardIteratorCommand,
  ListShardsCommand,
  PutRecordsCommand,
} from '@aws-sdk/client-kinesis';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { createKinesisSink, type KinesisApi } from '../../src/sinks/kinesisSink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { KINESALITE_CREDENTIALS, startKinesalite, type Kinesalite } from '../brokers/kinesalite.js';
import { ReceivedIds, outboxMessages, sendInTransaction, statuses, uniqueName } from '../support/brokers.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { pollStream } from './conformance/targets/kinesis.js';

const EVENTS = 20_000;

describe('Kinesis sink (kinesalite)', () => {
  let t: TestDatabase;
  let kinesis: Kinesalite;
  before(async () => {
    t = await createTestDatabase('kinesis_sink');
    kinesis = await startKinesalite();
  });
  after(async () => {
    await kinesis?.stop();
    await t?.close();
  });

  it(
    `delivers ${EVENTS.toLocaleString('en-US')} events through the relay that shard iterators count once each`,
    { timeout: 240_000 },
    async (context) => {
      const stream = uniqueName('sr_relay');
      await kinesis.createStream(stream, 4);
      const received = new ReceivedIds();
      const poller = pollStream(kinesis, stream, received);
      try {
        await enqueue(t.db, syntheticEvents(EVENTS, { topic: 'orders.created' }));
        const started = Date.now();
        const relay = await startRelay({
          config: testConfig(t.url, { sendTimeoutMs: 60_000, batchBatchSize: 1000 }),
          sink: createKinesisSink({
            endpoint: kinesis.endpoint,
            region: 'us-east-1',
            stream,
            credentials: KINESALITE_CREDENTIALS,
          }),
        });
        await relay.whenDrained();
        await relay.stop();
        context.diagnostic(`relay drained ${EVENTS} rows in ${Date.now() - started} ms`);
        const rows = await t.db.selectFrom('shardrelay.events').select(['event_id', 'status']).execute();
        assert.equal(rows.length, EVENTS);
        assert.deepEqual(
          rows.filter((r) => r.status !== 'sent'),
          [],
          'every row is sent',
        );
        await received.waitForAll(
          rows.map((r) => r.event_id),
          60_000,
        );
        assert.equal(received.counts.size, EVENTS, 'the readers saw exactly the outbox event ids');
        assert.equal(received.duplicates, 0, 'no duplicates without faults');
      } finally {
        await poller.close();
        await t.db.deleteFrom('shardrelay.outbox').execute();
        await t.db.deleteFrom('shardrelay.sent_event').execute();
      }
    },
  );

  it(
    'sends at most 500 records a call, keyed by the row key else the event id, as structured CloudEvents',
    { timeout: 60_000 },
    async () => {
      const stream = uniqueName('sr_keys');
      await kinesis.createStream(stream, 2);
      const real = kinesis.client();
      const callSizes: number[] = [];
      const wrapped = {
        send: (command: { input: unknown }, options?: { abortSignal?: AbortSignal }) => {
          if (command instanceof PutRecordsCommand) callSizes.push(command.input.Records?.length ?? 0);
          return real.send(command as PutRecordsCommand, options);
        },
        destroy: () => real.destroy(),
      } as unknown as KinesisApi;
      const sink = createKinesisSink({ stream, client: wrapped });
      await sink.start();
      const messages = outboxMessages(1_200, (i) => ({ key: i % 3 === 0 ? null : `customer-${i % 11}` }));
      assert.deepEqual(statuses(await sendInTransaction(t.db, sink, messages)), { confirmed: 1_200 });
      assert.deepEqual(
        [...callSizes].sort((a, b) => a - b),
        [200, 500, 500],
      );
      const shards = await real.send(new ListShardsCommand({ StreamName: stream }));
      const records: { key: string; data: { id: string; type: string; partitionkey?: string } }[] = [];
      for (const shard of shards.Shards ?? []) {
        const iterator = await real.send(
          new GetShardIteratorCommand({
            StreamName: stream,
            ShardId: shard.ShardId,
            ShardIteratorType: 'TRIM_HORIZON',
          }),
        );
        const page = await real.send(
          new GetRecordsCommand({ ShardIterator: iterator.ShardIterator, Limit: 10_000 }),
        );
        for (const r of page.Records ?? []) {
          records.push({
            key: r.PartitionKey ?? '',
            data: JSON.parse(Buffer.from(r.Data ?? []).toString()) as never,
          });
        }
      }
      assert.equal(records.length, 1_200);
      const byId = new Map(messages.map((m) => [m.eventId, m]));
      for (const r of records) {
        const m = byId.get(r.data.id);
        assert.ok(m, 'the record carries the event id');
        assert.equal(r.key, m.key ?? m.eventId);
        assert.equal(r.data.type, 'orders.created');
      }
      await sink.close();
    },
  );

  it(
    'puts each record into the stream its topic names ({topic} in the stream template)',
    { timeout: 60_000 },
    async () => {
      const prefix = uniqueName('sr_tpl');
      const topics = ['orders', 'invoices'];
      for (const topic of topics) await kinesis.createStream(`${prefix}-${topic}`, 1);
      const real = kinesis.client();
      const sink = createKinesisSink({ stream: `${prefix}-{topic}`, client: real as unknown as KinesisApi });
      await sink.start();
      try {
        const messages = outboxMessages(30, (i) => ({ topic: topics[i % 2] as string }));
        assert.deepEqual(statuses(await sendInTransaction(t.db, sink, messages)), { confirmed: 30 });
        for (const topic of topics) {
          const stream = `${prefix}-${topic}`;
          const [shard] = (await real.send(new ListShardsCommand({ StreamName: stream }))).Shards ?? [];
          const iterator = await real.send(
            new GetShardIteratorCommand({
              StreamName: stream,
              ShardId: shard?.ShardId,
              ShardIteratorType: 'TRIM_HORIZON',
            }),
          );
          const page = await real.send(
            new GetRecordsCommand({ ShardIterator: iterator.ShardIterator, Limit: 100 }),
          );
          const ids = (page.Records ?? []).map(
            (r) => (JSON.parse(Buffer.from(r.Data ?? []).toString()) as { id: string; type: string }).id,
          );
          assert.deepEqual(
            ids.sort(),
            messages
              .filter((m) => m.topic === topic)
              .map((m) => m.eventId)
              .sort(),
            `${stream} holds exactly the ${topic} records`,
          );
        }
      } finally {
        await sink.close();
      }
    },
  );

  it('maps per-record ErrorCodes and whole-call errors to outcomes', { timeout: 60_000 }, async () => {
    const stream = uniqueName('sr_errors');
    await kinesis.createStream(stream, 1);
    const real = kinesis.client();
    /** What the wrapper does to the next PutRecords call. */
    let mode: 'per-record' | 'throttle-call' | 'server-error' = 'per-record';
    const wrapped = {
      async send(command: { input: unknown }, options?: { abortSignal?: AbortSignal }) {
        if (!(command instanceof PutRecordsCommand)) return real.send(command as PutRecordsCommand, options);
        if (mode === 'throttle-call') {
          throw Object.assign(new Error('Rate exceeded for stream'), {
            name: 'ProvisionedThroughputExceededException',
            $metadata: { httpStatusCode: 400 },
          });
        }
        if (mode === 'server-error') {
          throw Object.assign(new Error('We encountered an internal error'), {
            name: 'InternalFailure',
            $metadata: { httpStatusCode: 500 },
          });
        }
        // Store the records for real, then report some as failed, as Kinesis does per record.
        const response = await real.send(command, options);
        const codes = ['ProvisionedThroughputExceededException', 'InternalFailure', 'KMSDisabledException'];
        return {
          ...response,
          FailedRecordCount: 3,
          Records: (response.Records ?? []).map((r, i) =>
            i >= 1 && i <= 3 ? { ErrorCode: codes[i - 1], ErrorMessage: `injected ${codes[i - 1]}` } : r,
          ),
        };
      },
      destroy: () => real.destroy(),
    } as unknown as KinesisApi;
    const sink = createKinesisSink({ stream, client: wrapped });
    await sink.start();
    try {
      const outcomes = await sendInTransaction(t.db, sink, outboxMessages(5));
      assert.deepEqual(
        outcomes.map((o) => o.status),
        ['confirmed', 'failed', 'failed', 'failed', 'confirmed'],
      );
      assert.ok(outcomes.slice(1, 4).every((o) => o.status === 'failed' && o.retryable));
      assert.match(
        (outcomes[1] as { error: string }).error,
        /throttled.*ProvisionedThroughputExceededException/,
      );
      assert.match((outcomes[3] as { error: string }).error, /KMSDisabledException/);

      mode = 'throttle-call';
      assert.deepEqual(statuses(await sendInTransaction(t.db, sink, outboxMessages(3))), {
        'failed-retryable': 3,
      });
      mode = 'server-error';
      assert.deepEqual(statuses(await sendInTransaction(t.db, sink, outboxMessages(3))), { unknown: 3 });

      // Refused before sending: a partition key Kinesis would refuse, a record over 1 MiB.
      mode = 'per-record';
      const bad = await sendInTransaction(t.db, sink, [
        ...outboxMessages(1, () => ({ key: 'k'.repeat(257) })),
        ...outboxMessages(1, () => ({ payload: { filler: 'x'.repeat(1024 * 1024) } })),
      ]);
      assert.deepEqual(statuses(bad), { 'failed-permanent': 2 });
    } finally {
      await sink.close();
    }
  });

  it(
    'starts no PutRecords call its batch deadline would cut off: its records are deferred, none unknown',
    { timeout: 60_000 },
    async () => {
      const stream = uniqueName('sr_slow');
      await kinesis.createStream(stream, 1);
      const real = kinesis.client();
      const ANSWER_AFTER_MS = 400;
      /** Records Kinesis stored, by event id: a record it stored and the sink called unknown is sent twice. */
      const stored: string[] = [];
      const wrapped = {
        async send(command: { input: unknown }, options?: { abortSignal?: AbortSignal }) {
          if (!(command instanceof PutRecordsCommand))
            return real.send(command as PutRecordsCommand, options);
          // Stored at once, answered late: what a cut-off call costs is a duplicate.
          const response = await real.send(command);
          for (const r of command.input.Records ?? [])
            stored.push((JSON.parse(Buffer.from(r.Data ?? []).toString()) as { id: string }).id);
          await sleep(ANSWER_AFTER_MS, undefined, { signal: options?.abortSignal });
          return response;
        },
        destroy: () => real.destroy(),
      } as unknown as KinesisApi;
      // One call at a time, 10 records each: 6 calls of 400 ms against a 1.5 s deadline.
      const sink = createKinesisSink({ stream, client: wrapped, recordsPerCall: 10, concurrency: 1 });
      await sink.start();
      try {
        const outcomes = await sendInTransaction(t.db, sink, outboxMessages(60), 1_500);
        // Before: the fourth call started with 300 ms left and was cut off, 10 records unknown
        // although Kinesis had stored them.
        assert.equal(statuses(outcomes).unknown, undefined, JSON.stringify(statuses(outcomes)));
        assert.ok((statuses(outcomes).confirmed ?? 0) >= 20, JSON.stringify(statuses(outcomes)));
        assert.equal(stored.length, statuses(outcomes).confirmed, 'Kinesis stored a record not confirmed');
        const notSent = outcomes.find((o) => o.status === 'deferred');
        assert.equal(
          notSent?.status === 'deferred' && notSent.ownLimit,
          true,
          'held by the sink, not by Kinesis',
        );
        assert.match(
          String(notSent && 'error' in notSent ? notSent.error : ''),
          /too little for Kinesis's recent answer time/,
        );
      } finally {
        await sink.close();
      }
    },
  );
});
