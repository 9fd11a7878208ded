/**
 * Ledger scenarios: the relay process lives, its links die. PostgreSQL connections terminated
 * (`pg_terminate_backend` of every relay connection) while batches are in flight, and the broker
 * link cut and stalled through a TCP proxy. Each prints its figures; lost = 0 and duplicates are
 * bounded.
 */
import { after, before, describe, it } from 'node:test';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../src/db/schema.js';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { AMQP_URL, captureLog, hostAndPort, requireBroker } from '../support/brokers.js';
import { waitFor } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { startTcpProxy } from '../support/tcpProxy.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { Ledger, rabbitConsumer } from './ledger.js';

const { host, port } = hostAndPort(AMQP_URL, 5672);
const rabbitDown = await requireBroker('RabbitMQ', host, port);

/** Pending rows locked right now: the batches in flight (a SKIP LOCKED scan passes over them). */
async function rowsInFlight(db: Kysely<Database>): Promise<number> {
  return db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ n: number }>`
      SELECT (SELECT count(*) FROM shardrelay.outbox WHERE status = 'pending')::int
           - (SELECT count(*) FROM (SELECT 1 FROM shardrelay.outbox WHERE status = 'pending'
                                     FOR UPDATE SKIP LOCKED) AS free)::int AS n`.execute(trx);
    return rows[0]?.n ?? 0;
  });
}

async function sentCount(db: Kysely<Database>): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    SELECT count(*)::int AS n FROM shardrelay.events WHERE status <> 'pending'`.execute(db);
  return rows[0]?.n ?? 0;
}

describe('ledger: connection faults', { skip: rabbitDown }, () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('ledger_conn');
  });
  after(() => t.close());

  it(
    'pg_terminate_backend of every relay connection with batches in flight: duplicates ≤ 1 % of them',
    { timeout: 180_000 },
    async () => {
      const ledger = new Ledger('pg_terminate_backend');
      // On failure, the relay's account of each lost claim transaction says why rows were re-sent.
      const captured = captureLog();
      const consumer = await rabbitConsumer(ledger);
      const total = 30_000;
      ledger.expect(
        (await enqueue(t.db, syntheticEvents(total, { topic: 'orders.term' }))).map((e) => e.eventId),
      );
      const relay = await startRelay({
        config: testConfig(t.url, {
          sink: 'rabbitmq',
          amqpExchange: consumer.exchange,
          batchBatchSize: 500,
          connectionsPerLane: 4,
        }),
        logger: captured.log,
      });
      let inFlight = 0;
      let terminated = 0;
      let passed = false;
      try {
        for (let round = 0; round < 6; round++) {
          const before = await sentCount(t.db);
          await waitFor(
            'the relay sends again',
            async () => (await sentCount(t.db)) > before + 1_000,
            30_000,
            20,
          );
          let now = 0;
          await waitFor('batches in flight', async () => (now = await rowsInFlight(t.db)) >= 500, 10_000, 5);
          const { rows } = await sql<{ n: number }>`
            SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'shardrelay-%'`.execute(t.db);
          inFlight += now;
          terminated += rows[0]?.n ?? 0;
        }
        // Issue 11's target: 1 % of the rows in flight. Rows the broker confirmed whose claim
        // transaction died are recorded through another connection (deliverBatch.ts). The sink keeps
        // its link through the replica's step-back (its liveness session died too) and drops it
        // only once the lease itself has run out (leaseUnexpired): dropping it on the step-back
        // re-sent what the broker already had, 6.4-16.5 % of the rows in flight.
        const report = await ledger.check(t.db, {
          maxDuplicates: Math.floor(inFlight / 100),
          boundWhy: `1 % of the ${inFlight} rows in flight at 6 terminations of ${terminated} connections`,
        });
        console.log(
          `# pg_terminate_backend: duplicates ${((100 * report.duplicates) / inFlight).toFixed(2)} % of the rows in flight`,
        );
        passed = true;
      } finally {
        if (!passed)
          for (const line of captured.lines.filter((l) => String(l.msg).includes('another connection')))
            console.log(`# ${JSON.stringify(line)}`);
        await relay.stop();
        await consumer.close();
      }
    },
  );

  it(
    'the broker link cut, then stalled past the send timeout: duplicates ≤ the rows the relay can hold in flight',
    { timeout: 180_000 },
    async () => {
      const ledger = new Ledger('broker link cut and stalled');
      const consumer = await rabbitConsumer(ledger);
      const proxy = await startTcpProxy(host, port);
      const url = new URL(AMQP_URL);
      url.host = `127.0.0.1:${proxy.port}`;
      const total = 20_000;
      ledger.expect(
        (await enqueue(t.db, syntheticEvents(total, { topic: 'orders.cut' }))).map((e) => e.eventId),
      );
      const config = testConfig(t.url, {
        sink: 'rabbitmq',
        amqpUrl: url.toString(),
        amqpExchange: consumer.exchange,
        batchBatchSize: 500,
        connectionsPerLane: 4,
        sendTimeoutMs: 2_000,
      });
      const relay = await startRelay({ config });
      let inFlight = 0;
      try {
        for (const fault of ['cut', 'cut', 'stall'] as const) {
          const before = await sentCount(t.db);
          await waitFor(
            'the relay sends again',
            async () => (await sentCount(t.db)) > before + 1_000,
            60_000,
            20,
          );
          let now = 0;
          await waitFor('batches in flight', async () => (now = await rowsInFlight(t.db)) >= 500, 10_000, 5);
          inFlight += now;
          if (fault === 'cut') proxy.cutAll();
          else {
            proxy.stall();
            // Past the send deadline: the batches in flight end `unknown` and are retried.
            await new Promise((r) => setTimeout(r, 3_000));
            proxy.resume();
          }
        }
        // The contract's bound: a broker fault re-sends at most the rows the relay can hold in
        // flight at it, every lane's connections each with a full batch. The rows counted in
        // flight just before each fault (sampled once ≥ 500) are printed for scale but do not
        // bound it: batches claimed between the sample and the fault, or into the stall before
        // the send deadline, are re-sent too (seen once: 6,206 duplicates against 6,000 sampled).
        const perFault = config.connectionsPerLane * (config.batchBatchSize + config.realtimeBatchSize);
        const report = await ledger.check(t.db, {
          maxDuplicates: 3 * perFault,
          boundWhy: `3 faults × ${perFault} rows the relay can hold in flight (${inFlight} sampled before the faults)`,
        });
        console.log(
          `# broker link cut and stalled: ${report.duplicates} duplicates, ${inFlight} rows sampled in flight`,
        );
      } finally {
        await relay.stop();
        await proxy.close();
        await consumer.close();
      }
    },
  );
});
