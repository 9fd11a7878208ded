import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';
import { CONFIG_CHANNEL } from './outboxListener.js';
import { evictDeadReplicas, lockHeld, type LivenessLockHandle } from './leaseStatements.js';
import { LivenessLock } from './livenessLock.js';
import type { ShardConfig } from './shardConfig.js';
import type { ShardOwnership } from './shardOwnership.js';

/**
 * Shard leases: which replica runs which shard.
 *
 * A shard lease is a database-backed lease with an explicit term identity (generation): one row of
 * `shardrelay.shard_lease` per (generation, shard), where the generation is the shard-config
 * generation (`shard_config.generation`, bumped by every change of the shard count) the lease was
 * taken under. A lease of generation 3 says nothing about generation 4: a change of the count starts
 * new terms instead of stretching old ones, so an old lease can never pass for a current one.
 *
 * Correctness never depends on these leases. Two replicas that run the same shard at the same time
 * (during a hand-off, after a stall, with one replica's view out of date) only compete for rows: the
 * claim locks rows `FOR UPDATE SKIP LOCKED` and PostgreSQL re-checks `status = 'pending'` on the
 * newest row version (relay/claims.ts), so one transaction at most sends a row. Leases spread the
 * work and keep replicas from spending claims on each other's rows; that is all. For the same
 * reason the claim does not check a fencing token.
 *
 * Fields, who writes them, who reads them:
 *
 *   shard_lease.generation, shard  The key. Written by the taker (acquireFreeShards,
 *                                  takeOverExpiredLeases).
 *   shard_lease.owner              The replica id, for people. Taker; read by the views and logs.
 *   shard_lease.owner_instance     A random token of the owning process: the identity every check
 *                                  uses, so two processes started with one replica id never both
 *                                  believe they hold a lease. Taker; read by renewLeases (only
 *                                  the owner renews), releaseLeases, leaveMembership,
 *                                  readBalance and the views.
 *   shard_lease.acquired_at        When this owner took it. Taker; views.
 *   shard_lease.renewed_at,        PostgreSQL's clock (clock_timestamp()), never a Node clock, so
 *     expires_at                   replicas whose clocks disagree still agree on expiry. Owner
 *                                  (renewLeases, every heartbeat) and taker; expires_at is read by
 *                                  takers (only an expired lease may be taken over), readBalance
 *                                  and the views.
 *   replica.instance, replica_id,  Written once by the process's first heartbeat; views.
 *     hostname, pid, started_at
 *   replica.heartbeat_at           The process, every heartbeat. Read by every replica to count
 *                                  the live members: heartbeat_at + lease_timeout_seconds > now.
 *   replica.lease_timeout_seconds  The process's own setting: how long it stays a member without
 *                                  a heartbeat (its leases last as long). Read with heartbeat_at.
 *   replica.generation             The shard generation the process runs now; readBalance (only
 *                                  members already on the current generation can be short of
 *                                  shards) and the views ("all replicas switched?").
 *   replica.lock_key, lock_pid     The process's liveness lock and the session holding it
 *                                  (migration 0008, relay/leaseStatements.ts). Written by every
 *                                  heartbeat; read by the peers' eviction check, and by the fence
 *                                  of this process's own lease writes.
 *
 * Every operation below is one statement in its own transaction; no lock is held between them,
 * and none touches `shard_config`, so a shard-count migration never waits on a replica.
 *
 * What a replica does on every refresh (the scheduler calls it every tick, a config NOTIFY or a
 * lease expiry brings it forward): heartbeat; drop its leases of other generations (the scheduler
 * has stopped those loops before calling refresh); delete the leases it chose to give back on the
 * previous refresh (their loops have stopped since, so a hand-off never overlaps); renew the rest
 * (what comes back is what it holds; a lease someone took over is gone); then balance against the
 * live members: take expired leases and free shards up to its share, or mark leases above it for
 * give-back. Its share is ceil(N / members), except floor(N / members) while some member on the
 * current generation holds fewer than floor (so shards flow to a newcomer instead of back to the
 * replicas that just gave them up). Held counts end within one of each other. After a change of
 * the shard count it takes nothing while another replica still holds leases of the old count
 * (at most one lease timeout), so the two counts' batches do not compete for the same rows.
 *
 * Leaving (graceful shutdown, after the loops stopped): leaveMembership deletes the membership
 * row and every lease in one transaction and NOTIFYs, so the others re-take the shards at once.
 * Joining, giving back and dropping an old generation NOTIFY too (shardrelay_config); the
 * listeners turn that into an immediate refresh, with the tick as the fallback.
 *
 * Heartbeats also run on a timer of their own (every min(tick, lease timeout / 3)), so a tick that
 * waits for a slow in-flight batch does not let the leases lapse.
 *
 * Dead replicas are found by their liveness lock, not by their lease (relay/leaseStatements.ts):
 * every member holds a session-level advisory lock on a connection of its own
 * (relay/livenessLock.ts), and every `PEER_CHECK_MS` each member runs, on that connection, one
 * statement that tries the other members' locks. A lock it can take belongs to a session that is
 * gone, so that member is evicted (membership row and leases deleted, NOTIFY) and the others take
 * its shards as free shards in the refresh the NOTIFY triggers. A SIGKILLed replica's shards are
 * thus taken within a check period plus a refresh, not a lease timeout (bench/RESULTS.md).
 *
 * Why the lock and not pg_stat_activity: the lock is exact and atomic. "I could take it" means the
 * session ended, and taking it (until the evictor's commit) leaves no window in which the owner
 * could come back under the same identity half-way through the eviction. pg_stat_activity would
 * need every pid of the replica's pools (which come and go), pids are reused, and reading it does
 * not exclude anything. A blocking wait on each peer's lock would notice without polling, but needs
 * a connection per watched peer and a way to re-target it as members change; the check costs one
 * short statement per member every 100 ms (measured in test/relay/leaseStatements.test.ts).
 *
 * The lease timeout stays for what the lock cannot see: a process that is alive but not running
 * (SIGSTOP, a long GC pause, a frozen VM) keeps its session and its lock, so it loses its shards
 * only when its leases expire, as before. Membership rows without a lock (replicas of a version
 * before migration 0008, during a rolling upgrade) are never evicted by the check either.
 *
 * Life of a process's membership (LEASE_STATES; the figures are the defaults):
 *
 *   starting ──liveness lock taken (first refresh)──▶ member
 *   member ──lock session 'error'/'end', a failed peer check, or a renewal that finds the lock
 *            not held (the fence below)──▶ steppedBack
 *   steppedBack ──left (membership and leases deleted, NOTIFY), then a new session and a new
 *                 lock (retried after 100 ms, doubling to 1 s: a tick)──▶ member
 *   any ──release()──▶ left
 *
 *   member       heartbeats (1 s), renews, balances and takes shards; checks its peers every
 *                PEER_CHECK_MS (100 ms) on the lock session. `holds` is true for held leases
 *                until the last renewal's start + the lease timeout.
 *   steppedBack  `holds` is false from the moment the session's event arrives (the same event
 *                loop turn), refreshes return no shard (the scheduler stops the loops; in-flight
 *                batches finish), no heartbeat, no lease write. Its peers evict it at their next
 *                check (≤ 100 ms): its shards go to them. The trust deadline is reset, so after
 *                re-taking the lock nothing is run before a renewal has said what is still ours.
 *   member again the next refresh heartbeats (a new membership row: "joined", NOTIFY) and takes
 *                a fair share like a newcomer; the peers give back what is above theirs. It
 *                leaves before re-joining even when no peer has evicted it yet (a blip shorter
 *                than a check period): then its shards move once, but what follows a loss is
 *                always the same, and never depends on the race between a peer's check and
 *                the re-lock.
 *
 * So a process that loses its lock session stops starting batches before any peer can have taken
 * its shards (the loss reaches it as a socket event within milliseconds; a peer needs a check
 * period, then a refresh), and at most its batches already in flight overlap the new owner's.
 *
 * Fence: every statement that takes or extends a lease (renewLeases, takeOverExpiredLeases,
 * acquireFreeShards) writes only while this process's lock session still holds its lock
 * (`lockHeld`, read from pg_locks in the same statement). A process whose session is gone in
 * PostgreSQL but whose socket has not said so yet (a half-open connection) learns it from its
 * next renewal, which then renews nothing and steps back; and an eviction is never undone by a
 * late renewal of the evicted. One window remains: an insert of a free shard that committed just
 * after a concurrent eviction's snapshot leaves a lease with no member; it expires by the lease
 * timeout.
 *
 * Stalls: the process trusts its leases only until its last successful renewal started plus the
 * lease timeout, by its own monotonic clock (`holds`), which is never later than their expiry in
 * the database. A process that was paused past that (SIGSTOP, a long GC pause, a frozen VM) starts
 * no new batch when it wakes: it renews first, and the renewal returns only the leases nobody took
 * over meanwhile. A batch that was in flight during the pause finishes; its row locks kept everyone
 * else off its rows, or PostgreSQL ended its transaction and the rows are pending again.
 * The real-time worker thread gets the same deadline by the wall clock with its shard list
 * (`validUntil`, relay/replica.ts), so it too starts nothing after such a pause until the main
 * thread's renewal has re-validated its shards.
 */

export interface ShardLeasesOptions {
  /** A connection of the control pool; every statement here is short. */
  readonly db: Kysely<Database>;
  readonly replicaId: string;
  /** How long a lease and a membership last without a heartbeat. */
  readonly leaseTimeoutSeconds: number;
  /** The scheduler tick; heartbeats run at least this often. */
  readonly tickSeconds: number;
  readonly logger: Logger;
  /** Asks for an early refresh (a scheduler tick), e.g. when another replica's lease is about to expire. */
  readonly requestRefresh?: () => void;
  /** The process token; a fresh random one by default. */
  readonly instance?: string;
  /** The database, for the liveness lock's own connection. */
  readonly connectionString: string;
  /** Called when `holds` may have changed between refreshes (stepped back, member again). */
  readonly onChange?: () => void;
  /** How often the peers' liveness locks are checked; default PEER_CHECK_MS. */
  readonly peerCheckMs?: number;
}

/**
 * How often a member checks its peers' liveness locks. A SIGKILLed replica's shards are taken
 * within this plus a refresh (a NOTIFY away), after PostgreSQL has ended the dead session, which
 * on a saturated machine alone took up to 0.7 s (bench/RESULTS.md); so the check is kept short
 * to leave the 1 s target that margin (250 ms was measured first: 0.14-0.82 s takeovers at load
 * 7-21). Cost, measured (test/relay/leaseStatements.test.ts, 2 cores at load 11): 0.1 ms of
 * PostgreSQL time per check (0.9-2.4 ms round trip), so 3 replicas at 10 checks/s spend ~3 ms of
 * PostgreSQL CPU per second, ~0.3% of a core. A check that finds nobody dead writes nothing, so
 * it costs no WAL flush.
 */
export const PEER_CHECK_MS = 100;
/** Re-taking a lost liveness lock: the first retry after this, doubling up to RELOCK_MAX_MS. */
const RELOCK_FIRST_MS = 100;
const RELOCK_MAX_MS = 1_000;

/** The membership states of a process (see the comment at the top of this file). */
export const LEASE_STATES = {
  starting: 'starting',
  member: 'member',
  steppedBack: 'steppedBack',
  left: 'left',
} as const;
export type LeaseState = (typeof LEASE_STATES)[keyof typeof LEASE_STATES];

interface Member {
  readonly instance: string;
  readonly replicaId: string;
  /** The liveness lock held now; lease writes are fenced on it. */
  readonly lock?: LivenessLockHandle | undefined;
}

/** When a renewal started, by this thread's monotonic clock and by the wall clock. */
interface Renewal {
  readonly started: number;
  readonly startedWall: number;
}

// ---------------------------------------------------------------------------------------------
// The lease operations, one statement each.
// ---------------------------------------------------------------------------------------------

const leaseInterval = (seconds: number) => sql`${seconds} * interval '1 second'`;

/** Upserts this process's membership row. `joined` is true when the row was created now. */
export async function heartbeat(
  db: Kysely<Database>,
  me: Member,
  generation: string,
  leaseTimeoutSeconds: number,
): Promise<{ readonly joined: boolean }> {
  const { rows } = await sql<{ joined: boolean }>`
    INSERT INTO shardrelay.replica AS r
      (instance, replica_id, hostname, pid, lease_timeout_seconds, generation, lock_key, lock_pid)
    VALUES (${me.instance}, ${me.replicaId}, ${os.hostname()}, ${process.pid}, ${leaseTimeoutSeconds},
            ${generation}::bigint, ${me.lock?.key ?? null}::int, ${me.lock?.pid ?? null}::int)
    ON CONFLICT (instance) DO UPDATE SET
      heartbeat_at = clock_timestamp(),
      lease_timeout_seconds = EXCLUDED.lease_timeout_seconds,
      generation = EXCLUDED.generation,
      lock_key = EXCLUDED.lock_key,
      lock_pid = EXCLUDED.lock_pid
    RETURNING (xmax = 0) AS joined`.execute(db);
  return { joined: rows[0]?.joined === true };
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
  me: Member,
  generation: string,
): Promise<number> {
  const { rows } = await sql<{ dropped: number }>`
    WITH mine AS (
      DELETE FROM shardrelay.shard_lease
       WHERE generation <> ${generation}::bigint
         AND (owner_instance = ${me.instance} OR expires_at < clock_timestamp())
      RETURNING owner_instance
    ), gone AS (
      DELETE FROM shardrelay.replica
       WHERE heartbeat_at < clock_timestamp() - interval '15 minutes'
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
  me: Member,
  generation: string,
  leaseTimeoutSeconds: number,
): Promise<{ readonly lockHeld: boolean; readonly shards: number[] }> {
  const { rows } = await sql<{ lock_held: boolean; shards: number[] }>`
    WITH fence AS (SELECT ${lockHeld(me.lock)} AS held), renewed AS (
      UPDATE shardrelay.shard_lease
         SET renewed_at = clock_timestamp(),
             expires_at = clock_timestamp() + ${leaseInterval(leaseTimeoutSeconds)}
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
  me: Member,
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
export async function leaveMembership(db: Kysely<Database>, me: Member): Promise<number[]> {
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
 * now, and PostgreSQL re-checks `expires_at <= clock_timestamp()` on the newest row version when it
 * locks one, so a lease renewed by its owner a moment ago is never taken, and two takers never
 * both get the same lease.
 */
export async function takeOverExpiredLeases(
  db: Kysely<Database>,
  me: Member,
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
         AND expires_at <= clock_timestamp()
         AND owner_instance <> ${me.instance}
         AND ${lockHeld(me.lock)}
       ORDER BY random()
       LIMIT ${limit}
         FOR UPDATE SKIP LOCKED
    )
    UPDATE shardrelay.shard_lease l
       SET owner = ${me.replicaId},
           owner_instance = ${me.instance},
           acquired_at = clock_timestamp(),
           renewed_at = clock_timestamp(),
           expires_at = clock_timestamp() + ${leaseInterval(leaseTimeoutSeconds)}
      FROM expired
     WHERE l.generation = expired.generation AND l.shard = expired.shard
    RETURNING l.shard, expired.previous_owner,
              extract(epoch FROM clock_timestamp() - expired.expired_at)::float8 AS expired_for`.execute(db);
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
  me: Member,
  config: ShardConfig,
  leaseTimeoutSeconds: number,
  limit: number,
): Promise<number[]> {
  if (limit <= 0) return [];
  const { rows } = await sql<{ shard: number }>`
    INSERT INTO shardrelay.shard_lease
      (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
    SELECT ${config.generation}::bigint, s, ${me.replicaId}, ${me.instance},
           clock_timestamp(), clock_timestamp(), clock_timestamp() + ${leaseInterval(leaseTimeoutSeconds)}
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
  /** The fewest valid leases any other live member on this generation holds; null if none. */
  readonly othersMinHeld: number | null;
  /** Milliseconds until the first unexpired lease of another process (any generation) expires; null if none. */
  readonly nextForeignExpiryMs: number | null;
  /** Unexpired leases of other generations: batches of another shard count may still be running. */
  readonly otherGenerationLeases: number;
}

/** Membership and lease counts, read in one snapshot. */
export async function readBalance(db: Kysely<Database>, me: Member, generation: string): Promise<Balance> {
  const { rows } = await sql<{
    live: number;
    same_id: number;
    leased: number;
    others_min_held: number | null;
    next_expiry_ms: number | null;
    other_generations: number;
  }>`
    WITH live AS (
      SELECT instance, replica_id, generation
        FROM shardrelay.replica
       WHERE heartbeat_at + lease_timeout_seconds * interval '1 second' > clock_timestamp()
    ), valid AS (
      SELECT shard, owner_instance, expires_at
        FROM shardrelay.shard_lease
       WHERE generation = ${generation}::bigint AND expires_at > clock_timestamp()
    ), others AS (
      SELECT count(v.shard) AS held
        FROM live m LEFT JOIN valid v ON v.owner_instance = m.instance
       WHERE m.generation = ${generation}::bigint AND m.instance <> ${me.instance}
       GROUP BY m.instance
    )
    SELECT (SELECT count(*) FROM live)::int AS live,
           (SELECT count(*) FROM live WHERE replica_id = ${me.replicaId})::int AS same_id,
           (SELECT count(*) FROM valid)::int AS leased,
           (SELECT min(held) FROM others)::int AS others_min_held,
           (SELECT extract(epoch FROM min(expires_at) - clock_timestamp()) * 1000
              FROM shardrelay.shard_lease
             WHERE expires_at > clock_timestamp() AND owner_instance <> ${me.instance})::float8 AS next_expiry_ms,
           (SELECT count(*) FROM shardrelay.shard_lease
             WHERE generation <> ${generation}::bigint AND expires_at > clock_timestamp())::int AS other_generations`.execute(
    db,
  );
  const row = rows[0];
  return {
    live: Math.max(1, row?.live ?? 1),
    sameReplicaId: row?.same_id ?? 1,
    leased: row?.leased ?? 0,
    othersMinHeld: row?.others_min_held ?? null,
    nextForeignExpiryMs: row?.next_expiry_ms ?? null,
    otherGenerationLeases: row?.other_generations ?? 0,
  };
}

/**
 * How many shards this replica should hold: ceil(N / live), but only floor(N / live) while another
 * member on the current generation holds fewer than floor (it gets the remainder first).
 */
export function shareOf(shardCount: number, live: number, othersMinHeld: number | null): number {
  const floor = Math.floor(shardCount / live);
  const ceil = Math.ceil(shardCount / live);
  return othersMinHeld !== null && othersMinHeld < floor ? floor : ceil;
}

// ---------------------------------------------------------------------------------------------
// The ownership a replica runs with.
// ---------------------------------------------------------------------------------------------

/** Lease-based shard ownership: the default of `startRelay`. A single replica holds every shard. */
export class ShardLeases implements ShardOwnership {
  readonly instance: string;
  readonly #options: ShardLeasesOptions;
  readonly #lock: LivenessLock;
  #state: LeaseState = LEASE_STATES.starting;
  /** performance.now() of the last step-back, for the log line of the re-join. */
  #steppedBackAt = 0;
  #relockAttempts = 0;
  #relockTimer: NodeJS.Timeout | undefined;
  #peerTimer: NodeJS.Timeout | undefined;
  #checkingPeers = false;
  readonly #leaseMs: number;
  readonly #heartbeatMs: number;
  /** Generation and shard count of the last refresh; the leases below belong to it. */
  #config: ShardConfig | undefined;
  /** Leases this process owned at its last renewal (plus those taken since). */
  readonly #held = new Set<number>();
  /** Held leases chosen for give-back: no new batch; deleted at the next refresh. */
  readonly #releasing = new Set<number>();
  /** performance.now() until which the held leases are certainly still ours in the database. */
  #validUntil = 0;
  /**
   * The same moment by the wall clock (Date.now()), for the real-time worker thread (`validUntil`):
   * the two threads share no monotonic clock, and a deadline rather than a flag, because a paused
   * process resumes both threads at once, and the worker must not trust a list it got before the pause.
   */
  #validUntilWall = 0;
  #lastRenewalStart: number | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #heartbeatTimer: NodeJS.Timeout | undefined;
  #expiryTimer: NodeJS.Timeout | undefined;
  #joined = false;
  #stopped = false;
  #heartbeatFailing = false;
  #warnedSameId = 1;
  #waitingForOldGeneration = false;
  /** performance.now() when this process first saw the current generation. */
  #generationSeenAt = 0;

  constructor(options: ShardLeasesOptions) {
    this.#options = options;
    this.instance = options.instance ?? randomUUID();
    this.#lock = new LivenessLock({
      connectionString: options.connectionString,
      onLost: (reason) => this.#stepBack(reason),
    });
    this.#leaseMs = options.leaseTimeoutSeconds * 1000;
    this.#heartbeatMs = Math.min(options.tickSeconds, options.leaseTimeoutSeconds / 3) * 1000;
  }

  /** Where this process is in its membership (LEASE_STATES). */
  get state(): LeaseState {
    return this.#state;
  }

  /** This process as the lease statements see it, with the liveness lock it holds now. */
  get #me(): Member {
    return { instance: this.instance, replicaId: this.#options.replicaId, lock: this.#lock.handle };
  }

  /** True while this process may start a batch of `shard`: it holds the lease and it cannot have expired. */
  holds(shard: number): boolean {
    return (
      this.#state === LEASE_STATES.member &&
      !this.#stopped &&
      this.#held.has(shard) &&
      !this.#releasing.has(shard) &&
      performance.now() < this.#validUntil
    );
  }

  /**
   * Date.now() until which `holds(shard)` stays true (0 if it is false now): when the last
   * successful renewal started plus the lease timeout, the same deadline `holds` uses.
   */
  validUntil(shard: number): number {
    return this.holds(shard) ? this.#validUntilWall : 0;
  }

  refresh(config: ShardConfig): Promise<readonly number[]> {
    return this.#serially(() => this.#refresh(config));
  }

  /** Gives every lease back at once and leaves the membership (graceful shutdown, loops stopped). */
  release(): Promise<void> {
    return this.#serially(async () => {
      this.#stopped = true;
      this.#state = LEASE_STATES.left;
      clearInterval(this.#heartbeatTimer);
      clearInterval(this.#peerTimer);
      clearTimeout(this.#expiryTimer);
      clearTimeout(this.#relockTimer);
      try {
        if (!this.#joined) return;
        const released = await leaveMembership(this.#options.db, this.#me);
        this.#held.clear();
        this.#options.logger.info({ shards: released }, 'left the membership; shard leases released');
      } finally {
        // After the leave: until then a peer must not find the lock free and evict us half-way.
        await this.#lock.close();
      }
    });
  }

  /** starting → member: takes the liveness lock and starts checking the peers. */
  async #becomeMember(): Promise<void> {
    const lock = await this.#lock.acquire();
    if (this.#stopped) return void (await this.#lock.close());
    this.#state = LEASE_STATES.member;
    this.#relockAttempts = 0;
    clearInterval(this.#peerTimer);
    this.#peerTimer = setInterval(
      () => void this.#checkPeers(),
      this.#options.peerCheckMs ?? PEER_CHECK_MS,
    ).unref();
    this.#options.logger.debug({ lockKey: lock.key, lockPid: lock.pid }, 'liveness lock taken');
  }

  /**
   * member → steppedBack, at once (called from the lock session's events): no batch starts from
   * here on, the loops are stopped by the refresh this asks for, and the lock is re-taken.
   */
  #stepBack(reason: string): void {
    if (this.#state !== LEASE_STATES.member) return;
    this.#state = LEASE_STATES.steppedBack;
    this.#steppedBackAt = performance.now();
    // Trust nothing held before the loss, even once the lock is back: a renewal must say first.
    this.#validUntil = 0;
    this.#validUntilWall = 0;
    clearInterval(this.#peerTimer);
    this.#peerTimer = undefined;
    this.#options.logger.warn(
      { reason, shards: [...this.#held].sort((a, b) => a - b) },
      'liveness lock lost; stepping back: no new batch on any shard until the lock is re-taken (peers may take the shards meanwhile)',
    );
    this.#options.onChange?.();
    this.#options.requestRefresh?.();
    this.#scheduleRelock();
  }

  /** steppedBack → member: a new session and lock, retried with backoff; then a refresh re-joins. */
  #scheduleRelock(): void {
    clearTimeout(this.#relockTimer);
    const delay = Math.min(RELOCK_MAX_MS, RELOCK_FIRST_MS * 2 ** this.#relockAttempts);
    this.#relockTimer = setTimeout(() => {
      if (this.#state !== LEASE_STATES.steppedBack || this.#stopped) return;
      let released: readonly number[] = [];
      this.#serially(async () => {
        if (this.#state !== LEASE_STATES.steppedBack || this.#stopped) return;
        if (this.#joined) {
          // Leave first, then join as a newcomer: whether or not a peer has evicted us meanwhile
          // (a race between its check and this timer), what follows a loss is then always the
          // same, and the peers take our shards at the NOTIFY instead of at their next check.
          // Deleting our own rows needs no fence.
          released = await leaveMembership(this.#options.db, {
            instance: this.instance,
            replicaId: this.#options.replicaId,
          });
          this.#joined = false;
          this.#held.clear();
          this.#releasing.clear();
        }
        await this.#becomeMember();
      }).then(
        () => {
          if (this.#state !== LEASE_STATES.member) return;
          // A warning like the loss it ends, so the two show up together.
          this.#options.logger.warn(
            { steppedBackMs: Math.round(performance.now() - this.#steppedBackAt), released },
            'liveness lock re-taken; left and re-joining as a new member',
          );
          this.#options.requestRefresh?.();
          this.#options.onChange?.();
        },
        (error: unknown) => {
          this.#relockAttempts++;
          if (this.#relockAttempts === 1) {
            this.#options.logger.warn(
              { err: toError(error).message },
              'cannot re-take the liveness lock yet; retrying',
            );
          }
          this.#scheduleRelock();
        },
      );
    }, delay);
  }

  /** Evicts peers whose liveness session is gone; their shards are free for the refresh it asks for. */
  async #checkPeers(): Promise<void> {
    if (this.#checkingPeers || this.#state !== LEASE_STATES.member) return;
    this.#checkingPeers = true;
    try {
      const evicted = await this.#lock.run((client) => evictDeadReplicas(client, this.instance));
      if (!evicted || evicted.length === 0) return;
      for (const gone of evicted) {
        // A warning: a member died or lost its connection, which someone may want to know about.
        this.#options.logger.warn(
          {
            evictedReplica: gone.replicaId,
            evictedInstance: gone.instance,
            shards: gone.shards,
            sinceHeartbeatSeconds: Math.round(gone.sinceHeartbeatSeconds * 1000) / 1000,
          },
          'replica’s liveness session is gone (process dead or disconnected); evicted it, its shards are free',
        );
      }
      this.#options.requestRefresh?.();
    } finally {
      this.#checkingPeers = false;
    }
  }

  #serially<T>(operation: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(operation, operation);
    this.#queue = run.catch(() => {});
    return run;
  }

  async #refresh(config: ShardConfig): Promise<readonly number[]> {
    if (this.#stopped) return [];
    if (this.#state === LEASE_STATES.starting) await this.#becomeMember();
    // Stepped back: nothing is ours to run until the lock is back (its timer asks for a refresh).
    if (this.#state !== LEASE_STATES.member) return [];
    const { db, logger } = this.#options;
    const L = this.#options.leaseTimeoutSeconds;
    if (this.#config?.generation !== config.generation) this.#generationSeenAt = performance.now();
    if (this.#config && this.#config.generation !== config.generation) {
      // The scheduler stopped every loop of the old generation before calling us.
      logger.info(
        { from: this.#config.generation, to: config.generation, shardCount: config.shardCount },
        'dropping shard leases of the old generation',
      );
      this.#held.clear();
      this.#releasing.clear();
    }
    this.#config = config;

    const renewal = await this.#renew(config.generation);
    if (!renewal) return [];
    await dropOtherGenerations(db, this.#me, config.generation);
    if (this.#releasing.size > 0) {
      const given = await releaseLeases(db, this.#me, config.generation, [...this.#releasing]);
      for (const shard of this.#releasing) this.#held.delete(shard);
      this.#releasing.clear();
      logger.info({ shards: given.sort((a, b) => a - b) }, 'gave shard leases back to rebalance');
    }

    const balance = await readBalance(db, this.#me, config.generation);
    const share = shareOf(config.shardCount, balance.live, balance.othersMinHeld);
    const waitedMs = performance.now() - this.#generationSeenAt;
    if (balance.otherGenerationLeases > 0 && waitedMs < this.#leaseMs) {
      // A shard-count change is under way and some replica still finishes batches of the other
      // count. Its rows overlap ours (id % 8 = 3 and id % 16 = 11 share rows), so start nothing
      // until it has let go: its refresh deletes those leases (and NOTIFYs) once its loops have
      // stopped. Not needed for correctness (row locks are), it keeps the two generations from
      // competing for the same rows and progress rows. Bounded by one lease timeout, so a replica
      // stuck in a slow batch cannot hold the switch up.
      if (!this.#waitingForOldGeneration) {
        logger.info(
          { leases: balance.otherGenerationLeases },
          'waiting for replicas to finish batches of the previous shard count before taking shards',
        );
      }
    } else if (this.#held.size < share) {
      if (balance.otherGenerationLeases > 0 && this.#waitingForOldGeneration) {
        logger.warn(
          { leases: balance.otherGenerationLeases, waitedSeconds: Math.round(waitedMs / 1000) },
          'leases of the previous shard count are still held after a lease timeout; taking shards anyway',
        );
      }
      const wanted = share - this.#held.size;
      const taken = await takeOverExpiredLeases(db, this.#me, config.generation, L, wanted);
      for (const t of taken) this.#held.add(t.shard);
      if (taken.length > 0) {
        logger.info(
          {
            shards: taken.map((t) => t.shard),
            from: [...new Set(taken.map((t) => t.previousOwner))],
            expiredForSeconds: Math.max(...taken.map((t) => t.expiredForSeconds)),
          },
          'took over expired shard leases',
        );
      }
      // Replicas woken by the same NOTIFY race for the same free shards; a loser tries the
      // remaining ones at once (a few rounds) instead of a tick later.
      const free: number[] = [];
      for (let round = 0; round < 3 && taken.length + free.length < wanted; round++) {
        const got = await acquireFreeShards(db, this.#me, config, L, wanted - taken.length - free.length);
        if (got.length === 0 && balance.leased + taken.length + free.length >= config.shardCount) break;
        free.push(...got);
      }
      for (const shard of free) this.#held.add(shard);
      if (free.length > 0) logger.info({ shards: free.sort((a, b) => a - b) }, 'took free shards');
    } else if (this.#held.size > share) {
      // Two steps, so a hand-off never overlaps: the loops of these shards stop now (they are no
      // longer returned), the leases are deleted at the next refresh.
      const extra = [...this.#held].sort((a, b) => b - a).slice(0, this.#held.size - share);
      for (const shard of extra) this.#releasing.add(shard);
      logger.info(
        { shards: extra, share, live: balance.live },
        'holding more than a fair share; stopping these shards to give them back',
      );
    }
    this.#waitingForOldGeneration = balance.otherGenerationLeases > 0 && waitedMs < this.#leaseMs;
    if (this.#state === LEASE_STATES.member) this.#trustUntil(renewal);

    if (balance.sameReplicaId > 1 && balance.sameReplicaId !== this.#warnedSameId) {
      logger.warn(
        { replicaId: this.#options.replicaId, processes: balance.sameReplicaId, instance: this.instance },
        'another running process uses this replica id; each process still holds leases of its own, but give every replica a unique --replica-id',
      );
    }
    this.#warnedSameId = balance.sameReplicaId;
    this.#scheduleExpiryWake(balance.nextForeignExpiryMs);
    this.#heartbeatTimer ??= setInterval(() => void this.#heartbeatOnly(), this.#heartbeatMs).unref();
    // The lock may have been lost while this refresh ran; then its shards are not ours to run.
    if (this.#state !== LEASE_STATES.member) return [];
    return [...this.#held].filter((shard) => !this.#releasing.has(shard)).sort((a, b) => a - b);
  }

  /**
   * The held leases are ours until the renewal that confirmed them started plus the lease timeout:
   * never later than their expires_at in the database, which PostgreSQL set after that start.
   */
  #trustUntil(renewal: Renewal): void {
    this.#validUntil = renewal.started + this.#leaseMs;
    this.#validUntilWall = renewal.startedWall + this.#leaseMs;
  }

  /** Heartbeat and renewal; returns when the renewal started (undefined: no lock, nothing done). */
  async #renew(generation: string): Promise<Renewal | undefined> {
    const { db, logger } = this.#options;
    const started = performance.now();
    // Lost the lock a moment ago: no heartbeat (a membership row without a lock would count as a
    // live member until its lease timeout, yet hold nothing) and no renewal (fenced anyway).
    if (!this.#lock.handle) return undefined;
    const startedWall = Date.now();
    if (this.#lastRenewalStart !== undefined && started - this.#lastRenewalStart > this.#leaseMs) {
      logger.warn(
        { stalledSeconds: Math.round((started - this.#lastRenewalStart) / 100) / 10 },
        'no lease renewal for longer than the lease timeout (process paused or database unreachable); re-validating leases before any new batch',
      );
    }
    const { joined } = await heartbeat(db, this.#me, generation, this.#options.leaseTimeoutSeconds);
    if (joined) {
      if (this.#joined)
        logger.warn(
          'membership row was gone (evicted after a lost liveness lock, or removed as long dead); joined again',
        );
      this.#joined = true;
      await sql`SELECT pg_notify(${CONFIG_CHANNEL}, 'replica joined')`.execute(db);
    }
    const renewal = await renewLeases(db, this.#me, generation, this.#options.leaseTimeoutSeconds);
    if (!renewal.lockHeld) {
      // The lock session is gone in PostgreSQL although its socket has not said so (or said so
      // just now): peers may evict us at any moment. Renewed nothing; step back.
      this.#stepBack('the lease renewal found the liveness lock not held');
      void this.#lock.close(); // a session in doubt; the re-lock opens a new one
    }
    const renewed = new Set(renewal.shards);
    const lost = [...this.#held].filter((shard) => !renewed.has(shard));
    if (lost.length > 0) {
      logger.warn(
        { shards: lost.sort((a, b) => a - b) },
        'shard leases were taken over by another replica while ours had expired (or after we lost the liveness lock); no new batch starts on them',
      );
    }
    this.#held.clear();
    for (const shard of renewed) this.#held.add(shard);
    for (const shard of this.#releasing) if (!renewed.has(shard)) this.#releasing.delete(shard);
    this.#lastRenewalStart = started;
    return { started, startedWall };
  }

  /** Between ticks: keeps membership and leases alive even while a tick waits for a slow batch. */
  async #heartbeatOnly(): Promise<void> {
    await this.#serially(async () => {
      if (this.#stopped || !this.#config || this.#state !== LEASE_STATES.member) return;
      try {
        const renewal = await this.#renew(this.#config.generation);
        if (renewal && this.#state === LEASE_STATES.member) this.#trustUntil(renewal);
        if (this.#heartbeatFailing) this.#options.logger.info('lease heartbeat works again');
        this.#heartbeatFailing = false;
      } catch (error) {
        if (!this.#heartbeatFailing) {
          this.#options.logger.warn(
            { err: toError(error).message },
            'lease heartbeat failed; retrying (loops stop claiming if it keeps failing past the lease timeout)',
          );
        }
        this.#heartbeatFailing = true;
      }
    }).catch(() => {});
  }

  /**
   * Another replica's lease that stops being renewed expires between two ticks; refresh right then,
   * so its shards are taken over one lease timeout after its last heartbeat, not up to a tick later.
   */
  #scheduleExpiryWake(inMs: number | null): void {
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    const wake = this.#options.requestRefresh;
    if (!wake || inMs === null || this.#stopped) return;
    this.#expiryTimer = setTimeout(wake, Math.max(0, inMs) + 25).unref();
  }
}
