/**
 * Every statement of src/relay/leaseStatements.ts, one by one against a real PostgreSQL: the
 * liveness lock with real sessions ended by pg_terminate_backend, the lease writes it fences, and
 * membership, release, leave, generation clean-up and the balance read. Also prints what the peer
 * check and the fence cost.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import {
  LIVENESS_LOCK_CLASS,
  acquireFreeShards,
  announceJoin,
  dropOtherGenerations,
  evictDeadReplicas,
  heartbeat,
  leaveMembership,
  lockHeld,
  readBalance,
  releaseLeases,
  renewLeases,
  takeLivenessLock,
  takeOverExpiredLeases,
  type LivenessLockHandle,
} from '../../src/relay/leaseStatements.js';
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
    const { rows: left } = await sql<{ shard: number; expired: boolean }>`
      SELECT shard, expires_at <= clock_timestamp() AS expired FROM shardrelay.shard_lease
       WHERE owner_instance = ${dead.me.instance}::uuid ORDER BY shard`.execute(t.db);
    assert.deepEqual(
      left,
      deadShards.map((shard) => ({ shard, expired: true })),
      'its leases expired at once: for the survivors to take over',
    );
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

    // Two survivors woken by the same NOTIFY take the evicted member's shards at once, each a
    // different one (SKIP LOCKED): no survivor waits for the other or comes back empty-handed.
    const [mine, theirs] = await Promise.all([
      takeOverExpiredLeases(t.db, me.me, generation, 10, 2),
      takeOverExpiredLeases(t.db, alive.me, generation, 10, 2),
    ]);
    assert.deepEqual(
      [...mine, ...theirs].map((l) => l.shard).sort((a, b) => a - b),
      deadShards,
      'every shard of the evicted member taken, each by one survivor',
    );

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
  /** Empties membership and leases: each test below starts from no member. */
  const reset = async () => {
    await t.db.deleteFrom('shardrelay.shard_lease').execute();
    await t.db.deleteFrom('shardrelay.replica').execute();
  };
  /** The payloads of shardrelay_config NOTIFYs while `run` runs (delivered before it resolves). */
  const notifications = async (run: () => Promise<unknown>): Promise<string[]> => {
    const listener = new pg.Client(t.url);
    await listener.connect();
    clients.push(listener);
    const seen: string[] = [];
    listener.on('notification', (n) => seen.push(n.payload ?? ''));
    await listener.query('LISTEN shardrelay_config');
    await run();
    // A round trip on the listening connection after the commit: the NOTIFY has arrived by then.
    await listener.query('SELECT 1');
    await listener.end();
    return seen;
  };

  it('lockHeld is true exactly while the session holds the lock', async () => {
    await reset();
    const a = await member('fence');
    const held = async (lock: LivenessLockHandle | undefined) =>
      (await sql<{ held: boolean }>`SELECT ${lockHeld(lock)} AS held`.execute(t.db)).rows[0]?.held;
    assert.equal(await held(a.lock), true);
    assert.equal(await held(undefined), false, 'no lock: never held');
    assert.equal(await held({ key: a.lock.key, pid: a.lock.pid + 1 }), false, 'same key, other session');
    await terminate(a);
    assert.equal(await held(a.lock), false, 'session gone');
  });

  it('heartbeat joins once, then only moves the heartbeat and the recorded lock', async () => {
    await reset();
    const client = new pg.Client(t.url);
    await client.connect();
    clients.push(client);
    const lock = await takeLivenessLock(client);
    const me = { instance: randomUUID(), replicaId: 'beat' };
    assert.deepEqual(await heartbeat(t.db, me, generation, 10), { joined: true });
    const first = await t.db
      .selectFrom('shardrelay.replica')
      .select(['heartbeat_at', 'lock_key', 'lease_timeout_seconds'])
      .where('instance', '=', me.instance)
      .executeTakeFirstOrThrow();
    assert.equal(first.lock_key, null, 'a member without a lock records none');
    assert.deepEqual(await heartbeat(t.db, { ...me, lock }, generation, 20), { joined: false });
    const second = await t.db
      .selectFrom('shardrelay.replica')
      .select(['heartbeat_at', 'lock_key', 'lock_pid', 'lease_timeout_seconds'])
      .where('instance', '=', me.instance)
      .executeTakeFirstOrThrow();
    assert.ok(second.heartbeat_at.getTime() >= first.heartbeat_at.getTime());
    assert.deepEqual(
      [second.lock_key, second.lock_pid, second.lease_timeout_seconds],
      [lock.key, lock.pid, 20],
    );
    assert.equal(
      (await t.db.selectFrom('shardrelay.replica').select('instance').execute()).length,
      1,
      'one row per process',
    );
  });

  it('announceJoin NOTIFYs every replica', async () => {
    assert.deepEqual(await notifications(() => announceJoin(t.db)), ['replica joined']);
  });

  it('releaseLeases deletes only the given leases of this process, and NOTIFYs', async () => {
    await reset();
    const a = await member('releaser');
    const b = await member('bystander');
    const config = { generation, shardCount: 8 };
    const mine = (await acquireFreeShards(t.db, a.me, config, 10, 3)).sort((x, y) => x - y);
    const [theirs] = await acquireFreeShards(t.db, b.me, config, 10, 1);
    assert.equal(mine.length, 3);
    let released: number[] = [];
    const seen = await notifications(async () => {
      released = await releaseLeases(t.db, a.me, generation, [
        mine[0] as number,
        mine[1] as number,
        theirs as number,
      ]);
    });
    assert.deepEqual(
      released.sort((x, y) => x - y),
      mine.slice(0, 2),
    );
    // One per transaction: PostgreSQL folds identical notifications of one transaction into one.
    assert.deepEqual(seen, ['leases released']);
    assert.deepEqual(await leasesOf(a.me.instance), mine.slice(2));
    assert.deepEqual(await leasesOf(b.me.instance), [theirs], "another process's lease is not ours to give");
    assert.deepEqual(
      await releaseLeases(t.db, a.me, String(BigInt(generation) + 1n), mine.slice(2)),
      [],
      'other generation: nothing',
    );
  });

  it('leaveMembership removes the membership row and every lease together, and NOTIFYs', async () => {
    await reset();
    const a = await member('leaver');
    const b = await member('stayer');
    const config = { generation, shardCount: 8 };
    const mine = (await acquireFreeShards(t.db, a.me, config, 10, 3)).sort((x, y) => x - y);
    const theirs = (await acquireFreeShards(t.db, b.me, config, 10, 2)).sort((x, y) => x - y);
    let left: number[] = [];
    const seen = await notifications(async () => {
      left = await leaveMembership(t.db, a.me);
    });
    assert.deepEqual(left, mine);
    assert.deepEqual(seen, ['replica left']);
    assert.deepEqual(await leasesOf(a.me.instance), []);
    assert.deepEqual(await leasesOf(b.me.instance), theirs);
    const members = await t.db.selectFrom('shardrelay.replica').select('replica_id').execute();
    assert.deepEqual(
      members.map((m) => m.replica_id),
      ['stayer'],
    );
  });

  it("dropOtherGenerations drops our old-generation leases, anyone's expired ones and long-gone members", async () => {
    await reset();
    const a = await member('switcher');
    const b = await member('other');
    const gone = await member('long-gone');
    const old = String(BigInt(generation) - 1n);
    const lease = (owner: Session, g: string, shard: number, expiresIn: string) =>
      sql`INSERT INTO shardrelay.shard_lease (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
          VALUES (${g}::bigint, ${shard}::int, ${owner.me.replicaId}, ${owner.me.instance}::uuid, now(), now(),
                  now() + ${expiresIn}::interval)`.execute(t.db);
    await lease(a, old, 0, '10 s'); // ours, old generation: dropped
    await lease(a, generation, 1, '10 s'); // ours, current: kept
    await lease(b, old, 2, '10 s'); // theirs, old, unexpired: theirs to drop
    await lease(b, old, 3, '-1 s'); // theirs, old, expired: anyone drops it
    await sql`UPDATE shardrelay.replica SET heartbeat_at = clock_timestamp() - interval '16 minutes'
               WHERE instance = ${gone.me.instance}::uuid`.execute(t.db);
    let dropped = 0;
    const seen = await notifications(async () => {
      dropped = await dropOtherGenerations(t.db, a.me, generation);
    });
    assert.equal(dropped, 1, 'counts only our own leases');
    assert.deepEqual(seen, ['old generation released']);
    const left = await t.db.selectFrom('shardrelay.shard_lease').select(['shard']).orderBy('shard').execute();
    assert.deepEqual(
      left.map((l) => l.shard),
      [1, 2],
    );
    const members = await t.db
      .selectFrom('shardrelay.replica')
      .select('replica_id')
      .orderBy('replica_id')
      .execute();
    assert.deepEqual(
      members.map((m) => m.replica_id),
      ['other', 'switcher'],
      'a member silent for 15 minutes is removed',
    );
    assert.deepEqual(
      await notifications(() => dropOtherGenerations(t.db, a.me, generation)),
      [],
      'nothing of ours dropped: no NOTIFY',
    );
  });

  it('readBalance counts live members, valid leases, the least-loaded peer and the next foreign expiry', async () => {
    await reset();
    const me = await member('same');
    const twin = await member('same');
    const peer = await member('peer');
    const stale = await member('stale');
    await sql`UPDATE shardrelay.replica SET heartbeat_at = clock_timestamp() - interval '11 s'
               WHERE instance = ${stale.me.instance}::uuid`.execute(t.db);
    const config = { generation, shardCount: 8 };
    await acquireFreeShards(t.db, me.me, config, 10, 3);
    await acquireFreeShards(t.db, twin.me, config, 10, 2);
    const [peerShard] = await acquireFreeShards(t.db, peer.me, config, 5, 1);
    const [expiredShard] = await acquireFreeShards(t.db, peer.me, config, 10, 1);
    await sql`UPDATE shardrelay.shard_lease SET expires_at = clock_timestamp() - interval '1 s'
               WHERE shard = ${expiredShard}::int AND generation = ${generation}::bigint`.execute(t.db);
    await sql`INSERT INTO shardrelay.shard_lease (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
              VALUES (${String(BigInt(generation) - 1n)}::bigint, 0, 'peer', ${peer.me.instance}::uuid, now(), now(),
                      now() + interval '60 s')`.execute(t.db);
    assert.ok(peerShard !== undefined);

    const balance = await readBalance(t.db, me.me, config);
    assert.equal(balance.live, 3, 'the stale member (heartbeat older than its timeout) is not live');
    assert.equal(balance.sameReplicaId, 2);
    assert.equal(balance.leased, 3 + 2 + 1, 'the expired lease is not counted');
    assert.equal(balance.expired, 1, 'the expired lease, for takeOverExpiredLeases');
    assert.equal(balance.unleased, 8 - 3 - 2 - 1 - 1, 'shards without a lease row, for acquireFreeShards');
    assert.equal(balance.othersMinHeld, 1, "the peer's one valid lease");
    assert.equal(balance.otherGenerationLeases, 1);
    assert.ok(
      balance.nextForeignExpiryMs !== null &&
        balance.nextForeignExpiryMs > 0 &&
        balance.nextForeignExpiryMs <= 5_000,
      `the peer's 5 s lease expires first: ${balance.nextForeignExpiryMs}`,
    );
  });
});
