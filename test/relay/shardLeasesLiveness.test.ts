/**
 * Shard leases through the membership state machine (LEASE_STATES, src/relay/livenessMembership.ts;
 * tested on its own in livenessMembership.test.ts) in one process against a real PostgreSQL: what
 * src/relay/shardLeases.ts trusts and returns in each state. The liveness session is ended for
 * real with pg_terminate_backend.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { silentLogger } from '../../src/logger.js';
import { LEASE_STATES, ShardLeases } from '../../src/relay/shardLeases.js';
import { waitFor } from '../support/cli.js';
import { lastStatement } from '../support/sessionActivity.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('shard leases: liveness lock states', () => {
  let t: TestDatabase;
  const all: ShardLeases[] = [];
  before(async () => {
    t = await createTestDatabase('lease_liveness');
  });
  after(async () => {
    await Promise.all(all.map((l) => l.release().catch(() => {})));
    await t.close();
  });

  /** A ShardLeases whose refresh requests and changes the test can await. */
  const leases = (replicaId: string, peerCheckMs = 50) => {
    const events: string[] = [];
    let waiter: (() => void) | undefined;
    const note = (what: string) => {
      events.push(what);
      waiter?.();
    };
    const ownership = new ShardLeases({
      db: t.db,
      replicaId,
      leaseTimeoutSeconds: 10,
      tickSeconds: 1,
      logger: silentLogger,
      connectionString: t.url,
      peerCheckMs,
      requestRefresh: () => note('refresh'),
      onChange: () => note('change'),
    });
    all.push(ownership);
    const until = async (check: () => boolean, what: string) => {
      const deadline = Date.now() + 20_000;
      while (!check()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise<void>((resolve) => {
          waiter = resolve;
          setTimeout(resolve, 20);
        });
      }
    };
    return { ownership, events, until };
  };
  const lockPid = async (instance: string) =>
    (
      await t.db
        .selectFrom('shardrelay.replica')
        .select('lock_pid')
        .where('instance', '=', instance)
        .executeTakeFirstOrThrow()
    ).lock_pid as number;
  const config = { generation: '1', shardCount: 4 };

  it('a replica alone runs no peer check; the refresh that sees a second member turns the checks on', async () => {
    const solo = leases('solo');
    assert.deepEqual(await solo.ownership.refresh(config), [0, 1, 2, 3]);
    const pid = await lockPid(solo.ownership.instance);
    const quiet = await lastStatement(t.db, pid);
    await new Promise((resolve) => setTimeout(resolve, 500)); // ten check periods
    assert.deepEqual(await lastStatement(t.db, pid), quiet, 'alone: no statement on its liveness session');

    const other = leases('other');
    await other.ownership.refresh(config);
    await solo.ownership.refresh(config); // its balance sees two live members
    await waitFor(
      'with a peer: the checks run on its liveness session again',
      async () => (await lastStatement(t.db, pid))?.started.getTime() !== quiet?.started.getTime(),
      10_000,
      20,
    );
    await Promise.all([solo.ownership.release(), other.ownership.release()]);
  });

  it('starting → member → steppedBack (holds nothing at once) → member (trusts nothing before a refresh)', async () => {
    const a = leases('a');
    assert.equal(a.ownership.state, LEASE_STATES.starting);
    assert.deepEqual(await a.ownership.refresh(config), [0, 1, 2, 3]);
    assert.equal(a.ownership.state, LEASE_STATES.member);
    assert.equal(a.ownership.holds(0), true);

    const pid = await lockPid(a.ownership.instance);
    await sql`SELECT pg_terminate_backend(${pid}::int)`.execute(t.db);
    await a.until(() => a.events.includes('change'), 'the step-back');
    assert.equal(a.ownership.state, LEASE_STATES.steppedBack);
    assert.equal(a.ownership.holds(0), false, 'no batch from the moment the session is lost');
    assert.equal(a.ownership.validUntil(0), 0, 'nor on the real-time thread');
    assert.deepEqual(await a.ownership.refresh(config), [], 'refreshes return no shard while stepped back');

    await a.until(() => a.ownership.state === LEASE_STATES.member, 'the re-lock');
    const { rows } = await sql<{ n: number }>`
      SELECT (SELECT count(*) FROM shardrelay.replica)::int + (SELECT count(*) FROM shardrelay.shard_lease)::int AS n`.execute(
      t.db,
    );
    assert.equal(rows[0]?.n, 0, 'it left (membership and leases) before taking a new lock');
    assert.equal(a.ownership.holds(0), false, 'nothing trusted before a renewal says what is still ours');
    assert.deepEqual(
      await a.ownership.refresh(config),
      [0, 1, 2, 3],
      'it left and re-joined: all free again, all its',
    );
    assert.equal(a.ownership.holds(0), true);
    await a.ownership.release();
  });

  it('a peer evicts a member whose session is gone and takes its shards; the member re-joins for a fair share', async () => {
    const a = leases('a', 10_000); // a does not check (b must find a, not the other way round)
    const b = leases('b');
    assert.deepEqual(await a.ownership.refresh(config), [0, 1, 2, 3]);
    assert.equal((await b.ownership.refresh(config)).length, 0, 'b joins; a gives back at its next refresh');
    assert.equal((await a.ownership.refresh(config)).length, 2);
    await a.ownership.refresh(config); // deletes the given-back leases
    assert.equal((await b.ownership.refresh(config)).length, 2);

    await sql`SELECT pg_terminate_backend(${await lockPid(a.ownership.instance)}::int)`.execute(t.db);
    await b.until(() => b.events.includes('refresh'), 'b’s eviction of a');
    const { rows } = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.replica WHERE instance = ${a.ownership.instance}`.execute(
      t.db,
    );
    assert.equal(rows[0]?.n, 0, 'a’s membership is gone');
    assert.deepEqual(await b.ownership.refresh(config), [0, 1, 2, 3], 'b takes a’s shards as free shards');

    await a.until(() => a.ownership.state === LEASE_STATES.member, 'a’s re-lock');
    assert.deepEqual(await a.ownership.refresh(config), [], 'a renews nothing: its leases were taken');
    assert.equal(a.ownership.holds(0), false);
    assert.equal((await b.ownership.refresh(config)).length, 2, 'b gives back above its share');
    await b.ownership.refresh(config);
    assert.equal((await a.ownership.refresh(config)).length, 2, 'a has a fair share again');
  });
});
