import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { schemaSnapshot, serverMajor, versionLine } from './schemaSnapshot.js';

const SNAPSHOT = new URL('./snapshot.sql', import.meta.url);

describe('schema snapshot', () => {
  let t: TestDatabase;
  before(async () => {
    // The test command migrates its template from an empty database, so this clone is exactly
    // what `shardrelay migrate` builds from nothing.
    t = await createTestDatabase('schema_snapshot');
  });
  after(() => t.close());

  it('the migrations build exactly the committed schema (test/schema/snapshot.sql)', async (context) => {
    const committed = readFileSync(SNAPSHOT, 'utf8');
    const major = await serverMajor(t.pool);
    if (!committed.includes(versionLine(major))) {
      // CI runs the version the snapshot was read from; another one renders views differently.
      context.skip(
        `the snapshot was read from another PostgreSQL major version than this server's ${major} ` +
          '(see its header); run the tests with DATABASE_URL naming a server of that version to compare',
      );
      return;
    }
    const actual = await schemaSnapshot(t.pool);
    assert.equal(
      actual,
      committed,
      'the schema the migrations build differs from test/schema/snapshot.sql. If the migration ' +
        'change is intended, run `npm run schema:snapshot` and commit the new snapshot with it; ' +
        'otherwise a migration changed an object it should not have (see the diff below).',
    );
  });
});
