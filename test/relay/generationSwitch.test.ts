/**
 * A change of the shard count: the scheduler stops the old count's loops, and a batch of the old
 * count that had not claimed yet (it waited for a pooled connection) must not claim once the switch
 * has begun. Before, it claimed a whole batch of a shard number that meant other rows now, and the
 * switch waited for that batch too.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { pino } from 'pino';
import { Scheduler, type LaneRunner } from '../../src/relay/scheduler.js';
import { allShards } from '../../src/relay/shardOwnership.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('switching the shard count', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('generation_switch');
    await sql`SELECT shardrelay.set_shard_count(2)`.execute(t.db);
  });
  after(() => t.close());

  it('a batch of the old count still waiting for its connection claims nothing', async () => {
    /** Each batch as it reached its claim: under which count, and whether it was allowed to claim. */
    const claims: { shard: number; shardCount: number; mayClaim: boolean }[] = [];
    let openPool: () => void = () => {};
    /** The old count's batches wait here, as for a connection of a busy pool. */
    const pool = new Promise<void>((resolve) => (openPool = resolve));
    let waiting = 0;
    const lane: LaneRunner = {
      lane: 'batch',
      runShardBatch: async (shard, shardCount, guards) => {
        if (shardCount === 2) {
          waiting++;
          await pool;
        }
        claims.push({ shard, shardCount, mayClaim: guards?.mayClaim() ?? true });
        return { full: false };
      },
    };
    /** Resolves when the scheduler logs that the switch began (the old loops are stopping). */
    let switchBegan: () => void = () => {};
    const began = new Promise<void>((resolve) => (switchBegan = resolve));
    const logger = pino(
      { level: 'info' },
      {
        write: (line: string) => {
          if (line.includes('finishing in-flight batches before switching')) switchBegan();
        },
      },
    );
    const scheduler = new Scheduler({
      db: t.db,
      lanes: [lane],
      ownership: allShards(),
      tickSeconds: 59,
      logger,
    });
    await scheduler.tick();
    assert.equal(waiting, 2, 'both loops of the old count wait for a connection');

    await sql`SELECT shardrelay.set_shard_count(4)`.execute(t.db);
    const switching = scheduler.tick();
    // The switch has begun while the old count's batches still wait; then the pool frees up.
    await began;
    await new Promise<void>((resolve) => setImmediate(resolve));
    openPool();
    await switching;
    await new Promise<void>((resolve) => setImmediate(resolve));
    await scheduler.stop(5_000);

    const old = claims.filter((c) => c.shardCount === 2);
    assert.deepEqual(
      old.map((c) => c.mayClaim),
      [false, false],
      'no batch of the old count claims once the switch began',
    );
    const fresh = claims.filter((c) => c.shardCount === 4);
    assert.deepEqual(
      [...new Set(fresh.map((c) => c.shard))].sort(),
      [0, 1, 2, 3],
      'the new count runs every shard',
    );
    assert.ok(fresh.every((c) => c.mayClaim));
  });
});
