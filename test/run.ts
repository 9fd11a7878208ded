/**
 * The test command: provisions one PostgreSQL for the whole suite, migrates a template database,
 * then runs every test file with Node's test runner. Each test file clones the template into a
 * database of its own (test/support/testDatabase.ts), recorded in a registry. After the run, the
 * database of a file that passed is dropped (after a last leak check: no `WITH (FORCE)`, so a
 * connection left open fails the run and is named); the database of a file that failed is kept
 * and its name printed, to inspect with psql.
 *
 * Usage: npm test [-- <test files or name filters>]
 */
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createDatabase, createPool } from '../src/db/connection.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { leakedConnections } from './support/connectionLeaks.js';
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

/**
 * Drops the databases of files that passed and keeps (and names) those of files that failed.
 * Returns false when a database still had connections open (a leak no `close()` caught, e.g. a
 * file that never closed its database).
 */
async function settleTestDatabases(admin: pg.Client, adminUrl: string): Promise<boolean> {
  const failedFiles = new Set(
    existsSync(failedFilesPath) ? readFileSync(failedFilesPath, 'utf8').split('\n').filter(Boolean) : [],
  );
  const keep = Boolean(process.env.SHARDRELAY_KEEP_TEST_DB);
  let clean = true;
  for (const name of readdirSync(registry)
    .filter((n) => !n.startsWith('.'))
    .sort()) {
    const file = readFileSync(path.join(registry, name), 'utf8');
    if (keep || failedFiles.has(file)) {
      console.log(`# kept database ${name} of ${path.relative(process.cwd(), file)} (psql ... -d ${name})`);
      continue;
    }
    const leaked = await leakedConnections(adminUrl, name);
    if (leaked.length > 0) {
      clean = false;
      const names = leaked.map((c) => c.applicationName || '(no application_name)').join(', ');
      console.log(
        `# LEAK: ${path.relative(process.cwd(), file)} left connections open to ${name}: ${names}; database kept`,
      );
      continue;
    }
    await admin.query(`DROP DATABASE IF EXISTS ${name}`);
  }
  return clean;
}

/** Where the test command compiles the CLI (git-ignored; kept between runs for the incremental build). */
const CLI_BUILD_DIR = path.resolve('.test-build');

/**
 * Compiles `src` and `migrations` for the CLI processes the tests start (test/support/cli.ts) and
 * returns the entry point. Started through tsx, each process spent 2.3 s of CPU transpiling before
 * its first statement against 0.7 s compiled (`shardrelay --help`, measured), and the suite starts
 * about 120 of them in a full run (replicas, `migrate`, `status`, `shards`) on two cores: the suite
 * took 700 s against 880 s. Incremental: 3.6 s when nothing changed, ~9 s from scratch. The layout
 * is the package's (`dist`): `sql/` beside `src/` and `migrations/`, which find it relative to
 * themselves. Output whose source is gone is removed, so a renamed migration never runs twice.
 */
function buildCli(): string {
  const tsc = fileURLToPath(import.meta.resolve('typescript/bin/tsc'));
  execFileSync(
    process.execPath,
    [
      tsc,
      '-p',
      'tsconfig.build.json',
      '--outDir',
      CLI_BUILD_DIR,
      '--incremental',
      '--tsBuildInfoFile',
      path.join(CLI_BUILD_DIR, 'tsbuildinfo'),
      '--declaration',
      'false',
    ],
    { stdio: 'inherit' },
  );
  for (const dir of ['src', 'migrations']) removeOrphans(path.join(CLI_BUILD_DIR, dir), dir);
  rmSync(path.join(CLI_BUILD_DIR, 'sql'), { recursive: true, force: true });
  cpSync('sql', path.join(CLI_BUILD_DIR, 'sql'), { recursive: true });
  return path.join(CLI_BUILD_DIR, 'src', 'cli', 'main.js');
}

/** Deletes compiled files under `built` whose TypeScript source under `source` no longer exists. */
function removeOrphans(built: string, source: string): void {
  for (const name of existsSync(built) ? readdirSync(built) : []) {
    const full = path.join(built, name);
    if (statSync(full).isDirectory()) {
      removeOrphans(full, path.join(source, name));
      continue;
    }
    const compiled = /\.js(\.map)?$/;
    if (compiled.test(name) && !existsSync(path.join(source, name.replace(compiled, '.ts')))) rmSync(full);
  }
}

const args = process.argv.slice(2);
const files = args.filter((a) => a.endsWith('.ts'));
const patterns = args.filter((a) => !a.endsWith('.ts'));
const selected = files.length > 0 ? files : testFiles('test');

const cliEntry = buildCli();
const postgres = await provisionPostgres();
console.log(`# PostgreSQL for tests: ${postgres.kind}`);
const template = `shardrelay_test_template_${process.pid}`;
const registry = mkdtempSync(path.join(tmpdir(), 'shardrelay-test-dbs-'));
const failedFilesPath = path.join(registry, '.failed-files');
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
      '--test-reporter-destination=stdout',
      '--test-reporter=./test/support/failedFilesReporter.mjs',
      '--test-reporter-destination=stdout',
      '--test-concurrency=2',
      // A file whose tests all finished exits even if a client library left a handle open (the AMQP
      // 1.0 file did: its process stayed alive after its last test, holding the suite forever).
      // Leaked database connections are still caught by the leak check in testDatabase.ts.
      '--test-force-exit',
      ...patterns.flatMap((p) => ['--test-name-pattern', p]),
      ...selected,
    ],
    {
      stdio: 'inherit',
      env: {
        ...process.env,
        SHARDRELAY_TEST_ADMIN_URL: postgres.url,
        SHARDRELAY_TEST_TEMPLATE: template,
        SHARDRELAY_TEST_DB_REGISTRY: registry,
        SHARDRELAY_TEST_FAILED_FILES: failedFilesPath,
        SHARDRELAY_TEST_CLI: cliEntry,
      },
    },
  );
  exitCode = await new Promise<number>((resolve) =>
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0))),
  );
  if (!(await settleTestDatabases(admin, postgres.url))) exitCode = exitCode || 1;
  await admin.query(`DROP DATABASE IF EXISTS ${template}`);
  await admin.end();
} finally {
  rmSync(registry, { recursive: true, force: true });
  await postgres.stop();
}
process.exit(exitCode);
