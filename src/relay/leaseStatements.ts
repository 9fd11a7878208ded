import { randomInt } from 'node:crypto';
import os from 'node:os';
import { sql, type Kysely, type RawBuilder } from 'kysely';
import type pg from 'pg';
import type { Database } from '../db/schema.js';
import { CONFIG_CHANNEL } from './outboxListener.js';
import type { ShardConfig } from './shardConfig.js';

/**
 * Every statement of shard ownership, one function each, each tested on its own against PostgreSQL
 * (test/relay/leaseStatements.test.ts): membership (heartbeat, leave), leases (acquire free shards,
 * renew, take over expired ones, release, drop other generations), the balance read the share
 * policy decides on, and the liveness lock with its fence and the eviction of dead peers. When to
 * run which, and the share policy, are relay/shardLeases.ts's; it holds no SQL.
 *
 * The liveness lock (relay/livenessLock.ts, relay/livenessMembership.ts):
 *
 * Each replica process holds a session-level advisory lock `(LIVENESS_LOCK_CLASS, key)` on a
 * connection of its own for as long as it is a member, and records `key` and the session's pid in
 * its membership row (shardrelay.replica.lock_key, lock_pid). PostgreSQL releases the lock the
 * moment that session ends, so "can I take that lock?" answers "is that process's session gone?"
 * exactly, with no clock and no timeout: a SIGKILLed process, a crashed host whose TCP connection
 * PostgreSQL has closed, or a connection cut with pg_terminate_backend.
 */

/** The first key of every liveness lock ('SRLY'): the two-int advisory lock space, objsubid 2. */
export const LIVENESS_LOCK_CLASS = 0x53524c59;

/** A liveness lock held by one session. */
export interface LivenessLockHandle {
  /** The second key of the advisory lock. */
  readonly key: number;
  /** pg_backend_pid() of the session that holds it. */
  readonly pid: number;
}

/**
 * Takes a liveness lock on `client`'s session with a random key. A key someone else holds (another
 * replica's, or a dead one's that a peer is evicting right now) is skipped for another; 2^31 keys
 * make that rare, and a few attempts make it certain.
 */
export async function takeLivenessLock(client: pg.ClientBase): Promise<LivenessLockHandle> {
  for (let attempt = 0; attempt < 8; attempt++) {
    const key = randomInt(1, 2 ** 31 - 1);
    const { rows } = await client.query<{ locked: boolean; pid: number }>(
      'SELECT pg_try_advisory_lock($1, $2) AS locked, pg_backend_pid() AS pid',
      [LIVENESS_LOCK_CLASS, key],
    );
    const row = rows[0];
    if (row?.locked) return { key, pid: row.pid };
  }
  throw new Error('could not take a liveness lock: 8 random keys were all held by other sessions');
}

/**
 * True while the session `lock.pid` still holds the liveness lock `lock.key`: the fence of every
 * statement that takes or extends a lease (relay/shardLeases.ts). A process whose lock session is
 * gone has been, or may be at any moment, evicted by a peer; it must not write a lease again until
 * it holds a new lock. pg_locks is read live (not from the snapshot), so the answer is as of the
 * statement. Measured (test/relay/leaseStatements.test.ts, 2 cores at load 11): a fenced renewal
 * took 3.3 ms round trip against 2.4 ms unfenced, most of either the commit's WAL flush.
 */
export function lockHeld(lock: LivenessLockHandle | undefined): RawBuilder<boolean> {
  if (!lock) return sql<boolean>`false`;
  return sql<boolean>`EXISTS (
    SELECT 1 FROM pg_catalog.pg_locks
     WHERE locktype = 'advisory' AND granted
       AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
       AND classid = ${LIVENESS_LOCK_CLASS}::oid AND objid = ${lock.key}::int::oid AND objsubid = 2
       AND pid = ${lock.pid}::int)`;
}

/** A replica whose liveness session was found gone, with the leases it held. */
export interface EvictedReplica {
  readonly instance: string;
  readonly replicaId: string;
  readonly shards: readonly number[];
  /** Seconds since its last heartbeat (how long ago it was last known alive). */
  readonly sinceHeartbeatSeconds: number;
}

/**
 * Evicts every other member whose liveness lock is free: its session is gone, so the process is
 * dead or has lost its lock connection (and then steps back by itself, relay/livenessMembership.ts). One
 * statement, one transaction:
 *
 *  - `pg_try_advisory_xact_lock` on the member's key succeeds only if no session holds it; the
 *    evictor then holds it until its commit, so the member cannot take the same key back
 *    half-way through (a re-connecting process picks another key anyway);
 *  - its membership row is deleted, so the others count one member fewer in their next refresh;
 *  - its leases expire now (expires_at set to the clock) rather than being deleted, so the
 *    survivors take them with takeOverExpiredLeases, whose `FOR UPDATE SKIP LOCKED` lets two
 *    survivors woken by the same NOTIFY take disjoint shards at once. Free shards (deleted rows)
 *    would be raced for by inserts instead: a survivor that picks a shard another one is inserting
 *    waits for that one's commit, gets nothing, and needs another round trip (with 2 survivors
 *    taking 2 of 4 shards each at random, 5 times out of 6). The evicted process cannot renew
 *    them: renewLeases is fenced on a lock it no longer holds, and when it takes a new lock it
 *    leaves first (leaveMembership deletes every lease it still owns);
 *  - a NOTIFY on shardrelay_config makes every replica refresh now, not at its next tick.
 *
 * The CASE fixes the evaluation order: the lock function is never called on our own key (our
 * own session would get it, being its holder) nor on a row without a lock (an older version,
 * left to its lease timeout). A member being evicted by two peers at once: the second one's try
 * fails while the first holds the xact lock, and then finds the row gone.
 */
export async function evictDeadReplicas(client: pg.ClientBase, me: string): Promise<EvictedReplica[]> {
  const { rows } = await client.query<{
    instance: string;
    replica_id: string;
    shards: number[];
    since_heartbeat: number;
  }>(
    `WITH dead AS (
       SELECT instance FROM shardrelay.replica
        WHERE CASE WHEN instance <> $1::uuid AND lock_key IS NOT NULL
                   THEN pg_try_advisory_xact_lock($2, lock_key) ELSE false END
     ), leases AS (
       UPDATE shardrelay.shard_lease l SET expires_at = least(l.expires_at, shardrelay.clock())
         FROM dead
        WHERE l.owner_instance = dead.instance
       RETURNING l.owner_instance, l.shard, l.generation
     ), members AS (
       DELETE FROM shardrelay.replica r USING dead
        WHERE r.instance = dead.instance
       RETURNING r.instance, r.replica_id, r.heartbeat_at
     )
     SELECT m.instance, m.replica_id,
            extract(epoch FROM shardrelay.clock() - m.heartbeat_at)::float8 AS since_heartbeat,
            coalesce((SELECT array_agg(shard ORDER BY shard) FROM leases
                       WHERE owner_instance = m.instance
                         AND generation = (SELECT generation FROM shardrelay.shard_config)), '{}') AS shards,
            pg_notify($3, 'replica session gone')
       FROM members m`,
    [me, LIVENESS_LOCK_CLASS, CONFIG_CHANNEL],
  );
  return rows.map((r) => ({
    instance: r.instance,
    replicaId: r.replica_id,
    shards: r.shards,
    sinceHeartbeatSeconds: r.since_heartbeat,
  }));
}

/**
 * The process a lease statement acts for: its random instance token, its replica id (shared by the
 * two threads of a replica and by nothing else) and, once taken, its liveness lock.
 */
export interface LeaseMember {
  readonly instance: string;
  readonly replicaId: string;
  /** The liveness lock held now; lease writes are fenced on it. */
  readonly lock?: LivenessLockHandle | undefined;
}

const leaseInterval = (seconds: number) => sql`${seconds} * interval '1 second'`;

/** Upserts this process's membership row. `joined` is true when the row was created now. */
export async function heartbeat(
  db: Kysely<Database>,
  me: LeaseMember,
  generation: string,
  leaseTimeoutSeconds: number,
): Promise<{ readonly joined: boolean }> {
  const { rows } = await sql<{ joined: boolean }>`
    INSERT INTO shardrelay.replica AS r
      (instance, replica_id, hostname, pid, lease_timeout_seconds, generation, lock_key, lock_pid,
       started_at, heartbeat_at)
    VALUES (${me.instance}, ${me.replicaId}, ${os.hostname()}, ${process.pid}, ${leaseTimeoutSeconds},
            ${generation}::bigint, ${me.lock?.key ?? null}::int, ${me.lock?.pid ?? null}::int,
            shardrelay.clock(), shardrelay.clock())
    ON CONFLICT (instance) DO UPDATE SET
      heartbeat_at = shardrelay.clock(),
      lease_timeout_seconds = EXCLUDED.lease_timeout_seconds,
      generation = EXCLUDED.generation,
      lock_key = EXCLUDED.lock_key,
      lock_pid = EXCLUDED.lock_pid
    RETURNING (xmax = 0) AS joined`.execute(db);
  return { joined: rows[0]?.joined === true };
}

/** Tells every replica (NOTIFY on shardrelay_config) that a member joined: they refresh now and share again. */
export async function announceJoin(db: Kysely<Database>): Promise<void> {
  await sql`SELECT pg_notify(${CONFIG_CHANNEL}, 'replica joined')`.execute(db);
}

/**
 * Deletes this process's leases of every other generation (its loops of those generations have
 * stopped), and anyone's expired leases of other generations and long-gone members (housekeeping;
 * a crashed replica without a liveness lock stays visible in the views for 15 minutes; one with a
 * lock is evicted by its peers at once). Announces it when it let go of
 * leases, since the other replicas wait for that before they take leases of the new generation.
 */
export async function dropOtherGenerations(
  db: Kysely<Database>,
  me: LeaseMember,
  generation: string,
): Promise<number> {
  const { rows } = await sql<{ dropped: number }>`
    WITH mine AS (
      DELETE FROM shardrelay.shard_lease
       WHERE generation <> ${generation}::bigint
         AND (owner_instance = ${me.instance} OR expires_at < shardrelay.clock())
      RETURNING owner_instance
    ), gone AS (
      DELETE FROM shardrelay.replica
       WHERE heartbeat_at < shardrelay.clock() - interval '15 minutes'
      RETURNING 1
    )
    , counted AS (
      SELECT (SELECT count(*) FROM mine WHERE owner_instance = ${me.instance})::int AS dropped,
             (SELECT count(*) FROM gone)::int AS gone
    )
    -- Replicas waiting for the old generation to be let go of (readBalance) look again at once.
    SELECT dropped, CASE WHEN dropped > 0 THEN pg_notify(${CONFIG_CHANNEL}, 'old generation released') END
      FROM counted`.execute(db);
  return rows[0]?.dropped ?? 0;
}

/**
 * Extends every lease of `generation` this process still owns, if its liveness lock is still held
 * (`lockHeld`); returns their shards, and whether the lock was held (false: renewed nothing).
 */
export async function renewLeases(
  db: Kysely<Database>,
  me: LeaseMember,
  generation: string,
  leaseTimeoutSeconds: number,
): Promise<{ readonly lockHeld: boolean; readonly shards: number[] }> {
  const { rows } = await sql<{ lock_held: boolean; shards: number[] }>`
    WITH fence AS (SELECT ${lockHeld(me.lock)} AS held), renewed AS (
      UPDATE shardrelay.shard_lease
         SET renewed_at = shardrelay.clock(),
             expires_at = shardrelay.clock() + ${leaseInterval(leaseTimeoutSeconds)}
       WHERE generation = ${generation}::bigint
         AND owner_instance = ${me.instance}
         AND (SELECT held FROM fence)
      RETURNING shard
    )
    SELECT (SELECT held FROM fence) AS lock_held,
           coalesce((SELECT array_agg(shard ORDER BY shard) FROM renewed), '{}') AS shards`.execute(db);
  return { lockHeld: rows[0]?.lock_held === true, shards: rows[0]?.shards ?? [] };
}

/** Gives leases back (deletes them), so another replica can take them at once. */
export async function releaseLeases(
  db: Kysely<Database>,
  me: LeaseMember,
  generation: string,
  shards: readonly number[],
): Promise<number[]> {
  const { rows } = await sql<{ shard: number }>`
    WITH released AS (
      DELETE FROM shardrelay.shard_lease
       WHERE owner_instance = ${me.instance} AND generation = ${generation}::bigint
         AND shard = ANY(${[...shards]}::int[])
      RETURNING shard
    )
    SELECT shard, pg_notify(${CONFIG_CHANNEL}, 'leases released') FROM released`.execute(db);
  return rows.map((r) => r.shard);
}

/**
 * Graceful leave, one transaction: the membership row and every lease go together, then the NOTIFY,
 * so the others see one replica fewer and free shards in the same refresh and take them at once.
 */
export async function leaveMembership(db: Kysely<Database>, me: LeaseMember): Promise<number[]> {
  const { rows } = await sql<{ shards: number[] }>`
    WITH member AS (
      DELETE FROM shardrelay.replica WHERE instance = ${me.instance} RETURNING 1
    ), released AS (
      DELETE FROM shardrelay.shard_lease WHERE owner_instance = ${me.instance} RETURNING shard
    )
    SELECT coalesce((SELECT array_agg(shard ORDER BY shard) FROM released), '{}') AS shards,
           (SELECT count(*) FROM member) AS left_membership,
           pg_notify(${CONFIG_CHANNEL}, 'replica left')`.execute(db);
  return rows[0]?.shards ?? [];
}

/**
 * The take-over: up to `limit` leases of `generation` that other processes let expire become ours.
 * `FOR UPDATE SKIP LOCKED` passes over lease rows another replica is taking over or renewing right
 * now, and PostgreSQL re-checks `expires_at <= shardrelay.clock()` on the newest row version when it
 * locks one, so a lease renewed by its owner a moment ago is never taken, and two takers never
 * both get the same lease.
 */
export async function takeOverExpiredLeases(
  db: Kysely<Database>,
  me: LeaseMember,
  generation: string,
  leaseTimeoutSeconds: number,
  limit: number,
): Promise<{ readonly shard: number; readonly previousOwner: string; readonly expiredForSeconds: number }[]> {
  if (limit <= 0) return [];
  const { rows } = await sql<{ shard: number; previous_owner: string; expired_for: number }>`
    WITH expired AS (
      SELECT generation, shard, owner AS previous_owner, expires_at AS expired_at
        FROM shardrelay.shard_lease
       WHERE generation = ${generation}::bigint
         AND expires_at <= shardrelay.clock()
         AND owner_instance <> ${me.instance}
         AND ${lockHeld(me.lock)}
       ORDER BY random()
       LIMIT ${limit}
         FOR UPDATE SKIP LOCKED
    )
    UPDATE shardrelay.shard_lease l
       SET owner = ${me.replicaId},
           owner_instance = ${me.instance},
           acquired_at = shardrelay.clock(),
           renewed_at = shardrelay.clock(),
           expires_at = shardrelay.clock() + ${leaseInterval(leaseTimeoutSeconds)}
      FROM expired
     WHERE l.generation = expired.generation AND l.shard = expired.shard
    RETURNING l.shard, expired.previous_owner,
              extract(epoch FROM shardrelay.clock() - expired.expired_at)::float8 AS expired_for`.execute(db);
  return rows.map((r) => ({
    shard: r.shard,
    previousOwner: r.previous_owner,
    expiredForSeconds: r.expired_for,
  }));
}

/**
 * Takes up to `limit` shards that have no lease row in `generation` (never taken, or given back).
 * Two replicas inserting the same shard: the unique key makes the second wait for the first's
 * commit, then `DO NOTHING` leaves it to the first.
 */
export async function acquireFreeShards(
  db: Kysely<Database>,
  me: LeaseMember,
  config: ShardConfig,
  leaseTimeoutSeconds: number,
  limit: number,
): Promise<number[]> {
  if (limit <= 0) return [];
  const { rows } = await sql<{ shard: number }>`
    INSERT INTO shardrelay.shard_lease
      (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
    SELECT ${config.generation}::bigint, s, ${me.replicaId}, ${me.instance},
           shardrelay.clock(), shardrelay.clock(), shardrelay.clock() + ${leaseInterval(leaseTimeoutSeconds)}
      FROM generate_series(0, ${config.shardCount - 1}) AS s
     WHERE NOT EXISTS (SELECT 1 FROM shardrelay.shard_lease l
                        WHERE l.generation = ${config.generation}::bigint AND l.shard = s)
       AND ${lockHeld(me.lock)}
     ORDER BY random()
     LIMIT ${limit}
    ON CONFLICT (generation, shard) DO NOTHING
    RETURNING shard`.execute(db);
  return rows.map((r) => r.shard);
}

export interface Balance {
  /** Live members (heartbeat within their lease timeout), this process included. */
  readonly live: number;
  /** Live processes that use this process's replica id, this one included. */
  readonly sameReplicaId: number;
  /** Shards of the generation with an unexpired lease. */
  readonly leased: number;
  /**
   * Shards of the generation whose lease of another process has expired (an evicted member's, or
   * one that was not renewed): what takeOverExpiredLeases can take.
   */
  readonly expired: number;
  /** Shards of the generation without a lease row: what acquireFreeShards can take. */
  readonly unleased: number;
  /** The fewest valid leases any other live member on this generation holds; null if none. */
  readonly othersMinHeld: number | null;
  /** Milliseconds until the first unexpired lease of another process (any generation) expires; null if none. */
  readonly nextForeignExpiryMs: number | null;
  /** Unexpired leases of other generations: batches of another shard count may still be running. */
  readonly otherGenerationLeases: number;
}

/** Membership and lease counts, read in one snapshot. */
export async function readBalance(
  db: Kysely<Database>,
  me: LeaseMember,
  config: ShardConfig,
): Promise<Balance> {
  const generation = config.generation;
  const { rows } = await sql<{
    live: number;
    same_id: number;
    leased: number;
    expired: number;
    lease_rows: number;
    others_min_held: number | null;
    next_expiry_ms: number | null;
    other_generations: number;
  }>`
    WITH live AS (
      SELECT instance, replica_id, generation
        FROM shardrelay.replica
       WHERE heartbeat_at + lease_timeout_seconds * interval '1 second' > shardrelay.clock()
    ), valid AS (
      SELECT shard, owner_instance, expires_at
        FROM shardrelay.shard_lease
       WHERE generation = ${generation}::bigint AND expires_at > shardrelay.clock()
    ), others AS (
      SELECT count(v.shard) AS held
        FROM live m LEFT JOIN valid v ON v.owner_instance = m.instance
       WHERE m.generation = ${generation}::bigint AND m.instance <> ${me.instance}
       GROUP BY m.instance
    )
    SELECT (SELECT count(*) FROM live)::int AS live,
           (SELECT count(*) FROM live WHERE replica_id = ${me.replicaId})::int AS same_id,
           (SELECT count(*) FROM valid)::int AS leased,
           (SELECT count(*) FROM shardrelay.shard_lease
             WHERE generation = ${generation}::bigint AND expires_at <= shardrelay.clock()
               AND owner_instance <> ${me.instance})::int AS expired,
           (SELECT count(*) FROM shardrelay.shard_lease
             WHERE generation = ${generation}::bigint AND shard < ${config.shardCount})::int AS lease_rows,
           (SELECT min(held) FROM others)::int AS others_min_held,
           (SELECT extract(epoch FROM min(expires_at) - shardrelay.clock()) * 1000
              FROM shardrelay.shard_lease
             WHERE expires_at > shardrelay.clock() AND owner_instance <> ${me.instance})::float8 AS next_expiry_ms,
           (SELECT count(*) FROM shardrelay.shard_lease
             WHERE generation <> ${generation}::bigint AND expires_at > shardrelay.clock())::int AS other_generations`.execute(
    db,
  );
  const row = rows[0];
  return {
    live: Math.max(1, row?.live ?? 1),
    sameReplicaId: row?.same_id ?? 1,
    leased: row?.leased ?? 0,
    expired: row?.expired ?? 0,
    unleased: Math.max(0, config.shardCount - (row?.lease_rows ?? 0)),
    othersMinHeld: row?.others_min_held ?? null,
    nextForeignExpiryMs: row?.next_expiry_ms ?? null,
    otherGenerationLeases: row?.other_generations ?? 0,
  };
}
