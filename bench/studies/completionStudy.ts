/**
 * The completion study (`npx tsx bench/studies/completionStudy.ts [rounds] [rows]`): what one batch's
 * completion costs, in CPU of the PostgreSQL backend and of this process, per 1,000 rows. One
 * connection with the relay's claim-connection settings drains `rows` pending rows (default
 * 24,000, ~200 B payloads) of 8 shards in batches of 1,000: the relay's claim (relay/claims.ts
 * `claimBatch`), then one of the variants below, then COMMIT. Variants are interleaved round by
 * round, each on a freshly loaded and vacuumed outbox.
 *
 * Why CPU and not rows/s: on this project's shared 2-core machine the load average moves between 4
 * and 40 within minutes, which moves throughput 2-5x; the CPU of one backend (from /proc, so
 * Linux only, and the server must be local) and of this process move much less.
 *
 * Variants:
 * - `floor`         the bench's same-schema floor: one DELETE + plain sent-record INSERT statement
 * - `relay`         relay/claims.ts `completeBatch` (shardrelay.complete_outcomes), in a savepoint
 *                   as relay/completion.ts runs it
 * - `relay no record` the same with the retention 0 (no sent record)
 * - `complete_batch 0007` the previous completion: four arrays, record INSERT ... ON CONFLICT
 * - `deliverBatch`  the whole batch of relay/deliverBatch.ts with the null sink (claim, send, decide,
 *                   complete, commit): what the relay process adds around the completion
 * - `delete`        claim + DELETE, no record: the least this schema can do
 *
 * Talks to DATABASE_URL (a database `shardrelay_completion_study` on it, created and migrated if
 * missing; its outbox is emptied at every step).
 */
import { readFileSync } from 'node:fs';
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { Database } from '../../src/db/schema.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { deliverBatch } from '../../src/relay/deliverBatch.js';
import { CLAIM_SESSION_SETTINGS, claimBatch, completeBatch } from '../../src/relay/claims.js';
import { createNullSink } from '../../src/sinks/nullSink.js';

const SHARDS = 8;
const BATCH = 1000;
const VARIANTS = [
  'floor',
  'relay',
  'relay no record',
  'complete_batch 0007',
  'deliverBatch',
  'delete',
] as const;
type Variant = (typeof VARIANTS)[number];

const rounds = Number(process.argv[2] ?? 3);
const rows = Number(process.argv[3] ?? 24_000);
const base = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const admin = new pg.Client({ connectionString: base });
await admin.connect();
const exists = await admin.query(`SELECT 1 FROM pg_database WHERE datname = 'shardrelay_completion_study'`);
if (exists.rowCount === 0) await admin.query('CREATE DATABASE shardrelay_completion_study');
await admin.end();
const url = new URL(base);
url.pathname = '/shardrelay_completion_study';

const setup = createDatabase(
  createPool({ connectionString: url.toString(), max: 1, applicationName: 'study-setup' }),
);
await migrateToLatest(setup);
const pool = createPool({
  connectionString: url.toString(),
  max: 1,
  applicationName: 'study',
  settings: { ...CLAIM_SESSION_SETTINGS, 'shardrelay.replica': 'study', 'shardrelay.sink': 'null' },
});
const db: Kysely<Database> = createDatabase(pool);
const { rows: pids } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(db);
const backend = Number(pids[0]?.pid);

/** utime + stime of the backend, ms (clock ticks of 10 ms). */
function backendCpuMs(): number {
  const text = readFileSync(`/proc/${backend}/stat`, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function load(): Promise<void> {
  await sql`TRUNCATE shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress, shardrelay.rollup_minute`.execute(
    setup,
  );
  await sql`
    INSERT INTO shardrelay.outbox (topic, payload)
    SELECT 'bench.event', jsonb_build_object('n', g, 'padding', repeat('x', 160))
      FROM generate_series(1, ${rows}::int) AS g`.execute(setup);
  await sql`VACUUM ANALYZE shardrelay.outbox`.execute(setup);
  await sql`VACUUM ANALYZE shardrelay.sent_event`.execute(setup);
}

const sink = createNullSink();
const retry = { maxAttempts: 10, baseMs: 1000, capMs: 60_000 };

async function batch(variant: Variant, shard: number): Promise<number> {
  if (variant === 'deliverBatch') {
    const result = await deliverBatch(db, sink, shard, SHARDS, 'batch', {
      lanePredicate: DEFAULT_LANE_PREDICATE,
      batchSize: BATCH,
      retry,
      sendTimeoutMs: 30_000,
    });
    return result.claimed;
  }
  return db.transaction().execute(async (trx) => {
    const claimed = await claimBatch(trx, {
      shard,
      shardCount: SHARDS,
      lane: 'batch',
      lanePredicate: DEFAULT_LANE_PREDICATE,
      batchSize: BATCH,
    });
    if (claimed.length === 0) return 0;
    const ids = claimed.map((r) => r.id);
    if (variant === 'floor') {
      await sql`
        WITH gone AS (
          DELETE FROM shardrelay.outbox WHERE id = ANY(${ids}::bigint[])
          RETURNING event_id, id, topic, key, lane, attempts, created_at
        )
        INSERT INTO shardrelay.sent_event (event_id, id, topic, key, shard, lane, attempts, created_at, sent_at, replica, sink)
        SELECT event_id, id, topic, key, ${shard}::int, lane, attempts + 1, created_at, clock_timestamp(), 'floor', 'null'
          FROM gone`.execute(trx);
    } else if (variant === 'delete') {
      await sql`DELETE FROM shardrelay.outbox WHERE id = ANY(${ids}::bigint[])`.execute(trx);
    } else {
      await sql.raw('SAVEPOINT study').execute(trx);
      if (variant === 'complete_batch 0007') {
        await sql`
          SELECT shardrelay.complete_batch(${shard}::int, 'batch'::text, ${ids}::bigint[],
            ${ids.map(() => 'sent')}::text[], ${ids.map(() => 0)}::float8[], ${ids.map(() => null)}::text[], 5)`.execute(
          trx,
        );
      } else {
        await completeBatch(trx, {
          shard,
          lane: 'batch',
          batchMs: 5,
          completions: ids.map((id) => ({ id, status: 'sent' as const })),
        });
      }
      await sql.raw('RELEASE SAVEPOINT study').execute(trx);
    }
    return claimed.length;
  });
}

const figures = new Map<Variant, { pg: number[]; node: number[] }>();
for (let round = 1; round <= rounds; round++) {
  for (const variant of VARIANTS) {
    await load();
    const record = variant === 'relay no record' ? 'off' : 'on';
    await sql`SELECT set_config('shardrelay.sent_record', ${record}, false)`.execute(db);
    const pg0 = backendCpuMs();
    const node0 = process.cpuUsage();
    let done = 0;
    for (let open = true; open;) {
      open = false;
      for (let shard = 0; shard < SHARDS; shard++) {
        const n = await batch(variant, shard);
        done += n;
        if (n > 0) open = true;
      }
    }
    const node = process.cpuUsage(node0);
    const pgPer1k = ((backendCpuMs() - pg0) / done) * 1000;
    const nodePer1k = ((node.user + node.system) / 1000 / done) * 1000;
    const entry = figures.get(variant) ?? { pg: [], node: [] };
    entry.pg.push(pgPer1k);
    entry.node.push(nodePer1k);
    figures.set(variant, entry);
    console.log(
      `round ${round} ${variant}: PostgreSQL ${pgPer1k.toFixed(1)}, this process ${nodePer1k.toFixed(1)} ms per 1,000 rows`,
    );
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
console.log('\nmedian CPU ms per 1,000 rows (claim included): PostgreSQL backend | this process');
for (const [variant, f] of figures) {
  console.log(
    `${variant.padEnd(22)} ${median(f.pg).toFixed(1).padStart(6)} | ${median(f.node).toFixed(1).padStart(6)}`,
  );
}
await pool.end();
await setup.destroy();
