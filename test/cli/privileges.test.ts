import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { runCli } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** A relay running as a role of its own, not the one that ran `migrate`. */
describe('a relay role without privileges', () => {
  let t: TestDatabase;
  const role = `relay_${randomBytes(4).toString('hex')}`;
  let roleUrl: string;
  before(async () => {
    t = await createTestDatabase('privileges');
    // Roles are per cluster: a unique name, dropped after.
    await sql.raw(`CREATE ROLE ${role} LOGIN`).execute(t.db);
    await sql.raw(`GRANT CONNECT ON DATABASE ${t.name} TO ${role}`).execute(t.db);
    const url = new URL(t.url);
    url.username = role;
    url.password = '';
    roleUrl = url.toString();
    await enqueue(
      t.db,
      Array.from({ length: 50 }, (_, i) => ({ topic: 'granted', payload: { i } })),
    );
  });
  after(async () => {
    await t.close();
    const admin = new URL(t.url);
    admin.pathname = '/postgres';
    const { default: pg } = await import('pg');
    const client = new pg.Client(admin.toString());
    await client.connect();
    await client.query(`DROP ROLE IF EXISTS ${role}`);
    await client.end();
  });

  let grants: string[] = [];

  it('run: exit 2, names what is missing and the GRANTs to run, and as whom', async () => {
    const result = await runCli(['run', '--sink', 'null'], { DATABASE_URL: roleUrl });
    assert.equal(result.code, 2, result.stderr);
    assert.match(
      result.stderr,
      new RegExp(`role ${role} lacks privileges the relay needs: USAGE on schema shardrelay; \\w+ on `),
    );
    assert.match(
      result.stderr,
      /fix: as postgres \(the owner of schema shardrelay\) or a superuser, run: GRANT USAGE ON SCHEMA shardrelay TO /,
    );
    assert.doesNotMatch(result.stderr, /run `shardrelay migrate`/);
    grants = [...result.stderr.matchAll(/GRANT [^;]+;/g)].map((m) => m[0]);
    assert.equal(grants.length, 4, result.stderr);
  });

  it('status: exit 2 with the GRANTs, not a stack trace', async () => {
    const result = await runCli(['status'], { DATABASE_URL: roleUrl });
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /permission denied for (schema|table|view|function) \w+/);
    assert.match(
      result.stderr,
      /fix: as the owner of schema shardrelay, run: GRANT USAGE ON SCHEMA shardrelay TO <the role of DATABASE_URL>;/,
    );
    assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
  });

  it('with exactly the GRANTs the message gave, the relay delivers everything', async () => {
    assert.ok(grants.length > 0, 'the first test collected the GRANTs');
    for (const grant of grants) await sql.raw(grant).execute(t.db);
    const result = await runCli(['run', '--sink', 'null', '--until-drained'], { DATABASE_URL: roleUrl });
    assert.equal(result.code, 0, result.stderr);
    const { rows } = await sql<{ n: string }>`
      SELECT count(*) AS n FROM shardrelay.outbox WHERE status = 'sent'`.execute(t.db);
    assert.equal(Number(rows[0]?.n), 50);
  });

  it('a database without the schema is told to run migrate (exit 2)', async () => {
    const empty = await createTestDatabase('no_schema');
    try {
      await sql`DROP SCHEMA shardrelay CASCADE`.execute(empty.db);
      const result = await runCli(['run', '--sink', 'null'], { DATABASE_URL: empty.url });
      assert.equal(result.code, 2, result.stderr);
      assert.match(
        result.stderr,
        /the shardrelay schema is missing or incomplete\n\s+fix: run `shardrelay migrate`/,
      );
    } finally {
      await empty.close();
    }
  });
});
