import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import { ShardRelayError } from '../errors.js';

/** shardrelay's own migrations: `migrations/` at the package root (compiled next to this file in dist). */
const BUILT_IN_DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));

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

export interface MigrateResult {
  readonly applied: readonly string[];
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
  const migrator = new Migrator({
    // The migrator only needs the connection; the schema type of the caller's handle is irrelevant.
    db: db as unknown as Kysely<unknown>,
    provider: new ShardRelayMigrationProvider(options.migrationsDir),
    migrationTableSchema: 'shardrelay',
    migrationTableName: 'migration',
    migrationLockTableName: 'migration_lock',
    // User migrations (timestamp names) may already be applied when a new release adds a built-in
    // one with a lower number; it must still run.
    allowUnorderedMigrations: true,
  });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === 'Error');
  if (error) {
    const cause = error instanceof Error ? error : new Error(String(error));
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
