/**
 * Ledger scenarios: poison rows. Each used to make its batch's completion fail for ever, the good
 * rows of the batch being published again on every claim (issue: 10,010 deliveries of 4,010 ids).
 * Now the bad rows end dead with a reason within max_attempts claims and the good rows of their
 * batches are delivered once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../src/db/schema.js';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { createRabbitMqSink } from '../../src/sinks/rabbitmqSink.js';
import type { Sink } from '../../src/sinks/sink.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { up as migrate0006 } from '../../migrations/0006_finite_timestamps.js';
import { AMQP_URL, captureLog, hostAndPort, requireBroker } from '../support/brokers.js';
import { runCli } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import {
  createTestDatabase,
  createTestDatabaseWithEncoding,
  type TestDatabase,
} from '../support/testDatabase.js';
import { httpReceiver, Ledger, rabbitConsumer } from './ledger.js';

const MAX_ATTEMPTS = 3;
const { host, port } = hostAndPort(AMQP_URL, 5672);
const rabbitDown = await requireBroker('RabbitMQ', host, port);

describe('ledger: poison rows', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('ledger_poison');
  });
  after(() => t.close());

  /**
   * The bound without a fault: a row is delivered twice only if its first attempt was recorded as
   * failed (a send timeout on a loaded machine) and retried. The poison-row loop re-sent rows
   * whose attempts never rose, which this bound catches.
   */
  const retriedRows = (db: Kysely<Database>, topics: readonly string[]) => async () =>
    (
      await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.events
       WHERE topic = ANY(${[...topics]}::text[]) AND status = 'sent' AND attempts > 1`.execute(db)
    ).rows[0]?.n ?? 0;
  const NO_FAULT = 'rows re-sent after a recorded failed attempt (send timeouts under load)';

  /** Enqueues `count` good rows; returns their event ids. */
  const good = async (count: number, topic: string, startAt = 0) =>
    (await enqueue(t.db, syntheticEvents(count, { topic, startAt }))).map((e) => e.eventId);

  it(
    'non-finite created_at (a database before migration 0006): dead within max_attempts, the rest once',
    { timeout: 120_000, skip: rabbitDown },
    async () => {
      // A database not yet migrated to 0006 can hold such rows; the relay must cope with them.
      await sql`ALTER TABLE shardrelay.outbox DROP CONSTRAINT outbox_timestamps_finite`.execute(t.db);
      const ledger = new Ledger('non-finite created_at');
      const consumer = await rabbitConsumer(ledger);
      ledger.expect(await good(1_000, 'orders.a'));
      const { rows: bad } = await sql<{ id: string; event_id: string }>`
        INSERT INTO shardrelay.outbox (topic, payload, created_at)
        SELECT 'orders.poison', '{}'::jsonb, v FROM unnest(ARRAY['infinity', '-infinity', 'infinity',
          '-infinity']::timestamptz[]) AS v
        RETURNING id::text, event_id::text`.execute(t.db);
      ledger.expect(bad.map((r) => r.event_id));
      ledger.expect(await good(1_000, 'orders.b', 1_000));

      const captured = captureLog();
      const relay = await startRelay({
        config: testConfig(t.url, {
          sink: 'rabbitmq',
          amqpExchange: consumer.exchange,
          maxAttempts: MAX_ATTEMPTS,
          batchBatchSize: 100,
        }),
        logger: captured.log,
      });
      try {
        await ledger.check(t.db, {
          maxDuplicates: retriedRows(t.db, ['orders.a', 'orders.b']),
          boundWhy: NO_FAULT,
        });
      } finally {
        await relay.stop();
        await consumer.close();
      }
      const { rows } = await sql<{ id: string; status: string; attempts: number; last_error: string }>`
        SELECT id::text, status, attempts, last_error FROM shardrelay.outbox
         WHERE id = ANY(${bad.map((r) => r.id)}::bigint[]) ORDER BY id`.execute(t.db);
      for (const row of rows) {
        assert.equal(row.status, 'dead');
        assert.ok(row.attempts <= MAX_ATTEMPTS, `row ${row.id} dead after ${row.attempts} claims`);
        assert.match(row.last_error, /created_at/);
      }
      // The log line names each row (id and event id) and the fix.
      for (const r of bad) {
        const line = captured.lines.find(
          (l) => l.eventId === r.event_id && l.msg === 'event moved to dead letters',
        );
        assert.ok(line, `a dead-letter log line for row ${r.id}`);
        assert.equal(line.id, r.id);
        assert.match(String(line.error), /created_at/);
        assert.match(String(line.fix ?? line.error), /0006/);
      }

      // Migration 0006 on this populated database keeps the rows, with finite timestamps and a
      // note; afterwards the schema refuses such values, and status and the views work.
      await migrate0006(t.db as unknown as Kysely<unknown>); // migrations are written schema-agnostic
      const fixed = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM shardrelay.outbox
         WHERE id = ANY(${bad.map((r) => r.id)}::bigint[]) AND isfinite(created_at)
           AND last_error LIKE '%migration 0006%'`.execute(t.db);
      assert.equal(fixed.rows[0]?.n, bad.length, 'kept, clamped and annotated');
      await assert.rejects(
        sql`INSERT INTO shardrelay.outbox (topic, payload, created_at) VALUES ('x', '{}', 'infinity')`.execute(
          t.db,
        ),
        /outbox_timestamps_finite/,
      );
      await assert.rejects(
        sql`INSERT INTO shardrelay.outbox (topic, payload, available_at) VALUES ('x', '{}', '-infinity')`.execute(
          t.db,
        ),
        /outbox_timestamps_finite/,
      );
      const status = await runCli(['status', '--json'], { DATABASE_URL: t.url });
      assert.equal(status.code, 0, status.stderr);
    },
  );

  it(
    'a receiver whose error body holds a NUL byte: refused rows dead with the text stored, the rest once',
    { timeout: 120_000 },
    async () => {
      const ledger = new Ledger('NUL in error body');
      const ids = await good(1_000, 'orders.nul', 10_000);
      ledger.expect(ids);
      const refused = new Set(ids.filter((_, i) => i % 50 === 0));
      const failing = new Set(ids.filter((_, i) => i % 50 === 25));
      const receiver = await httpReceiver(ledger, (id) =>
        refused.has(id)
          ? { status: 400, body: 'refused\u0000 by the receiver \uD800' }
          : failing.has(id)
            ? { status: 503, body: 'busy\u0000' }
            : { status: 200, body: '' },
      );
      const relay = await startRelay({
        config: testConfig(t.url, {
          sink: 'http',
          webhookUrl: receiver.url,
          maxAttempts: MAX_ATTEMPTS,
          // Generous: on a loaded machine a request timing out would count as a failed attempt.
          sendTimeoutMs: 60_000,
          batchBatchSize: 100,
        }),
      });
      try {
        await ledger.check(t.db, { maxDuplicates: retriedRows(t.db, ['orders.nul']), boundWhy: NO_FAULT });
      } finally {
        await relay.stop();
        await receiver.close();
      }
      const { rows } = await sql<{ event_id: string; status: string; attempts: number; last_error: string }>`
        SELECT event_id::text, status, attempts, last_error FROM shardrelay.outbox
         WHERE event_id::text = ANY(${[...refused, ...failing]}::text[])`.execute(t.db);
      assert.equal(rows.length, refused.size + failing.size);
      for (const row of rows) {
        assert.equal(row.status, 'dead');
        assert.equal(row.attempts, refused.has(row.event_id) ? 1 : MAX_ATTEMPTS);
        assert.match(row.last_error, /\uFFFD/, 'the NUL is stored as U+FFFD');
      }
    },
  );

  it(
    'a completion that fails for any reason on one row: that row dead with the reason, the rest once',
    { timeout: 120_000, skip: rabbitDown },
    async () => {
      const ledger = new Ledger('completion fails on one row');
      const consumer = await rabbitConsumer(ledger);
      const ids = await good(600, 'orders.trigger', 20_000);
      ledger.expect(ids);
      const victim = ids[250] as string;
      // Anything the completion does to this row raises, except recording it dead.
      await sql`
        CREATE FUNCTION public.refuse_victim() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          -- A confirmed row is deleted at completion (migration 0007): refuse that too.
          IF TG_OP = 'DELETE' OR NEW.status <> 'dead' THEN RAISE EXCEPTION 'this row cannot be completed'; END IF;
          RETURN NEW;
        END $$`.execute(t.db);
      await sql`
        CREATE TRIGGER refuse_victim BEFORE UPDATE OR DELETE ON shardrelay.outbox FOR EACH ROW
          WHEN (OLD.event_id::text = ${sql.lit(victim)}) EXECUTE FUNCTION public.refuse_victim()`.execute(
        t.db,
      );
      const relay = await startRelay({
        config: testConfig(t.url, {
          sink: 'rabbitmq',
          amqpExchange: consumer.exchange,
          maxAttempts: MAX_ATTEMPTS,
          batchBatchSize: 100,
        }),
      });
      try {
        // The victim was delivered (the broker confirmed it) but is recorded dead: counted received.
        await ledger.check(t.db, {
          maxDuplicates: retriedRows(t.db, ['orders.trigger']),
          boundWhy: NO_FAULT,
        });
      } finally {
        await relay.stop();
        await consumer.close();
      }
      const { rows } = await sql<{ status: string; attempts: number; last_error: string }>`
        SELECT status, attempts, last_error FROM shardrelay.outbox WHERE event_id::text = ${victim}`.execute(
        t.db,
      );
      assert.equal(rows[0]?.status, 'dead');
      assert.equal(rows[0]?.attempts, 1, 'recorded on its first claim');
      assert.match(
        rows[0]?.last_error ?? '',
        /poison row: recording its outcome failed \(this row cannot be completed\); the broker confirmed it/,
      );
    },
  );

  it(
    'a sink that throws on one message: that row dead within max_attempts, the rest of its batch once',
    { timeout: 120_000, skip: rabbitDown },
    async () => {
      const ledger = new Ledger('sink throws on one message');
      const consumer = await rabbitConsumer(ledger);
      const ids = await good(600, 'orders.throw', 30_000);
      ledger.expect(ids);
      const victim = ids[333] as string;
      // The real RabbitMQ sink, behind a wrapper that throws (a sink bug) when the batch holds the victim.
      const rabbit = createRabbitMqSink({ url: AMQP_URL, exchange: consumer.exchange });
      const sink: Sink = {
        name: 'throwing-rabbitmq',
        start: () => rabbit.start(),
        close: () => rabbit.close(),
        sendBatch: (messages, context) => {
          if (messages.some((m) => m.eventId === victim)) throw new Error('cannot serialise this one');
          return rabbit.sendBatch(messages, context);
        },
      };
      const relay = await startRelay({
        config: testConfig(t.url, { maxAttempts: MAX_ATTEMPTS, batchBatchSize: 100 }),
        sink,
      });
      try {
        await ledger.check(t.db, { maxDuplicates: retriedRows(t.db, ['orders.throw']), boundWhy: NO_FAULT });
      } finally {
        await relay.stop();
        await consumer.close();
      }
      const { rows } = await sql<{ status: string; attempts: number; last_error: string }>`
        SELECT status, attempts, last_error FROM shardrelay.outbox WHERE event_id::text = ${victim}`.execute(
        t.db,
      );
      assert.equal(rows[0]?.status, 'dead');
      assert.equal(rows[0]?.attempts, MAX_ATTEMPTS);
      assert.match(rows[0]?.last_error ?? '', /cannot serialise this one/);
    },
  );
  it(
    'a row the claim statement cannot read (WIN1252 0x81, no UTF-8 equivalent): dead at its first claim, the rest once',
    { timeout: 180_000, skip: rabbitDown },
    async () => {
      // Before: every claim of a batch holding such a row failed with 22P05, for ever; nothing
      // after it in its shard and lane was ever sent, and its attempts stayed 0.
      const w = await createTestDatabaseWithEncoding('ledger_win1252', 'WIN1252');
      try {
        const ledger = new Ledger('claim cannot read a row');
        const consumer = await rabbitConsumer(ledger);
        const enqueueGood = async (count: number, startAt: number) =>
          (await enqueue(w.db, syntheticEvents(count, { topic: 'orders.enc', startAt }))).map(
            (e) => e.eventId,
          );
        ledger.expect(await enqueueGood(300, 40_000));
        // Written by an application whose own client encoding is WIN1252 (stored as is).
        const { rows: bad } = await sql<{ id: string; event_id: string }>`
          INSERT INTO shardrelay.outbox (topic, payload)
          SELECT 'orders.enc', jsonb_build_object('note', 'price ' || convert_from('\\x81'::bytea, 'WIN1252') || n)
            FROM generate_series(1, 3) AS n
          RETURNING id::text, event_id::text`.execute(w.db);
        ledger.expect(bad.map((r) => r.event_id));
        ledger.expect(await enqueueGood(300, 40_300));
        // The rows really are unreadable for a UTF-8 client: the plain claim statement fails.
        await assert.rejects(
          sql`SELECT payload FROM shardrelay.outbox WHERE id = ${bad[0]?.id}::bigint`.execute(w.db),
          /0x81 in encoding "WIN1252" has no equivalent in encoding "UTF8"/,
        );

        const captured = captureLog();
        const relay = await startRelay({
          config: testConfig(w.url, {
            sink: 'rabbitmq',
            amqpExchange: consumer.exchange,
            maxAttempts: MAX_ATTEMPTS,
            batchBatchSize: 100,
          }),
          logger: captured.log,
        });
        try {
          await ledger.check(w.db, { maxDuplicates: retriedRows(w.db, ['orders.enc']), boundWhy: NO_FAULT });
        } finally {
          await relay.stop();
          await consumer.close();
        }
        const { rows } = await sql<{ id: string; status: string; attempts: number; last_error: string }>`
          SELECT id::text, status, attempts, last_error FROM shardrelay.outbox
           WHERE id = ANY(${bad.map((r) => r.id)}::bigint[]) ORDER BY id`.execute(w.db);
        assert.equal(rows.length, bad.length);
        for (const row of rows) {
          assert.equal(row.status, 'dead');
          assert.equal(row.attempts, 1, `row ${row.id}: recorded at its first failed claim`);
          assert.match(row.last_error, /the claim cannot read this row \(PostgreSQL 22P05: .*0x81/);
        }
        // The log line names each row (id and event id) and the fix.
        for (const r of bad) {
          const line = captured.lines.find(
            (l) => l.eventId === r.event_id && l.msg === 'event moved to dead letters',
          );
          assert.ok(line, `a dead-letter log line for row ${r.id}`);
          assert.equal(line.id, r.id);
          assert.match(String(line.error), /0x81/);
          assert.match(String(line.fix), /UTF-8/);
        }
      } finally {
        await w.close();
      }
    },
  );
});
