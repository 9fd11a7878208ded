import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import pg from 'pg';
import { createDatabase, createPool } from '../../src/db/connection.js';
import type { Database } from '../../src/db/schema.js';

export interface TestDatabase {
  /** Connection URL of this test file's own database. */
  readonly url: string;
  readonly name: string;
  readonly db: Kysely<Database>;
  readonly pool: pg.Pool;
  /** Closes connections; drops the database unless SHARDRELAY_KEEP_TEST_DB is set (to inspect it). */
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

/**
 * A fresh, migrated database for one test file, cloned from the template the test command
 * migrated once.
 */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const template = process.env.SHARDRELAY_TEST_TEMPLATE;
  if (!template) throw new Error('SHARDRELAY_TEST_TEMPLATE is not set; run tests with `npm test`');
  const name = `t_${label
    .replace(/[^a-z0-9]/gi, '_')
    .toLowerCase()
    .slice(0, 30)}_${randomBytes(3).toString('hex')}`;
  const admin = new pg.Client(adminUrl());
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE ${template}`);
  } finally {
    await admin.end();
  }
  const parsed = new URL(adminUrl());
  parsed.pathname = `/${name}`;
  const url = parsed.toString();
  const pool = createPool({ connectionString: url, max: 4, applicationName: 'test' });
  const db = createDatabase(pool);
  return {
    url,
    name,
    db,
    pool,
    async close() {
      await db.destroy();
      if (process.env.SHARDRELAY_KEEP_TEST_DB) return;
      const cleanup = new pg.Client(adminUrl());
      await cleanup.connect();
      await cleanup.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await cleanup.end();
    },
  };
}
