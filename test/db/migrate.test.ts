import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { runCli, waitFor } from '../support/cli.js';
import {
  assertNoLeakedConnections,
  createEmptyTestDatabase,
  createTestDatabase,
  type TestDatabase,
} from '../support/testDatabase.js';

const BUILT_IN = readdirSync(new URL('../../migrations/', import.meta.url))
  .filter((f) => /^\d{4}_[a-z0-9_]+\.ts$/.test(f))
  .map((f) => f.replace(/\.ts$/, ''))
  .sort();

describe('migrations', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('migrate');
  });
  after(() => t.close());

  it('install the outbox with 8 shards by default', async () => {
    const config = await t.db.selectFrom('shardrelay.shard_config').selectAll().executeTakeFirstOrThrow();
    assert.equal(config.shard_count, 8);
    assert.equal(config.generation, '1');
  });

  it('apply every migration exactly once when four replicas migrate an empty database at once', async () => {
    const empty = await createEmptyTestDatabase('migrate_race');
    // A transaction that creates the schema and does not commit yet holds every replica at its
    // first statement (`CREATE SCHEMA IF NOT EXISTS` waits on the uncommitted row), so all four
    // start from nothing at the same moment once it rolls back, instead of whoever started first
    // migrating alone while the others are still loading.
    const gate = new pg.Client({ connectionString: empty.url, application_name: 'test-race-gate' });
    await gate.connect();
    await gate.query('BEGIN');
    await gate.query('CREATE SCHEMA shardrelay');
    const replicas = Array.from({ length: 4 }, () => runCli(['migrate'], { DATABASE_URL: empty.url }));
    await waitFor(
      'four replicas blocked on the uncommitted schema',
      async () => {
        // Inside a transaction pg_stat_activity is a snapshot taken once; take a fresh one.
        await gate.query('SELECT pg_stat_clear_snapshot()');
        const { rows } = await gate.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`,
        );
        return rows[0]?.n === 4;
      },
      60_000,
    );
    await gate.query('ROLLBACK');
    const results = await Promise.all(replicas);

    for (const r of results) assert.equal(r.code, 0, `a replica failed to migrate: ${r.stderr}`);
    const applied = results.flatMap((r) => /^applied: (.*)$/m.exec(r.stdout)?.[1]?.split(', ') ?? []).sort();
    assert.deepEqual(applied, BUILT_IN, 'each built-in migration is applied by exactly one replica');
    const { rows } = await gate.query<{ name: string }>(
      'SELECT name FROM shardrelay.migration ORDER BY name',
    );
    assert.deepEqual(
      rows.map((r) => r.name),
      BUILT_IN,
    );
    const config = await gate.query<{ shard_count: number }>(
      'SELECT shard_count FROM shardrelay.shard_config',
    );
    assert.deepEqual(
      config.rows.map((r) => r.shard_count),
      [8],
    );
    await gate.end();
    await assertNoLeakedConnections(empty.name);
  });
});
