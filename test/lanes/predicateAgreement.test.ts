import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { sql } from 'kysely';
import pg from 'pg';
import { queryCompiler } from '../../src/db/queryCompiler.js';
import { evaluateLanePredicate, type LaneRow } from '../../src/lanes/evaluateLanePredicate.js';
import { isRealtimeFunctionBody } from '../../src/lanes/isRealtimeFunction.js';
import { laneFilter, parseLanePredicate, type LanePredicate } from '../../src/lanes/lanePredicate.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

// Few distinct values, so that random predicates and random rows often meet (equal, neighbours,
// prefixes, case), plus arbitrary strings of the characters the predicate parser accepts.
const SAFE_CHARS = 'abAB019_.:@/ +-'.split('');
const text = fc.oneof(
  fc.constantFrom('a', 'b', 'A', 'ab', 'a b', 'realtime', 'batch', '-1', '10', '9'),
  fc.array(fc.constantFrom(...SAFE_CHARS), { minLength: 0, maxLength: 4 }).map((cs) => cs.join('')),
);
const int = fc.integer({ min: -3, max: 3 });
const nullableText = fc.option(text, { nil: null, freq: 3 });

const TEXT_COLUMNS = ['lane', 'topic', 'key', 'correlation_id'] as const;
const INT_COLUMNS = ['priority', 'attempts'] as const;
const COMPARISONS = ['=', '<>', '<', '<=', '>', '>='] as const;

const condition: fc.Arbitrary<LanePredicate> = fc.oneof(
  fc.record({ column: fc.constantFrom(...TEXT_COLUMNS), op: fc.constantFrom(...COMPARISONS), value: text }),
  fc.record({ column: fc.constantFrom(...INT_COLUMNS), op: fc.constantFrom(...COMPARISONS), value: int }),
  fc.record({
    column: fc.constantFrom(...TEXT_COLUMNS),
    op: fc.constantFrom('in' as const, 'not in' as const),
    value: fc.array(text, { minLength: 1, maxLength: 3 }),
  }),
  fc.record({
    column: fc.constantFrom(...INT_COLUMNS),
    op: fc.constantFrom('in' as const, 'not in' as const),
    value: fc.array(int, { minLength: 1, maxLength: 3 }),
  }),
  fc.record({
    column: fc.constantFrom(...TEXT_COLUMNS, ...INT_COLUMNS),
    op: fc.constantFrom('is null' as const, 'is not null' as const),
  }),
);

const predicate: fc.Arbitrary<LanePredicate> = fc.letrec<{ p: LanePredicate }>((tie) => ({
  p: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    condition,
    fc.record({ and: fc.array(tie('p'), { minLength: 1, maxLength: 3 }) }),
    fc.record({ or: fc.array(tie('p'), { minLength: 1, maxLength: 3 }) }),
    fc.record({ not: tie('p') }),
  ),
})).p;

const row: fc.Arbitrary<LaneRow> = fc.record({
  lane: fc.constantFrom('realtime', 'batch'), // the outbox's CHECK allows only these
  priority: int,
  topic: text.filter((s) => s !== ''), // the outbox's CHECK refuses an empty topic
  key: nullableText,
  correlation_id: nullableText,
  attempts: fc.integer({ min: 0, max: 3 }),
});

interface SqlVerdicts {
  /** `laneFilter(p, 'realtime')` as a value: SQL's three-valued result of P. */
  readonly claim: boolean | null;
  /** `laneFilter(p, 'batch')`: `(P) IS NOT TRUE`. */
  readonly batch: boolean;
  /** The views' `shardrelay.is_realtime(o)` body. */
  readonly view: boolean;
}

describe('the lane predicate means the same in JavaScript and in SQL', () => {
  let t: TestDatabase;
  let client: pg.Client;
  before(async () => {
    t = await createTestDatabase('predicate_agreement');
    client = new pg.Client({ connectionString: t.url, application_name: 'test-predicate-agreement' });
    await client.connect();
  });
  after(async () => {
    await client.end();
    await t.close();
  });

  /** Inserts the rows in a transaction that is rolled back, and evaluates P on them in SQL. */
  async function sqlVerdicts(p: LanePredicate, rows: readonly LaneRow[]): Promise<SqlVerdicts[]> {
    await client.query('BEGIN');
    try {
      const ids: string[] = [];
      for (const r of rows) {
        const { rows: inserted } = await client.query<{ id: string }>(
          `INSERT INTO shardrelay.outbox (topic, key, payload, correlation_id, lane, priority, attempts)
           VALUES ($1, $2, '{}', $3, $4, $5, $6) RETURNING id`,
          [r.topic, r.key, r.correlation_id, r.lane, r.priority, r.attempts],
        );
        ids.push(inserted[0]!.id);
      }
      const compiled = queryCompiler
        .selectFrom('shardrelay.outbox')
        .select((eb) => [
          'id',
          sql<boolean | null>`(${laneFilter(p, 'realtime')(eb)})`.as('claim'),
          sql<boolean>`(${laneFilter(p, 'batch')(eb)})`.as('batch'),
        ])
        .where('id', 'in', ids)
        .compile();
      const claims = await client.query<{ id: string; claim: boolean | null; batch: boolean }>(compiled.sql, [
        ...compiled.parameters,
      ]);
      const views = await client.query<{ id: string; view: boolean }>(
        `SELECT o.id, (${isRealtimeFunctionBody(p)}) AS view FROM shardrelay.outbox o WHERE o.id = ANY($1)`,
        [ids],
      );
      return ids.map((id) => {
        const c = claims.rows.find((x) => x.id === id);
        const v = views.rows.find((x) => x.id === id);
        assert.ok(c && v, `row ${id} was not evaluated`);
        return { claim: c.claim, batch: c.batch, view: v.view };
      });
    } finally {
      await client.query('ROLLBACK');
    }
  }

  it('agree on random predicates and random rows, NULLs included', async () => {
    await fc.assert(
      fc.asyncProperty(predicate, fc.array(row, { minLength: 1, maxLength: 4 }), async (generated, rows) => {
        // Every generated predicate is one the parser accepts, so this is what a relay would run.
        const asConfigured: unknown = JSON.parse(JSON.stringify(generated));
        const p = parseLanePredicate(asConfigured);
        assert.deepEqual(p, asConfigured);
        const inSql = await sqlVerdicts(p, rows);
        rows.forEach((r, i) => {
          const js = evaluateLanePredicate(p, r);
          const context = `predicate ${JSON.stringify(p)} on row ${JSON.stringify(r)}`;
          assert.equal(inSql[i]!.claim, js, `claim filter vs JavaScript: ${context}`);
          assert.equal(inSql[i]!.batch, js !== true, `batch filter vs JavaScript: ${context}`);
          assert.equal(inSql[i]!.view, js === true, `is_realtime vs JavaScript: ${context}`);
        });
      }),
      { numRuns: 300 },
    );
  });

  it('the generators reach NULL results, so the agreement above covers SQL unknowns', () => {
    const samples = fc.sample(fc.tuple(predicate, row), { numRuns: 500, seed: 18 });
    const outcomes = new Set(samples.map(([p, r]) => evaluateLanePredicate(p, r)));
    assert.deepEqual([...outcomes].sort(), [false, null, true].sort());
  });
});
