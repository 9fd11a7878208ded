/**
 * Per-key ordering (SHARDRELAY_ORDERING=key), end to end: 100 keys × 200 events enqueued
 * interleaved while relay replicas run as OS processes whose RabbitMQ sink fails a random 5 % of
 * sends (retryable, not published); one replica is killed with SIGKILL mid-run and the shard count
 * changes mid-run. A real RabbitMQ consumer records the order of its deliveries; each key's events
 * must first arrive in enqueue order (dead rows aside), none lost, none invented.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import amqplib from 'amqplib';
import { sql } from 'kysely';
import { after, before, describe, it } from 'node:test';
import { enqueue, type OutboxEvent } from '../../src/enqueue.js';
import { AMQP_URL, hostAndPort, requireBroker, uniqueName } from '../support/brokers.js';
import { collect, waitFor, type CliResult } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { deadEventIds, Ledger } from '../ledger/ledger.js';

const { host, port } = hostAndPort(AMQP_URL, 5672);
const rabbitDown = await requireBroker('RabbitMQ', host, port);
const ENTRY = fileURLToPath(new URL('./flakyReplica.ts', import.meta.url));
const KEYS = 100;
const PER_KEY = 200;
const CHUNK = 500;
const BATCH = 200;
const REALTIME_BATCH = 50;
const FIRST_SHARDS = 4;
const NEXT_SHARDS = 6;

interface Replica {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<CliResult>;
}

describe('per-key ordering', { skip: rabbitDown }, () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('key_order');
    await sql`SELECT shardrelay.set_shard_count(${FIRST_SHARDS}::int)`.execute(t.db);
  });
  after(() => t.close());

  it(
    '100 keys × 200 events, 5 % failed sends, kill -9 of a replica, shard count 4 → 6: every key in enqueue order',
    { timeout: 900_000 },
    async () => {
      const ledger = new Ledger('per-key order');
      /** Event ids in the order the consumer first saw them. */
      const firstSeen = new Map<string, number>();
      const exchange = uniqueName('sr_order');
      const queue = `${exchange}_q`;
      const connection = await amqplib.connect(AMQP_URL);
      const channel = await connection.createChannel();
      await channel.assertExchange(exchange, 'topic', { durable: true });
      await channel.assertQueue(queue, { durable: false });
      await channel.bindQueue(queue, exchange, '#');
      // One queue, one consumer: RabbitMQ delivers in the order messages were enqueued, and the relay
      // publishes a key's next event only after the broker confirmed the previous one.
      await channel.consume(
        queue,
        (m) => {
          if (!m) return;
          const id = String(m.properties.messageId);
          ledger.receive(id);
          if (!firstSeen.has(id)) firstSeen.set(id, firstSeen.size);
        },
        { noAck: true },
      );

      const env = {
        ...process.env,
        DATABASE_URL: t.url,
        SHARDRELAY_SINK: 'rabbitmq',
        SHARDRELAY_AMQP_EXCHANGE: exchange,
        SHARDRELAY_ORDERING: 'key',
        SHARDRELAY_BATCH_SIZE: String(BATCH),
        SHARDRELAY_REALTIME_BATCH_SIZE: String(REALTIME_BATCH),
        SHARDRELAY_CONNECTIONS_PER_LANE: '3',
        SHARDRELAY_RETRY_BASE_MS: '50',
        SHARDRELAY_RETRY_CAP_MS: '1000',
        SHARDRELAY_MAX_ATTEMPTS: '20',
        SHARDRELAY_LEASE_TIMEOUT_SECONDS: '3',
        SHARDRELAY_CANARY_INTERVAL_SECONDS: '0',
        SHARDRELAY_LOG_LEVEL: 'warn',
        SHARDRELAY_TEST_FAIL_PERCENT: '5',
      };
      const replicas: Replica[] = [];
      const start = (name: string): Replica => {
        const child = spawn(process.execPath, ['--import', 'tsx', ENTRY], {
          env: { ...env, SHARDRELAY_REPLICA_ID: name },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        const replica = { name, child, exited: collect(child) };
        replicas.push(replica);
        return replica;
      };
      const sentDistinct = () => ledger.received.counts.size;
      // Waits for `target` deliveries; fails only when none arrives for a minute (the duration of
      // the whole run depends on the machine's load: 2 cores shared with other work).
      const delivered = async (what: string, target: number) => {
        let last = sentDistinct();
        let lastAt = Date.now();
        await waitFor(
          what,
          async () => {
            if (sentDistinct() > last) [last, lastAt] = [sentDistinct(), Date.now()];
            if (Date.now() - lastAt > 60_000) throw new Error(`no delivery for 60 s waiting for: ${what}`);
            return sentDistinct() >= target;
          },
          600_000,
          100,
        );
      };

      // Event k·PER_KEY + s is the s-th event of key k; enqueued interleaved (s outer, k inner).
      const order = new Map<string, { key: string; seq: number }>();
      const events: OutboxEvent[] = [];
      for (let s = 0; s < PER_KEY; s++)
        for (let k = 0; k < KEYS; k++) {
          const eventId = randomUUID();
          const key = `customer-${k}`;
          order.set(eventId, { key, seq: s });
          events.push({
            topic: 'orders.ordered',
            key,
            payload: { key, seq: s },
            eventId,
            // Some of every key's events in the real-time lane: a key's order holds across lanes.
            ...((s * KEYS + k) % 9 === 0 ? { lane: 'realtime' as const } : {}),
          });
        }
      ledger.expect(order.keys());

      let passed = false;
      const started = performance.now();
      try {
        const a = start('order-a');
        const b = start('order-b');
        // Both up and holding shards before the clock starts (a process takes seconds to start
        // under load, a minute at a load average of 27 on 2 cores).
        await waitFor(
          'both replicas hold shards',
          async () =>
            Number(
              (
                await sql<{ n: number }>`
                  SELECT count(DISTINCT owner)::int AS n FROM shardrelay.shards WHERE lease_valid`.execute(
                  t.db,
                )
              ).rows[0]?.n,
            ) === 2,
          180_000,
          200,
        );
        const running = performance.now();
        // The producer: one transaction per chunk, in order, while the replicas run.
        const producing = (async () => {
          for (let i = 0; i < events.length; i += CHUNK) await enqueue(t.db, events.slice(i, i + CHUNK));
        })();

        await delivered('a quarter delivered', events.length / 4);
        b.child.kill('SIGKILL');
        assert.equal((await b.exited).signal, 'SIGKILL');
        const killedAt = sentDistinct();

        await delivered('half delivered', events.length / 2);
        await sql`SELECT shardrelay.set_shard_count(${NEXT_SHARDS}::int)`.execute(t.db);
        const c = start('order-c');
        const countChangedAt = sentDistinct();
        await producing;
        await delivered('all delivered', events.length - 50);

        await ledger.check(t.db, {
          // A killed replica's confirmed but uncommitted rows are sent again: at most its rows in
          // flight, i.e. one batch per shard and lane it held (it held at most all shards).
          maxDuplicates: FIRST_SHARDS * (BATCH + REALTIME_BATCH),
          boundWhy: 'the killed replica’s rows in flight: a batch per shard and lane',
          timeoutMs: 240_000,
        });

        const dead = await deadEventIds(t.db);
        const byKey = new Map<string, { seq: number; at: number }[]>();
        for (const [id, { key, seq }] of order) {
          if (dead.has(id)) continue;
          const at = firstSeen.get(id);
          assert.ok(at !== undefined, `event ${id} arrived`);
          const list = byKey.get(key) ?? [];
          list.push({ seq, at });
          byKey.set(key, list);
        }
        const overtaken: string[] = [];
        for (const [key, list] of byKey) {
          list.sort((x, y) => x.seq - y.seq);
          for (let i = 1; i < list.length; i++)
            if ((list[i]?.at ?? 0) < (list[i - 1]?.at ?? 0))
              overtaken.push(`${key}: #${list[i]?.seq} arrived before #${list[i - 1]?.seq}`);
        }

        const stats = (
          await sql<{ retried: number; new_shards: number; realtime: number; off_key_shard: number }>`
            SELECT count(*) FILTER (WHERE attempts > 1)::int AS retried,
                   count(*) FILTER (WHERE shard >= ${FIRST_SHARDS})::int AS new_shards,
                   count(*) FILTER (WHERE lane = 'realtime')::int AS realtime,
                   count(*) FILTER (WHERE shard <> shardrelay.key_hash(key) % ${FIRST_SHARDS}
                                      AND shard <> shardrelay.key_hash(key) % ${NEXT_SHARDS})::int AS off_key_shard
              FROM shardrelay.sent_event`.execute(t.db)
        ).rows[0];
        console.log(
          `# per-key order: ${events.length} events, ${KEYS} keys, ${dead.size} dead, ` +
            `${stats?.retried} sent after a failed attempt, ${stats?.realtime} real-time, ` +
            `${stats?.new_shards} sent in shards ${FIRST_SHARDS}-${NEXT_SHARDS - 1} of the new count; ` +
            `killed b at ${killedAt} delivered, count changed at ${countChangedAt}; ` +
            `duplicates ${ledger.received.duplicates}; overtaken ${overtaken.length}; ` +
            `${Math.round(performance.now() - running)} ms from both replicas up to the last event ` +
            `(${Math.round(performance.now() - started)} ms with their start)`,
        );
        assert.deepEqual(overtaken.slice(0, 10), [], 'no event arrived before an earlier event of its key');
        // The faults really happened: failed sends were retried, and the new count ran.
        assert.ok((stats?.retried ?? 0) > events.length * 0.02, 'about 5 % of rows were retried');
        assert.ok((stats?.new_shards ?? 0) > 0, 'rows were sent under the new shard count');
        assert.ok((stats?.realtime ?? 0) > 0, 'real-time rows were sent');
        assert.equal(stats?.off_key_shard, 0, 'every row was sent by the shard of its key');

        for (const r of [a, c]) {
          r.child.kill('SIGTERM');
          assert.equal((await r.exited).code, 0, `${r.name} stopped cleanly`);
        }
        passed = true;
      } finally {
        for (const r of replicas) {
          if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
          const result = await r.exited;
          if (!passed)
            console.log(`# ${r.name} (${result.code ?? result.signal}):\n${result.stderr.slice(-4000)}`);
        }
        await channel.deleteQueue(queue).catch(() => {});
        await channel.deleteExchange(exchange).catch(() => {});
        await connection.close().catch(() => {});
      }
    },
  );
});
