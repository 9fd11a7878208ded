/**
 * What an idle relay costs: `shardrelay run --sink null` on an empty outbox, CPU of the relay
 * process (both threads) and of the PostgreSQL backends serving it, per second. What every replica
 * spends around the clock, and what a drain bounded by a slow broker pays for longer per row
 * (bench/phases/activemq.ts sets it against its drains).
 *
 *   npx tsx bench/studies/idleCost.ts [--rounds 3] [--seconds 25] [-- <extra `shardrelay run` flags>]
 *
 * (DATABASE_URL or an embedded PostgreSQL; Linux, it reads /proc.) Each round starts a relay on a
 * freshly truncated outbox, waits 8 s for its start-up, then measures for `--seconds`.
 */
import { spawn } from 'node:child_process';
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { sql } from 'kysely';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { processCpuMs, processTreeCpuMs } from '../harness/processCpu.js';
import { withStudyDatabase } from './studyDatabase.js';

const ENTRY = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const START_UP_MS = 8_000;

interface IdleRound {
  readonly relayMsPerSec: number;
  readonly postgresMsPerSec: number;
  readonly transactionsPerSec: number;
}

async function measureRound(url: string, seconds: number, extraArgs: readonly string[]): Promise<IdleRound> {
  const db = createDatabase(createPool({ connectionString: url, max: 1, applicationName: 'bench-idle' }));
  const relay = spawn(process.execPath, ['--import', 'tsx', ENTRY, 'run', '--sink', 'null', ...extraArgs], {
    env: { ...process.env, DATABASE_URL: url, SHARDRELAY_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => relay.on('exit', () => resolve()));
  try {
    await sql`TRUNCATE shardrelay.outbox, shardrelay.sent_event`.execute(db);
    await new Promise((resolve) => setTimeout(resolve, START_UP_MS));
    if (relay.exitCode !== null) throw new Error(`the relay exited (${relay.exitCode})`);
    // The relay's backends: its connections name themselves shardrelay-<pool>.
    const backends = async () =>
      (
        await sql<{ pid: number }>`
          SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'shardrelay-%'
             AND datname = current_database()`.execute(db)
      ).rows.map((r) => r.pid);
    const transactions = async () =>
      Number(
        (
          await sql<{ n: string }>`
            SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()`.execute(
            db,
          )
        ).rows[0]?.n ?? 0,
      );
    const pids = await backends();
    const pgCpu = () => pids.reduce((sum, pid) => sum + (processCpuMs(pid) ?? 0), 0);
    const before = { relay: processTreeCpuMs(relay.pid as number), pg: pgCpu(), xacts: await transactions() };
    const started = performance.now();
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    const elapsed = (performance.now() - started) / 1000;
    const after = { relay: processTreeCpuMs(relay.pid as number), pg: pgCpu(), xacts: await transactions() };
    return {
      relayMsPerSec: (after.relay - before.relay) / elapsed,
      postgresMsPerSec: (after.pg - before.pg) / elapsed,
      // Includes this study's two reads of the counter: a rounding error over 25 s.
      transactionsPerSec: (after.xacts - before.xacts) / elapsed,
    };
  } finally {
    relay.kill('SIGTERM');
    await exited;
    await db.destroy();
  }
}

async function main(): Promise<void> {
  const { values, positionals: extra } = parseArgs({
    options: { rounds: { type: 'string', default: '3' }, seconds: { type: 'string', default: '25' } },
    allowPositionals: true,
  });
  const rounds = Number(values.rounds);
  const seconds = Number(values.seconds);
  await withStudyDatabase(async (url) => {
    console.log('| round | relay CPU ms/s | its PostgreSQL backends ms/s | transactions/s | load average |');
    console.log('| ---: | ---: | ---: | ---: | ---: |');
    for (let round = 1; round <= rounds; round++) {
      const r = await measureRound(url, seconds, extra);
      console.log(
        `| ${round} | ${r.relayMsPerSec.toFixed(1)} | ${r.postgresMsPerSec.toFixed(1)} | ` +
          `${r.transactionsPerSec.toFixed(1)} | ${os.loadavg()[0]?.toFixed(2)} |`,
      );
    }
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
