/**
 * The claim indexes of a new shard count are built on a connection of their own, not on one of
 * the control pool's two (which carry the lease renewals and the due-rows probe): a build lasts as
 * long as CREATE INDEX CONCURRENTLY waits for the transactions older than it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import { createNullSink } from '../../src/sinks/nullSink.js';
import { startRelay } from '../../src/wiring/relay.js';
import { waitFor } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('building the indexes of a new shard count', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('index_build');
  });
  after(() => t.close());

  it('runs on its own connection while an older transaction holds it up', { timeout: 60_000 }, async () => {
    const relay = await startRelay({ config: testConfig(t.url), sink: createNullSink() });
    // An uncommitted write to the outbox: CREATE INDEX CONCURRENTLY waits for it to end.
    const blocker = new pg.Client(t.url);
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query(`INSERT INTO shardrelay.outbox (topic, payload) VALUES ('held', '{}')`);
      await sql`SELECT shardrelay.set_shard_count(5)`.execute(t.db);
      let builder: { application: string } | undefined;
      await waitFor('the build of the count-5 indexes waits for the open transaction', async () => {
        const { rows } = await sql<{ application: string }>`
          SELECT application_name AS application FROM pg_stat_activity
           WHERE datname = current_database() AND query LIKE 'CREATE INDEX CONCURRENTLY%mod5%'
             AND wait_event_type = 'Lock'`.execute(t.db);
        builder = rows[0];
        return builder !== undefined;
      });
      assert.equal(builder?.application, 'shardrelay-index');
      // Meanwhile the relay goes on: ticks and lease renewals on the control pool.
      const renewed = async () =>
        (
          await sql<{ at: Date }>`SELECT max(renewed_at) AS at FROM shardrelay.shard_lease`.execute(t.db)
        ).rows[0]?.at?.getTime() ?? 0;
      const before = await renewed();
      await waitFor('a lease renewal during the build', async () => (await renewed()) > before, 10_000);
    } finally {
      await blocker.query('ROLLBACK');
      await blocker.end();
    }
    await waitFor('the count-5 indexes are built', async () => {
      const { rows } = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname LIKE 'outbox_pending%mod5' AND i.indisvalid`.execute(t.db);
      return rows[0]?.n === 2;
    });
    await relay.stop();
  });
});
