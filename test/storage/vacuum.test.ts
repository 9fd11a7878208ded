// The outbox vacuumed between autovacuum's visits (maintenance/vacuum.ts, the plan for a server
// whose autovacuum works; the plan without it is tested in sentRetention.test.ts). Its effect on a
// soak is a bench figure (bench/RESULTS.md, twelfth session); here, what it does and when it does
// nothing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import { silentLogger } from '../../src/logger.js';
import { RelayVacuum, vacuumPlan } from '../../src/maintenance/vacuum.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('the outbox vacuum', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('outbox_vacuum');
  });
  after(() => t.close());

  /** The plan of a server whose autovacuum works, with its dead-row threshold set to `minDeadRows`. */
  const vacuumWithThreshold = (minDeadRows: number) =>
    new RelayVacuum({ db: t.db, logger: silentLogger, plan: { ...vacuumPlan(true), minDeadRows } });

  const vacuums = async () =>
    (
      await sql<{ n: string }>`SELECT vacuum_count AS n FROM pg_stat_user_tables
        WHERE relid = 'shardrelay.outbox'::regclass`.execute(t.db)
    ).rows[0]?.n;

  /** Inserts and deletes `rows` rows on one connection whose statistics are flushed at once. */
  const leaveDeadRows = async (rows: number) => {
    const client = new pg.Client(t.url);
    await client.connect();
    try {
      await client.query(
        `INSERT INTO shardrelay.outbox (topic, payload) SELECT 't', '{}'::jsonb FROM generate_series(1, $1::int)`,
        [rows],
      );
      await client.query(`DELETE FROM shardrelay.outbox`);
      await client.query('SELECT pg_stat_force_next_flush()');
      await client.query('SELECT 1');
    } finally {
      await client.end();
    }
  };

  it('vacuums once the outbox holds enough dead rows, and not before', async () => {
    await leaveDeadRows(3_000);
    const before = await vacuums();
    const few = vacuumWithThreshold(1_000_000);
    assert.equal(await few.vacuumOnce(), 'few dead rows');
    assert.equal(await vacuums(), before, 'vacuumed with fewer dead rows than the threshold');

    const enough = vacuumWithThreshold(2_000);
    assert.equal(await enough.vacuumOnce(), 'vacuumed');
    assert.equal(Number(await vacuums()), Number(before) + 1);
    const { rows } = await sql<{ dead: string }>`SELECT n_dead_tup AS dead FROM pg_stat_user_tables
      WHERE relid = 'shardrelay.outbox'::regclass`.execute(t.db);
    assert.ok(Number(rows[0]?.dead) < 2_000, `dead rows after the vacuum: ${rows[0]?.dead}`);
  });

  it('leaves the period to another replica that is vacuuming', async () => {
    await leaveDeadRows(3_000);
    const other = new pg.Client(t.url);
    await other.connect();
    try {
      await other.query(`SELECT pg_advisory_lock(hashtext('shardrelay.self_vacuum'))`);
      const before = await vacuums();
      const vacuum = vacuumWithThreshold(1);
      assert.equal(await vacuum.vacuumOnce(), 'busy');
      assert.equal(await vacuums(), before);
    } finally {
      await other.end();
    }
  });
});
