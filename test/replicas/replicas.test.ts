/**
 * Replicas, shard leases and live shard-count changes, shown with real `shardrelay run` OS
 * processes against a real PostgreSQL. One file, so its scenarios run one after another: each
 * starts three or four relay processes (about 15 connections each), and two such scenarios at once
 * would not fit a default max_connections of 100.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import { enqueue } from '../../src/enqueue.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { runCli } from '../support/cli.js';
import {
  ReplicaProcesses,
  deliveryCounts,
  freezeMidBatch,
  installSendAudit,
  isDivided,
  leasePicture,
  liveReplicas,
  pgBossJobs,
  secondsSince,
  steadyEnqueue,
  stopSteadyEnqueues,
  type LeasePicture,
  type LiveReplica,
  type ReplicaProcess,
} from '../support/replicaHarness.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';
import { TimedPoll } from '../support/timedPoll.js';

/** The default lease timeout; the takeover scenario starts its replicas without setting it. */
const DEFAULT_LEASE_TIMEOUT_SECONDS = 10;
const STALL_LEASE_TIMEOUT_SECONDS = 3;
const TICK_SECONDS = 1;
const LOCK_TIMEOUT_MS = 5_000; // set_shard_count's default, used by `shards new-migration`
/** Process start-up is not what is measured; on a busy 2-core machine it can take long. */
const STARTUP_MS = 150_000;

describe('replicas dividing 12 shards', () => {
  let t: TestDatabase;
  let replicas: ReplicaProcesses;
  before(async () => {
    t = await createTestDatabase('replica_membership');
    // A long lease timeout: a graceful leave that waited for expiry would take 30 s, not moments.
    replicas = new ReplicaProcesses({ DATABASE_URL: t.url, SHARDRELAY_LEASE_TIMEOUT_SECONDS: '30' }, [
      '--sink',
      'null',
      '--connections-per-lane',
      '1',
      '--batch-size',
      '200',
    ]);
  });
  after(async () => {
    await stopSteadyEnqueues();
    await replicas.killAll({ printOutput: true });
    await t.close();
  });

  it(
    'balance 4/4/4, re-balance to 3/3/3/3 when a 4th joins, re-take a leaver’s shards at once',
    { timeout: 270_000 },
    async () => {
      await sql`SELECT shardrelay.set_shard_count(12)`.execute(t.db);
      await installSendAudit(t.db);
      const load = steadyEnqueue(t.db, { perTick: 50, everyMs: 100, max: 1_000_000, topic: 'membership' });
      let picture: LeasePicture | undefined;
      const divided = (expected: number[]) => async () => {
        picture = await leasePicture(t.db);
        return isDivided(picture, expected);
      };

      const [r1, r2, r3] = ['r1', 'r2', 'r3'].map((id) => replicas.start(id));
      assert.ok(r1 && r2 && r3);
      await replicas.waitFor(
        'three replicas registered',
        async () => (await leasePicture(t.db)).replicas.length === 3,
        STARTUP_MS,
      );
      let started = performance.now();
      await replicas.waitFor('12 shards divided 4/4/4', divided([4, 4, 4]), 20_000);
      console.log(`# 3 replicas: 4/4/4 ${secondsSince(started)} s after the third registered`);
      const status = await runCli(['status', '--json'], { DATABASE_URL: t.url });
      assert.equal(status.code, 0, status.stderr);
      const shown = JSON.parse(status.stdout) as {
        replicas: { replicaId: string; alive: boolean; shards: number[] }[];
        shardOwners: { shard: number; owner: string | null; leaseValid: boolean }[];
      };
      assert.deepEqual(
        shown.replicas.filter((r) => r.alive).map((r) => [r.replicaId, r.shards.length]),
        [
          ['r1', 4],
          ['r2', 4],
          ['r3', 4],
        ],
      );
      assert.equal(shown.shardOwners.length, 12);
      assert.ok(shown.shardOwners.every((s) => s.leaseValid && s.owner !== null));

      const r4 = replicas.start('r4');
      await replicas.waitFor(
        'r4 registered',
        async () => (await leasePicture(t.db)).replicas.length === 4,
        STARTUP_MS,
      );
      started = performance.now();
      await replicas.waitFor('12 shards divided 3/3/3/3', divided([3, 3, 3, 3]), 20_000);
      console.log(`# 4th replica: 3/3/3/3 ${secondsSince(started)} s after it registered`);
      assert.ok(picture?.replicas.some((r) => r.replicaId === 'r4' && r.shards.length === 3));

      const leaving = picture?.replicas.find((r) => r.replicaId === 'r2');
      assert.equal(leaving?.shards.length, 3);
      const clock = async () =>
        (await sql<{ at: Date }>`SELECT clock_timestamp() AS at`.execute(t.db)).rows[0]?.at as Date;
      const sigtermAt = await clock();
      const stopped = await replicas.stop(r2);
      assert.equal(stopped.code, 0, stopped.stderr);
      const exitedAt = await clock();
      await replicas.waitFor('r2’s shards re-taken: 4/4/4', divided([4, 4, 4]), 20_000);
      // Timed by PostgreSQL: when the survivors took the leases (acquired_at).
      const { rows: retaken } = await sql<{ at: Date }>`
        SELECT max(acquired_at) AS at FROM shardrelay.shard_lease
         WHERE shard = ANY(${[...(leaving?.shards ?? [])]}::int[])`.execute(t.db);
      const retakeAt = retaken[0]?.at as Date;
      const afterSigterm = (retakeAt.getTime() - sigtermAt.getTime()) / 1000;
      const afterExit = (retakeAt.getTime() - exitedAt.getTime()) / 1000;
      console.log(
        `# graceful leave: its 3 shards re-taken ${afterSigterm.toFixed(3)} s after SIGTERM ` +
          `(${afterExit.toFixed(3)} s from its exit; negative = before the process had exited)`,
      );
      assert.ok(afterSigterm < 5, `re-taken at once, not after the 30 s lease timeout (${afterSigterm} s)`);
      assert.ok(!picture?.replicas.some((r) => r.replicaId === 'r2'), 'a leaver leaves the membership');

      await load.stop();
      await replicas.waitFor(
        'the outbox drained',
        async () => (await deliveryCounts(t.db)).pending === 0,
        STARTUP_MS,
      );
      const counts = await deliveryCounts(t.db);
      assert.equal(counts.sent, counts.total);
      assert.equal(counts.deliveredTwice, 0, 'no row was delivered twice');
      // The main thread runs the batch lane; every batch row was sent by the process that held its
      // shard's lease (hand-offs stop the loops before the lease is given back).
      const { rows } = await sql<{ sent: number; unheld: number }>`
        SELECT count(*)::int AS sent, count(*) FILTER (WHERE NOT held)::int AS unheld
          FROM public.send_audit WHERE lane = 'batch'`.execute(t.db);
      console.log(
        `# batch rows sent ${rows[0]?.sent}, by a process not holding the lease: ${rows[0]?.unheld}`,
      );
      assert.equal(rows[0]?.unheld, 0);

      for (const r of [r1, r3, r4]) {
        const result = await replicas.stop(r);
        assert.equal(result.code, 0, result.stderr);
      }
      const left = await sql<{ n: number }>`
        SELECT (SELECT count(*) FROM shardrelay.shard_lease)::int
             + (SELECT count(*) FROM shardrelay.replica)::int AS n`.execute(t.db);
      assert.equal(left.rows[0]?.n, 0, 'graceful stops leave no lease and no membership behind');
    },
  );
});

describe('a replica killed with SIGKILL mid-run', () => {
  let t: TestDatabase;
  let replicas: ReplicaProcesses;
  before(async () => {
    t = await createTestDatabase('replica_takeover');
    replicas = new ReplicaProcesses({ DATABASE_URL: t.url }, [
      '--sink',
      'pgboss',
      '--connections-per-lane',
      '2',
      '--batch-size',
      '500',
    ]);
  });
  after(async () => {
    await stopSteadyEnqueues();
    await replicas.killAll({ printOutput: true });
    await t.close();
  });

  it(
    'has its shards taken over at once, not after the lease timeout; every event is delivered, none twice',
    { timeout: 270_000 },
    async () => {
      const total = 50_000;
      await installSendAudit(t.db);
      const started = ['a', 'b', 'c'].map((id) => replicas.start(id));
      let picture: LeasePicture = await leasePicture(t.db);
      await replicas.waitFor(
        '3 replicas share the 8 shards 3/3/2',
        async () => isDivided((picture = await leasePicture(t.db)), [3, 3, 2]),
        STARTUP_MS,
      );
      await enqueue(t.db, syntheticEvents(total - 5_000, { topic: 'takeover' }));
      await enqueue(t.db, syntheticEvents(5_000, { topic: 'takeover', lane: 'realtime', startAt: 45_000 }));

      const victim = picture.replicas.find((r) => r.shards.length === 3) as LiveReplica;
      const victimProcess = started.find((p) => p.name === victim.replicaId);
      assert.ok(victimProcess, 'the victim is one of our processes');
      const victimSent = async () => {
        const { rows } = await sql<{ sent: number }>`
          SELECT coalesce(sum(sent_total), 0)::int AS sent FROM shardrelay.shard_progress
           WHERE shard = ANY(${[...victim.shards]}::int[])`.execute(t.db);
        return rows[0]?.sent ?? 0;
      };
      await replicas.waitFor(
        'the victim is sending its shards',
        async () => (await victimSent()) >= 2_000,
        STARTUP_MS,
      );

      // Freeze it while it has a batch in flight, then kill it: the kill lands mid-batch.
      const inFlight = await freezeMidBatch(t.db, victimProcess, picture.shardCount, victim.shards);
      // Read while it is frozen (its leases are still there; once it is dead, a peer deletes them).
      const { rows: expiry } = await sql<{ at: Date; killed_at: Date }>`
        SELECT max(expires_at) AS at, clock_timestamp() AS killed_at
          FROM shardrelay.shard_lease WHERE owner_instance = ${victim.instance}`.execute(t.db);
      const victimLeasesExpire = expiry[0]?.at;
      const killedAt = expiry[0]?.killed_at as Date;
      assert.ok(victimLeasesExpire, 'the victim held leases when it died');
      replicas.expectExit(victimProcess);
      victimProcess.child.kill('SIGKILL');
      assert.equal((await victimProcess.exited).signal, 'SIGKILL');
      const sentAtKill = (await deliveryCounts(t.db)).sent;
      assert.ok(sentAtKill < total, `killed mid-run (${sentAtKill} of ${total} sent)`);

      await replicas.waitFor(
        'the victim’s shards are leased by the survivors',
        async () => {
          const { rows } = await sql<{ taken: number }>`
            SELECT count(*) FILTER (WHERE s.lease_valid AND s.owner_instance <> ${victim.instance})::int AS taken
              FROM shardrelay.shards s WHERE s.shard = ANY(${[...victim.shards]}::int[])`.execute(t.db);
          return rows[0]?.taken === victim.shards.length;
        },
        60_000,
        25,
      );
      // Timed by PostgreSQL: from the kill to when the last of the victim's shards was taken.
      const { rows: taken } = await sql<{ after_kill: number; before_expiry: number }>`
        SELECT extract(epoch FROM max(acquired_at) - ${killedAt}::timestamptz)::float8 AS after_kill,
               extract(epoch FROM ${victimLeasesExpire}::timestamptz - max(acquired_at))::float8 AS before_expiry
          FROM shardrelay.shard_lease
         WHERE generation = (SELECT generation FROM shardrelay.shard_config)
           AND shard = ANY(${[...victim.shards]}::int[])`.execute(t.db);
      const takeoverSeconds = taken[0]?.after_kill ?? NaN;
      console.log(
        `# takeover of shards ${victim.shards.join(',')}: ${takeoverSeconds.toFixed(3)} s after SIGKILL, ` +
          `${(taken[0]?.before_expiry ?? NaN).toFixed(3)} s before its leases would have expired ` +
          `(lease timeout ${DEFAULT_LEASE_TIMEOUT_SECONDS} s)`,
      );
      // The survivors find the victim's liveness lock free (a check every 100 ms) and take its
      // shards in the refresh its NOTIFY triggers. With this test's 50,000-row pg-boss backlog
      // the survivors' event loops and PostgreSQL are saturated: measured 0.38-1.79 s at load
      // 8-25 on 2 cores. 3 s is still far below the lease timeout that bounded it before
      // (9.4-10.1 s measured), so a takeover by lease expiry cannot pass.
      assert.ok(takeoverSeconds <= 3, `taken over ${takeoverSeconds} s after the kill`);
      assert.ok(isDivided(await leasePicture(t.db), [4, 4]), 'the survivors hold 4 shards each');

      await replicas.waitFor(
        'every event is delivered',
        async () => (await deliveryCounts(t.db)).pending === 0,
        STARTUP_MS,
      );
      const counts = await deliveryCounts(t.db);
      const jobs = await pgBossJobs(t.db);
      const { rows: replayed } = await sql<{ sent: number; twice: number }>`
        SELECT count(*) FILTER (WHERE status = 'sent')::int AS sent,
               (SELECT count(*) FROM (SELECT id FROM public.send_audit WHERE id = ANY(${inFlight}::bigint[])
                                        GROUP BY id HAVING count(*) > 1) AS d)::int AS twice
          FROM shardrelay.events WHERE id = ANY(${inFlight}::bigint[])`.execute(t.db);
      console.log(
        `# ${counts.sent} of ${total} delivered; in flight at the kill: ${inFlight.length} rows ` +
          `(re-sent by the new owner: ${replayed[0]?.sent}); delivered twice: ${counts.deliveredTwice}; ` +
          `pg-boss jobs ${jobs.total} (${jobs.distinct} distinct)`,
      );
      assert.equal(counts.total, total);
      assert.equal(counts.sent, total, 'no event lost');
      assert.equal(
        replayed[0]?.sent,
        inFlight.length,
        'the rows in flight at the kill were delivered after it',
      );
      // pg-boss inserts jobs in the claim's transaction, so the killed batches' jobs rolled back with
      // it: the in-flight rows were delivered once, by the new owner. Any row recorded twice would
      // have to be one of them.
      assert.equal(replayed[0]?.twice, counts.deliveredTwice, 'only rows in flight at the kill may repeat');
      assert.equal(counts.deliveredTwice, 0);
      assert.deepEqual(jobs, { total, distinct: total });

      for (const p of started.filter((p) => p !== victimProcess)) {
        const result = await replicas.stop(p);
        assert.equal(result.code, 0, result.stderr);
      }
    },
  );
});

describe('changing the shard count by migration while replicas run', () => {
  let t: TestDatabase;
  let replicas: ReplicaProcesses;
  let dir: string;
  let listener: pg.Client;
  /** Generations announced on shardrelay_config, with when they arrived (performance.now()). */
  const announced = new Map<string, number>();
  before(async () => {
    t = await createTestDatabase('replica_shard_count');
    dir = await mkdtemp(path.join(os.tmpdir(), 'shardrelay-migrations-'));
    // At info, each replica logs how long a switch of the shard count took, in-flight batches apart.
    replicas = new ReplicaProcesses({ DATABASE_URL: t.url, SHARDRELAY_LOG_LEVEL: 'info' }, [
      '--sink',
      'pgboss',
      '--connections-per-lane',
      '2',
      '--batch-size',
      '500',
      '--tick-seconds',
      String(TICK_SECONDS),
    ]);
    listener = new pg.Client(t.url);
    listener.on('error', () => {}); // the database is dropped under it at the end
    await listener.connect();
    listener.on('notification', (m) => {
      if (m.payload && /^\d+$/.test(m.payload)) announced.set(m.payload, performance.now());
    });
    await listener.query('LISTEN shardrelay_config');
  });
  after(async () => {
    await stopSteadyEnqueues();
    await replicas.killAll({ printOutput: true });
    await listener.end();
    await t.close();
    await rm(dir, { recursive: true, force: true });
  });

  const generation = async () =>
    (await t.db.selectFrom('shardrelay.shard_config').select('generation').executeTakeFirstOrThrow())
      .generation;

  /** `shards new-migration n --dir`, as an operator would; returns the file written. */
  const newMigration = async (n: number, into: string) => {
    const written = await runCli(['shards', 'new-migration', String(n), '--dir', into]);
    assert.equal(written.code, 0, written.stderr);
    return written.stdout.trim();
  };
  const migrate = (from: string) => runCli(['migrate', '--migrations-dir', from], { DATABASE_URL: t.url });

  it(
    '8 → 16 → 5 under steady enqueue: nothing lost or sent twice, every replica switches within 2 ticks',
    { timeout: 290_000 },
    async () => {
      const total = 100_000;
      const initial = 40_000;
      await installSendAudit(t.db);
      const started = ['a', 'b', 'c'].map((id) => replicas.start(id));
      // The operator's migrations, written beforehand: `migrate` of the first folder applies the
      // change to 16, of the second (both files) the change to 5.
      const to16 = path.join(dir, '16');
      await mkdir(to16);
      // Written in this order, the names sort 16 before 5 even within one second (`…_16` < `…_5`).
      const file16 = await newMigration(16, to16);
      await newMigration(5, dir);
      await copyFile(file16, path.join(dir, path.basename(file16)));
      await replicas.waitFor(
        '3 replicas share 8 shards',
        async () => isDivided(await leasePicture(t.db), [3, 3, 2]),
        STARTUP_MS,
      );
      await enqueue(t.db, syntheticEvents(initial, { topic: 'resharding' }));
      // Steady until both changes are through, then topped up to at least 100,000.
      const load = steadyEnqueue(t.db, { perTick: 100, everyMs: 50, max: 1_000_000, topic: 'resharding' });
      const changes: { count: number; at: Date }[] = [];

      for (const [count, split, folder] of [
        [16, [6, 5, 5], to16],
        [5, [2, 2, 1], dir],
      ] as const) {
        const before = await generation();
        const migrated = await migrate(folder);
        assert.equal(migrated.code, 0, migrated.stderr);
        const now = await generation();
        assert.equal(BigInt(now), BigInt(before) + 1n);
        await replicas.waitFor('the NOTIFY of the new generation', async () => announced.has(now), 10_000);
        const committedAt = announced.get(now) as number;
        // The migration's transaction began at updated_at (now()); it had committed when the NOTIFY
        // arrived: the longest it can have waited.
        const { rows } = await sql<{ ms: number; pending: number; at: Date }>`
          SELECT extract(epoch FROM clock_timestamp() - updated_at)::float8 * 1000 AS ms, updated_at AS at,
                 (SELECT count(*) FROM shardrelay.outbox WHERE status = 'pending')::int AS pending
            FROM shardrelay.shard_config`.execute(t.db);
        const migrationMs = Math.round(rows[0]?.ms ?? Infinity);
        changes.push({ count, at: rows[0]?.at as Date });

        const poll = new TimedPoll(async () => {
          const live = await liveReplicas(t.db);
          return live.length === 3 && live.every((r) => r.generation === now);
        });
        await replicas.waitFor(`every replica on generation ${now}`, poll.run, 10_000, 20);
        const switchSeconds = Math.round(performance.now() - committedAt) / 1000;
        let switches: SwitchLog[] = [];
        await replicas.waitFor(`every replica's switch to generation ${now} logged`, async () => {
          switches = started.flatMap((p) => switchLogged(p.stderr(), now));
          return switches.length === started.length;
        });
        const inFlightSeconds = Math.max(...switches.map((s) => s.inFlightMs)) / 1000;
        await replicas.waitFor(`${count} shards divided ${split.join('/')}`, async () =>
          isDivided(await leasePicture(t.db), split),
        );
        // Per replica: when its tick saw the new count (from the NOTIFY's arrival here), how long
        // its in-flight batches took, how long the whole switch took.
        const breakdown = switches
          .map(
            (s) =>
              `seen ${Math.round(s.time - s.switchMs - (performance.timeOrigin + committedAt))} ms, ` +
              `in-flight ${s.inFlightMs} ms, switch ${s.switchMs} ms`,
          )
          .join('; ');
        console.log(
          `# ${count} shards: migration transaction <= ${migrationMs} ms (lock timeout ${LOCK_TIMEOUT_MS} ms), ` +
            `${rows[0]?.pending} rows pending at the change, all replicas on generation ${now} ` +
            `${switchSeconds} s after the commit; per replica: ${breakdown}; the test's slowest poll ` +
            `${Math.round(poll.slowestMs)} ms`,
        );
        assert.ok(migrationMs < LOCK_TIMEOUT_MS, `the migration waited ${migrationMs} ms`);
        // The README's promise: each replica lets its in-flight batches finish (as long as a batch
        // takes), then switches within a tick or two. Seen in CI at load 10-16: 2.85 s in all,
        // against a bound of 2 s that left the batches out; and 2.279 s with 0.127 s in flight in
        // a run whose suite took half as long again as usual, which the slowest poll now accounts
        // for (see TimedPoll).
        const bound = 2 * TICK_SECONDS + inFlightSeconds + poll.slowestMs / 1000;
        assert.ok(
          switchSeconds <= bound,
          `switched within 2 ticks of its in-flight batches (${switchSeconds} s, bound ${bound.toFixed(3)} s; ` +
            `per replica: ${breakdown}; the test's slowest poll ${Math.round(poll.slowestMs)} ms; ` +
            `load average ${os.loadavg()[0]?.toFixed(1)})`,
        );
      }

      let enqueued = initial + (await load.stop());
      if (enqueued < total) {
        await enqueue(t.db, syntheticEvents(total - enqueued, { topic: 'resharding' }));
        enqueued = total;
      }
      await replicas.waitFor(
        'the outbox drained',
        async () => (await deliveryCounts(t.db)).pending === 0,
        120_000,
      );
      const counts = await deliveryCounts(t.db);
      const jobs = await pgBossJobs(t.db);
      console.log(
        `# ${counts.sent} of ${counts.total} delivered, delivered twice: ${counts.deliveredTwice}, ` +
          `retried after a failed attempt: ${counts.retried}, pg-boss jobs ${jobs.total} (${jobs.distinct} distinct)`,
      );
      assert.ok(enqueued >= total);
      assert.equal(counts.total, enqueued);
      assert.equal(counts.sent, enqueued, 'no event lost');
      assert.equal(counts.deliveredTwice, 0, 'no event delivered twice');
      assert.deepEqual(jobs, { total: enqueued, distinct: enqueued });
      await replicas.waitFor('only the indexes of the current count remain', async () => {
        const { rows } = await sql<{ name: string; valid: boolean }>`
          SELECT c.relname AS name, i.indisvalid AS valid
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE c.relname LIKE 'outbox_pending%' ORDER BY 1`.execute(t.db);
        const names = rows.map((r) => `${r.name}:${r.valid}`).join();
        return names === 'outbox_pending_mod5:true,outbox_pending_realtime_mod5:true';
      });
      // Under load: the relays were sending in the 2 s before each change and in the 2 s after it.
      for (const change of changes) {
        const { rows } = await sql<{ before: number; after: number }>`
          SELECT count(*) FILTER (WHERE sent_at >= ${change.at}::timestamptz - interval '2 s'
                                    AND sent_at < ${change.at}::timestamptz)::int AS before,
                 count(*) FILTER (WHERE sent_at >= ${change.at}::timestamptz
                                    AND sent_at < ${change.at}::timestamptz + interval '2 s')::int AS after
            FROM shardrelay.events`.execute(t.db);
        console.log(
          `# change to ${change.count}: ${rows[0]?.before} rows sent in the 2 s before, ${rows[0]?.after} after`,
        );
        assert.ok((rows[0]?.before ?? 0) > 0 && (rows[0]?.after ?? 0) > 0, 'the count changed mid-drain');
      }
      const stale = await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM shardrelay.shard_lease
         WHERE generation <> (SELECT generation FROM shardrelay.shard_config)`.execute(t.db);
      assert.equal(stale.rows[0]?.n, 0, 'no lease of an old generation is left');

      for (const p of started) {
        const result = await replicas.stop(p);
        assert.equal(result.code, 0, result.stderr);
      }
    },
  );

  it(
    'a migration that cannot get the shard_config row gives up after its lock timeout, retryably',
    { timeout: 60_000 },
    async () => {
      // Whatever the scenario before left unapplied (nothing, unless it failed midway) goes in
      // first, so that this one counts only its own change.
      const settled = await migrate(dir);
      assert.equal(settled.code, 0, settled.stderr);
      const before = await t.db
        .selectFrom('shardrelay.shard_config')
        .select(['shard_count', 'generation'])
        .executeTakeFirstOrThrow();
      // Something (not a replica: replicas never lock it) holds the row.
      const blocker = new pg.Client(t.url);
      blocker.on('error', () => {});
      await blocker.connect();
      try {
        await blocker.query('BEGIN');
        await blocker.query('SELECT * FROM shardrelay.shard_config FOR UPDATE');
        // Generated for a count of 7; a later timestamp sorts it last.
        const file7 = await newMigration(7, await mkdtemp(path.join(os.tmpdir(), 'shardrelay-migration-7-')));
        await copyFile(file7, path.join(dir, `${'9'.repeat(14)}_shard_count_7.sql`));
        await rm(path.dirname(file7), { recursive: true, force: true });
        const running = migrate(dir);
        // Timed in PostgreSQL: from the start of the blocked statement to its end.
        const blocked = async () =>
          (
            await sql<{ started: Date; now: Date }>`
              SELECT query_start AS started, clock_timestamp() AS now FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND query LIKE '%set_shard_count%'`.execute(t.db)
          ).rows[0];
        let waitStarted: Date | undefined;
        await replicas.waitFor(
          'the migration waits for the row lock',
          async () => (waitStarted = (await blocked())?.started) !== undefined,
          60_000,
          20,
        );
        let gaveUpAt: Date | undefined;
        await replicas.waitFor(
          'the migration gives up',
          async () => {
            const still = await blocked();
            if (still) gaveUpAt = still.now;
            return still === undefined;
          },
          30_000,
          20,
        );
        const waited = ((gaveUpAt?.getTime() ?? 0) - (waitStarted?.getTime() ?? 0)) / 1000;
        const failed = await running;
        console.log(`# blocked migration waited ${waited.toFixed(2)} s, then: ${failed.stderr.trim()}`);
        assert.equal(failed.code, 1);
        assert.match(failed.stderr, /gave up after waiting 5000 ms \(lock timeout\)/);
        assert.match(failed.stderr, /retrying is safe/);
        assert.match(failed.stderr, /run `shardrelay migrate` again/);
        assert.ok(waited >= LOCK_TIMEOUT_MS / 1000 - 0.1, `it waited for the lock timeout (${waited} s)`);
        assert.ok(waited < LOCK_TIMEOUT_MS / 1000 + 1, `and not longer (${waited} s)`);
      } finally {
        await blocker.query('ROLLBACK');
        await blocker.end();
      }
      const unchanged = await t.db
        .selectFrom('shardrelay.shard_config')
        .select(['shard_count', 'generation'])
        .executeTakeFirstOrThrow();
      assert.deepEqual(unchanged, before, 'nothing changed');

      const retried = await migrate(dir);
      assert.equal(retried.code, 0, retried.stderr);
      const after = await t.db
        .selectFrom('shardrelay.shard_config')
        .select(['shard_count', 'generation'])
        .executeTakeFirstOrThrow();
      assert.equal(after.shard_count, 7);
      assert.equal(BigInt(after.generation), BigInt(before.generation) + 1n);
    },
  );
});

describe('duplicate and stale replicas', () => {
  let t: TestDatabase;
  let replicas: ReplicaProcesses;
  /** Two processes started with the same replica id, and a third replica. */
  let twin1: ReplicaProcess;
  let twin2: ReplicaProcess;
  let other: ReplicaProcess;
  before(async () => {
    t = await createTestDatabase('replica_stale');
    replicas = new ReplicaProcesses(
      { DATABASE_URL: t.url, SHARDRELAY_LEASE_TIMEOUT_SECONDS: String(STALL_LEASE_TIMEOUT_SECONDS) },
      ['--sink', 'null', '--connections-per-lane', '2', '--batch-size', '200'],
    );
    await installSendAudit(t.db);
    await sql`SELECT shardrelay.set_shard_count(12)`.execute(t.db);
  });
  after(async () => {
    await stopSteadyEnqueues();
    await replicas.killAll({ printOutput: true });
    await t.close();
  });

  /** Rows sent by `pid` whose transaction began after `since`, by a process not holding the lease. */
  const sentWithoutLease = async (pid: number, since: Date | null, lane: 'batch' | 'realtime') => {
    const { rows } = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM public.send_audit
       WHERE pid = ${pid} AND NOT held AND lane = ${lane}
         AND (${since}::timestamptz IS NULL OR xact_start > ${since}::timestamptz)`.execute(t.db);
    return rows[0]?.n ?? 0;
  };

  it(
    'two processes started with the same replica id are two members with their own shares; nothing is sent twice',
    { timeout: 240_000 },
    async () => {
      twin1 = replicas.start('twin', 'twin-1');
      twin2 = replicas.start('twin', 'twin-2');
      other = replicas.start('other');
      let picture: LeasePicture | undefined;
      await replicas.waitFor(
        '12 shards divided 4/4/4',
        async () => isDivided((picture = await leasePicture(t.db)), [4, 4, 4]),
        STARTUP_MS,
      );
      const twins = picture?.replicas.filter((r) => r.replicaId === 'twin') ?? [];
      assert.equal(twins.length, 2, 'two members with one replica id');
      assert.notEqual(twins[0]?.instance, twins[1]?.instance);
      const flagged = await t.db
        .selectFrom('shardrelay.replicas')
        .select(['replica_id', 'duplicate_id'])
        .where('alive', '=', true)
        .orderBy('replica_id')
        .execute();
      assert.deepEqual(
        flagged.map((r) => [r.replica_id, r.duplicate_id]),
        [
          ['other', false],
          ['twin', true],
          ['twin', true],
        ],
        'the view flags the shared id',
      );

      await enqueue(t.db, syntheticEvents(18_000, { topic: 'twins' }));
      await enqueue(t.db, syntheticEvents(2_000, { topic: 'twins', lane: 'realtime', startAt: 18_000 }));
      await replicas.waitFor('delivered', async () => (await deliveryCounts(t.db)).pending === 0, STARTUP_MS);
      const counts = await deliveryCounts(t.db);
      assert.equal(counts.sent, 20_000);
      assert.equal(counts.deliveredTwice, 0, 'no row sent twice');
      for (const twin of [twin1, twin2]) {
        assert.equal(
          await sentWithoutLease(twin.pid, null, 'batch'),
          0,
          `${twin.name} ran only its own shards`,
        );
        assert.match(twin.stderr(), /another running process uses this replica id/);
      }
    },
  );

  it(
    'a replica paused past its lease gives up the shards taken over before it claims again',
    { timeout: 240_000 },
    async () => {
      await sql`TRUNCATE public.send_audit`.execute(t.db);
      const earlier = (await deliveryCounts(t.db)).total;
      const load = steadyEnqueue(t.db, { perTick: 100, everyMs: 100, max: 1_000_000, topic: 'stall' });
      try {
        const b = twin2; // the stale one shares its replica id with a live process
        let picture = await leasePicture(t.db);
        const stale = picture.replicas.find((r) => r.pid === b.pid);
        assert.ok(stale && stale.shards.length === 4);

        // A burst keeps b busy, so it can be paused with a batch in flight.
        await enqueue(t.db, syntheticEvents(20_000, { topic: 'stall' }));
        const inFlight = await freezeMidBatch(t.db, b, 12, stale.shards);
        const { rows: paused } = await sql<{ at: Date }>`SELECT clock_timestamp() AS at`.execute(t.db);
        await replicas.waitFor(
          'the other two took over b’s shards',
          async () => {
            picture = await leasePicture(t.db);
            return isDivided(picture, [6, 6]) && !picture.replicas.some((r) => r.instance === stale.instance);
          },
          30_000,
        );
        const takenAt = (await sql<{ at: Date }>`SELECT clock_timestamp() AS at`.execute(t.db)).rows[0]?.at;
        // Timed by PostgreSQL: from the pause to when the last of b's shards was taken (acquired_at).
        const { rows: taken } = await sql<{ seconds: number }>`
          SELECT extract(epoch FROM max(acquired_at) - ${paused[0]?.at}::timestamptz)::float8 AS seconds
            FROM shardrelay.shard_lease
           WHERE generation = (SELECT generation FROM shardrelay.shard_config)
             AND shard = ANY(${[...stale.shards]}::int[])`.execute(t.db);
        const stopTakeover = taken[0]?.seconds ?? NaN;
        console.log(
          `# SIGSTOP takeover: b's shards taken ${stopTakeover.toFixed(3)} s after the pause ` +
            `(lease ${STALL_LEASE_TIMEOUT_SECONDS} s)`,
        );
        // A frozen replica's session is alive: only its lease timeout frees its shards, never sooner.
        assert.ok(
          stopTakeover >= STALL_LEASE_TIMEOUT_SECONDS - 1.5,
          `not before the lease lapsed (${stopTakeover} s)`,
        );
        await replicas.waitFor(
          'the new owners send b’s former shards',
          async () => {
            const { rows } = await sql<{ n: number }>`
              SELECT count(*)::int AS n FROM public.send_audit
               WHERE shard = ANY(${[...stale.shards]}::int[]) AND pid <> ${b.pid} AND held
                 AND completed_at > ${takenAt}::timestamptz`.execute(t.db);
            return (rows[0]?.n ?? 0) >= 200;
          },
          30_000,
        );

        const { rows: resumed } = await sql<{ at: Date }>`SELECT clock_timestamp() AS at`.execute(t.db);
        const resumedAt = resumed[0]?.at as Date;
        b.child.kill('SIGCONT');
        await replicas.waitFor(
          'b is back and the shards are re-balanced 4/4/4',
          async () => {
            picture = await leasePicture(t.db);
            return (
              isDivided(picture, [4, 4, 4]) && picture.replicas.some((r) => r.instance === stale.instance)
            );
          },
          30_000,
        );
        const enqueued = await load.stop();
        await replicas.waitFor(
          'delivered',
          async () => (await deliveryCounts(t.db)).pending === 0,
          STARTUP_MS,
        );

        const counts = await deliveryCounts(t.db);
        const { rows: finished } = await sql<{ n: number }>`
          SELECT count(*)::int AS n FROM public.send_audit
           WHERE pid = ${b.pid} AND id = ANY(${inFlight}::bigint[])`.execute(t.db);
        const batchViolations = await sentWithoutLease(b.pid, resumedAt, 'batch');
        const realtimeViolations = await sentWithoutLease(b.pid, resumedAt, 'realtime');
        const stalledFor = ((resumedAt.getTime() - (paused[0]?.at.getTime() ?? 0)) / 1000).toFixed(1);
        console.log(
          `# b paused ${stalledFor} s (lease ${STALL_LEASE_TIMEOUT_SECONDS} s) with ${inFlight.length} rows in flight, ` +
            `committed after it: ${finished[0]?.n}; rows b claimed after waking without holding the lease: ` +
            `batch lane ${batchViolations}, real-time lane ${realtimeViolations}; ` +
            `${enqueued} more events enqueued meanwhile, all delivered: ${counts.sent === counts.total}, ` +
            `delivered twice: ${counts.deliveredTwice}`,
        );
        assert.equal(counts.total, earlier + 20_000 + enqueued);
        // b finishes its in-flight batches after the pause, except one whose lease check after
        // waking finds the lease lapsed before its send: that batch rolls back instead (the
        // paused-replica guard of the delivery contract) and its rows go to the new owner, sent
        // once (asserted below). Seen: 400 of 401 and 0 of 400.
        assert.ok(
          (finished[0]?.n ?? 0) <= inFlight.length,
          `the batches in flight during the pause finished or rolled back after it (${finished[0]?.n} of ${inFlight.length})`,
        );
        assert.equal(counts.sent, counts.total, 'nothing lost');
        assert.equal(counts.deliveredTwice, 0, 'no row sent twice');
        assert.equal(batchViolations, 0, 'b started no batch on a shard it no longer held');
        assert.equal(
          realtimeViolations,
          0,
          'b’s real-time worker thread started no batch on a shard it no longer held',
        );
        assert.match(b.stderr(), /no lease renewal for longer than the lease timeout/);
        assert.match(b.stderr(), /shard leases were taken over by another replica/);
        assert.equal((await liveReplicas(t.db)).length, 3);

        for (const r of [twin1, twin2, other]) assert.equal((await replicas.stop(r)).code, 0);
      } finally {
        await load.stop();
      }
    },
  );
});

/** A replica's log line 'switched to the new shard count' (scheduler.ts), at info. */
interface SwitchLog {
  /** When it was logged (epoch ms). */
  readonly time: number;
  readonly generation: string;
  readonly inFlightMs: number;
  readonly switchMs: number;
}

/**
 * The main thread's switch to `generation` in a replica's JSON log, or nothing while it has not
 * logged it. The main thread's heartbeat announces the generation; the real-time worker thread
 * (`"thread":"realtime"`) logs its own switch, which the announcement does not wait for.
 */
function switchLogged(log: string, generation: string): SwitchLog[] {
  for (const line of log.split('\n')) {
    if (!line.includes('switched to the new shard count')) continue;
    const entry = JSON.parse(line) as SwitchLog & { readonly thread?: string };
    if (entry.thread === undefined && String(entry.generation) === String(generation)) return [entry];
  }
  return [];
}
