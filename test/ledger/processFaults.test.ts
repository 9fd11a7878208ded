/**
 * Ledger scenarios: relay processes killed (kill -9) and paused past their lease (SIGSTOP, then
 * SIGCONT), with `shardrelay run` as OS processes and RabbitMQ consumers counting every delivery.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../src/db/schema.js';
import { enqueue } from '../../src/enqueue.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { AMQP_URL, hostAndPort, requireBroker } from '../support/brokers.js';
import { collect, runCli, spawnCli, waitFor } from '../support/cli.js';
import {
  freezeMidBatch,
  isDivided,
  leasePicture,
  lockedPendingRows,
  ReplicaProcesses,
  type LeasePicture,
} from '../support/replicaHarness.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { Ledger, rabbitConsumer } from './ledger.js';

const { host, port } = hostAndPort(AMQP_URL, 5672);
const rabbitDown = await requireBroker('RabbitMQ', host, port);
const SHARDS = 4;
const LEASE_TIMEOUT_SECONDS = 3;
const SEND_TIMEOUT_MS = 2_000;

const countWhere = async (db: Kysely<Database>, where: string) =>
  Number(
    (await sql.raw<{ n: string }>(`SELECT count(*) AS n FROM shardrelay.events WHERE ${where}`).execute(db))
      .rows[0]?.n,
  );

const eventIdsOf = async (db: Kysely<Database>, ids: readonly string[]) =>
  (
    await sql<{ event_id: string }>`
      SELECT event_id::text FROM shardrelay.events WHERE id = ANY(${[...ids]}::bigint[])`.execute(db)
  ).rows.map((r) => r.event_id);

describe('ledger: process faults', { skip: rabbitDown }, () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('ledger_proc');
    await sql`SELECT shardrelay.set_shard_count(${SHARDS}::int)`.execute(t.db);
  });
  after(() => t.close());

  it('kill -9 mid-batch: duplicates ≤ the rows in flight at the kill', { timeout: 180_000 }, async () => {
    const ledger = new Ledger('kill -9');
    const consumer = await rabbitConsumer(ledger);
    const env = { DATABASE_URL: t.url, SHARDRELAY_AMQP_EXCHANGE: consumer.exchange };
    const args = ['run', '--sink', 'rabbitmq', '--batch-size', '500'];
    try {
      ledger.expect(
        (await enqueue(t.db, syntheticEvents(20_000, { topic: 'orders.kill' }))).map((e) => e.eventId),
      );
      const first = spawnCli(args, env);
      const firstDone = collect(first);
      await waitFor(
        'the first relay sends some rows',
        async () => (await countWhere(t.db, `status = 'sent'`)) > 2_000,
      );
      let inFlight: string[] = [];
      await waitFor(
        'a batch in flight',
        async () => (inFlight = await lockedPendingRows(t.db, SHARDS, [0, 1, 2, 3])).length > 0,
        10_000,
        5,
      );
      first.kill('SIGKILL');
      assert.equal((await firstDone).signal, 'SIGKILL');
      const second = await runCli([...args, '--until-drained'], env);
      assert.equal(second.code, 0, second.stderr);
      const report = await ledger.check(t.db, {
        maxDuplicates: inFlight.length,
        boundWhy: `the ${inFlight.length} rows in flight at the kill (their confirms may have been lost)`,
      });
      const twice = (await eventIdsOf(t.db, inFlight)).filter(
        (id) => (ledger.received.counts.get(id) ?? 0) > 1,
      );
      assert.equal(twice.length, report.duplicates, 'only rows in flight at the kill arrived twice');
    } finally {
      await consumer.close();
    }
  });

  it(
    'SIGSTOP past the lease, then SIGCONT: nothing flushed from before the pause; duplicates ≤ its batch in flight',
    { timeout: 180_000 },
    async () => {
      const ledger = new Ledger('SIGSTOP past the lease');
      const consumer = await rabbitConsumer(ledger);
      const replicas = new ReplicaProcesses(
        {
          DATABASE_URL: t.url,
          SHARDRELAY_AMQP_EXCHANGE: consumer.exchange,
          SHARDRELAY_LEASE_TIMEOUT_SECONDS: String(LEASE_TIMEOUT_SECONDS),
          SHARDRELAY_SEND_TIMEOUT_MS: String(SEND_TIMEOUT_MS),
        },
        ['--sink', 'rabbitmq', '--batch-size', '500', '--connections-per-lane', '2'],
      );
      let passed = false;
      try {
        const a = replicas.start('a');
        const b = replicas.start('b');
        let picture: LeasePicture | undefined;
        await replicas.waitFor(
          'shards divided 2/2',
          async () => isDivided((picture = await leasePicture(t.db)), [2, 2]),
          60_000,
        );
        const stale = picture?.replicas.find((r) => r.pid === b.pid);
        assert.ok(stale);
        ledger.expect(
          (await enqueue(t.db, syntheticEvents(20_000, { topic: 'orders.stop' }))).map((e) => e.eventId),
        );
        const inFlight = await freezeMidBatch(t.db, b, SHARDS, stale.shards);
        const inFlightEvents = await eventIdsOf(t.db, inFlight);
        // a takes b's shards once the lease lapses, and sends b's rows in flight once PostgreSQL
        // ends b's idle transaction (send timeout + 5 s): exactly the rows b still holds buffered.
        await replicas.waitFor(
          'a sent and recorded b’s rows in flight',
          async () =>
            (await countWhere(t.db, `status = 'sent' AND id IN (${inFlight.join(',')})`)) === inFlight.length,
          120_000,
        );
        const resumedAt = performance.now();
        b.child.kill('SIGCONT');
        await replicas.waitFor(
          'b is back, shards re-divided 2/2',
          async () => isDivided(await leasePicture(t.db), [2, 2]),
          60_000,
        );
        const report = await ledger.check(t.db, {
          maxDuplicates: inFlight.length,
          boundWhy: `b's ${inFlight.length} rows in flight when it was paused`,
        });
        const resent = ledger.redeliveredAfter(resumedAt);
        const twice = inFlightEvents.filter((id) => (ledger.received.counts.get(id) ?? 0) > 1).length;
        console.log(
          `# SIGSTOP: b paused with ${inFlight.length} rows in flight; of them ${twice} arrived twice; ` +
            `deliveries after SIGCONT of events already delivered: ${resent} (issue: 677)`,
        );
        assert.equal(resent, 0, 'b flushed nothing from before its pause after waking');
        assert.equal(report.duplicates, twice, 'only b’s rows in flight arrived twice');
        assert.match(b.stderr(), /shard lease lapsed during the batch|no lease renewal/);
        for (const r of [a, b]) assert.equal((await replicas.stop(r)).code, 0);
        passed = true;
      } finally {
        await replicas.killAll({ printOutput: !passed });
        await consumer.close();
      }
    },
  );
});
