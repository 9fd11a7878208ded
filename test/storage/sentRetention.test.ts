import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { loadConfig } from '../../src/config.js';
import { enqueue } from '../../src/enqueue.js';
import { silentLogger } from '../../src/logger.js';
import { startRelay } from '../../src/wiring/relay.js';
import { SentPruner } from '../../src/maintenance/sentPruner.js';
import { RelayVacuum, vacuumPlan } from '../../src/maintenance/vacuum.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { waitFor } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

async function count(t: TestDatabase, from: string): Promise<number> {
  const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql.raw(from)}`.execute(t.db);
  return rows[0]?.n ?? -1;
}

describe('sent-event retention', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('sent_retention');
  });
  after(() => t.close());

  it('parses --sent-retention and refuses a bad one with the fix', () => {
    const base = { databaseUrl: 'postgres://x@127.0.0.1/db' };
    assert.equal(loadConfig({ ...base, sentRetentionSeconds: '0' }, {}).sentRetentionSeconds, 0);
    assert.equal(loadConfig({ ...base, sentRetentionSeconds: '1h' }, {}).sentRetentionSeconds, 3600);
    assert.equal(loadConfig(base, { SHARDRELAY_SENT_RETENTION: '7d' }).sentRetentionSeconds, 7 * 86_400);
    assert.throws(
      () => loadConfig({ ...base, sentRetentionSeconds: '1 week' }, {}),
      (error: Error & { fix?: string }) =>
        /--sent-retention \/ SHARDRELAY_SENT_RETENTION: 1 week/.test(error.message) &&
        /use 0 .* or a duration such as 90s, 30m, 1h, 7d/.test(error.fix ?? error.message),
    );
  });

  it(
    'retention 0: a drain leaves no sent row anywhere, and progress and rollups still count',
    { timeout: 60_000 },
    async () => {
      await enqueue(t.db, syntheticEvents(5_000, { topic: 'retention.zero' }));
      const relay = await startRelay({ config: testConfig(t.url, { sentRetentionSeconds: '0' }) });
      await relay.whenDrained();
      await relay.stop();
      assert.equal(await count(t, 'shardrelay.outbox'), 0, 'sent rows left the outbox at completion');
      assert.equal(await count(t, 'shardrelay.sent_event'), 0, 'no sent record is written with retention 0');
      const { rows } = await sql<{ progress: number; rollup: number }>`
      SELECT (SELECT sum(sent_total)::int FROM shardrelay.shard_progress) AS progress,
             (SELECT sum(sent)::int FROM shardrelay.rollup_minute) AS rollup`.execute(t.db);
      assert.deepEqual(rows[0], { progress: 5_000, rollup: 5_000 });
      const latency = await sql<{ sent: number }>`
      SELECT sum(sent)::int AS sent FROM shardrelay.latency`.execute(t.db);
      assert.equal(latency.rows[0]?.sent, 5_000, 'the latency view reads the rollups, not sent rows');
    },
  );

  it(
    'a retention window prunes old records in bounded batches, one pruner at a time, while claims continue',
    { timeout: 120_000 },
    async () => {
      await sql`TRUNCATE shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress`.execute(t.db);
      // 12,000 records sent two hours ago, and rows an earlier release left in the outbox as sent.
      await sql`
        INSERT INTO shardrelay.sent_event (event_id, id, topic, shard, lane, attempts, created_at, sent_at)
        SELECT gen_random_uuid(), g, 'old', g % 8, 'batch', 1, now() - interval '2 hours', now() - interval '2 hours'
          FROM generate_series(1, 12000) AS g`.execute(t.db);
      await sql`
        INSERT INTO shardrelay.outbox (topic, payload, status, sent_at, created_at)
        SELECT 'legacy', '{}', 'sent', now() - interval '2 hours', now() - interval '2 hours'
          FROM generate_series(1, 1500)`.execute(t.db);
      // A relay with a 1 h window drains new rows meanwhile: their records are young and stay.
      await enqueue(t.db, syntheticEvents(20_000, { topic: 'retention.new' }));

      // One step is bounded: 1,000 of the 13,500 old rows, no more.
      const { rows: step } = await sql<{ n: string }>`
        SELECT shardrelay.prune_sent(interval '1 hour', 1000) AS n`.execute(t.db);
      assert.equal(Number(step[0]?.n), 1000);
      assert.equal(await count(t, `shardrelay.sent_event WHERE topic = 'old'`), 11_000);

      const relay = await startRelay({ config: testConfig(t.url, { sentRetentionSeconds: '1h' }) });
      // Rounds of bounded steps while the relay claims and sends.
      const pruner = new SentPruner({
        db: t.db,
        retentionSeconds: 3600,
        logger: silentLogger,
        batchRows: 1000,
      });
      const round = await pruner.pruneOnce();
      await relay.whenDrained();
      await relay.stop();
      // The relay's own pruner may have taken some rounds (then ours found the lock held or less to do).
      assert.ok(
        round.deleted <= round.steps * 1000,
        `${round.deleted} rows in ${round.steps} steps of at most 1,000`,
      );
      const again = await pruner.pruneOnce();
      assert.equal(again.busy, false);
      assert.equal(await count(t, `shardrelay.sent_event WHERE topic = 'old'`), 0);
      assert.equal(await count(t, `shardrelay.outbox WHERE topic = 'legacy'`), 0);
      assert.equal(await count(t, `shardrelay.sent_event WHERE topic = 'retention.new'`), 20_000);
      assert.equal(
        await count(t, `shardrelay.outbox WHERE status = 'pending'`),
        0,
        'claims were not blocked',
      );
    },
  );

  it('a second pruner gets the lock refused at once instead of waiting', async () => {
    const conn = await t.pool.connect();
    try {
      await conn.query('BEGIN');
      await conn.query(`SELECT pg_advisory_xact_lock(hashtext('shardrelay.prune_sent'))`);
      const pruner = new SentPruner({ db: t.db, retentionSeconds: 0, logger: silentLogger });
      const started = Date.now();
      const round = await pruner.pruneOnce();
      assert.equal(round.busy, true);
      assert.ok(Date.now() - started < 2_000, 'it did not wait for the holder');
    } finally {
      await conn.query('ROLLBACK');
      conn.release();
    }
  });

  it(
    'with autovacuum off, one replica at a time vacuums the outbox and the sent record',
    { timeout: 60_000 },
    async () => {
      await sql`INSERT INTO shardrelay.outbox (topic, payload) SELECT 'v', '{}' FROM generate_series(1, 2000)`.execute(
        t.db,
      );
      await sql`DELETE FROM shardrelay.outbox WHERE topic = 'v'`.execute(t.db);
      const vacuum = new RelayVacuum({ db: t.db, logger: silentLogger, plan: vacuumPlan(false) });
      const holder = await t.pool.connect();
      try {
        await holder.query(`SELECT pg_advisory_lock(hashtext('shardrelay.self_vacuum'))`);
        assert.equal(await vacuum.vacuumOnce(), 'busy', 'another replica is vacuuming: skip');
        await holder.query(`SELECT pg_advisory_unlock(hashtext('shardrelay.self_vacuum'))`);
      } finally {
        holder.release();
      }
      assert.equal(await vacuum.vacuumOnce(), 'vacuumed');
      await waitFor('the statistics to show the vacuums', async () => {
        const { rows } = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pg_stat_user_tables
         WHERE schemaname = 'shardrelay' AND relname IN ('outbox', 'sent_event') AND last_vacuum IS NOT NULL`.execute(
          t.db,
        );
        return rows[0]?.n === 2;
      });
    },
  );
});
