import { exponentialDelayMs } from '../backoff.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';
import { evictDeadReplicas, type EvictedReplica, type LivenessLockHandle } from './leaseStatements.js';
import { LivenessLock } from './livenessLock.js';

/**
 * Liveness membership: whether this process is a member that may hold shard leases, found out by
 * its liveness lock; and finding the peers that are no longer alive. The leases themselves (share,
 * renewal, trust) are relay/shardLeases.ts's, which drives this module and is told of every change.
 *
 * Dead replicas are found by their liveness lock, not by their lease (relay/leaseStatements.ts):
 * every member holds a session-level advisory lock on a connection of its own
 * (relay/livenessLock.ts), and every `PEER_CHECK_MS` each member runs, on that connection, one
 * statement that tries the other members' locks. A lock it can take belongs to a session that is
 * gone, so that member is evicted (membership row deleted, its leases expired at once, NOTIFY)
 * and the others take its shards over in the refresh the NOTIFY triggers, each its share, without
 * racing each other (SKIP LOCKED). A SIGKILLed replica's shards are thus taken within a check
 * period plus one refresh, not a lease timeout (bench/RESULTS.md).
 *
 * Why the lock and not pg_stat_activity: the lock is exact and atomic. "I could take it" means the
 * session ended, and taking it (until the evictor's commit) leaves no window in which the owner
 * could come back under the same identity half-way through the eviction. pg_stat_activity would
 * need every pid of the replica's pools (which come and go), pids are reused, and reading it does
 * not exclude anything. A blocking wait on each peer's lock would notice without polling, but needs
 * a connection per watched peer and a way to re-target it as members change; the check costs one
 * short statement per member every 100 ms (measured in test/relay/leaseStatements.test.ts), and
 * none for a member that is alone.
 *
 * The lease timeout stays for what the lock cannot see: a process that is alive but not running
 * (SIGSTOP, a long GC pause, a frozen VM) keeps its session and its lock, so it loses its shards
 * only when its leases expire, as before. Membership rows without a lock (replicas of a version
 * before migration 0008, during a rolling upgrade) are never evicted by the check either.
 *
 * Life of a process's membership (LEASE_STATES; the figures are the defaults):
 *
 *   starting ──liveness lock taken (`join`, at the first refresh)──▶ member
 *   member ──lock session 'error'/'end', a failed peer check, or a renewal that finds the lock
 *            not held (`lost`: the fence of relay/shardLeases.ts)──▶ steppedBack
 *   steppedBack ──left (`leave`: membership and leases deleted, NOTIFY), then a new session and a
 *                 new lock (retried after 100 ms, doubling to 1 s: a tick)──▶ member
 *   any ──`stop` (release)──▶ left
 *
 *   member       heartbeats (1 s), renews, balances and takes shards (relay/shardLeases.ts);
 *                checks its peers every PEER_CHECK_MS (100 ms) on the lock session, while the
 *                last balance saw another live member (`peersPresent`). `holds` is
 *                true for held leases until the last renewal's start + the lease timeout.
 *   steppedBack  `holds` is false from the moment the session's event arrives (`onSteppedBack`
 *                runs in the same event loop turn), refreshes return no shard (the scheduler stops
 *                the loops; in-flight batches finish), no heartbeat, no lease write. Its peers
 *                evict it at their next check (≤ 100 ms): its shards go to them. The trust
 *                deadline is reset, so after re-taking the lock nothing is run before a renewal
 *                has said what is still ours.
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
 * (test/relay/livenessMembership.test.ts checks these transitions and times against PostgreSQL.)
 */

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
export const RELOCK_FIRST_MS = 100;
export const RELOCK_MAX_MS = 1_000;

/** The membership states of a process (see the comment at the top of this file). */
export const LEASE_STATES = {
  starting: 'starting',
  member: 'member',
  steppedBack: 'steppedBack',
  left: 'left',
} as const;
export type LeaseState = (typeof LEASE_STATES)[keyof typeof LEASE_STATES];

export interface LivenessMembershipOptions {
  /** The database, for the liveness lock's own connection. */
  readonly connectionString: string;
  /** This process's token: the peer check never evicts it. */
  readonly instance: string;
  readonly logger: Logger;
  /** How often the peers' liveness locks are checked; default PEER_CHECK_MS. */
  readonly peerCheckMs?: number;
  /**
   * Runs an operation in line with the lease operations (relay/shardLeases.ts's queue), so a
   * re-lock (leave, then a new lock) never interleaves with a refresh or a heartbeat.
   */
  readonly serially: <T>(operation: () => Promise<T>) => Promise<T>;
  /**
   * member → steppedBack, called in the turn of the event that found the loss: from here on no
   * lease is trusted (and the loops are to be stopped).
   */
  readonly onSteppedBack: (reason: string) => void;
  /**
   * Leaves the old membership before a new lock is taken (in the `serially` queue): deletes the
   * membership row and every lease still ours; returns the shards it let go of.
   */
  readonly leave: () => Promise<readonly number[]>;
  /** steppedBack → member again: a refresh should re-join now. */
  readonly onMemberAgain: () => void;
  /** Peers were evicted (logged here): their shards are free for a refresh now. */
  readonly onPeersEvicted: (evicted: readonly EvictedReplica[]) => void;
}

/** The membership state machine of one process, around its liveness lock. */
export class LivenessMembership {
  readonly #options: LivenessMembershipOptions;
  readonly #lock: LivenessLock;
  #state: LeaseState = LEASE_STATES.starting;
  /** performance.now() of the last step-back, for the log line of the re-join. */
  #steppedBackAt = 0;
  #relockAttempts = 0;
  #relockTimer: NodeJS.Timeout | undefined;
  #peerTimer: NodeJS.Timeout | undefined;
  #checkingPeers = false;
  /** Whether the last balance saw another live member (until told, assume so: check). */
  #peersPresent = true;

  constructor(options: LivenessMembershipOptions) {
    this.#options = options;
    this.#lock = new LivenessLock({
      connectionString: options.connectionString,
      onLost: (reason) => this.#stepBack(reason),
    });
  }

  get state(): LeaseState {
    return this.#state;
  }

  /** The liveness lock held now (the fence of every lease write); undefined unless a member. */
  get lock(): LivenessLockHandle | undefined {
    return this.#lock.handle;
  }

  /** starting → member: takes the liveness lock and starts checking the peers. Throws if it cannot. */
  async join(): Promise<void> {
    const lock = await this.#lock.acquire();
    if (this.#state === LEASE_STATES.left) return void (await this.#lock.close());
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
   * Whether another live member exists, as the last refresh's balance saw it (relay/shardLeases.ts,
   * every tick and at once on a join's NOTIFY). Alone, there is nobody to evict, so the peer check
   * runs no statement: a single replica, the common small deployment, runs 10 transactions a
   * second when idle instead of 20-21 (an idle relay with the null sink, 20 s windows alternated;
   * its process CPU, 29-43 ms/s after against 31-41 before, did not move beyond the noise).
   * A peer that joins and dies before any refresh has seen it still has a fresh heartbeat at the
   * next one, which turns the checks back on and evicts it then: at most a tick later.
   */
  set peersPresent(present: boolean) {
    this.#peersPresent = present;
  }

  /**
   * The lock is gone although its session has not said so (the fenced renewal found it not held):
   * member → steppedBack, and the session in doubt is closed; the re-lock opens a new one.
   */
  lost(reason: string): void {
    this.#stepBack(reason);
    void this.#lock.close();
  }

  /** any → left: no more checks or re-locks. The lock stays held until `close`. */
  stop(): void {
    this.#state = LEASE_STATES.left;
    clearInterval(this.#peerTimer);
    clearTimeout(this.#relockTimer);
  }

  /**
   * Ends the lock session (after the leave: until then a peer must not find the lock free and
   * evict us half-way).
   */
  close(): Promise<void> {
    return this.#lock.close();
  }

  /**
   * member → steppedBack, at once (called from the lock session's events): no batch starts from
   * here on, the loops are stopped by the refresh `onSteppedBack` asks for, and the lock is re-taken.
   */
  #stepBack(reason: string): void {
    if (this.#state !== LEASE_STATES.member) return;
    this.#state = LEASE_STATES.steppedBack;
    this.#steppedBackAt = performance.now();
    clearInterval(this.#peerTimer);
    this.#peerTimer = undefined;
    this.#options.onSteppedBack(reason);
    this.#scheduleRelock();
  }

  /** steppedBack → member: leave, then a new session and lock, retried with back-off. */
  #scheduleRelock(): void {
    clearTimeout(this.#relockTimer);
    const delay = exponentialDelayMs(
      { baseMs: RELOCK_FIRST_MS, capMs: RELOCK_MAX_MS },
      this.#relockAttempts + 1,
    );
    this.#relockTimer = setTimeout(() => {
      if (this.#state !== LEASE_STATES.steppedBack) return;
      let released: readonly number[] = [];
      this.#options
        .serially(async () => {
          if (this.#state !== LEASE_STATES.steppedBack) return;
          // Leave first, then join as a newcomer: whether or not a peer has evicted us meanwhile
          // (a race between its check and this timer), what follows a loss is then always the
          // same, and the peers take our shards at the NOTIFY instead of at their next check.
          // Deleting our own rows needs no fence.
          released = await this.#options.leave();
          await this.join();
        })
        .then(
          () => {
            if (this.#state !== LEASE_STATES.member) return;
            // A warning like the loss it ends, so the two show up together.
            this.#options.logger.warn(
              { steppedBackMs: Math.round(performance.now() - this.#steppedBackAt), released },
              'liveness lock re-taken; left and re-joining as a new member',
            );
            this.#options.onMemberAgain();
          },
          (error: unknown) => {
            if (this.#state !== LEASE_STATES.steppedBack) return;
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
    if (this.#checkingPeers || !this.#peersPresent || this.#state !== LEASE_STATES.member) return;
    this.#checkingPeers = true;
    try {
      const evicted = await this.#lock.run((client) => evictDeadReplicas(client, this.#options.instance));
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
      this.#options.onPeersEvicted(evicted);
    } finally {
      this.#checkingPeers = false;
    }
  }
}
