/**
 * The real-time lane's client (src/db/deferringClient.ts) against a real PostgreSQL: BEGIN,
 * SAVEPOINT and RELEASE are not waited for, yet the transaction is the same, and a deferred
 * statement that failed makes the next statement throw (a COMMIT that PostgreSQL turned into a
 * rollback is not reported as a commit).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql, type Kysely } from 'kysely';
import { createDatabase, createPool } from '../../src/db/connection.js';
import type { Database } from '../../src/db/schema.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('DeferringClient', () => {
  let t: TestDatabase;
  let db: Kysely<Database>;

  before(async () => {
    t = await createTestDatabase('deferring_client');
    await sql`CREATE TABLE deferred_t (n int PRIMARY KEY)`.execute(t.db);
    db = createDatabase(
      createPool({
        connectionString: t.url,
        max: 1,
        applicationName: 'deferring',
        deferTransactionControl: true,
      }),
    );
  });

  after(async () => {
    await db.destroy();
    await t.close();
  });

  it('runs the claim-like statement inside the transaction that BEGIN opened', async () => {
    const inside = await db.transaction().execute(async (trx) => {
      await sql`INSERT INTO deferred_t VALUES (1)`.execute(trx);
      // Another session does not see the row before the COMMIT: the insert ran in a transaction.
      const seen = await sql<{ n: number }>`SELECT count(*)::int AS n FROM deferred_t`.execute(t.db);
      return { seen: seen.rows[0]?.n };
    });
    assert.equal(inside.seen, 0);
    const after = await sql<{ n: number }>`SELECT count(*)::int AS n FROM deferred_t`.execute(t.db);
    assert.equal(after.rows[0]?.n, 1);
  });

  it('a failed statement after a deferred SAVEPOINT is rolled back to it, the rest commits', async () => {
    await db.transaction().execute(async (trx) => {
      await sql`INSERT INTO deferred_t VALUES (2)`.execute(trx);
      await sql.raw('SAVEPOINT sp').execute(trx);
      await assert.rejects(sql`INSERT INTO deferred_t VALUES (2)`.execute(trx), /duplicate key/);
      await sql.raw('ROLLBACK TO SAVEPOINT sp').execute(trx);
      await sql.raw('RELEASE SAVEPOINT sp').execute(trx);
      await sql`INSERT INTO deferred_t VALUES (3)`.execute(trx);
    });
    const rows = await sql<{ n: number }>`SELECT n FROM deferred_t WHERE n IN (2, 3) ORDER BY n`.execute(
      t.db,
    );
    assert.deepEqual(
      rows.rows.map((r) => r.n),
      [2, 3],
    );
  });

  it('a deferred statement that fails makes the next one throw, so a rolled-back COMMIT is an error', async () => {
    await assert.rejects(
      db.transaction().execute(async (trx) => {
        await sql`INSERT INTO deferred_t VALUES (4)`.execute(trx);
        // No such savepoint: fails, unseen until the COMMIT, which PostgreSQL turns into a ROLLBACK.
        await sql.raw('RELEASE SAVEPOINT nowhere').execute(trx);
      }),
      /savepoint "nowhere" does not exist/,
    );
    const rows = await sql<{ n: number }>`SELECT count(*)::int AS n FROM deferred_t WHERE n = 4`.execute(
      t.db,
    );
    assert.equal(rows.rows[0]?.n, 0, 'nothing of that transaction committed');
    // The connection is usable afterwards.
    const one = await sql<{ x: number }>`SELECT 1 AS x`.execute(db);
    assert.equal(one.rows[0]?.x, 1);
  });
  it("a ROLLBACK reports the caller's error, not that of a deferred statement it discards", async () => {
    await assert.rejects(
      db.transaction().execute(async (trx) => {
        await sql.raw('RELEASE SAVEPOINT nowhere').execute(trx);
        throw new Error('the caller gave up');
      }),
      /the caller gave up/,
    );
    const one = await sql<{ x: number }>`SELECT 1 AS x`.execute(db);
    assert.equal(one.rows[0]?.x, 1);
  });
});
