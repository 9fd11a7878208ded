/**
 * `shardrelay run --batch-lane-nice N` lowers its main thread's CPU priority (the batch lane) by N
 * and leaves the real-time lane's worker thread at the priority the process started with
 * (src/wiring/batchLanePriority.ts). Read from the kernel: /proc/<pid>/task/<tid>/stat holds each
 * thread's nice value and CPU time. The real-time thread is found by its work: the thread, other
 * than the main one, that spends the most CPU while only real-time rows flow.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { pino } from 'pino';
import { lowerBatchLanePriority } from '../../src/wiring/batchLanePriority.js';
import { spawnCli, waitFor } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

interface ThreadStat {
  readonly tid: number;
  readonly nice: number;
  /** utime + stime, in clock ticks. */
  readonly cpu: number;
}

function threads(pid: number): ThreadStat[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((name) => {
    try {
      const text = readFileSync(`/proc/${pid}/task/${name}/stat`, 'utf8');
      // After the command name in parentheses: field 3 (state) onwards.
      const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
      return [{ tid: Number(name), nice: Number(fields[16]), cpu: Number(fields[11]) + Number(fields[12]) }];
    } catch {
      return []; // the thread ended between the listing and the read
    }
  });
}

describe(
  'the batch lane thread runs at a lower priority than the real-time thread',
  { skip: process.platform !== 'linux' },
  () => {
    let t: TestDatabase;
    before(async () => {
      t = await createTestDatabase('batch_lane_priority');
    });
    after(() => t.close());

    async function realtimeDrained(): Promise<boolean> {
      const { rows } = await sql<{ n: string }>`
      SELECT count(*) AS n FROM shardrelay.outbox WHERE status = 'pending'`.execute(t.db);
      return Number(rows[0]?.n) === 0;
    }

    for (const nice of [10, 0]) {
      it(`${nice > 0 ? `--batch-lane-nice ${nice}` : 'by default'}: the main thread at +${nice}, the real-time thread unchanged`, async () => {
        // 0 is the default: that run gives no flag.
        const relay = spawnCli(
          ['run', '--sink', 'null', ...(nice > 0 ? ['--batch-lane-nice', String(nice)] : [])],
          {
            DATABASE_URL: t.url,
            SHARDRELAY_LOG_LEVEL: 'info',
          },
        );
        let log = '';
        relay.stdout?.on('data', (d: Buffer) => (log += d.toString()));
        relay.stderr?.on('data', (d: Buffer) => (log += d.toString()));
        try {
          const pid = relay.pid as number;
          // Both threads' lines: the real-time thread's comes first, and the main thread lowers its
          // priority only after it (a check after the first line alone raced that).
          await waitFor('the relay started', async () => log.split('"relay started"').length > 2, 60_000);
          const started = threads(pid);
          // The process started at nice 0 (the test runner's, inherited).
          const base = 0;
          assert.equal(started.find((s) => s.tid === pid)?.nice, base + nice, log);

          // Only real-time rows: the real-time thread does the work.
          await sql`
          INSERT INTO shardrelay.outbox (topic, payload, lane)
          SELECT 'rt', jsonb_build_object('i', g), 'realtime' FROM generate_series(1, 3000) AS g`.execute(
            t.db,
          );
          await waitFor('the real-time rows were sent', realtimeDrained, 60_000);
          const ended = threads(pid);
          const busiest = ended
            .filter((s) => s.tid !== pid)
            .map((s) => ({ ...s, used: s.cpu - (started.find((b) => b.tid === s.tid)?.cpu ?? 0) }))
            .sort((a, b) => b.used - a.used)[0];
          assert.ok(busiest && busiest.used > 0, `some thread worked: ${JSON.stringify(ended)}`);
          assert.equal(busiest.nice, base, `the real-time thread ${busiest.tid}: ${JSON.stringify(ended)}`);
          if (nice > 0)
            assert.match(log, /batch lane's thread runs at a lower priority than the real-time lane's/);
        } finally {
          relay.kill('SIGTERM');
          await new Promise((resolve) => relay.once('close', resolve));
        }
      });
    }

    it('left alone, and said so, when the process already runs at the lowest priority', () => {
      // A process of its own: a nice value raised in this one could not be lowered again.
      const script = `
        import { pino } from 'pino';
        import { lowerBatchLanePriority } from ${JSON.stringify(new URL('../../src/wiring/batchLanePriority.ts', import.meta.url).href)};
        lowerBatchLanePriority(10, { realtimeSendsOnMainThread: false, logger: pino({ level: 'info' }) });`;
      const run = spawnSync(
        'nice',
        ['-n', '19', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script],
        {
          encoding: 'utf8',
        },
      );
      assert.equal(run.status, 0, run.stderr);
      assert.match(run.stdout, /left as it is: the process already runs at the lowest priority \(19\)/);
      assert.doesNotMatch(run.stdout, /runs at a lower priority than/);
    });

    it('left alone where the real-time lane sends through the main thread (a Kafka producer)', () => {
      const lines: string[] = [];
      const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(line) });
      const before = threads(process.pid).find((s) => s.tid === process.pid)?.nice;
      lowerBatchLanePriority(10, { realtimeSendsOnMainThread: true, logger });
      assert.equal(threads(process.pid).find((s) => s.tid === process.pid)?.nice, before);
      assert.match(lines.join('\n'), /real-time lane's sends run on the main thread/);
    });
  },
);
