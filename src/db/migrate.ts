import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import { ShardRelayError, toError } from '../errors.js';
import { assertReachable, createDatabase, createPool } from './connection.js';

/** shardrelay's own migrations: `migrations/` at the package root (compiled next to this file in dist). */
const BUILT_IN_DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));

/**
 * The folder of the operator's own migrations that `shardrelay migrate` reads when it exists, and
 * where `shardrelay shards new-migration` writes, both relative to the working directory, so the
 * two work together with no flag.
 */
export const DEFAULT_MIGRATIONS_DIR = 'shardrelay-migrations';

const BUILT_IN_NAME = /^\d{4}_[a-z0-9_]+\.(ts|js)$/;
const USER_SQL_NAME = /^\d+_[A-Za-z0-9_-]+\.sql$/;

/**
 * Built-in TypeScript migrations plus, optionally, a folder of the operator's own `.sql` migrations
 * (for example those written by `shardrelay shards new-migration`). Names sort globally; user
 * migrations are named with a timestamp, so they sort after the built-in ones they depend on.
 */
export class ShardRelayMigrationProvider implements MigrationProvider {
  constructor(private readonly userDir: string | undefined) {}

  async getMigrations(): Promise<Record<string, Migration>> {
    const migrations: Record<string, Migration> = {};
    for (const file of (await readdir(BUILT_IN_DIR)).sort()) {
      if (!BUILT_IN_NAME.test(file)) continue;
      const module = (await import(pathToFileURL(path.join(BUILT_IN_DIR, file)).href)) as Migration;
      migrations[file.replace(/\.(ts|js)$/, '')] = module;
    }
    if (this.userDir) {
      for (const file of (await readdir(this.userDir)).sort()) {
        if (!USER_SQL_NAME.test(file)) continue;
        const text = await readFile(path.join(this.userDir, file), 'utf8');
        // One simple-protocol query, so the file may hold several statements; the migrator wraps
        // it in its transaction.
        migrations[file.replace(/\.sql$/, '')] = {
          up: (db) =>
            sql
              .raw(text)
              .execute(db)
              .then(() => {}),
        };
      }
    }
    return migrations;
  }
}

function newMigrator(db: Kysely<unknown>, userDir: string | undefined): Migrator {
  return new Migrator({
    db,
    provider: new ShardRelayMigrationProvider(userDir),
    migrationTableSchema: 'shardrelay',
    migrationTableName: 'migration',
    migrationLockTableName: 'migration_lock',
    // User migrations (timestamp names) may already be applied when a new release adds a built-in
    // one with a lower number; it must still run (test/db/userMigrations.test.ts).
    allowUnorderedMigrations: true,
  });
}

/**
 * Refuses to go on, with the fix, when the database lacks the shardrelay schema or some built-in
 * migration of this version: every command but `migrate` reads tables and views that a migration
 * creates, and would otherwise fail with PostgreSQL's "relation does not exist" and a stack trace.
 * Read-only: it lists the migration table, which it does not create.
 */
export async function assertSchemaCurrent<DB>(db: Kysely<DB>): Promise<void> {
  // A role without privileges on an existing schema sees no migration table (the migrator reads
  // the catalogs through what the role may see): that is a privilege problem, which the privilege
  // check of `run` (db/privileges.ts) and the permission-denied handler of the CLI explain with the
  // GRANTs to run. Telling such a role to run `migrate` would send the operator the wrong way.
  const { rows } = await sql<{ exists: boolean; readable: boolean }>`
    SELECT n.oid IS NOT NULL AS exists,
           coalesce(has_schema_privilege(n.oid, 'USAGE')
                    AND (c.oid IS NULL OR has_table_privilege(c.oid, 'SELECT')), false) AS readable
      FROM (SELECT 1) AS one
      LEFT JOIN pg_namespace n ON n.nspname = 'shardrelay'
      LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'migration'`.execute(db);
  const schema = rows[0];
  if (schema?.exists && !schema.readable) return;
  const migrations = await newMigrator(db as unknown as Kysely<unknown>, undefined).getMigrations();
  const pending = migrations.filter((m) => m.executedAt === undefined).map((m) => m.name);
  if (pending.length === 0) return;
  const none = pending.length === migrations.length;
  throw new ShardRelayError(
    'SCHEMA_MISSING',
    none
      ? 'this database has no shardrelay schema'
      : `the shardrelay schema is older than this version of shardrelay: ${pending.join(', ')} not applied`,
    {
      context: { pending },
      fix: 'run `shardrelay migrate` against this database (safe while replicas run)',
    },
  );
}

export interface MigrateResult {
  readonly applied: readonly string[];
}

export interface MigrateOptions {
  /** PostgreSQL holding (or to hold) the shardrelay schema. */
  readonly databaseUrl: string;
  /** A folder of your own `.sql` migrations (e.g. from `shardrelay shards new-migration`). */
  readonly migrationsDir?: string;
}

/**
 * `shardrelay migrate` from code: applies the built-in migrations and, when given, the `.sql`
 * migrations of `migrationsDir`, over a connection of its own that it closes.
 */
export async function migrate(options: MigrateOptions): Promise<MigrateResult> {
  const db = createDatabase(
    createPool({ connectionString: options.databaseUrl, max: 1, applicationName: 'shardrelay-migrate' }),
  );
  try {
    await assertReachable(db, options.databaseUrl);
    return await migrateToLatest(db, options.migrationsDir ? { migrationsDir: options.migrationsDir } : {});
  } finally {
    await db.destroy();
  }
}

/**
 * Applies pending migrations. Safe when several replicas start at once: the migrator takes a
 * PostgreSQL advisory lock and runs each migration in a transaction, so exactly one applies it and
 * the others find it done.
 */
export async function migrateToLatest<DB>(
  db: Kysely<DB>,
  options: { migrationsDir?: string } = {},
): Promise<MigrateResult> {
  // The migrator only needs the connection; the schema type of the caller's handle is irrelevant.
  const migrator = newMigrator(db as unknown as Kysely<unknown>, options.migrationsDir);
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === 'Error');
  if (error) {
    const cause = toError(error);
    throw new ShardRelayError(
      'MIGRATION_FAILED',
      `migration ${failed?.migrationName ?? '(setup)'} failed: ${cause.message}`,
      {
        cause,
        context: { migration: failed?.migrationName },
        fix: 'nothing was applied from the failed migration; fix its cause and run `shardrelay migrate` again',
      },
    );
  }
  return { applied: (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName) };
}
