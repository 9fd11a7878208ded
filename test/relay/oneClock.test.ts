/**
 * One clock (migration 0011): the claim, every lease statement and the replicas/shards views read
 * the time through shardrelay.now()/clock(), so a test moves the clock with the session setting
 * `shardrelay.now` instead of rewriting `available_at` or `expires_at` or waiting out a timeout.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import type { Database } from '../../src/db/schema.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { claimQuery } from '../../src/relay/claims.js';
import {
  acquireFreeShards,
  heartbeat,
  readBalance,
  takeLivenessLock,
  takeOverExpiredLeases,
} from '../../src/relay/leaseStatements.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('one clock', () => {
  let t: TestDatabase;
  let generation: string;
  const clients: pg.Client[] = [];
  before(async () => {
    t = await createTestDatabase('one_clock');
    await sql`SELECT shardrelay.set_shard_count(1)`.execute(t.db);
    generation = (
      await t.db.selectFrom('shardrelay.shard_config').select('generation').executeTakeFirstOrThrow()
    ).generation;
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.end()));
    await t.close();
  });

  /** A member holding its liveness lock on a session of its own (lease writes are fenced on it). */
  const member = async (replicaId: string) => {
    const client = new pg.Client(t.url);
    await client.connect();
    clients.push(client);
    const me = { instance: randomUUID(), replicaId, lock: await takeLivenessLock(client) };
    await heartbeat(t.db, me, generation, 10);
    return me;
  };

  /** Runs `work` in a transaction whose clock reads `secondsAhead` from the real time. */
  const later = <T>(secondsAhead: number, work: (trx: Kysely<Database>) => Promise<T>): Promise<T> =>
    t.db.transaction().execute(async (trx) => {
      await sql`SELECT set_config('shardrelay.now', (clock_timestamp() + make_interval(secs => ${secondsAhead}))::text, true)`.execute(
        trx,
      );
      return work(trx);
    });

  it('the claim takes a row retried for later once the clock has moved past its available_at', async () => {
    const { id } = await t.db
      .insertInto('shardrelay.outbox')
      .values({
        topic: 'clock',
        payload: JSON.stringify({ n: 1 }),
        available_at: sql<Date>`now() + interval '1 hour'`,
      })
      .returning('id')
      .executeTakeFirstOrThrow();
    const claim = (trx: Kysely<Database>) =>
      claimQuery(trx, {
        shard: 0,
        shardCount: 1,
        lane: 'batch',
        lanePredicate: DEFAULT_LANE_PREDICATE,
        batchSize: 10,
      }).execute();
    assert.deepEqual(await later(0, claim), [], 'not due yet');
    const claimed = await later(3601, claim);
    assert.deepEqual(
      claimed.map((r) => r.id),
      [id],
    );
  });

  it('a lease expires when the clock passes its timeout: taken over, and shown so by the views', async () => {
    const owner = await member('owner');
    const taker = await member('taker');
    assert.deepEqual(await acquireFreeShards(t.db, owner, { generation, shardCount: 1 }, 10, 1), [0]);

    assert.deepEqual(await takeOverExpiredLeases(t.db, taker, generation, 10, 1), [], 'valid now');
    const view = (trx: Kysely<Database>) =>
      sql<{ lease_valid: boolean; alive: boolean }>`
        SELECT s.lease_valid, r.alive FROM shardrelay.shards s
          JOIN shardrelay.replicas r ON r.replica_id = 'owner' WHERE s.shard = 0`.execute(trx);
    assert.deepEqual((await later(0, view)).rows, [{ lease_valid: true, alive: true }]);
    assert.deepEqual(
      (await later(11, view)).rows,
      [{ lease_valid: false, alive: false }],
      'eleven seconds on, the views see the lease expired and the owner silent',
    );
    const balance = await later(11, (trx) => readBalance(trx, taker, { generation, shardCount: 1 }));
    assert.equal(balance.leased, 0, 'readBalance on the same clock');
    const taken = await later(11, (trx) => takeOverExpiredLeases(trx, taker, generation, 10, 1));
    assert.deepEqual(
      taken.map((l) => [l.shard, l.previousOwner]),
      [[0, 'owner']],
    );
    assert.ok((taken[0]?.expiredForSeconds ?? 0) > 0.5, 'expired for about a second by the moved clock');
  });
});
