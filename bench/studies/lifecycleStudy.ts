/**
 * The row-lifecycle study (`npx tsx bench/studies/lifecycleStudy.ts [rows] [rounds]`): which life a row
 * should have after its broker confirm, measured, not guessed. Every candidate drains the same
 * backlog with the relay's shape of work: 8 shards, 8 connections, batch 1,000, a claim
 * `FOR UPDATE SKIP LOCKED` through the partial expression index `((id % 8), id) WHERE status =
 * 'pending'`, the lock held across one more round trip (the sink's await), then ONE completion
 * statement and COMMIT. Candidates are interleaved round by round, in a fresh table each time
 * (VACUUM ANALYZE + CHECKPOINT before the clock starts), so a noisy neighbour hits them alike.
 *
 * Candidates:
 * - `update`       today's outbox (event_id uuid unique, sent_at and dead partial indexes), UPDATE to sent
 * - `delete`       the same table, DELETE at completion
 * - `delete+record` DELETE, and INSERT a slim sent record (event_id primary key, random v4 ids)
 * - `delete+record v7` the same with time-ordered (UUIDv7) event ids: the record's unique index appends
 * - `delete+record v7 brin` the same plus a BRIN index on sent_at for retention
 * - `delete+record v7 btree` the same with a btree on sent_at instead (what 0007 ships: the BRIN
 *   lost its selectivity once vacuum let new records reuse pruned pages, see the migration)
 * - `narrow delete` the physical floor: (id, payload, status, created_at, sent_at), DELETE
 *
 * Talks to DATABASE_URL (a database `shardrelay_lifecycle_study` on it, created if missing).
 */
import pg from 'pg';

const SHARDS = 8;
const CONNECTIONS = 8;
const BATCH = 1000;
const PAYLOAD_BYTES = 200;

interface Candidate {
  readonly name: string;
  readonly narrow?: boolean;
  readonly v7?: boolean;
  readonly record?: 'none' | 'pk' | 'pk+brin' | 'pk+btree';
  readonly complete: 'update' | 'delete';
}

const CANDIDATES: readonly Candidate[] = [
  { name: 'update (today)', complete: 'update' },
  { name: 'delete', complete: 'delete' },
  { name: 'delete+record', complete: 'delete', record: 'pk' },
  { name: 'delete+record v7', complete: 'delete', record: 'pk', v7: true },
  { name: 'delete+record v7 brin', complete: 'delete', record: 'pk+brin', v7: true },
  { name: 'delete+record v7 btree', complete: 'delete', record: 'pk+btree', v7: true },
  { name: 'narrow delete', complete: 'delete', narrow: true },
];

/** UUIDv7 in SQL: 48 bits of Unix ms, then random bits; version and variant set. */
const UUID_V7_SQL = `
CREATE OR REPLACE FUNCTION study.uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(overlay(overlay(uuid_send(gen_random_uuid())
           PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6)
           PLACING set_byte('\\x00'::bytea, 0, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112) FROM 7 FOR 1),
         'hex')::uuid
$$`;

function schemaSql(c: Candidate): string[] {
  const idDefault = c.v7 ? 'study.uuid_v7()' : 'gen_random_uuid()';
  const out = [
    'DROP TABLE IF EXISTS study.outbox, study.sent_event',
    c.narrow
      ? `CREATE TABLE study.outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL,
           status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz,
           event_id uuid NOT NULL DEFAULT gen_random_uuid(), topic text NOT NULL DEFAULT 't', lane text NOT NULL DEFAULT 'batch',
           available_at timestamptz NOT NULL DEFAULT now())`
      : `CREATE TABLE study.outbox (
           id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id uuid NOT NULL DEFAULT ${idDefault},
           topic text NOT NULL, key text, payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}',
           correlation_id text, traceparent text, lane text NOT NULL DEFAULT 'batch', priority integer NOT NULL DEFAULT 0,
           created_at timestamptz NOT NULL DEFAULT now(), available_at timestamptz NOT NULL DEFAULT now(),
           attempts integer NOT NULL DEFAULT 0, max_attempts integer, status text NOT NULL DEFAULT 'pending',
           sent_at timestamptz, last_error text, canary boolean NOT NULL DEFAULT false)`,
    `CREATE INDEX ON study.outbox ((id % ${SHARDS}), id) WHERE status = 'pending'`,
  ];
  if (!c.narrow) {
    out.push(
      'CREATE UNIQUE INDEX ON study.outbox (event_id)',
      `CREATE INDEX ON study.outbox (id) WHERE status = 'dead'`,
      `CREATE INDEX ON study.outbox (sent_at) WHERE status = 'sent'`,
      `CREATE INDEX ON study.outbox ((id % ${SHARDS}), id) WHERE status = 'pending' AND lane = 'realtime'`,
    );
  }
  if (c.record && c.record !== 'none') {
    out.push(`CREATE TABLE study.sent_event (
      event_id uuid NOT NULL PRIMARY KEY, id bigint NOT NULL, topic text NOT NULL, key text, shard integer NOT NULL,
      lane text NOT NULL, attempts integer NOT NULL, created_at timestamptz NOT NULL, sent_at timestamptz NOT NULL,
      replica text, sink text)`);
    if (c.record === 'pk+brin') out.push('CREATE INDEX ON study.sent_event USING brin (sent_at)');
    if (c.record === 'pk+btree') out.push('CREATE INDEX ON study.sent_event (sent_at)');
  }
  return out;
}

function completionSql(c: Candidate): string {
  if (c.complete === 'update') {
    return `UPDATE study.outbox SET status = 'sent', sent_at = clock_timestamp(), attempts = attempts + 1
             WHERE id = ANY($1::bigint[])`;
  }
  if (!c.record || c.record === 'none') return 'DELETE FROM study.outbox WHERE id = ANY($1::bigint[])';
  return `WITH gone AS (DELETE FROM study.outbox WHERE id = ANY($1::bigint[])
                        RETURNING event_id, id, topic, key, lane, attempts, created_at)
          INSERT INTO study.sent_event (event_id, id, topic, key, shard, lane, attempts, created_at, sent_at, replica, sink)
          SELECT event_id, id, topic, key, (id % ${SHARDS})::int, lane, attempts + 1, created_at, clock_timestamp(),
                 'replica-1', 'null' FROM gone`;
}

async function load(pool: pg.Pool, c: Candidate, rows: number): Promise<void> {
  const payload = `'{"data": "${'x'.repeat(PAYLOAD_BYTES - 12)}"}'::jsonb`;
  await pool.query(
    c.narrow
      ? `INSERT INTO study.outbox (payload) SELECT ${payload} FROM generate_series(1, ${rows})`
      : `INSERT INTO study.outbox (topic, key, payload) SELECT 'bench.event', 'k' || g, ${payload}
           FROM generate_series(1, ${rows}) AS g`,
  );
  await pool.query('VACUUM ANALYZE study.outbox');
  await pool.query('CHECKPOINT');
}

async function drain(pool: pg.Pool, c: Candidate): Promise<number> {
  const complete = completionSql(c);
  const claim = (shard: number) => `
    SELECT id, event_id, topic, payload FROM study.outbox
     WHERE status = 'pending' AND available_at <= now() AND id % ${SHARDS} = ${shard}
     ORDER BY id LIMIT ${BATCH} FOR UPDATE SKIP LOCKED`;
  let total = 0;
  const worker = async (shards: number[]) => {
    const client = await pool.connect();
    try {
      await client.query('SET enable_sort = off; SET enable_bitmapscan = off');
      let open = shards;
      while (open.length > 0) {
        const next: number[] = [];
        for (const shard of open) {
          await client.query('BEGIN');
          const { rows } = await client.query<{ id: string }>(claim(shard));
          await client.query('SELECT 1'); // the sink's round trip, lock held
          if (rows.length > 0) await client.query(complete, [rows.map((r) => r.id)]);
          await client.query('COMMIT');
          total += rows.length;
          if (rows.length > 0) next.push(shard);
        }
        open = next;
      }
    } finally {
      client.release();
    }
  };
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONNECTIONS }, (_, w) =>
      worker(Array.from({ length: SHARDS }, (_, s) => s).filter((s) => s % CONNECTIONS === w)),
    ),
  );
  return total / ((performance.now() - started) / 1000);
}

async function main(): Promise<void> {
  const rows = Number(process.argv[2] ?? 200_000);
  const rounds = Number(process.argv[3] ?? 2);
  const base = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  const exists = await admin.query(`SELECT 1 FROM pg_database WHERE datname = 'shardrelay_lifecycle_study'`);
  if (exists.rowCount === 0) await admin.query('CREATE DATABASE shardrelay_lifecycle_study');
  await admin.end();
  const url = new URL(base);
  url.pathname = '/shardrelay_lifecycle_study';
  const pool = new pg.Pool({ connectionString: url.toString(), max: CONNECTIONS + 1 });
  await pool.query('CREATE SCHEMA IF NOT EXISTS study');
  await pool.query(UUID_V7_SQL);
  const results = new Map<string, number[]>();
  for (let round = 1; round <= rounds; round++) {
    for (const c of CANDIDATES) {
      for (const statement of schemaSql(c)) await pool.query(statement);
      await load(pool, c, rows);
      const rate = await drain(pool, c);
      results.set(c.name, [...(results.get(c.name) ?? []), rate]);
      const { rows: size } = await pool.query<{ outbox: string; record: string | null }>(
        `SELECT pg_size_pretty(pg_total_relation_size('study.outbox')) AS outbox,
                pg_size_pretty(pg_total_relation_size(to_regclass('study.sent_event'))) AS record`,
      );
      console.log(
        `round ${round} ${c.name.padEnd(24)} ${Math.round(rate).toLocaleString('en-US').padStart(8)} rows/s` +
          `  outbox ${size[0]?.outbox} record ${size[0]?.record ?? '-'}`,
      );
    }
  }
  console.log('\ncandidate, rows/s per round');
  for (const [name, rates] of results) {
    console.log(`${name.padEnd(24)} ${rates.map((r) => Math.round(r).toLocaleString('en-US')).join(' / ')}`);
  }
  await pool.query('DROP SCHEMA study CASCADE');
  await pool.end();
}

await main();
