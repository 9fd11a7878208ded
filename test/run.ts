/**
 * The test command: provisions one PostgreSQL for the whole suite, migrates a template database,
 * then runs every test file with Node's test runner. Each test file clones the template into a
 * database of its own (test/support/testDatabase.ts).
 *
 * Usage: npm test [-- <test files or name filters>]
 */
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { createDatabase, createPool } from '../src/db/connection.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { provisionPostgres } from './support/provisionPostgres.js';

function testFiles(dir: string): string[] {
  return readdirSync(dir)
    .flatMap((name) => {
      const full = path.join(dir, name);
      if (statSync(full).isDirectory()) return name === 'support' ? [] : testFiles(full);
      return name.endsWith('.test.ts') ? [full] : [];
    })
    .sort();
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

const args = process.argv.slice(2);
const files = args.filter((a) => a.endsWith('.ts'));
const patterns = args.filter((a) => !a.endsWith('.ts'));
const selected = files.length > 0 ? files : testFiles('test');

const postgres = await provisionPostgres();
console.log(`# PostgreSQL for tests: ${postgres.kind}`);
const template = `shardrelay_test_template_${process.pid}`;
let exitCode = 1;
try {
  const admin = new pg.Client(postgres.url);
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${template}`);
  await admin.query(`CREATE DATABASE ${template}`);
  const pool = createPool({
    connectionString: withDatabase(postgres.url, template),
    max: 1,
    applicationName: 'test-setup',
  });
  await migrateToLatest(createDatabase(pool));
  await pool.end();

  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '--test',
      '--test-reporter=spec',
      '--test-concurrency=2',
      ...patterns.flatMap((p) => ['--test-name-pattern', p]),
      ...selected,
    ],
    {
      stdio: 'inherit',
      env: { ...process.env, SHARDRELAY_TEST_ADMIN_URL: postgres.url, SHARDRELAY_TEST_TEMPLATE: template },
    },
  );
  exitCode = await new Promise<number>((resolve) =>
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0))),
  );
  await admin.query(`DROP DATABASE IF EXISTS ${template} WITH (FORCE)`).catch(() => {});
  await admin.end();
} finally {
  await postgres.stop();
}
process.exit(exitCode);
