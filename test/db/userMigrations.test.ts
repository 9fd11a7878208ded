/**
 * Your own migrations and shardrelay's: `shards new-migration N` writes to ./shardrelay-migrations,
 * a plain `shardrelay migrate` (no flag) applies it, and a built-in migration that a later release
 * adds (numbered below the timestamps of the operator's files, which already ran) still applies.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { down as dropCompleteBatch } from '../../migrations/0005_complete_batch_function.js';
import { collect, spawnCli, type CliResult } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** The CLI as an operator runs it in a project folder: working directory `cwd`. */
function cliIn(cwd: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return collect(spawnCli(args, { SHARDRELAY_MIGRATIONS_DIR: '', ...env }, { cwd }));
}

describe('user migrations', () => {
  let t: TestDatabase;
  let project: string;
  before(async () => {
    t = await createTestDatabase('user_migrations');
    project = await mkdtemp(path.join(os.tmpdir(), 'shardrelay-project-'));
  });
  after(async () => {
    await t.close();
    await rm(project, { recursive: true, force: true });
  });

  const config = () => t.db.selectFrom('shardrelay.shard_config').selectAll().executeTakeFirstOrThrow();
  const applied = async () =>
    (await sql<{ name: string }>`SELECT name FROM shardrelay.migration ORDER BY name`.execute(t.db)).rows.map(
      (r) => r.name,
    );

  it('`shards new-migration 12` then a plain `migrate` changes the shard count', async () => {
    const written = await cliIn(project, ['shards', 'new-migration', '12']);
    assert.equal(written.code, 0, written.stderr);
    const file = written.stdout.trim();
    assert.equal(path.dirname(file), 'shardrelay-migrations');
    assert.deepEqual(await readdir(path.join(project, 'shardrelay-migrations')), [path.basename(file)]);
    assert.match(written.stderr, /apply it \(running replicas switch within a tick\): shardrelay migrate\n$/);

    const before = await config();
    const migrated = await cliIn(project, ['migrate'], { DATABASE_URL: t.url });
    assert.equal(migrated.code, 0, migrated.stderr);
    assert.match(migrated.stdout, /applied \(built-in and shardrelay-migrations\/\): \d{14}_shard_count_12/);
    const after = await config();
    assert.equal(after.shard_count, 12);
    assert.equal(BigInt(after.generation), BigInt(before.generation) + 1n);
  });

  it('a built-in migration numbered below an applied user migration still applies', async () => {
    // What a new release looks like to this database: a built-in migration it has not run, whose
    // name sorts before the user migration it already ran. 0005 stands in for it (undone here).
    await dropCompleteBatch(t.db as never);
    await sql`DELETE FROM shardrelay.migration WHERE name = '0005_complete_batch_function'`.execute(t.db);
    const generation = (await config()).generation;

    const migrated = await cliIn(project, ['migrate'], { DATABASE_URL: t.url });
    assert.equal(migrated.code, 0, migrated.stderr);
    assert.match(
      migrated.stdout,
      /applied \(built-in and shardrelay-migrations\/\): 0005_complete_batch_function$/m,
    );
    const { rows } = await sql<{ n: string }>`
      SELECT count(*) AS n FROM pg_proc WHERE proname = 'complete_batch'`.execute(t.db);
    assert.equal(Number(rows[0]?.n), 1, 'the built-in migration ran');
    assert.equal((await config()).generation, generation, 'the user migration did not run again');
    assert.equal((await config()).shard_count, 12);
    assert.ok((await applied()).includes('0005_complete_batch_function'));
  });

  it('migrate with a --migrations-dir that does not exist: exit 2 and the fix', async () => {
    const result = await cliIn(project, ['migrate', '--migrations-dir', 'no-such-folder'], {
      DATABASE_URL: t.url,
    });
    assert.equal(result.code, 2, result.stderr);
    assert.match(
      result.stderr,
      /folder no-such-folder does not exist\n {2}fix: give the folder your migrations are in/,
    );
  });
});
