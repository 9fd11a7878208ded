import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';
import {
  acquireFreeShards,
  announceJoin,
  dropOtherGenerations,
  heartbeat,
  leaveMembership,
  readBalance,
  releaseLeases,
  renewLeases,
  takeOverExpiredLeases,
  type LeaseMember,
} from './leaseStatements.js';
import { LEASE_STATES, LivenessMembership, type LeaseState } from './livenessMembership.js';
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
 *   shard_lease.renewed_at,        PostgreSQL's clock (shardrelay.clock()), never a Node clock, so
 *     expires_at                   replicas whose clocks disagree still agree on expiry. Owner
 *                                  (renewLeases, every heartbeat) and taker; expires_at also by the
 *                                  peer that evicts the owner (expired at once). expires_at is read
 *                                  by takers (only an expired lease may be taken over), readBalance
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
 * Renewing is the heartbeat's job (a timer of its own, every min(tick, lease timeout / 3)):
 * heartbeat, renew the leases (what comes back is what it holds; a lease someone took over is
 * gone), and once per generation (the scheduler has stopped the old one's loops before the refresh
 * that moved it to the new one) and once a lease timeout, drop its leases of other generations and
 * anyone's long-expired ones. A timer of its own, so a tick that waits for a slow in-flight batch
 * does not let the leases lapse.
 *
 * What a replica does on every refresh (the scheduler calls it every tick, a config NOTIFY or a
 * lease expiry brings it forward): renew first only when the heartbeat has not (the first refresh
 * of a membership, a new generation, or no renewal for two heartbeat intervals: the timer is
 * late); delete the leases it chose to give back on the previous refresh (their loops have
 * stopped since, so a hand-off never overlaps); then balance against the live members: take
 * expired leases and free shards up to its share, or mark leases above it for give-back. So the
 * refresh an eviction asks for is two short statements (read the balance, take the evicted
 * member's expired leases), where it was six or more (heartbeat, renewal, generation drop, balance,
 * take-over, then inserts that could collide with the other survivor's). Measured with
 * test/replicas/takeover.test.ts and the refresh's steps timed (2 cores, load average 24-30): that
 * refresh took 155-330 ms with the renewal in it (heartbeat, renewal and drop alone 131-182 ms,
 * each a commit), 56-74 ms without. A heartbeat lets a waiting refresh go first, at each of its
 * two turns (the membership row, then the renewal). Skipping the renewal changes nothing about
 * what is trusted: new leases are trusted until the last renewal's start plus the lease timeout,
 * never later than their expiry.
 *
 * Its share is ceil(N / members), except floor(N / members) while some member on the current
 * generation holds fewer than floor (so shards flow to a newcomer instead of back to the replicas
 * that just gave them up). Held counts end within one of each other. After a change of the shard
 * count it takes nothing while another replica still holds leases of the old count (at most one
 * lease timeout), so the two counts' batches do not compete for the same rows.
 *
 * Leaving (graceful shutdown, after the loops stopped): leaveMembership deletes the membership
 * row and every lease in one transaction and NOTIFYs, so the others re-take the shards at once.
 * Joining, giving back and dropping an old generation NOTIFY too (shardrelay_config); the
 * listeners turn that into an immediate refresh, with the tick as the fallback.
 *
 * Membership (relay/livenessMembership.ts): a process is a member while it holds its liveness
 * lock; a dead peer is evicted within a check period (100 ms) of PostgreSQL ending its session,
 * and its leases expire at once, for the survivors' next refresh; a process that loses its own
 * lock session steps back (`holds` false at once, no lease write) until it has left and taken a
 * new lock. The states and their transitions are documented there, next to their code; this
 * module trusts leases only while a member, and stops trusting them the moment it steps back.
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
 * (`validUntil`, wiring/replica.ts), so it too starts nothing after such a pause until the main
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

export { LEASE_STATES, PEER_CHECK_MS, type LeaseState } from './livenessMembership.js';

/** When a renewal started, by this thread's monotonic clock and by the wall clock. */
interface Renewal {
  readonly started: number;
  readonly startedWall: number;
}

// ---------------------------------------------------------------------------------------------
// The lease operations, one statement each, are in leaseStatements.ts; the share policy:
// ---------------------------------------------------------------------------------------------

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
  readonly #membership: LivenessMembership;
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
   * The deadline and shards of the last successful renewal, kept through a step-back (which zeroes
   * `#validUntil` and may clear `#held`): the leases in the table stay ours until then unless a
   * peer evicts us, and a batch already sending keeps its broker link until then
   * (`leaseUnexpired`).
   */
  #leaseDeadline = 0;
  #leasedShards: ReadonlySet<number> = new Set();
  /**
   * The same moment by the wall clock (Date.now()), for the real-time worker thread (`validUntil`):
   * the two threads share no monotonic clock, and a deadline rather than a flag, because a paused
   * process resumes both threads at once, and the worker must not trust a list it got before the pause.
   */
  #validUntilWall = 0;
  #lastRenewalStart: number | undefined;
  /** The last renewal of this membership (undefined after a step-back): what a refresh trusts by. */
  #lastRenewal: (Renewal & { readonly generation: string }) | undefined;
  /** Refreshes queued in `#serially`; a heartbeat lets them go first. */
  #refreshesWaiting = 0;
  #heartbeatQueued = false;
  /** The generation and time (performance.now()) of the last dropOtherGenerations. */
  #dropped: { readonly generation: string; readonly at: number } | undefined;
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
    this.#membership = new LivenessMembership({
      connectionString: options.connectionString,
      instance: this.instance,
      logger: options.logger,
      ...(options.peerCheckMs === undefined ? {} : { peerCheckMs: options.peerCheckMs }),
      serially: (operation) => this.#serially(operation),
      onSteppedBack: (reason) => this.#steppedBack(reason),
      leave: () => this.#leaveForRelock(),
      onMemberAgain: () => {
        this.#options.requestRefresh?.();
        this.#options.onChange?.();
      },
      onPeersEvicted: () => this.#options.requestRefresh?.(),
    });
    this.#leaseMs = options.leaseTimeoutSeconds * 1000;
    this.#heartbeatMs = Math.min(options.tickSeconds, options.leaseTimeoutSeconds / 3) * 1000;
  }

  /** Where this process is in its membership (LEASE_STATES). */
  get state(): LeaseState {
    return this.#membership.state;
  }

  /** This process as the lease statements see it, with the liveness lock it holds now. */
  get #me(): LeaseMember {
    return { instance: this.instance, replicaId: this.#options.replicaId, lock: this.#membership.lock };
  }

  /** True while this process may start a batch of `shard`: it holds the lease and it cannot have expired. */
  holds(shard: number): boolean {
    return (
      this.#membership.state === LEASE_STATES.member &&
      !this.#stopped &&
      this.#held.has(shard) &&
      !this.#releasing.has(shard) &&
      performance.now() < this.#validUntil
    );
  }

  /**
   * `holds`, or the lease was held at the last successful renewal and its timeout has not run out
   * since (a step-back does not end it: see `#leaseDeadline`).
   */
  leaseUnexpired(shard: number): boolean {
    return this.holds(shard) || (this.#leasedShards.has(shard) && performance.now() < this.#leaseDeadline);
  }

  /**
   * Date.now() until which `holds(shard)` stays true (0 if it is false now): when the last
   * successful renewal started plus the lease timeout, the same deadline `holds` uses.
   */
  validUntil(shard: number): number {
    return this.holds(shard) ? this.#validUntilWall : 0;
  }

  refresh(config: ShardConfig): Promise<readonly number[]> {
    this.#refreshesWaiting++;
    return this.#serially(() => {
      this.#refreshesWaiting--;
      return this.#refresh(config);
    });
  }

  /** Gives every lease back at once and leaves the membership (graceful shutdown, loops stopped). */
  release(): Promise<void> {
    return this.#serially(async () => {
      this.#stopped = true;
      this.#membership.stop();
      clearInterval(this.#heartbeatTimer);
      clearTimeout(this.#expiryTimer);
      try {
        if (!this.#joined) return;
        const released = await leaveMembership(this.#options.db, this.#me);
        this.#held.clear();
        this.#options.logger.info({ shards: released }, 'left the membership; shard leases released');
      } finally {
        // After the leave: until then a peer must not find the lock free and evict us half-way.
        await this.#membership.close();
      }
    });
  }

  /**
   * member → steppedBack (relay/livenessMembership.ts), in the turn of the event that found the loss:
   * no batch starts from here on, the loops are stopped by the refresh this asks for.
   */
  #steppedBack(reason: string): void {
    // Trust nothing held before the loss, even once the lock is back: a renewal must say first.
    this.#validUntil = 0;
    this.#validUntilWall = 0;
    this.#lastRenewal = undefined;
    // Tell the real-time worker first (its fence, relay/ownershipFence.ts), then log: the log line's
    // time is then one after which no batch of ours starts. Logged first, a main thread preempted
    // between the two (load 12 on 2 cores) let a worker batch start after the line (seen once in CI).
    this.#options.onChange?.();
    this.#options.logger.warn(
      { reason, shards: [...this.#held].sort((a, b) => a - b) },
      'liveness lock lost; stepping back: no new batch on any shard until the lock is re-taken (peers may take the shards meanwhile)',
    );
    this.#options.requestRefresh?.();
  }

  /** Before a re-lock: leave the membership we lost the lock of (a peer may have evicted it already). */
  async #leaveForRelock(): Promise<readonly number[]> {
    if (!this.#joined) return [];
    const released = await leaveMembership(this.#options.db, {
      instance: this.instance,
      replicaId: this.#options.replicaId,
    });
    this.#joined = false;
    this.#held.clear();
    this.#releasing.clear();
    return released;
  }

  #serially<T>(operation: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(operation, operation);
    this.#queue = run.catch(() => {});
    return run;
  }

  async #refresh(config: ShardConfig): Promise<readonly number[]> {
    if (this.#stopped) return [];
    if (this.#membership.state === LEASE_STATES.starting) await this.#membership.join();
    // Stepped back: nothing is ours to run until the lock is back (its timer asks for a refresh).
    if (this.#membership.state !== LEASE_STATES.member) return [];
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

    let renewal = this.#lastRenewal;
    if (!renewal || !this.#renewedRecently(renewal, config.generation)) {
      renewal = await this.#renew(config.generation);
      if (!renewal) return [];
    }
    if (this.#releasing.size > 0) {
      const given = await releaseLeases(db, this.#me, config.generation, [...this.#releasing]);
      for (const shard of this.#releasing) this.#held.delete(shard);
      this.#releasing.clear();
      logger.info({ shards: given.sort((a, b) => a - b) }, 'gave shard leases back to rebalance');
    }

    const balance = await readBalance(db, this.#me, config);
    this.#membership.peersPresent = balance.live > 1;
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
      // Each statement only when the balance saw something for it: the refresh after an eviction
      // is then the balance and one take-over.
      const taken =
        balance.expired > 0 ? await takeOverExpiredLeases(db, this.#me, config.generation, L, wanted) : [];
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
      for (
        let round = 0;
        round < 3 && free.length < balance.unleased && taken.length + free.length < wanted;
        round++
      ) {
        free.push(...(await acquireFreeShards(db, this.#me, config, L, wanted - taken.length - free.length)));
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
    if (this.#membership.state === LEASE_STATES.member) this.#trustUntil(renewal);

    if (balance.sameReplicaId > 1 && balance.sameReplicaId !== this.#warnedSameId) {
      logger.warn(
        { replicaId: this.#options.replicaId, processes: balance.sameReplicaId, instance: this.instance },
        'another running process uses this replica id; each process still holds leases of its own, but give every replica a unique --replica-id',
      );
    }
    this.#warnedSameId = balance.sameReplicaId;
    this.#scheduleExpiryWake(balance.nextForeignExpiryMs);
    this.#heartbeatTimer ??= setInterval(() => this.#heartbeatOnly(), this.#heartbeatMs).unref();
    // The lock may have been lost while this refresh ran; then its shards are not ours to run.
    if (this.#membership.state !== LEASE_STATES.member) return [];
    return [...this.#held].filter((shard) => !this.#releasing.has(shard)).sort((a, b) => a - b);
  }

  /**
   * The held leases are ours until the renewal that confirmed them started plus the lease timeout:
   * never later than their expires_at in the database, which PostgreSQL set after that start.
   */
  #trustUntil(renewal: Renewal): void {
    this.#validUntil = renewal.started + this.#leaseMs;
    this.#leaseDeadline = this.#validUntil;
    this.#leasedShards = new Set(this.#held);
    this.#validUntilWall = renewal.startedWall + this.#leaseMs;
  }

  /**
   * Whether `renewal` is recent enough for a refresh to build on without renewing again: same
   * generation, and within two heartbeat intervals (the heartbeat timer renews every interval; two
   * mean it is late, e.g. a blocked event loop, and then the refresh renews itself).
   */
  #renewedRecently(renewal: Renewal & { readonly generation: string }, generation: string): boolean {
    return renewal.generation === generation && performance.now() - renewal.started < 2 * this.#heartbeatMs;
  }

  /**
   * Heartbeat, renewal, and dropping leases of other generations; returns when the renewal started
   * (undefined: no lock, nothing done).
   */
  async #renew(generation: string): Promise<(Renewal & { readonly generation: string }) | undefined> {
    if (!(await this.#beat(generation))) return undefined;
    return this.#renewLeases(generation);
  }

  /** The membership row's heartbeat (joining if it is gone); false if there is no lock to beat for. */
  async #beat(generation: string): Promise<boolean> {
    const { db, logger } = this.#options;
    // Lost the lock a moment ago: no heartbeat (a membership row without a lock would count as a
    // live member until its lease timeout, yet hold nothing) and no renewal (fenced anyway).
    if (!this.#membership.lock) return false;
    const { joined } = await heartbeat(db, this.#me, generation, this.#options.leaseTimeoutSeconds);
    if (joined) {
      if (this.#joined)
        logger.warn(
          'membership row was gone (evicted after a lost liveness lock, or removed as long dead); joined again',
        );
      this.#joined = true;
      await announceJoin(db);
    }
    return true;
  }

  /** The renewal proper (after `#beat`); returns when it started (undefined: no lock, nothing done). */
  async #renewLeases(generation: string): Promise<(Renewal & { readonly generation: string }) | undefined> {
    const { db, logger } = this.#options;
    // Before the statement: the trust deadline (this + the lease timeout) is then never later than
    // the expiry the statement writes.
    const started = performance.now();
    if (!this.#membership.lock) return undefined;
    const startedWall = Date.now();
    if (this.#lastRenewalStart !== undefined && started - this.#lastRenewalStart > this.#leaseMs) {
      logger.warn(
        { stalledSeconds: Math.round((started - this.#lastRenewalStart) / 100) / 10 },
        'no lease renewal for longer than the lease timeout (process paused or database unreachable); re-validating leases before any new batch',
      );
    }
    const renewal = await renewLeases(db, this.#me, generation, this.#options.leaseTimeoutSeconds);
    if (!renewal.lockHeld) {
      // The lock session is gone in PostgreSQL although its socket has not said so (or said so
      // just now): peers may evict us at any moment. Renewed nothing; step back.
      this.#membership.lost('the lease renewal found the liveness lock not held');
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
    if (!renewal.lockHeld) return undefined;
    // Once per generation (our own old leases), and once a lease timeout for the housekeeping: a
    // round trip fewer in most heartbeats, so a refresh that waits behind one waits less.
    if (this.#dropped?.generation !== generation || started - this.#dropped.at >= this.#leaseMs) {
      await dropOtherGenerations(db, this.#me, generation);
      this.#dropped = { generation, at: started };
    }
    this.#lastRenewal = { started, startedWall, generation };
    return this.#lastRenewal;
  }

  /** Between ticks: keeps membership and leases alive even while a tick waits for a slow batch. */
  #heartbeatOnly(): void {
    if (this.#heartbeatQueued) return;
    this.#heartbeatQueued = true;
    // A refresh asked for while a heartbeat waits or runs (the one an eviction or a NOTIFY asks
    // for) goes first: it takes shards, and the renewal does not change what it may take. So the
    // heartbeat yields when its turn comes, and takes two turns of the queue (the membership row,
    // then the renewal): such a refresh waits for one turn at most (one statement, rarely two),
    // where it waited for up to four (under load each takes tens of ms: the 224 ms wait seen in a
    // takeover at load 30, test/replicas/takeover.test.ts with the refresh's steps timed).
    const turn = (step: () => Promise<boolean>, then?: () => void) =>
      void this.#serially(async () => {
        if (this.#refreshesWaiting > 0) return turn(step, then);
        if (this.#stopped || !this.#config || this.#membership.state !== LEASE_STATES.member) {
          this.#heartbeatQueued = false;
          return;
        }
        try {
          if ((await step()) && then) return then();
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
        this.#heartbeatQueued = false;
      }).catch(() => {});
    const generation = () => this.#config?.generation ?? '';
    turn(
      () => this.#beat(generation()),
      () =>
        turn(async () => {
          const renewal = await this.#renewLeases(generation());
          if (renewal && this.#membership.state === LEASE_STATES.member) this.#trustUntil(renewal);
          return true;
        }),
    );
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
