/**
 * The liveness membership of one process (src/relay/livenessMembership.ts) against a real
 * PostgreSQL, on its own, without the leases around it: the states and their transitions, the
 * re-lock's back-off, and the peer check that evicts a member whose session is gone. Sessions are
 * ended for real with pg_terminate_backend. Every time is printed.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { silentLogger } from '../../src/logger.js';
import { acquireFreeShards, heartbeat, type EvictedReplica } from '../../src/relay/leaseStatements.js';
import {
  LEASE_STATES,
  LivenessMembership,
  RELOCK_FIRST_MS,
  RELOCK_MAX_MS,
} from '../../src/relay/livenessMembership.js';
import { lastStatement } from '../support/sessionActivity.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** Read through a call, so an assertion on it does not narrow later reads of the getter. */
const lockOf = (m: LivenessMembership) => m.lock;
const load = () => `load average ${os.loadavg()[0]?.toFixed(1)}`;

describe('liveness membership', () => {
  let t: TestDatabase;
  let generation: string;
  const all: LivenessMembership[] = [];
  before(async () => {
    t = await createTestDatabase('liveness_membership');
    await sql`SELECT shardrelay.set_shard_count(4)`.execute(t.db);
    generation = (
      await t.db.selectFrom('shardrelay.shard_config').select('generation').executeTakeFirstOrThrow()
    ).generation;
  });
  after(async () => {
    for (const m of all) m.stop();
    await Promise.all(all.map((m) => m.close()));
    await t.close();
  });

  /** A membership whose callbacks are recorded with their time (performance.now()). */
  const membership = (
    options: { peerCheckMs?: number; leave?: () => Promise<readonly number[]>; url?: string } = {},
  ) => {
    const events: { what: string; at: number; evicted?: readonly EvictedReplica[] }[] = [];
    const note = (what: string, evicted?: readonly EvictedReplica[]) =>
      events.push({ what, at: performance.now(), ...(evicted ? { evicted } : {}) });
    let queue: Promise<unknown> = Promise.resolve();
    const instance = randomUUID();
    const m = new LivenessMembership({
      connectionString: options.url ?? t.url,
      instance,
      logger: silentLogger,
      peerCheckMs: options.peerCheckMs ?? 100,
      serially: <T>(operation: () => Promise<T>) => {
        const run = queue.then(operation, operation);
        queue = run.catch(() => {});
        return run;
      },
      onSteppedBack: () => note('steppedBack'),
      leave: () => {
        note('leave');
        return options.leave ? options.leave() : Promise.resolve([]);
      },
      onMemberAgain: () => note('memberAgain'),
      onPeersEvicted: (evicted) => note('evicted', evicted),
    });
    all.push(m);
    const until = async (check: () => boolean, what: string, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!check()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    const times = (what: string) => events.filter((e) => e.what === what).map((e) => e.at);
    return { m, instance, events, until, times };
  };

  /** Ends the session holding `pid`'s lock; resolves when PostgreSQL has let go of the lock. */
  const terminate = async (pid: number) => {
    await sql`SELECT pg_terminate_backend(${pid}::int)`.execute(t.db);
    for (;;) {
      const { rows } = await sql<{ held: boolean }>`
        SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = ${pid}::int) AS held`.execute(
        t.db,
      );
      if (!rows[0]?.held) return performance.now();
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  };

  it('starting → member holds the lock on a session of its own; a join that cannot connect stays starting', async () => {
    const { m } = membership();
    assert.equal(m.state, LEASE_STATES.starting);
    assert.equal(lockOf(m), undefined);
    await m.join();
    assert.equal(m.state, LEASE_STATES.member);
    const lock = m.lock;
    assert.ok(lock);
    const { rows } = await sql<{ app: string }>`
      SELECT a.application_name AS app FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
       WHERE l.locktype = 'advisory' AND l.granted AND l.objid = ${lock.key}::int::oid AND l.pid = ${lock.pid}::int`.execute(
      t.db,
    );
    assert.deepEqual(rows, [{ app: 'shardrelay-liveness' }]);

    const unreachable = new URL(t.url);
    unreachable.pathname = '/no_such_database';
    const { m: other } = membership({ url: unreachable.toString() });
    await assert.rejects(other.join());
    assert.equal(other.state, LEASE_STATES.starting, 'no lock, no membership');
    m.stop();
    await m.close();
  });

  it('losing the session steps back at once; the re-lock leaves first and retries with back-off', async () => {
    let failures = 3;
    const { m, until, times } = membership({
      leave: () =>
        failures-- > 0 ? Promise.reject(new Error('database unreachable')) : Promise.resolve([1, 2]),
    });
    await m.join();
    const before = m.lock;
    assert.ok(before);

    const freedAt = await terminate(before.pid);
    await until(() => times('steppedBack').length > 0, 'the step-back');
    const steppedBackAt = times('steppedBack')[0] as number;
    assert.equal(m.state, LEASE_STATES.steppedBack);
    assert.equal(lockOf(m), undefined, 'no lock to fence a lease write with');

    await until(() => m.state === LEASE_STATES.member, 'the re-lock', 30_000);
    const leaves = times('leave');
    assert.equal(leaves.length, 4, 'three failed attempts, then a leave and a new lock');
    assert.equal(times('memberAgain').length, 1);
    const after = m.lock;
    assert.ok(after);
    assert.notEqual(after.pid, before.pid, 'a new session');

    // The delays between attempts: 100 ms, doubling, at most 1 s (no jitter: one client).
    const gaps = leaves.map((at, i) => at - (i === 0 ? steppedBackAt : (leaves[i - 1] as number)));
    const expected = gaps.map((_, i) => Math.min(RELOCK_FIRST_MS * 2 ** i, RELOCK_MAX_MS));
    console.log(
      `# stepped back ${(steppedBackAt - freedAt).toFixed(1)} ms after PostgreSQL let go of the lock ` +
        `(the socket event may come first); re-lock attempts after ${gaps.map((g) => g.toFixed(0)).join(', ')} ms ` +
        `(expected ≥ ${expected.join(', ')}; ${load()})`,
    );
    assert.ok(steppedBackAt - freedAt < 1_000, 'stepped back at once');
    gaps.forEach((gap, i) => {
      const least = expected[i] as number;
      // Timers never fire early (a millisecond of rounding aside); a loaded machine fires them late.
      assert.ok(gap >= least - 2 && gap < least + 2_000, `attempt ${i + 1}: ${gap} ms, expected ${least}`);
    });
    m.stop(); // no more peer checks: the next test's watcher is the only one
    await m.close();
  });

  it('a dead peer is evicted within a check period, its leases expired at once; a live one never', async () => {
    const checkMs = 100;
    const watcher = membership({ peerCheckMs: checkMs });
    const live = membership({ peerCheckMs: 60_000 });
    const dead = membership({ peerCheckMs: 60_000 });
    for (const p of [watcher, live, dead]) {
      await p.m.join();
      await heartbeat(t.db, { instance: p.instance, replicaId: 'r', lock: p.m.lock }, generation, 10);
    }
    const deadLock = dead.m.lock;
    assert.ok(deadLock);
    const deadShards = await acquireFreeShards(
      t.db,
      { instance: dead.instance, replicaId: 'r', lock: deadLock },
      { generation, shardCount: 4 },
      10,
      2,
    );
    assert.equal(deadShards.length, 2);

    await new Promise((resolve) => setTimeout(resolve, 5 * checkMs));
    assert.equal(watcher.times('evicted').length, 0, 'five check periods: nobody alive is evicted');

    // A process that dies does not step back or re-lock: stop it first, then end its session.
    dead.m.stop();
    const freedAt = await terminate(deadLock.pid);
    await watcher.until(() => watcher.times('evicted').length > 0, 'the eviction');
    const evicted = watcher.events.find((e) => e.what === 'evicted');
    const afterMs = (evicted?.at ?? NaN) - freedAt;
    console.log(
      `# dead peer evicted ${afterMs.toFixed(1)} ms after PostgreSQL let go of its lock (check period ${checkMs} ms; ${load()})`,
    );
    assert.deepEqual(
      evicted?.evicted?.map((e) => [e.instance, [...e.shards].sort((a, b) => a - b)]),
      [[dead.instance, [...deadShards].sort((a, b) => a - b)]],
    );
    // One period, plus the statement itself (a few ms; more on a loaded machine).
    assert.ok(afterMs <= checkMs + 400, `evicted ${afterMs} ms after the lock was free`);

    const { rows: members } = await sql<{ instance: string }>`
      SELECT instance::text FROM shardrelay.replica ORDER BY instance`.execute(t.db);
    assert.deepEqual(
      members.map((r) => r.instance),
      [watcher.instance, live.instance].sort(),
      'the dead member is gone, the live one stays',
    );
    const { rows: leases } = await sql<{ expired: boolean }>`
      SELECT expires_at <= clock_timestamp() AS expired FROM shardrelay.shard_lease
       WHERE owner_instance = ${dead.instance}::uuid`.execute(t.db);
    assert.deepEqual(
      leases,
      deadShards.map(() => ({ expired: true })),
      'its leases expired: for the survivors to take over',
    );
    assert.equal(live.m.state, LEASE_STATES.member);
    assert.equal(live.times('steppedBack').length, 0);
  });

  it('a member told it is alone runs no peer check; told of a peer, it checks and evicts again', async () => {
    // Earlier tests' members would evict the peer themselves.
    for (const earlier of all) earlier.stop();
    const checkMs = 50;
    const lone = membership({ peerCheckMs: checkMs });
    const peer = membership({ peerCheckMs: 60_000 });
    await lone.m.join();
    lone.m.peersPresent = false;
    const lonePid = lone.m.lock?.pid as number;
    // The lock session's last statement: a check would replace it (and its start) every period.
    const lastOnLock = () => lastStatement(t.db, lonePid);
    const before = await lastOnLock();
    await new Promise((resolve) => setTimeout(resolve, 10 * checkMs));
    assert.deepEqual(await lastOnLock(), before, 'ten check periods alone: no statement on the lock session');

    await peer.m.join();
    await heartbeat(t.db, { instance: peer.instance, replicaId: 'p', lock: peer.m.lock }, generation, 10);
    const peerPid = peer.m.lock?.pid as number;
    peer.m.stop();
    await terminate(peerPid);
    await new Promise((resolve) => setTimeout(resolve, 4 * checkMs));
    assert.equal(lone.times('evicted').length, 0, 'still told it is alone: nobody evicted');
    lone.m.peersPresent = true;
    await lone.until(() => lone.times('evicted').length > 0, 'the eviction once told of a peer');
    assert.deepEqual(
      lone.events.find((e) => e.what === 'evicted')?.evicted?.map((e) => e.instance),
      [peer.instance],
    );
    lone.m.stop();
  });

  it('stop: left for good; a lost session neither steps back nor re-locks', async () => {
    const { m, times } = membership();
    await m.join();
    const lock = m.lock;
    assert.ok(lock);
    m.stop();
    assert.equal(m.state, LEASE_STATES.left);
    await terminate(lock.pid);
    await new Promise((resolve) => setTimeout(resolve, 3 * RELOCK_FIRST_MS));
    assert.equal(m.state, LEASE_STATES.left);
    assert.deepEqual([times('steppedBack').length, times('leave').length], [0, 0]);
    await m.close();
  });
});
