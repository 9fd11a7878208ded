/**
 * The claim's plan: with the claim connections' session settings (CLAIM_SESSION_SETTINGS), a claim
 * walks the shard's partial index in id order and reads about one batch of rows, instead of
 * fetching and sorting every pending row of the shard (what PostgreSQL plans by itself below about
 * 200,000 pending rows; see claims.ts).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import type { Lane } from '../../src/db/schema.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { CLAIM_SESSION_SETTINGS, claimQuery } from '../../src/relay/claims.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

interface PlanNode {
  readonly 'Node Type': string;
  readonly 'Index Name'?: string;
  readonly 'Actual Rows'?: number;
  readonly 'Rows Removed by Filter'?: number;
  readonly 'Parent Relationship'?: string;
  readonly Plans?: readonly PlanNode[];
}

/**
 * The plan's nodes, top down, without InitPlans: the claim reads the clock once per statement as
 * an InitPlan, `(SELECT shardrelay.now())` (migration 0011), which is not part of the scan.
 */
function nodes(plan: PlanNode): PlanNode[] {
  const children = (plan.Plans ?? []).filter((child) => child['Parent Relationship'] !== 'InitPlan');
  return [plan, ...children.flatMap(nodes)];
}

describe('the claim plan', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('claim_plan');
    // 96,000 pending rows, 12,000 per shard: the size at which the planner's own choice was a
    // bitmap scan of all 12,000 and a sort.
    await sql`
      INSERT INTO shardrelay.outbox (topic, payload, lane)
      SELECT 'plan', jsonb_build_object('n', i), CASE WHEN i % 5 = 0 THEN 'realtime' ELSE 'batch' END
        FROM generate_series(1, 96000) AS i`.execute(t.db);
    await sql`ANALYZE shardrelay.outbox`.execute(t.db);
  });
  after(() => t.close());

  async function claimPlan(lane: Lane): Promise<PlanNode[]> {
    return t.db.transaction().execute(async (trx) => {
      for (const [name, value] of Object.entries(CLAIM_SESSION_SETTINGS))
        await sql`SELECT set_config(${name}, ${value}, true)`.execute(trx);
      const query = claimQuery(trx, {
        shard: 3,
        shardCount: 8,
        lane,
        lanePredicate: DEFAULT_LANE_PREDICATE,
        batchSize: 1000,
      });
      const [row] = await query.explain('json', sql`analyze`);
      const [explained] = (row as { 'QUERY PLAN': { Plan: PlanNode }[] })['QUERY PLAN'];
      assert.ok(explained, 'EXPLAIN returned a plan');
      return nodes(explained.Plan);
    });
  }

  for (const [lane, index, claimed] of [
    ['batch', 'outbox_pending_mod8', 1000],
    ['realtime', 'outbox_pending_realtime_mod8', 1000],
  ] as const) {
    it(`${lane}: an ordered scan of ${index} that reads one batch, no sort`, async () => {
      const plan = await claimPlan(lane);
      const types = plan.map((n) => n['Node Type']);
      assert.deepEqual(types.slice(0, 2), ['Limit', 'LockRows'], types.join(' > '));
      assert.ok(!types.includes('Sort'), `no sort in ${types.join(' > ')}`);
      const scan = plan.find((n) => n['Node Type'] === 'Index Scan');
      assert.equal(scan?.['Index Name'], index, types.join(' > '));
      assert.equal(plan[0]?.['Actual Rows'], claimed);
      // Every 5th row is real-time: the batch claim reads and filters out the ~250 among its first
      // 1,250; the real-time claim reads only real-time rows (its own partial index).
      const read = (scan?.['Actual Rows'] ?? Infinity) + (scan?.['Rows Removed by Filter'] ?? 0);
      assert.ok(read <= 1300, `the scan read ${read} rows for a batch of ${claimed}`);
    });
  }
});
