import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Kysely } from 'kysely';
import pg from 'pg';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { Database } from '../../src/db/schema.js';
import { leakedConnections, type LeakedConnection } from './connectionLeaks.js';

export interface TestDatabase {
  /** Connection URL of this test file's own database. */
  readonly url: string;
  readonly name: string;
  readonly db: Kysely<Database>;
  readonly pool: pg.Pool;
  /**
   * Closes this handle's pool, then fails (naming each leaked connection's application_name) if
   * any other connection to the database is still open. The test command drops the database after
   * the run when its file passed, and keeps it (printing its name) when the file failed.
   */
  close(): Promise<void>;
}

function adminUrl(): string {
  const url = process.env.SHARDRELAY_TEST_ADMIN_URL;
  if (!url)
    throw new Error(
      'run tests with `npm test` (it provisions PostgreSQL and sets SHARDRELAY_TEST_ADMIN_URL)',
    );
  return url;
}

function databaseUrl(name: string): string {
  const parsed = new URL(adminUrl());
  parsed.pathname = `/${name}`;
  return parsed.toString();
}

function uniqueName(label: string): string {
  return `t_${label
    .replace(/[^a-z0-9]/gi, '_')
    .toLowerCase()
    .slice(0, 30)}_${randomBytes(3).toString('hex')}`;
}

/**
 * Records the database and the test file that owns it, before anything can fail, so the test
 * command can drop it after a passing file and keep it after a failing (or crashed) one.
 */
function register(name: string): void {
  const registry = process.env.SHARDRELAY_TEST_DB_REGISTRY;
  if (!registry) throw new Error('SHARDRELAY_TEST_DB_REGISTRY is not set; run tests with `npm test`');
  writeFileSync(path.join(registry, name), path.resolve(process.argv[1] ?? 'unknown'));
}

async function createNamed(name: string, template: string, options = ''): Promise<void> {
  register(name);
  const admin = new pg.Client(adminUrl());
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE ${template} ${options}`);
  } finally {
    await admin.end();
  }
}

/** Fails when connections other than the checker's own are still open on `name`. */
export async function assertNoLeakedConnections(name: string): Promise<void> {
  const leaked = await leakedConnections(adminUrl(), name);
  if (leaked.length > 0) throw leakError(name, leaked);
}

function leakError(name: string, leaked: readonly LeakedConnection[]): Error {
  const list = leaked.map((c) => `${c.applicationName || '(no application_name)'} [${c.state}]`);
  return new Error(
    `test file left ${leaked.length} connection(s) open to database ${name}: ${list.join(', ')}; ` +
      'close every pool, client, relay and child process the file opened (the database is kept for inspection)',
  );
}

/**
 * A fresh, migrated database for one test file, cloned from the template the test command
 * migrated once.
 */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const template = process.env.SHARDRELAY_TEST_TEMPLATE;
  if (!template) throw new Error('SHARDRELAY_TEST_TEMPLATE is not set; run tests with `npm test`');
  const name = uniqueName(label);
  await createNamed(name, template);
  const url = databaseUrl(name);
  const pool = createPool({ connectionString: url, max: 4, applicationName: 'test' });
  const db = createDatabase(pool);
  return {
    url,
    name,
    db,
    pool,
    async close() {
      await db.destroy();
      // Kysely ends the pool only if it ever ran a query through it; a test may use the pool alone.
      if (!pool.ended) await pool.end();
      await assertNoLeakedConnections(name);
    },
  };
}

/**
 * A fresh database in another server encoding than the template's UTF-8 (e.g. WIN1252, as legacy
 * Windows installations have), migrated from scratch; closed like `createTestDatabase`'s.
 */
export async function createTestDatabaseWithEncoding(label: string, encoding: string): Promise<TestDatabase> {
  const name = uniqueName(label);
  await createNamed(name, 'template0', `ENCODING '${encoding}' LC_COLLATE 'C' LC_CTYPE 'C'`);
  const url = databaseUrl(name);
  const pool = createPool({ connectionString: url, max: 4, applicationName: 'test' });
  const db = createDatabase(pool);
  await migrateToLatest(db);
  return {
    url,
    name,
    db,
    pool,
    async close() {
      await db.destroy();
      if (!pool.ended) await pool.end();
      await assertNoLeakedConnections(name);
    },
  };
}

/**
 * An empty database (no shardrelay schema at all), for tests that must start from nothing, such
 * as replicas racing to run the first migration. Dropped or kept like `createTestDatabase`'s;
 * call `assertNoLeakedConnections` when done.
 */
export async function createEmptyTestDatabase(label: string): Promise<{ name: string; url: string }> {
  const name = uniqueName(label);
  // template0: nothing a local administrator added to template1 leaks into "empty".
  await createNamed(name, 'template0');
  return { name, url: databaseUrl(name) };
}
