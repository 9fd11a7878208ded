import { sql, type Kysely } from 'kysely';

/**
 * The liveness lock of each replica process (src/relay/livenessLock.ts, src/relay/shardLeases.ts).
 *
 * A replica holds a session-level advisory lock, `(LIVENESS_LOCK_CLASS, lock_key)`, on a dedicated
 * connection for as long as it is a member; PostgreSQL releases it the moment that session ends
 * (the process crashed, was killed, or its connection was cut). Another replica that can take the
 * lock therefore knows the owner's session is gone and takes its shards at once, instead of after
 * the lease timeout.
 *
 *   lock_key  The second key of the advisory lock; chosen at random by the process, a new one on
 *             every re-connection. NULL for a replica that holds no liveness lock (a version from
 *             before this migration, during a rolling upgrade): such a row is never evicted by the
 *             lock check, only by its lease timeout, as before.
 *   lock_pid  The backend pid of the session that holds the lock: lease writes are fenced on
 *             "that pid still holds that lock" (pg_locks), and people can find the session in
 *             pg_stat_activity.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE shardrelay.replica ADD COLUMN lock_key integer, ADD COLUMN lock_pid integer`.execute(
    db,
  );
}
