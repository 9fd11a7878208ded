/**
 * What the max-sustainable phase's offered load costs on its own: the bench's load generator
 * (bench/harness/loadGenerator.ts: a statement of rows every ~5 ms, each a commit and one NOTIFY)
 * inserting into shardrelay.outbox at a set rate with no relay running. CPU of the whole
 * PostgreSQL server and of the generator's process per 1,000 rows inserted; the outbox is emptied
 * (TRUNCATE) before each round.
 *
 *   npx tsx bench/studies/offeredLoadCost.ts [--rates 40000,60000,80000] [--seconds 8] [--rounds 3]
 *
 * (DATABASE_URL or an embedded PostgreSQL; Linux.) Why: on a 2-core machine the generator shares
 * the cores with PostgreSQL and the relay, so the max-sustainable rate is bounded by
 * 2 cores / (the relay's drain cost + this cost) per row; issue 14's "max sustainable ≥ 0.8× the
 * null-sink drain" needs this cost to be at most a quarter of the drain's (bench/RESULTS.md).
 */
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { LoadGenerator } from '../harness/loadGenerator.js';
import { ownCpuMs, postmasterOf, processTreeCpuMs } from '../harness/processCpu.js';
import { median } from '../harness/stats.js';
import { withStudyDatabase } from './studyDatabase.js';

interface Round {
  readonly insertedPerSec: number;
  readonly postgresMsPer1k: number;
  readonly generatorMsPer1k: number;
}

async function round(url: string, rate: number, seconds: number): Promise<Round> {
  const client = new pg.Client({ connectionString: url, application_name: 'bench-offered-load' });
  await client.connect();
  try {
    await client.query('TRUNCATE shardrelay.outbox');
    await client.query('CHECKPOINT');
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]
      ?.pid as number;
    const postmaster = postmasterOf(pid);
    if (postmaster === undefined) throw new Error('the PostgreSQL server is not a local process');
    const load = new LoadGenerator(client, 200);
    const postgresBefore = processTreeCpuMs(postmaster);
    const ownBefore = ownCpuMs();
    const startedAt = performance.now();
    load.start(rate);
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    await load.stop();
    const elapsed = (performance.now() - startedAt) / 1000;
    const rows = load.inserted;
    return {
      insertedPerSec: rows / elapsed,
      postgresMsPer1k: ((processTreeCpuMs(postmaster) - postgresBefore) / rows) * 1000,
      generatorMsPer1k: ((ownCpuMs() - ownBefore) / rows) * 1000,
    };
  } finally {
    await client.end();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rates: { type: 'string', default: '40000,60000,80000' },
      seconds: { type: 'string', default: '8' },
      rounds: { type: 'string', default: '3' },
    },
  });
  const rates = values.rates.split(',').map(Number);
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  await withStudyDatabase(async (url) => {
    const results = new Map<number, Round[]>(rates.map((r) => [r, []]));
    for (let k = 0; k < rounds; k++)
      for (const rate of rates) results.get(rate)?.push(await round(url, rate, seconds));
    console.log(
      `${seconds} s per round, ${rounds} rounds, rates alternated; load average ${os.loadavg()[0]?.toFixed(2)}`,
    );
    console.log('| offered rows/s | inserted rows/s | CPU ms / 1,000 rows: PostgreSQL | generator | sum |');
    console.log('| ---: | ---: | ---: | ---: | ---: |');
    for (const [rate, list] of results) {
      const pgMs = median(list.map((r) => r.postgresMsPer1k));
      const genMs = median(list.map((r) => r.generatorMsPer1k));
      console.log(
        `| ${rate} | ${Math.round(median(list.map((r) => r.insertedPerSec)))} | ${pgMs.toFixed(1)} | ${genMs.toFixed(1)} | ${(pgMs + genMs).toFixed(1)} |`,
      );
    }
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
