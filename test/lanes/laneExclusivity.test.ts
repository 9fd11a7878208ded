import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { sql } from 'kysely';
import {
  LANE_OPERATORS,
  laneFilter,
  parseLanePredicate,
  type LanePredicate,
} from '../../src/lanes/lanePredicate.js';
import { claimBatch } from '../../src/relay/claims.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** Random predicates over the outbox's lane columns, including nullable ones (key, correlation_id). */
const leaf: fc.Arbitrary<LanePredicate> = fc.oneof(
  fc.record({
    column: fc.constant('priority' as const),
    op: fc.constantFrom('=', '<>', '<', '<=', '>', '>=' as const),
    value: fc.integer({ min: -3, max: 3 }),
  }),
  fc.record({
    column: fc.constantFrom('key' as const, 'correlation_id' as const, 'topic' as const, 'lane' as const),
    op: fc.constantFrom('=', '<>' as const),
    value: fc.constantFrom('a', 'b', 'realtime', 'batch'),
  }),
  fc.record({
    column: fc.constantFrom('key' as const, 'correlation_id' as const),
    op: fc.constantFrom('is null', 'is not null' as const),
  }),
  fc.record({
    column: fc.constantFrom('key' as const, 'topic' as const),
    op: fc.constantFrom('in', 'not in' as const),
    value: fc.subarray(['a', 'b', 'c'], { minLength: 1 }),
  }),
);
const predicate: fc.Arbitrary<LanePredicate> = fc.letrec<{ p: LanePredicate }>((tie) => ({
  p: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    leaf,
    fc.record({ and: fc.array(tie('p'), { minLength: 1, maxLength: 3 }) }),
    fc.record({ or: fc.array(tie('p'), { minLength: 1, maxLength: 3 }) }),
    fc.record({ not: tie('p') }),
  ),
})).p;

describe('lanes', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('lanes');
    // 3,000 rows with every combination of NULL and non-NULL lane inputs.
    await sql`
      INSERT INTO shardrelay.outbox (topic, payload, key, correlation_id, priority, lane)
      SELECT (ARRAY['a','b','c'])[1 + (i % 3)],
             '{}'::jsonb,
             CASE WHEN i % 4 = 0 THEN NULL ELSE (ARRAY['a','b','c'])[1 + (i % 5 % 3)] END,
             CASE WHEN i % 7 < 3 THEN NULL ELSE (ARRAY['a','b'])[1 + (i % 2)] END,
             (i % 7) - 3,
             CASE WHEN i % 3 = 0 THEN 'realtime' ELSE 'batch' END
        FROM generate_series(1, 3000) AS i`.execute(t.db);
  });
  after(() => t.close());

  it(
    'every row is in exactly one lane, for any predicate, NULLs included',
    { timeout: 120_000 },
    async () => {
      await fc.assert(
        fc.asyncProperty(predicate, async (p) => {
          const counts = await t.db
            .selectFrom('shardrelay.outbox')
            .select((eb) => [
              sql<number>`count(*)::int`.as('total'),
              sql<number>`count(*) FILTER (WHERE ${laneFilter(p, 'realtime')(eb)})::int`.as('realtime'),
              sql<number>`count(*) FILTER (WHERE ${laneFilter(p, 'batch')(eb)})::int`.as('batch'),
              sql<number>`count(*) FILTER (WHERE (${laneFilter(p, 'realtime')(eb)}) AND (${laneFilter(p, 'batch')(eb)}))::int`.as(
                'both',
              ),
            ])
            .executeTakeFirstOrThrow();
          assert.equal(counts.both, 0, `no row in both lanes for ${JSON.stringify(p)}`);
          assert.equal(
            counts.realtime + counts.batch,
            counts.total,
            `every row in a lane for ${JSON.stringify(p)}`,
          );
        }),
        { numRuns: 300 },
      );
    },
  );

  it('the claims of the two lanes partition the pending rows', { timeout: 60_000 }, async () => {
    const p: LanePredicate = {
      or: [
        { column: 'key', op: '=', value: 'a' },
        { column: 'priority', op: '>=', value: 2 },
      ],
    };
    const claimed = new Map<string, string>();
    await t.db.transaction().execute(async (trx) => {
      for (const lane of ['realtime', 'batch'] as const) {
        for (let shard = 0; shard < 8; shard++) {
          const rows = await claimBatch(trx, {
            shard,
            shardCount: 8,
            lane,
            lanePredicate: p,
            batchSize: 10_000,
          });
          for (const r of rows) {
            assert.ok(!claimed.has(r.id), `row ${r.id} claimed by ${claimed.get(r.id)} and ${lane}`);
            claimed.set(r.id, lane);
          }
        }
      }
    });
    assert.equal(claimed.size, 3000);
    const nullKeyInRealtime = await t.db
      .selectFrom('shardrelay.outbox')
      .select('id')
      .where('key', 'is', null)
      .where('priority', '<', 2)
      .execute();
    assert.ok(nullKeyInRealtime.length > 0);
    for (const r of nullKeyInRealtime)
      assert.equal(claimed.get(r.id), 'batch', 'a NULL predicate result goes to batch');
  });

  const refused: [string, unknown, RegExp][] = [
    [
      'a column outside the outbox',
      { column: 'pg_sleep', op: '=', value: 1 },
      /at column: column must be one of the outbox's/,
    ],
    ['another table column', { column: 'payload', op: '=', value: 'x' }, /at column/],
    [
      'an operator outside the list',
      { column: 'priority', op: '~*', value: 'x' },
      /at op: op must be one of/,
    ],
    [
      'a value that looks like SQL',
      { column: 'topic', op: '=', value: "x'; DROP TABLE shardrelay.outbox; --" },
      /at value/,
    ],
    [
      'SQL in a nested value',
      {
        and: [
          { column: 'lane', op: '=', value: 'realtime' },
          { not: { column: 'key', op: 'in', value: ['a', '1) OR (1=1'] } },
        ],
      },
      /at and\.1\.not\.value/,
    ],
    ['an extra key', { column: 'lane', op: '=', value: 'realtime', raw: 'true' }, /Unrecognized key/],
    ['an empty or', { or: [] }, /"or" takes a non-empty list/],
    ['a missing value', { column: 'lane', op: '=' }, /needs a value/],
  ];
  for (const [name, input, message] of refused) {
    it(`refuses ${name}`, () => {
      assert.throws(() => parseLanePredicate(input), message);
    });
  }

  it('refuses an injected predicate before any query runs (the database is never contacted)', async () => {
    const { runCli } = await import('../support/cli.js');
    const result = await runCli(['run', '--lane-predicate', '{"column":"topic","op":"=","value":"a\'--"}'], {
      // Unreachable on purpose: had the relay tried to connect first, the error would be about the database.
      DATABASE_URL: 'postgres://127.0.0.1:1/never',
    });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /lane predicate refused at value/);
    assert.doesNotMatch(result.stderr, /cannot reach PostgreSQL/);
  });

  it('accepts every listed operator in a well-formed predicate', () => {
    for (const op of LANE_OPERATORS) {
      const value = op === 'in' || op === 'not in' ? [1, 2] : op.startsWith('is') ? undefined : 1;
      assert.doesNotThrow(() =>
        parseLanePredicate({ column: 'priority', op, ...(value === undefined ? {} : { value }) }),
      );
    }
  });
});
