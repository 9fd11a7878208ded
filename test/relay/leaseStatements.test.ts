/**
 * The liveness-lock statements (src/relay/leaseStatements.ts) and the lease writes they fence
 * (src/relay/shardLeases.ts), one by one against a real PostgreSQL, with real sessions ended by
 * pg_terminate_backend. Also prints what the peer check and the fence cost.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import {
  LIVENESS_LOCK_CLASS,
  evictDeadReplicas,
  takeLivenessLock,
  type LivenessLockHandle,
} from '../../src/relay/leaseStatements.js';
import {
  acquireFreeShards,
  heartbeat,
  renewLeases,
  takeOverExpiredLeases,
} from '../../src/relay/shardLeases.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

interface Session {
  readonly client: pg.Client;
  readonly lock: LivenessLockHandle;
  readonly me: { instance: string; replicaId: string; lock: LivenessLockHandle };
}

describe('liveness lock statements', () => {
  let t: TestDatabase;
  const clients: pg.Client[] = [];
  let generation: string;

  before(async () => {
    t = await createTestDatabase('lease_statements');
    await sql`SELECT shardrelay.set_shard_count(8)`.execute(t.db);
    generation = (
      await t.db.selectFrom('shardrelay.shard_config').select('generation').executeTakeFirstOrThrow()
    ).generation;
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
    await t.close();
  });

  /** A member: its own lock session, a membership row recording the lock. */
  const member = async (replicaId: string): Promise<Session> => {
    const client = new pg.Client(t.url);
    client.on('error', () => {}); // terminated on purpose below
    await client.connect();
    clients.push(client);
    const lock = await takeLivenessLock(client);
    const me = { instance: randomUUID(), replicaId, lock };
    await heartbeat(t.db, me, generation, 10);
    return { client, lock, me };
  };
  const terminate = async (session: Session) => {
    const ended = new Promise<void>((resolve) => session.client.once('end', resolve));
    await sql`SELECT pg_terminate_backend(${session.lock.pid}::int)`.execute(t.db);
    await ended;
  };
  const leasesOf = async (instance: string) =>
    (
      await t.db
        .selectFrom('shardrelay.shard_lease')
        .select('shard')
        .where('owner_instance', '=', instance)
        .orderBy('shard')
        .execute()
    ).map((r) => r.shard);

  it('takeLivenessLock holds a lock on its session, visible in pg_locks, recorded by the heartbeat', async () => {
    const a = await member('a');
    const { rows } = await sql<{ pid: number }>`
      SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND classid = ${LIVENESS_LOCK_CLASS}::oid AND objid = ${a.lock.key}::int::oid AND objsubid = 2`.execute(
      t.db,
    );
    assert.deepEqual(
      rows.map((r) => r.pid),
      [a.lock.pid],
    );
    const row = await t.db
      .selectFrom('shardrelay.replica')
      .select(['lock_key', 'lock_pid'])
      .where('instance', '=', a.me.instance)
      .executeTakeFirstOrThrow();
    assert.deepEqual(row, { lock_key: a.lock.key, lock_pid: a.lock.pid });
    // Another session cannot take the same lock while a's session lives.
    const { rows: tried } = await sql<{ got: boolean }>`
      SELECT pg_try_advisory_lock(${LIVENESS_LOCK_CLASS}, ${a.lock.key}) AS got`.execute(t.db);
    assert.equal(tried[0]?.got, false);
  });

  it('renewLeases, takeOverExpiredLeases and acquireFreeShards write only while the lock is held', async () => {
    const a = await member('fenced');
    const free = await acquireFreeShards(t.db, a.me, { generation, shardCount: 8 }, 10, 2);
    assert.equal(free.length, 2, 'holding its lock, it takes free shards');
    const renewed = await renewLeases(t.db, a.me, generation, 10);
    assert.deepEqual(renewed, { lockHeld: true, shards: free.sort((x, y) => x - y) });

    await terminate(a);
    const after = await renewLeases(t.db, a.me, generation, 10);
    assert.deepEqual(after, { lockHeld: false, shards: [] }, 'nothing renewed once the session is gone');
    assert.deepEqual(await acquireFreeShards(t.db, a.me, { generation, shardCount: 8 }, 10, 8), []);
    // Expire some other lease: a fenced takeover does not take it either.
    const b = await member('other');
    const [shard] = await acquireFreeShards(t.db, b.me, { generation, shardCount: 8 }, 10, 1);
    await sql`UPDATE shardrelay.shard_lease SET expires_at = clock_timestamp() WHERE shard = ${shard}::int
                 AND generation = ${generation}::bigint`.execute(t.db);
    assert.deepEqual(await takeOverExpiredLeases(t.db, a.me, generation, 10, 8), []);
    // A fresh lock on a new session (same process identity) writes again.
    const client = new pg.Client(t.url);
    await client.connect();
    clients.push(client);
    const relocked = { ...a.me, lock: await takeLivenessLock(client) };
    assert.notEqual(relocked.lock.pid, a.lock.pid);
    assert.equal((await takeOverExpiredLeases(t.db, relocked, generation, 10, 8)).length, 1);
    await t.db.deleteFrom('shardrelay.shard_lease').execute();
    await t.db.deleteFrom('shardrelay.replica').execute();
  });

  it('evictDeadReplicas evicts exactly the members whose lock session is gone, and NOTIFYs', async () => {
    const me = await member('me');
    const alive = await member('alive');
    const dead = await member('dead');
    // A member of a version without the liveness lock: left to its lease timeout.
    const old = { instance: randomUUID(), replicaId: 'old' };
    await heartbeat(t.db, old, generation, 10);
    const config = { generation, shardCount: 8 };
    for (const [m, n] of [
      [me.me, 2],
      [alive.me, 2],
      [dead.me, 3],
    ] as const)
      await acquireFreeShards(t.db, m, config, 10, n);
    const deadShards = await leasesOf(dead.me.instance);
    await sql`INSERT INTO shardrelay.shard_lease (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
              SELECT ${generation}::bigint, s, 'old', ${old.instance}::uuid, now(), now(), now() + interval '10 s'
                FROM generate_series(0, 7) s
               WHERE NOT EXISTS (SELECT 1 FROM shardrelay.shard_lease WHERE shard = s)`.execute(t.db);

    const listener = new pg.Client(t.url);
    await listener.connect();
    clients.push(listener);
    const notified = new Promise<string | undefined>((resolve) =>
      listener.on('notification', (n) => resolve(n.payload)),
    );
    await listener.query('LISTEN shardrelay_config');

    assert.deepEqual(await evictDeadReplicas(me.client, me.me.instance), [], 'all sessions alive: none');
    await terminate(dead);
    const evicted = await evictDeadReplicas(me.client, me.me.instance);
    assert.equal(evicted.length, 1);
    assert.equal(evicted[0]?.instance, dead.me.instance);
    assert.deepEqual(evicted[0]?.shards, deadShards);
    assert.equal(await notified, 'replica session gone');
    assert.deepEqual(await leasesOf(dead.me.instance), [], 'its leases are gone: free shards');
    const members = await t.db
      .selectFrom('shardrelay.replica')
      .select('replica_id')
      .orderBy('replica_id')
      .execute();
    assert.deepEqual(
      members.map((m) => m.replica_id),
      ['alive', 'me', 'old'],
    );
    assert.equal(
      (await leasesOf(old.instance)).length,
      8 - 2 - 2 - 3,
      'the lock-less member keeps its leases',
    );
    assert.deepEqual(await evictDeadReplicas(alive.client, alive.me.instance), [], 'once only');

    // Run by a member on its own lock session, it never evicts itself.
    assert.deepEqual(await evictDeadReplicas(me.client, me.me.instance), []);

    // What the peer check and the fenced renewal cost (a few members, a few hundred locks).
    const n = 400;
    let started = performance.now();
    for (let i = 0; i < n; i++) await evictDeadReplicas(me.client, me.me.instance);
    const checkMs = (performance.now() - started) / n;
    started = performance.now();
    for (let i = 0; i < n; i++) await renewLeases(t.db, me.me, generation, 10);
    const renewMs = (performance.now() - started) / n;
    // The same renewal without the fence, for comparison: most of either is the commit's WAL flush.
    started = performance.now();
    for (let i = 0; i < n; i++)
      await sql`UPDATE shardrelay.shard_lease SET renewed_at = clock_timestamp(),
                       expires_at = clock_timestamp() + interval '10 s'
                 WHERE generation = ${generation}::bigint AND owner_instance = ${me.me.instance}`.execute(
        t.db,
      );
    const unfencedMs = (performance.now() - started) / n;
    // PostgreSQL's own time for the check (planning + execution), without the round trip.
    const explained = await me.client.query<{
      'QUERY PLAN': [{ 'Planning Time': number; 'Execution Time': number }];
    }>(
      'EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM shardrelay.replica WHERE CASE WHEN instance <> $1::uuid ' +
        'AND lock_key IS NOT NULL THEN pg_try_advisory_xact_lock($2, lock_key) ELSE false END',
      [me.me.instance, LIVENESS_LOCK_CLASS],
    );
    const plan = explained.rows[0]?.['QUERY PLAN'][0];
    const serverMs = (plan?.['Planning Time'] ?? NaN) + (plan?.['Execution Time'] ?? NaN);
    const { rows } = await sql<{ locks: number }>`SELECT count(*)::int AS locks FROM pg_locks`.execute(t.db);
    console.log(
      `# peer check (evictDeadReplicas, nobody dead): ${checkMs.toFixed(3)} ms per round trip, ` +
        `its lock scan ${serverMs.toFixed(3)} ms in PostgreSQL; ` +
        `fenced renewal: ${renewMs.toFixed(3)} ms, unfenced: ${unfencedMs.toFixed(3)} ms; ${rows[0]?.locks} locks in pg_locks`,
    );
  });
});
