import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { collect, runCli, spawnCli, type CliResult } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** Runs `shardrelay run`; a relay that has not exited after `ms` is killed and reported as such. */
async function runFor(args: readonly string[], env: NodeJS.ProcessEnv, ms: number): Promise<CliResult> {
  const child = spawnCli(['run', ...args], env);
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  try {
    return await collect(child);
  } finally {
    clearTimeout(timer);
  }
}

describe('lane predicate values are checked against the column types at start', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('predicate_types');
    await enqueue(
      t.db,
      Array.from({ length: 20 }, (_, i) => ({ topic: 'typed', payload: { i }, priority: i })),
    );
  });
  after(() => t.close());

  const untouched = async () => {
    const { rows } = await sql<{ n: string }>`
      SELECT count(*) AS n FROM shardrelay.outbox WHERE status = 'pending' AND attempts = 0`.execute(t.db);
    return Number(rows[0]?.n);
  };

  const refused: [string, unknown, RegExp][] = [
    [
      'a word for the integer priority',
      { column: 'priority', op: '>=', value: 'abc' },
      /at value: "abc" is not a valid integer, the type of shardrelay\.outbox\.priority \(PostgreSQL: invalid input syntax for type integer: "abc"\)/,
    ],
    [
      'a fraction inside a list, nested in an or',
      {
        or: [
          { column: 'lane', op: '=', value: 'realtime' },
          { column: 'priority', op: 'in', value: [1, 2.5] },
        ],
      },
      /at or\.1\.value\.1: 2\.5 is not a valid integer/,
    ],
    [
      // A number for TypeScript, out of range for PostgreSQL's integer: only the database knows.
      'a number beyond the integer range',
      { not: { column: 'attempts', op: '<', value: 3_000_000_000 } },
      /at not\.value: 3000000000 is not a valid integer, the type of shardrelay\.outbox\.attempts \(PostgreSQL: value "3000000000" is out of range for type integer\)/,
    ],
  ];
  for (const [name, predicate, message] of refused) {
    it(`refuses ${name}: exit 2 with the place and the fix, nothing claimed`, async () => {
      const result = await runFor(
        ['--sink', 'null', '--lane-predicate', JSON.stringify(predicate)],
        { DATABASE_URL: t.url },
        30_000,
      );
      assert.equal(result.signal, null, `the relay kept running instead of refusing: ${result.stderr}`);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /invalid setting --lane-predicate \/ SHARDRELAY_LANE_PREDICATE: /);
      assert.match(result.stderr, message);
      assert.match(
        result.stderr,
        /fix: give \w+ a integer value, e\.g\. \{"column":"\w+","op":">=","value":5\}/,
      );
      assert.equal(await untouched(), 20);
    });
  }

  it('accepts values PostgreSQL converts to the column type, and delivers by them', async () => {
    const result = await runCli(
      [
        'run',
        '--sink',
        'null',
        '--until-drained',
        '--lane-predicate',
        JSON.stringify({ column: 'priority', op: '>=', value: '10' }),
      ],
      { DATABASE_URL: t.url },
    );
    assert.equal(result.code, 0, result.stderr);
    const { rows } = await sql<{ n: string }>`
      SELECT count(*) AS n FROM shardrelay.events WHERE status = 'sent'`.execute(t.db);
    assert.equal(Number(rows[0]?.n), 20);
    // Priorities 10-19 went through the real-time lane, 0-9 through batch.
    const lanes = await sql<{ lane: string; n: string }>`
      SELECT lane, sum(sent_total) AS n FROM shardrelay.shard_progress GROUP BY lane`.execute(t.db);
    assert.deepEqual(Object.fromEntries(lanes.rows.map((r) => [r.lane, Number(r.n)])), {
      realtime: 10,
      batch: 10,
    });
  });
});
