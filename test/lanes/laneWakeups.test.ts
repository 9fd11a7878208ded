// Which lane an insert wakes. Before migration 0015 every insert statement woke both lanes of the
// shards it touched, and the real-time lane, which cannot gather its wake-ups, ran one empty claim
// per shard for every statement of batch rows (1,765 claims/s in the bench's soak, 0.25-0.31 cores
// of PostgreSQL). Now, with the default lane predicate, batch rows wake the batch lane only.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Kysely } from 'kysely';
import { up as notifyOwnShard } from '../../migrations/0013_notify_own_shard.js';
import { up as realtimeWakeups } from '../../migrations/0015_realtime_wakeups.js';
import type { Lane } from '../../src/db/schema.js';
import { enqueue } from '../../src/enqueue.js';
import { isLaneColumnPredicate } from '../../src/lanes/lanePredicate.js';
import { OutboxListener } from '../../src/relay/outboxListener.js';
import { silentLogger } from '../../src/logger.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const SHARDS = 8;

interface Wake {
  readonly shards: readonly number[];
  readonly lane: Lane | undefined;
}

/** A listener that records its wake-ups; `next` resolves at the first one matching `test`. */
async function listen(url: string, laneColumnLanes?: readonly Lane[]) {
  const wakes: Wake[] = [];
  const waiters: { test: (w: Wake) => boolean; resolve: () => void }[] = [];
  let connected!: () => void;
  const ready = new Promise<void>((resolve) => (connected = resolve));
  const listener = new OutboxListener({
    connectionString: url,
    logger: silentLogger,
    onRows: (shards, lane) => {
      const wake = { shards: [...shards].sort((a, b) => a - b), lane };
      wakes.push(wake);
      for (const w of waiters.filter((x) => x.test(wake))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    },
    onConfigChange: () => {},
    onStateChange: (up) => up && connected(),
    ...(laneColumnLanes ? { laneColumnLanes } : {}),
  });
  listener.start();
  await ready;
  return {
    wakes,
    listener,
    next: (test: (w: Wake) => boolean) =>
      new Promise<void>((resolve, reject) => {
        if (wakes.some(test)) return resolve();
        const timer = setTimeout(
          () => reject(new Error(`no such wake-up; got ${JSON.stringify(wakes)}`)),
          10_000,
        );
        waiters.push({
          test,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      }),
  };
}

describe('lane wake-ups', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('lane_wakeups');
  });
  after(() => t.close());

  /** Inserts `count` rows of `lane` in one statement; answers the shards they landed in. */
  const insert = async (lane: Lane, count: number) => {
    const rows = await enqueue(
      t.db,
      Array.from({ length: count }, (_, i) => ({ topic: `${lane}.${i}`, payload: { i }, lane })),
    );
    return [...new Set(rows.map((r) => Number(BigInt(r.id) % BigInt(SHARDS))))].sort((a, b) => a - b);
  };
  /** Notifications of one session reach a listener in commit order: `marker` comes after all before it. */
  const realtimeMarker = (shards: readonly number[]) => (w: Wake) =>
    w.lane === 'realtime' && JSON.stringify(w.shards) === JSON.stringify(shards);

  it('with the default predicate, batch rows wake only the batch lane; real-time rows the real-time lane', async () => {
    assert.ok(isLaneColumnPredicate({ column: 'lane', op: '=', value: 'realtime' }));
    const both = await listen(t.url, ['realtime', 'batch']);
    const realtimeOnly = await listen(t.url, ['realtime']);
    try {
      const batchShards = await insert('batch', 20);
      const realtimeShards = await insert('realtime', 3);
      await both.next(realtimeMarker(realtimeShards));
      await realtimeOnly.next(realtimeMarker(realtimeShards));
      const [first, ...rest] = both.wakes;
      assert.deepEqual(first, { shards: batchShards, lane: 'batch' }, 'the batch rows woke the batch lane');
      assert.ok(
        rest.every((w) => w.lane !== undefined),
        `a wake-up for both lanes: ${JSON.stringify(rest)}`,
      );
      // The real-time worker thread does not even hear of batch rows.
      assert.deepEqual(realtimeOnly.wakes, [{ shards: realtimeShards, lane: 'realtime' }]);
    } finally {
      await both.listener.stop();
      await realtimeOnly.listener.stop();
    }
  });

  it('another lane predicate, or the trigger before 0015, wakes both lanes for every row', async () => {
    assert.equal(isLaneColumnPredicate({ column: 'priority', op: '>', value: 5 }), false);
    // Another predicate: the relay does not ask the trigger to tell the lanes apart.
    const custom = await listen(t.url);
    try {
      const shards = await insert('batch', 20);
      await custom.next((w) => JSON.stringify(w.shards) === JSON.stringify(shards));
      assert.deepEqual(custom.wakes, [{ shards, lane: undefined }]);
    } finally {
      await custom.listener.stop();
    }
    // A database not migrated to 0015 yet: the relay of this version finds the old trigger.
    await notifyOwnShard(t.db as unknown as Kysely<unknown>);
    try {
      const old = await listen(t.url, ['realtime', 'batch']);
      try {
        const shards = await insert('batch', 20);
        await old.next((w) => JSON.stringify(w.shards) === JSON.stringify(shards));
        assert.deepEqual(old.wakes, [{ shards, lane: undefined }], 'a batch row must wake both lanes');
      } finally {
        await old.listener.stop();
      }
    } finally {
      await realtimeWakeups(t.db as unknown as Kysely<unknown>);
    }
  });
});
