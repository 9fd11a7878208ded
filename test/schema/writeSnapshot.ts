/**
 * `npm run schema:snapshot`: migrates an empty database from nothing and writes its schema to
 * test/schema/snapshot.sql, which test/schema/snapshot.test.ts compares with the migrations'
 * result. Run it after adding or changing a migration and commit the file with the migration.
 * Uses DATABASE_URL if set, else provisions PostgreSQL as `npm test` does.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { provisionPostgres } from '../support/provisionPostgres.js';
import { schemaSnapshot } from './schemaSnapshot.js';

const SNAPSHOT_PATH = fileURLToPath(new URL('./snapshot.sql', import.meta.url));

const postgres = await provisionPostgres();
const name = `shardrelay_schema_snapshot_${process.pid}`;
const admin = new pg.Client(postgres.url);
await admin.connect();
try {
  await admin.query(`CREATE DATABASE ${name} TEMPLATE template0`);
  const url = new URL(postgres.url);
  url.pathname = `/${name}`;
  const pool = createPool({ connectionString: url.toString(), max: 1, applicationName: 'schema-snapshot' });
  try {
    await migrateToLatest(createDatabase(pool));
    writeFileSync(SNAPSHOT_PATH, await schemaSnapshot(pool));
  } finally {
    await pool.end();
  }
  console.log(`wrote ${SNAPSHOT_PATH}`);
} finally {
  await admin.query(`DROP DATABASE IF EXISTS ${name}`);
  await admin.end();
  await postgres.stop();
}
