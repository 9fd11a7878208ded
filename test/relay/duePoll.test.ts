/**
 * The tick's poll: which shards have a row to claim (claims.ts shardsWithDueRows) must never say no
 * where the claim would take a row, and the scheduler triggers only those shards' loops (plus new
 * ones), every loop when the probe fails.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { sql } from 'kysely';
import type { Lane } from '../../src/db/schema.js';
import { DEFAULT_LANE_PREDICATE, parseLanePredicate } from '../../src/lanes/lanePredicate.js';
import { silentLogger } from '../../src/logger.js';
import { claimQuery, shardsWithDueRows } from '../../src/relay/claims.js';
import { Scheduler, type LaneRunner } from '../../src/relay/scheduler.js';
import { allShards } from '../../src/relay/shardOwnership.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const SHARDS = 8;

describe('the due-rows probe agrees with the claim', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('due_poll');
  });
  after(() => t.close());

  /** Shards whose claim takes at least one row now (in a transaction rolled back). */
  async function claimable(lane: Lane, lanePredicate = DEFAULT_LANE_PREDICATE, ordering = false) {
    const found = new Set<number>();
    for (let shard = 0; shard < SHARDS; shard++) {
      await t.db
        .transaction()
        .execute(async (trx) => {
          const rows = await claimQuery(trx, {
            shard,
            shardCount: SHARDS,
            lane,
            lanePredicate,
            batchSize: 1,
            ...(ordering ? { ordering: { holdDead: false } } : {}),
          }).execute();
          if (rows.length > 0) found.add(shard);
          throw new Error('rollback');
        })
        .catch((error: unknown) => {
          if (!(error instanceof Error && error.message === 'rollback')) throw error;
        });
    }
    return found;
  }

  const probe = (lane: Lane, lanePredicate = DEFAULT_LANE_PREDICATE, ordering = false) =>
    shardsWithDueRows(t.db, {
      shards: Array.from({ length: SHARDS }, (_, s) => s),
      shardCount: SHARDS,
      lane,
      lanePredicate,
      ordering,
    });

  it('on random rows: the same shards, per lane, for 30 rounds (ordering off)', async () => {
    // A predicate with a NULL-able column, so the batch lane's `IS NOT TRUE` side is exercised.
    const vip = parseLanePredicate({ column: 'key', op: '=', value: 'vip' });
    let nonEmpty = 0;
    for (let round = 0; round < 30; round++) {
      await sql`DELETE FROM shardrelay.outbox`.execute(t.db);
      // A few rows each round: some not due yet, some sent or dead, some in each lane.
      await sql`
        INSERT INTO shardrelay.outbox (topic, payload, lane, key, status, available_at)
        SELECT 'due', '{}'::jsonb,
               CASE WHEN random() < 0.3 THEN 'realtime' ELSE 'batch' END,
               CASE WHEN random() < 0.3 THEN NULL WHEN random() < 0.5 THEN 'vip' ELSE 'other' END,
               CASE WHEN random() < 0.2 THEN 'dead' ELSE 'pending' END,
               now() + CASE WHEN random() < 0.4 THEN interval '1 hour' ELSE interval '-1 second' END
          FROM generate_series(1, (random() * 12)::int)`.execute(t.db);
      for (const lane of ['realtime', 'batch'] as const) {
        for (const predicate of [DEFAULT_LANE_PREDICATE, vip]) {
          const claims = await claimable(lane, predicate);
          assert.deepEqual(
            [...(await probe(lane, predicate))].sort(),
            [...claims].sort(),
            `round ${round}, ${lane}`,
          );
          if (claims.size > 0) nonEmpty++;
        }
      }
    }
    assert.ok(nonEmpty > 10, `the rounds had claimable rows (${nonEmpty})`);
  });

  it('ordering on: wherever the claim takes a row, the probe says so', async () => {
    await sql`DELETE FROM shardrelay.outbox`.execute(t.db);
    await sql`
      INSERT INTO shardrelay.outbox (topic, key, payload, available_at)
      SELECT 'due', CASE WHEN i % 3 = 0 THEN NULL ELSE 'k' || (i % 7) END, '{}'::jsonb,
             now() + CASE WHEN i % 5 = 0 THEN interval '1 hour' ELSE interval '-1 second' END
        FROM generate_series(1, 40) AS i`.execute(t.db);
    const claims = await claimable('batch', DEFAULT_LANE_PREDICATE, true);
    assert.ok(claims.size > 0);
    const due = await probe('batch', DEFAULT_LANE_PREDICATE, true);
    for (const shard of claims) assert.ok(due.has(shard), `shard ${shard}`);
  });
});

describe('the scheduler polls only the loops with due rows', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('due_poll_scheduler');
    await sql`SELECT shardrelay.set_shard_count(4)`.execute(t.db);
  });
  after(() => t.close());

  let batches: number[];
  let due: ReadonlySet<number> | 'fail';
  beforeEach(() => {
    batches = [];
  });

  const lane: LaneRunner = {
    lane: 'batch',
    runShardBatch: (shard) => {
      batches.push(shard);
      return Promise.resolve({ full: false });
    },
    dueShards: () => (due === 'fail' ? Promise.reject(new Error('probe failed')) : Promise.resolve(due)),
  };

  it('the first tick runs every new loop; later ticks only the due ones; a failed probe runs all', async () => {
    const scheduler = new Scheduler({
      db: t.db,
      lanes: [lane],
      ownership: allShards(),
      tickSeconds: 59,
      logger: silentLogger,
    });
    due = new Set();
    await scheduler.tick();
    await scheduler.stop(5_000).catch(() => {});
    // stop() waits for in-flight batches; the fake batches resolve at once.
    assert.deepEqual([...batches].sort(), [0, 1, 2, 3], 'new loops run at once');

    const again = new Scheduler({
      db: t.db,
      lanes: [lane],
      ownership: allShards(),
      tickSeconds: 59,
      logger: silentLogger,
    });
    due = new Set([0, 1, 2, 3]);
    await again.tick();
    await settle();
    batches = [];
    due = new Set([2]);
    await again.tick();
    await settle();
    assert.deepEqual(batches, [2], 'only the shard with due rows');
    batches = [];
    due = new Set();
    await again.tick();
    await settle();
    assert.deepEqual(batches, [], 'nothing due, nothing run');
    due = 'fail';
    await again.tick();
    await settle();
    assert.deepEqual([...batches].sort(), [0, 1, 2, 3], 'a failed probe polls every loop');
    await again.stop(5_000);
  });
});

/** Lets triggered loops run their (immediately resolving) batches. */
const settle = () => new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)));
