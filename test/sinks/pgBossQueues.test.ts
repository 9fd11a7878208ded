/**
 * Several relay processes meeting the same new topics at once: pg-boss's queue creation deadlocks
 * between them (its foreign keys lock the whole queue table), and the sink must ride it out so
 * that no batch fails for it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { createPgBossSink } from '../../src/sinks/pgBossSink.js';
import type { OutboxMessage } from '../../src/sinks/sink.js';
import { outboxMessage } from '../support/brokers.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

function message(topic: string, n: number): OutboxMessage {
  return outboxMessage({ id: String(n), topic, key: null, payload: { n } });
}

describe('pg-boss queue creation from several processes at once', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('pgboss_queues');
  });
  after(() => t.close());

  it('every batch is confirmed while 4 sinks create the same 40 new queues concurrently', async () => {
    const sinks = Array.from({ length: 4 }, () => createPgBossSink({ connectionString: t.url }));
    await sinks[0]?.start();
    await Promise.all(sinks.slice(1).map((s) => s.start()));
    try {
      const topics = Array.from({ length: 40 }, (_, i) => `new.topic.${i}`);
      let n = 0;
      // allSettled: every transaction ends before the sinks close, whatever happens.
      const settled = await Promise.allSettled(
        sinks.flatMap((sink) =>
          topics.map((topic) =>
            t.db
              .transaction()
              .execute((trx) =>
                sink.sendBatch([message(topic, n++)], { deadline: Date.now() + 30_000 }, trx),
              ),
          ),
        ),
      );
      const failed = settled.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []));
      assert.deepEqual(failed, [], 'no batch failed');
      const outcomes = settled.flatMap((r) => (r.status === 'fulfilled' ? r.value : []));
      assert.deepEqual(
        outcomes.filter((o) => o.status !== 'confirmed'),
        [],
        'every message confirmed',
      );
      const queues = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pgboss.queue WHERE name LIKE 'new.topic.%'`.execute(t.db);
      assert.equal(queues.rows[0]?.n, 40);
      const jobs = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pgboss.job WHERE name LIKE 'new.topic.%'`.execute(t.db);
      assert.equal(jobs.rows[0]?.n, 160);
    } finally {
      await Promise.all(sinks.map((s) => s.close()));
    }
  });
});
