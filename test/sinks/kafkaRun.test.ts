/**
 * `shardrelay run --sink kafka` as an OS process, against librdkafka's mock cluster: the Kafka
 * client's native addon loads in one thread of a process only, so the real-time lane's worker
 * thread forwards its sends to the main thread's producer (src/sinks/forwardingSink.ts). Both lanes
 * deliver, a consumer group counts every event once, and SIGTERM ends the process with exit 0
 * (no abort in the addon at exit).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { kafkaMockProblem, startKafkaMock, type KafkaMock } from '../brokers/kafkaMock.js';
import { ReceivedIds, uniqueName } from '../support/brokers.js';
import { collect, spawnCli, waitFor } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { consumeTopic, createTopic } from './conformance/targets/kafka.js';

const BATCH_ROWS = 5_000;
const REALTIME_ROWS = 500;

/** The sum of `shardrelay_events_sent_total` over the series of one lane. */
function sentOnLane(metrics: string, lane: string): number {
  let total = 0;
  for (const line of metrics.split('\n')) {
    if (line.startsWith('shardrelay_events_sent_total{') && line.includes(`lane="${lane}"`))
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

const problem = kafkaMockProblem();
if (problem && process.env.CI === 'true')
  throw new Error(`CI must provide the Kafka mock cluster: ${problem}`);

describe('shardrelay run --sink kafka (one producer per process)', { skip: problem ?? false }, () => {
  let t: TestDatabase;
  let mock: KafkaMock;
  before(async () => {
    t = await createTestDatabase('kafka_run');
    mock = await startKafkaMock(3);
  });
  after(async () => {
    await mock?.stop();
    await t?.close();
  });

  it(
    'delivers real-time and batch rows, each once, and exits 0 on SIGTERM',
    { timeout: 180_000 },
    async () => {
      const topic = uniqueName('sr_run');
      await createTopic(mock.bootstrap, topic);
      const received = new ReceivedIds();
      const consumer = await consumeTopic(mock.bootstrap, topic, received);
      const count = async (where: string) =>
        Number(
          (
            await sql
              .raw<{ n: string }>(`SELECT count(*) AS n FROM shardrelay.events WHERE ${where}`)
              .execute(t.db)
          ).rows[0]?.n,
        );
      try {
        await enqueue(t.db, syntheticEvents(BATCH_ROWS, { topic: 'orders.bulk' }));
        const child = spawnCli(
          [
            'run',
            '--sink',
            'kafka',
            '--kafka-brokers',
            mock.bootstrap,
            '--kafka-topic',
            topic,
            // Real-time rows are picked by topic here, so the lane a row takes is known.
            '--lane-predicate',
            '{"column":"topic","op":"=","value":"orders.urgent"}',
            '--metrics-port',
            '0',
          ],
          { DATABASE_URL: t.url, SHARDRELAY_LOG_LEVEL: 'info' },
        );
        let logs = '';
        child.stdout?.on('data', (d: Buffer) => (logs += d.toString()));
        child.stderr?.on('data', (d: Buffer) => (logs += d.toString()));
        const done = collect(child);
        let exited = false;
        void done.then(() => (exited = true));
        try {
          await waitFor(
            'the relay sends batch rows',
            async () => {
              if (exited) throw new Error(`the relay exited early: ${(await done).stderr}`);
              return (await count(`status = 'sent'`)) > 0;
            },
            60_000,
          );
          // Enqueued while it runs: NOTIFY wakes the real-time lane in the worker thread.
          await enqueue(t.db, syntheticEvents(REALTIME_ROWS, { topic: 'orders.urgent' }));
          await waitFor(
            'every row is sent',
            async () => {
              if (exited) throw new Error(`the relay exited early: ${(await done).stderr}`);
              return (await count(`status <> 'sent'`)) === 0;
            },
            120_000,
          );
          // The main thread runs the batch lane only, so rows counted for the real-time lane were
          // sent by the worker thread, which has no Kafka client: through the forwarding sink.
          const url = /"url":"(http:\/\/[^"]+)"/.exec(logs)?.[1];
          assert.ok(url, 'the metrics server logged its address');
          // Counted after each batch's completion, which the worker reports just after committing.
          let metrics = '';
          await waitFor('both lanes counted', async () => {
            metrics = await (await fetch(`${url}/metrics`)).text();
            return (
              sentOnLane(metrics, 'realtime') + sentOnLane(metrics, 'batch') >= BATCH_ROWS + REALTIME_ROWS
            );
          });
          assert.equal(sentOnLane(metrics, 'realtime'), REALTIME_ROWS, 'real-time rows sent by the worker');
          assert.equal(sentOnLane(metrics, 'batch'), BATCH_ROWS, 'batch rows sent by the main thread');
        } finally {
          child.kill('SIGTERM');
        }
        const result = await done;
        assert.equal(result.signal, null, `no abort at exit: ${result.stderr.slice(-2000)}`);
        assert.equal(result.code, 0, `exit 0 after SIGTERM: ${result.stderr.slice(-2000)}`);
        assert.doesNotMatch(logs, /self-register/);
        // Both threads' relays ran: the worker's logs say thread=realtime.
        assert.match(logs, /"thread":"realtime"[^\n]*relay started|relay started[^\n]*"thread":"realtime"/);

        const rows = await t.db
          .selectFrom('shardrelay.events')
          .select(['event_id', 'topic', 'status'])
          .execute();
        assert.equal(rows.length, BATCH_ROWS + REALTIME_ROWS);
        assert.equal(rows.filter((r) => r.topic === 'orders.urgent').length, REALTIME_ROWS);
        await received.waitForAll(
          rows.map((r) => r.event_id),
          60_000,
        );
        assert.equal(received.counts.size, BATCH_ROWS + REALTIME_ROWS, 'exactly the outbox event ids');
        assert.equal(received.duplicates, 0, 'each event once');
      } finally {
        await consumer.close();
      }
    },
  );

  it(
    'a Kafka route inside --routes-file: the worker thread forwards that route to the main thread',
    { timeout: 180_000 },
    async () => {
      // Without forwarding per route, the worker thread would load the Kafka addon itself and fail
      // to start ("Module did not self-register"); real-time rows would never be sent.
      const topic = uniqueName('sr_routed');
      await createTopic(mock.bootstrap, topic);
      const received = new ReceivedIds();
      const consumer = await consumeTopic(mock.bootstrap, topic, received);
      const dir = await mkdtemp(path.join(os.tmpdir(), 'kafka-routes-'));
      try {
        const file = path.join(dir, 'routes.json');
        await writeFile(
          file,
          JSON.stringify({
            sinks: {
              stream: { type: 'kafka', kafkaBrokers: mock.bootstrap, kafkaTopic: topic },
              discard: { type: 'null' },
            },
            rules: [
              { match: { topic: 'orders.*' }, sink: 'stream' },
              { match: { topic: 'audit.*' }, sink: 'discard' },
            ],
          }),
        );
        const ids = [
          ...(await enqueue(t.db, syntheticEvents(1_000, { topic: 'orders.bulk', lane: 'batch' }))),
          ...(await enqueue(
            t.db,
            syntheticEvents(REALTIME_ROWS, { topic: 'orders.urgent', lane: 'realtime' }),
          )),
        ].map((e) => e.eventId);
        const audit = await enqueue(t.db, syntheticEvents(200, { topic: 'audit.trail', lane: 'realtime' }));
        const child = spawnCli(['run', '--routes-file', file], { DATABASE_URL: t.url });
        const done = collect(child);
        try {
          await received.waitForAll(ids, 120_000);
        } finally {
          child.kill('SIGTERM');
        }
        const result = await done;
        assert.equal(result.code, 0, `exit 0 after SIGTERM: ${result.stderr.slice(-2000)}`);
        assert.doesNotMatch(result.stdout + result.stderr, /self-register/);
        assert.equal(received.duplicates, 0, 'each event once');
        assert.equal(received.counts.size, ids.length, 'exactly the routed event ids');
        // The other route ran beside it, in both threads.
        const auditIds = audit.map((e) => e.eventId);
        const { rows } = await sql<{ n: number }>`
          SELECT count(*)::int AS n FROM shardrelay.events
           WHERE event_id = ANY(${auditIds}::uuid[]) AND status = 'sent'`.execute(t.db);
        assert.equal(rows[0]?.n, auditIds.length, 'the null route sent its rows too');
      } finally {
        await consumer.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  );

  it(
    'exits 2 with the Kafka error, not an abort, when no broker answers at start',
    { timeout: 120_000 },
    async () => {
      // Port 1 on loopback: nothing listens there.
      const result = await collect(
        spawnCli(['run', '--sink', 'kafka', '--kafka-brokers', '127.0.0.1:1'], { DATABASE_URL: t.url }),
      );
      assert.equal(result.signal, null, `no abort at exit: ${result.stderr.slice(-2000)}`);
      assert.equal(result.code, 2, result.stderr.slice(-2000));
      assert.match(result.stderr, /cannot connect to Kafka at 127\.0\.0\.1:1/);
      assert.doesNotMatch(result.stdout + result.stderr, /self-register/);
    },
  );
});
