import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Migrator, sql, type Kysely } from 'kysely';
import pg from 'pg';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest, ShardRelayMigrationProvider } from '../../src/db/migrate.js';
import type { Database } from '../../src/db/schema.js';
import { startRelay } from '../../src/wiring/relay.js';
import { createPgBossSink } from '../../src/sinks/pgBossSink.js';
import { testConfig } from '../support/relayConfig.js';

/**
 * The upgrade an operator runs: a database at 0005 (the previous release) holding pending, sent and
 * dead rows, a replica of that release still completing a batch, then `migrate` to the latest and
 * the new relay (pg-boss sink) draining. Nothing pending may be lost or handed off twice.
 */
describe('migration 0007 on a populated database', () => {
  let url: string;
  let name: string;
  let db: Kysely<Database>;
  before(async () => {
    const admin = process.env.SHARDRELAY_TEST_ADMIN_URL;
    if (!admin) throw new Error('run tests with `npm test`');
    name = `t_migrate_populated_${randomBytes(3).toString('hex')}`;
    const client = new pg.Client(admin);
    await client.connect();
    await client.query(`CREATE DATABASE ${name}`);
    await client.end();
    const parsed = new URL(admin);
    parsed.pathname = `/${name}`;
    url = parsed.toString();
    db = createDatabase(createPool({ connectionString: url, max: 4, applicationName: 'test' }));
  });
  after(async () => {
    await db.destroy();
    if (process.env.SHARDRELAY_KEEP_TEST_DB) return;
    const client = new pg.Client(process.env.SHARDRELAY_TEST_ADMIN_URL);
    await client.connect();
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await client.end();
  });

  it(
    'keeps every pending row and the relay hands each to pg-boss exactly once',
    { timeout: 180_000 },
    async () => {
      const migrator = new Migrator({
        db: db as unknown as Kysely<unknown>,
        provider: new ShardRelayMigrationProvider(undefined),
        migrationTableSchema: 'shardrelay',
        migrationTableName: 'migration',
        migrationLockTableName: 'migration_lock',
        allowUnorderedMigrations: true,
      });
      const to0005 = await migrator.migrateTo('0005_complete_batch_function');
      assert.equal(to0005.error, undefined);

      // The previous release's data: 6,000 pending, 2,000 sent (in the outbox, as it kept them), 40 dead.
      await sql`
      INSERT INTO shardrelay.outbox (topic, payload, lane)
      SELECT 'upgrade.' || (g % 3), jsonb_build_object('n', g), CASE WHEN g % 10 = 0 THEN 'realtime' ELSE 'batch' END
        FROM generate_series(1, 6000) AS g`.execute(db);
      await sql`
      INSERT INTO shardrelay.outbox (topic, payload, status, attempts, sent_at)
      SELECT 'upgrade.sent', '{}', 'sent', 1, now() - interval '10 minutes' FROM generate_series(1, 2000)`.execute(
        db,
      );
      await sql`
      INSERT INTO shardrelay.outbox (topic, payload, status, attempts, last_error)
      SELECT 'upgrade.dead', '{}', 'dead', 10, 'gave up' FROM generate_series(1, 40)`.execute(db);
      const pendingBefore = (
        await sql<{
          event_id: string;
        }>`SELECT event_id FROM shardrelay.outbox WHERE status = 'pending'`.execute(db)
      ).rows.map((r) => r.event_id);
      assert.equal(pendingBefore.length, 6000);

      // A replica of the previous release has claimed 100 rows and is sending them as we migrate.
      const oldReplica = new pg.Client(url);
      await oldReplica.connect();
      await oldReplica.query('BEGIN');
      const claimed = await oldReplica.query<{ id: string }>(
        `SELECT id FROM shardrelay.outbox WHERE status = 'pending' AND id % 8 = 0 ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED`,
      );
      // The migration waits (up to its 5 s lock timeout) for that batch; the batch commits meanwhile,
      // through the previous release's call of complete_batch, which still has the old body here.
      const migrating = migrateToLatest(db);
      await new Promise((resolve) => setTimeout(resolve, 300));
      await oldReplica.query(
        `SELECT shardrelay.complete_batch(0, 'batch', $1::bigint[], $2::text[], $3::float8[], $4::text[], 5)`,
        [
          claimed.rows.map((r) => r.id),
          claimed.rows.map(() => 'sent'),
          claimed.rows.map(() => 0),
          claimed.rows.map(() => null),
        ],
      );
      await oldReplica.query('COMMIT');
      const { applied } = await migrating;
      assert.ok(applied.includes('0007_sent_record'), `applied ${applied.join(', ')}`);

      // After the migration the previous release's call (same arguments, no session settings) gets
      // the new body: its rows leave the outbox and are recorded, replica unknown.
      await oldReplica.query('BEGIN');
      const second = await oldReplica.query<{ id: string }>(
        `SELECT id FROM shardrelay.outbox WHERE status = 'pending' AND id % 8 = 1 ORDER BY id LIMIT 50 FOR UPDATE SKIP LOCKED`,
      );
      await oldReplica.query(
        `SELECT shardrelay.complete_batch(1, 'batch', $1::bigint[], $2::text[], $3::float8[], $4::text[], 5)`,
        [
          second.rows.map((r) => r.id),
          second.rows.map(() => 'sent'),
          second.rows.map(() => 0),
          second.rows.map(() => null),
        ],
      );
      await oldReplica.query('COMMIT');
      await oldReplica.end();
      const recorded = await sql<{ n: number; replica: string | null }>`
      SELECT count(*)::int AS n, max(replica) AS replica FROM shardrelay.sent_event`.execute(db);
      assert.deepEqual(recorded.rows[0], { n: 50, replica: null });

      // Nothing pending was lost by the migration.
      const stillThere = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.events WHERE event_id = ANY(${pendingBefore}::uuid[])`.execute(
        db,
      );
      assert.equal(stillThere.rows[0]?.n, 6000, 'every row pending before the migration is known');

      // The new relay drains the rest into pg-boss.
      const sink = createPgBossSink({ connectionString: url });
      const relay = await startRelay({
        config: testConfig(url, { sink: 'pgboss', sentRetentionSeconds: '1h', replicaId: 'new-release' }),
        sink,
      });
      await relay.whenDrained();
      await relay.stop();

      const handedOff = await sql<{ total: number; distinct: number; matching: number }>`
      SELECT count(*)::int AS total, count(DISTINCT j.id)::int AS distinct,
             count(*) FILTER (WHERE j.id = ANY(${pendingBefore}::uuid[]))::int AS matching
        FROM pgboss.job AS j`.execute(db);
      // 6,000 pending before, of which 150 were completed by the old replica with the null effect
      // (no sink in this test for it): the new relay hands off the other 5,850 exactly once.
      assert.deepEqual(handedOff.rows[0], { total: 5850, distinct: 5850, matching: 5850 });
      const states = await sql<{ status: string; n: number }>`
      SELECT status, count(*)::int AS n FROM shardrelay.events GROUP BY status ORDER BY status`.execute(db);
      assert.deepEqual(states.rows, [
        { status: 'dead', n: 40 },
        { status: 'sent', n: 2000 + 6000 },
      ]);
      const byNew = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.sent_event WHERE replica = 'new-release' AND sink = 'pgboss'`.execute(
        db,
      );
      assert.equal(byNew.rows[0]?.n, 5850);
      // The outbox holds the dead rows, the 2,100 rows marked sent in place by the previous release
      // (pruned by retention, see below) and nothing pending.
      const outbox = await sql<{ status: string; n: number }>`
      SELECT status, count(*)::int AS n FROM shardrelay.outbox GROUP BY status ORDER BY status`.execute(db);
      assert.deepEqual(outbox.rows, [
        { status: 'dead', n: 40 },
        { status: 'sent', n: 2100 },
      ]);
      const pruned = await sql<{
        n: string;
      }>`SELECT shardrelay.prune_sent(interval '0', 100000) AS n`.execute(db);
      assert.equal(Number(pruned.rows[0]?.n), 2100 + 5900);
      const rollup = await sql<{
        sent: number;
      }>`SELECT sum(sent)::int AS sent FROM shardrelay.rollup_minute`.execute(db);
      assert.equal(rollup.rows[0]?.sent, 6000, 'rollups counted the batches of both releases');
    },
  );
});
