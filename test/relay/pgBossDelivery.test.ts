import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue, type OutboxEvent } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { createPgBossSink } from '../../src/sinks/pgBossSink.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('relay into pg-boss', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('pgboss_delivery');
  });
  after(() => t.close());

  it('delivers 20,000 events over 8 concurrent shards exactly once', { timeout: 120_000 }, async () => {
    const events: OutboxEvent[] = Array.from({ length: 20_000 }, (_, i) => ({
      topic: i % 2 === 0 ? 'orders.created' : 'invoices.issued',
      payload: { n: i },
      lane: i % 10 === 0 ? 'realtime' : 'batch',
    }));
    await enqueue(t.db, events);

    const config = testConfig(t.url, { sink: 'pgboss' });
    const sink = createPgBossSink({ connectionString: t.url });
    let maxConcurrent = 0;
    let running = 0;
    const inner = sink.sendBatch.bind(sink);
    const relay = await startRelay({
      config,
      sink: {
        ...sink,
        name: sink.name,
        start: () => sink.start(),
        close: () => sink.close(),
        async sendBatch(messages, context, transaction) {
          running++;
          maxConcurrent = Math.max(maxConcurrent, running);
          try {
            return await inner(messages, context, transaction);
          } finally {
            running--;
          }
        },
      },
    });
    await relay.whenDrained();
    await relay.stop();

    const jobs = await sql<{ total: number; distinct: number }>`
      SELECT count(*)::int AS total, count(DISTINCT id)::int AS distinct FROM pgboss.job`.execute(t.db);
    assert.deepEqual(jobs.rows[0], { total: 20_000, distinct: 20_000 });

    const notSent = await t.db
      .selectFrom('shardrelay.events')
      .select(sql<number>`count(*)::int`.as('n'))
      .where('status', '<>', 'sent')
      .executeTakeFirstOrThrow();
    assert.equal(notSent.n, 0);

    const joined = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.events o JOIN pgboss.job j ON j.id = o.event_id AND j.name = o.topic`.execute(
      t.db,
    );
    assert.equal(joined.rows[0]?.n, 20_000, 'every outbox row has its own job (same id, queue = topic)');

    const progress = await sql<{ sent: number; shards: number }>`
      SELECT sum(sent_total)::int AS sent, count(DISTINCT shard)::int AS shards FROM shardrelay.shard_progress`.execute(
      t.db,
    );
    assert.deepEqual(progress.rows[0], { sent: 20_000, shards: 8 });
    assert.ok(maxConcurrent > 1, `shard loops ran concurrently (max ${maxConcurrent} batches at once)`);
  });
});
