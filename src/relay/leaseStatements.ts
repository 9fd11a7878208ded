import { randomInt } from 'node:crypto';
import { sql, type RawBuilder } from 'kysely';
import type pg from 'pg';
import { CONFIG_CHANNEL } from './outboxListener.js';

/**
 * The statements of the liveness lock (relay/livenessLock.ts, relay/shardLeases.ts), one each.
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
 * dead or has lost its lock connection (and then steps back by itself, relay/shardLeases.ts). One
 * statement, one transaction:
 *
 *  - `pg_try_advisory_xact_lock` on the member's key succeeds only if no session holds it; the
 *    evictor then holds it until its commit, so the member cannot take the same key back
 *    half-way through (a re-connecting process picks another key anyway);
 *  - its membership row and all its leases are deleted, so the others count one member fewer and
 *    find its shards free in the same refresh;
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
       DELETE FROM shardrelay.shard_lease l USING dead
        WHERE l.owner_instance = dead.instance
       RETURNING l.owner_instance, l.shard, l.generation
     ), members AS (
       DELETE FROM shardrelay.replica r USING dead
        WHERE r.instance = dead.instance
       RETURNING r.instance, r.replica_id, r.heartbeat_at
     )
     SELECT m.instance, m.replica_id,
            extract(epoch FROM clock_timestamp() - m.heartbeat_at)::float8 AS since_heartbeat,
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
