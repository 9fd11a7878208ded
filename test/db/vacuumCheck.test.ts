import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { outboxVacuumProblem } from '../../src/db/vacuumCheck.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('the outbox vacuum check', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('vacuum_check');
  });
  after(() => t.close());

  it('names the server setting or the table option that keeps the outbox from being vacuumed', async () => {
    const server = (await sql<{ on: string }>`SELECT current_setting('autovacuum') AS on`.execute(t.db))
      .rows[0]?.on;
    if (server === 'off') {
      // Some servers (this project's CI machine among them) run without autovacuum.
      assert.match((await outboxVacuumProblem(t.db)) ?? '', /autovacuum is off on this PostgreSQL server/);
      return;
    }
    assert.equal(await outboxVacuumProblem(t.db), undefined);
    await sql`ALTER TABLE shardrelay.outbox SET (autovacuum_enabled = off)`.execute(t.db);
    assert.match((await outboxVacuumProblem(t.db)) ?? '', /autovacuum_enabled = false/);
  });
});
