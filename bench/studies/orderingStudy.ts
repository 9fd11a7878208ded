/**
 * The same comparison runs as a scenario of `npm run bench` (`--only ordering`, bench/phases/ordering.ts:
 * the relay in its own process, CPU of PostgreSQL and the broker too); this study keeps the relay in
 * this process and lets one pick the sink and the variants.
 *
 * The cost of per-key ordering (`npx tsx bench/studies/orderingStudy.ts [rows] [rounds] [sink]`, default
 * 20,000 rows, 2 rounds, the rabbitmq sink): the real relay (startRelay, both lanes, 8 shards,
 * 8 connections per lane, batch 1,000) drains the same backlog with ordering off and on, with the
 * variants interleaved round by round so a noisy neighbour hits them alike:
 *
 * - `off, 100 keys`          the floor: id % 8, every batch sent at once
 * - `key, 100 keys`          SHARDRELAY_ORDERING=key, rows spread evenly over 100 keys
 * - `off, skewed`            one key holds 50 % of the rows, the rest spread over 100 keys
 * - `key, skewed`            the same with ordering: the hot key lives in one shard and its rows go
 *                            one broker round trip after another
 *
 * Each round: the relay is started on an empty outbox, the rows are enqueued in one transaction
 * (interleaved: consecutive rows have different keys), and the clock runs from that commit until
 * nothing is pending. Reported: rows/s, the relay process's CPU per 1,000 rows (user + system, the
 * PostgreSQL server's CPU not included), the ratio to the floor of the same round, and the load
 * average at the start and end (the machine is shared; CPU figures are the steadier ones).
 *
 * Talks to DATABASE_URL (a database `shardrelay_ordering_study` on it, created if missing) and, for
 * the rabbitmq sink, AMQP_URL (exchange `shardrelay_ordering_study` bound to one queue that keeps
 * its newest 10,000 messages: the relay publishes as mandatory, so an unbound exchange would make
 * every row dead, and nothing piles up).
 */
import os from 'node:os';
import amqplib from 'amqplib';
import { sql } from 'kysely';
import pg from 'pg';
import { loadConfig } from '../../src/config.js';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { enqueue, type OutboxEvent } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';

const ROWS = Number(process.argv[2] ?? 20_000);
const ROUNDS = Number(process.argv[3] ?? 2);
const SINK = process.argv[4] ?? 'rabbitmq';
const KEYS = 100;
const STUDY_DB = 'shardrelay_ordering_study';

interface Variant {
  readonly name: string;
  readonly ordering: 'off' | 'key';
  readonly skewed: boolean;
}

const ALL_VARIANTS: readonly Variant[] = [
  { name: 'off, 100 keys', ordering: 'off', skewed: false },
  { name: 'key, 100 keys', ordering: 'key', skewed: false },
  { name: 'off, skewed (1 key = 50 %)', ordering: 'off', skewed: true },
  { name: 'key, skewed (1 key = 50 %)', ordering: 'key', skewed: true },
];

/** STUDY_VARIANTS=key (a substring of the names) runs only the matching variants. */
const VARIANTS = ALL_VARIANTS.filter((v) => v.name.includes(process.env.STUDY_VARIANTS ?? ''));

function events(skewed: boolean): OutboxEvent[] {
  return Array.from({ length: ROWS }, (_, i) => ({
    topic: 'study.ordering',
    // Skewed: every other row is the hot key's.
    key: skewed && i % 2 === 0 ? 'hot' : `key-${i % KEYS}`,
    payload: { i, pad: 'x'.repeat(150) },
  }));
}

async function studyUrl(): Promise<string> {
  const base = process.env.DATABASE_URL;
  if (!base) throw new Error('set DATABASE_URL');
  const admin = new pg.Client(base);
  await admin.connect();
  const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [STUDY_DB]);
  if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${STUDY_DB}`);
  await admin.end();
  const url = new URL(base);
  url.pathname = `/${STUDY_DB}`;
  return url.toString();
}

interface Measured {
  readonly variant: string;
  readonly round: number;
  readonly ms: number;
  readonly rowsPerSecond: number;
  readonly cpuMsPer1000: number;
  readonly loadStart: number;
  readonly loadEnd: number;
}

async function runOnce(url: string, variant: Variant, round: number): Promise<Measured> {
  const db = createDatabase(createPool({ connectionString: url, max: 2, applicationName: 'ordering-study' }));
  try {
    await sql`TRUNCATE shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress, shardrelay.rollup_minute`.execute(
      db,
    );
    await sql`VACUUM ANALYZE shardrelay.outbox`.execute(db);
    const config = loadConfig(
      {
        databaseUrl: url,
        sink: SINK,
        ordering: variant.ordering,
        amqpExchange: STUDY_DB,
        canaryIntervalSeconds: 0,
        replicaId: `ordering-study-${round}`,
        logLevel: 'warn',
      },
      process.env,
    );
    const relay = await startRelay({ config, observeIntervalMs: 60_000 });
    try {
      // The claim indexes of the variant's sharding exist before the clock starts.
      await waitForIndexes(db, variant.ordering === 'key');
      const rows = events(variant.skewed);
      const loadStart = os.loadavg()[0] ?? 0;
      await db.transaction().execute((trx) => enqueue(trx, rows));
      const cpu = process.cpuUsage();
      const started = performance.now();
      relay.scheduler.wake(Array.from({ length: 8 }, (_, i) => i));
      await relay.whenDrained();
      const ms = performance.now() - started;
      const used = process.cpuUsage(cpu);
      return {
        variant: variant.name,
        round,
        ms: Math.round(ms),
        rowsPerSecond: Math.round((ROWS / ms) * 1000),
        cpuMsPer1000: Number(((used.user + used.system) / 1000 / (ROWS / 1000)).toFixed(1)),
        loadStart: Number(loadStart.toFixed(1)),
        loadEnd: Number((os.loadavg()[0] ?? 0).toFixed(1)),
      };
    } finally {
      await relay.stop();
    }
  } finally {
    await db.destroy();
  }
}

async function waitForIndexes(db: ReturnType<typeof createDatabase>, ordering: boolean): Promise<void> {
  const name = ordering ? 'outbox_pending_keyed_mod8' : 'outbox_pending_mod8';
  for (let i = 0; i < 600; i++) {
    const { rows } = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
       WHERE c.relname = ${name} AND i.indisvalid`.execute(db);
    if ((rows[0]?.n ?? 0) > 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`index ${name} was not built`);
}

if (SINK === 'rabbitmq') {
  const connection = await amqplib.connect(process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672');
  const channel = await connection.createChannel();
  await channel.assertExchange(STUDY_DB, 'topic', { durable: true });
  await channel.assertQueue(`${STUDY_DB}_q`, { durable: false, arguments: { 'x-max-length': 10_000 } });
  await channel.bindQueue(`${STUDY_DB}_q`, STUDY_DB, '#');
  await connection.close();
}
const url = await studyUrl();
{
  const db = createDatabase(createPool({ connectionString: url, max: 1, applicationName: 'ordering-study' }));
  await migrateToLatest(db);
  await sql`SELECT shardrelay.set_shard_count(8)`.execute(db);
  await db.destroy();
}
const results: Measured[] = [];
for (let round = 1; round <= ROUNDS; round++) {
  for (const variant of VARIANTS) {
    const m = await runOnce(url, variant, round);
    results.push(m);
    console.log(JSON.stringify(m));
  }
}
console.log(`\n${ROWS} rows, ${SINK} sink, 8 shards, batch 1,000, ${os.cpus().length} cores\n`);
console.log('variant                        round  rows/s  ratio to off  CPU ms/1,000 rows  load');
for (const m of results) {
  const floor = results.find(
    (r) =>
      r.round === m.round &&
      r.variant.startsWith('off') &&
      r.variant.includes('skewed') === m.variant.includes('skewed'),
  );
  const ratio = floor ? (m.rowsPerSecond / floor.rowsPerSecond).toFixed(2) : '-';
  console.log(
    `${m.variant.padEnd(30)} ${String(m.round).padStart(5)}  ${String(m.rowsPerSecond).padStart(6)}  ${ratio.padStart(12)}  ${String(m.cpuMsPer1000).padStart(17)}  ${m.loadStart}-${m.loadEnd}`,
  );
}
