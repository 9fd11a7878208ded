/**
 * What an application's insert into the outbox costs PostgreSQL, by the event id's default: the
 * default `shardrelay.uuid_v7()` (migration 0014), the body it replaced (0007's, recreated here as a
 * temporary function), and explicit `gen_random_uuid()` ids (no time order: the floor of an id).
 * CPU of the inserting backend (from /proc), per 1,000 rows; each insert is one statement of
 * `--rows` rows of ~200 B, rolled back, the variants alternated round by round.
 *
 *   npx tsx bench/studies/insertCost.ts [--rounds 5] [--rows 100000]
 *
 * (DATABASE_URL or an embedded PostgreSQL; Linux.) Migration 0014 quotes its figures.
 */
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { processCpuMs } from '../harness/processCpu.js';
import { median } from '../harness/stats.js';
import { withStudyDatabase } from './studyDatabase.js';

/** 0007's body, for the comparison. */
const UUID_V7_0007 = `
  CREATE FUNCTION pg_temp.uuid_v7_0007() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
             set_byte(
               set_byte(
                 overlay(uuid_send(gen_random_uuid())
                         PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                         FROM 1 FOR 6),
                 6, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112),
               8, (get_byte(uuid_send(gen_random_uuid()), 8) & 63) | 128),
             'hex')::uuid
  $$`;

/** The event id expression of each variant; empty: the column's default. */
const VARIANTS = {
  'default (0014)': '',
  'previous default (0007)': 'pg_temp.uuid_v7_0007()',
  'gen_random_uuid() (floor)': 'gen_random_uuid()',
  /** PostgreSQL 18's own; measured only there. */
  'uuidv7() (PostgreSQL 18+)': 'uuidv7()',
} as const;
type Variant = keyof typeof VARIANTS;

async function insertCpuMs(client: pg.Client, pid: number, variant: Variant, rows: number): Promise<number> {
  const before = processCpuMs(pid) ?? 0;
  await client.query('BEGIN');
  await client.query(
    `INSERT INTO shardrelay.outbox (topic, payload${VARIANTS[variant] ? ', event_id' : ''})
     SELECT 'bench', jsonb_build_object('n', g, 'padding', repeat('x', 160))${VARIANTS[variant] ? `, ${VARIANTS[variant]}` : ''}
       FROM generate_series(1, $1::int) AS g`,
    [rows],
  );
  await client.query('ROLLBACK');
  return (processCpuMs(pid) ?? 0) - before;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { rounds: { type: 'string', default: '5' }, rows: { type: 'string', default: '100000' } },
  });
  const rounds = Number(values.rounds);
  const rows = Number(values.rows);
  await withStudyDatabase(async (url) => {
    const client = new pg.Client({ connectionString: url, application_name: 'bench-insert-cost' });
    await client.connect();
    try {
      await client.query(UUID_V7_0007);
      const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]
        ?.pid as number;
      const version = Number(
        (await client.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`)).rows[0]?.v,
      );
      const variants = (Object.keys(VARIANTS) as Variant[]).filter(
        (v) => version >= 180000 || v !== 'uuidv7() (PostgreSQL 18+)',
      );
      const perThousand = new Map<Variant, number[]>(variants.map((v) => [v, []]));
      // One warm-up of each, not counted (the first touches the table's pages and indexes).
      for (const v of variants) await insertCpuMs(client, pid, v, rows);
      for (let round = 0; round < rounds; round++)
        for (const v of variants)
          perThousand.get(v)?.push(((await insertCpuMs(client, pid, v, rows)) / rows) * 1000);
      const floor = median(perThousand.get('gen_random_uuid() (floor)') ?? []);
      console.log(
        `${rows.toLocaleString('en-US')} rows per insert, ${rounds} rounds; load average ${os.loadavg()[0]?.toFixed(2)}`,
      );
      console.log('| event id | PostgreSQL CPU ms / 1,000 rows, median (min-max) | × floor |');
      console.log('| --- | ---: | ---: |');
      for (const v of variants) {
        const values = perThousand.get(v) ?? [];
        const m = median(values);
        console.log(
          `| ${v} | ${m.toFixed(2)} (${Math.min(...values).toFixed(2)}-${Math.max(...values).toFixed(2)}) | ${(m / floor).toFixed(2)} |`,
        );
      }
    } finally {
      await client.end();
    }
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
