import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { migrateToLatest } from '../../src/db/migrate.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

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

  it('are idempotent when two replicas migrate at once', async () => {
    const results = await Promise.all([migrateToLatest(t.db), migrateToLatest(t.db)]);
    assert.deepEqual(
      results.map((r) => r.applied.length),
      [0, 0],
    );
    const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM shardrelay.migration`.execute(
      t.db,
    );
    assert.ok((rows[0]?.n ?? 0) >= 1);
  });
});
