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
  const rolePassword = randomBytes(8).toString('hex');
  let roleUrl: string;
  before(async () => {
    t = await createTestDatabase('privileges');
    // Roles are per cluster: a unique name, dropped after.
    // A password, for servers that authenticate with one (embedded PostgreSQL, containers).
    await sql.raw(`CREATE ROLE ${role} LOGIN PASSWORD '${rolePassword}'`).execute(t.db);
    await sql.raw(`GRANT CONNECT ON DATABASE ${t.name} TO ${role}`).execute(t.db);
    const url = new URL(t.url);
    url.username = role;
    url.password = rolePassword;
    roleUrl = url.toString();
    await enqueue(
      t.db,
      Array.from({ length: 50 }, (_, i) => ({ topic: 'granted', payload: { i } })),
    );
  });
  after(async () => {
    // The role's privileges in the test database go first, or DROP ROLE fails whenever that
    // database is kept for inspection (a failed file).
    await sql.raw(`DROP OWNED BY ${role}`).execute(t.db);
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
    // Sent rows leave the outbox; the events view answers from the sent record.
    const { rows } = await sql<{ n: string }>`
      SELECT count(*) AS n FROM shardrelay.events WHERE status = 'sent' AND topic = 'granted'`.execute(t.db);
    assert.equal(Number(rows[0]?.n), 50);
  });

  it('after a shard-count change, a role that does not own the outbox is told what to run, and as whom', async () => {
    assert.ok(grants.length > 0, 'the GRANTs were applied');
    await sql`SELECT shardrelay.set_shard_count(5)`.execute(t.db);
    await enqueue(t.db, [{ topic: 'after.change', payload: {} }]);
    const first = await runCli(['run', '--sink', 'null', '--until-drained'], { DATABASE_URL: roleUrl });
    assert.equal(first.code, 0, first.stderr);
    const warnings = first.stderr
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { msg: string; fix?: string })
      .filter((w) => /claim index/.test(w.msg));
    assert.ok(warnings.length > 0, first.stderr);
    const [warning] = warnings;
    assert.match(
      warning?.msg ?? '',
      new RegExp(
        `^cannot build the claim index for shard count 5; claims work without it, slower .*: role ${role} does not own shardrelay\\.outbox \\(postgres does\\)$`,
      ),
    );
    assert.match(
      warning?.fix ?? '',
      /^as postgres, outside a transaction \(e\.g\. in psql\), run: CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_pending_mod5 /,
    );
    assert.doesNotMatch(first.stderr, /claims work, slower"/, 'not the old warning without a fix');

    // Run exactly what the warning says, as the owner; then the relay has nothing left to warn about.
    const statements = [...(warning?.fix ?? '').matchAll(/(?:CREATE|DROP) INDEX CONCURRENTLY [^;]+;/g)].map(
      (m) => m[0],
    );
    assert.ok(
      statements.some((st) =>
        st.startsWith('DROP INDEX CONCURRENTLY IF EXISTS shardrelay.outbox_pending_mod8'),
      ),
    );
    for (const statement of statements) await sql.raw(statement).execute(t.db);
    const { rows } = await sql<{ name: string }>`
      SELECT indexrelid::regclass::text AS name FROM pg_index
       WHERE indrelid = 'shardrelay.outbox'::regclass AND indexrelid::regclass::text LIKE '%pending%mod%'
       ORDER BY 1`.execute(t.db);
    assert.deepEqual(
      rows.map((r) => r.name),
      ['shardrelay.outbox_pending_mod5', 'shardrelay.outbox_pending_realtime_mod5'],
    );
    await enqueue(t.db, [{ topic: 'after.fix', payload: {} }]);
    const second = await runCli(['run', '--sink', 'null', '--until-drained'], { DATABASE_URL: roleUrl });
    assert.equal(second.code, 0, second.stderr);
    assert.doesNotMatch(second.stderr, /claim index/);
  });

  it('a database without the schema is told to run migrate (exit 2)', async () => {
    const empty = await createTestDatabase('no_schema');
    try {
      await sql`DROP SCHEMA shardrelay CASCADE`.execute(empty.db);
      const result = await runCli(['run', '--sink', 'null'], { DATABASE_URL: empty.url });
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /this database has no shardrelay schema\n\s+fix: run `shardrelay migrate`/);
    } finally {
      await empty.close();
    }
  });
});
