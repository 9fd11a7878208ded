import type { ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../src/db/schema.js';
import { enqueue } from '../../src/enqueue.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { collect, spawnCli, waitFor, type CliResult } from './cli.js';

/** A `shardrelay run` OS process of a replicas test. */
export interface ReplicaProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<CliResult>;
  /** Its stderr (JSON log lines) so far. */
  stderr(): string;
}

/** Starts and tracks replica processes, so a failing test never leaks one. */
export class ReplicaProcesses {
  readonly #all: ReplicaProcess[] = [];
  readonly #expected = new Set<ReplicaProcess>();
  readonly #env: NodeJS.ProcessEnv;
  readonly #args: readonly string[];

  /**
   * For debugging: SHARDRELAY_TEST_REPLICA_LOG_LEVEL=info makes the replicas log more (default warn),
   * SHARDRELAY_TEST_REPLICA_LOG_DIR=<dir> keeps each one's whole log in a file there.
   */
  constructor(env: NodeJS.ProcessEnv, args: readonly string[]) {
    const level = process.env.SHARDRELAY_TEST_REPLICA_LOG_LEVEL;
    this.#env = { ...(level ? { SHARDRELAY_LOG_LEVEL: level } : {}), ...env };
    this.#args = args;
  }

  start(replicaId: string, name = replicaId, extraArgs: readonly string[] = []): ReplicaProcess {
    const child = spawnCli(['run', ...this.#args, '--replica-id', replicaId, ...extraArgs], this.#env);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const logDir = process.env.SHARDRELAY_TEST_REPLICA_LOG_DIR;
    if (logDir) child.stderr?.pipe(createWriteStream(path.join(logDir, `${name}-${child.pid}.log`)));
    const replica: ReplicaProcess = {
      name,
      child,
      pid: child.pid as number,
      exited: collect(child),
      stderr: () => stderr,
    };
    this.#all.push(replica);
    return replica;
  }

  /** Marks a process as meant to end (a signal the test sends), so `waitFor` does not report it. */
  expectExit(replica: ReplicaProcess): void {
    this.#expected.add(replica);
  }

  /** SIGTERM (graceful: finishes batches, releases leases) and waits for the exit. */
  async stop(replica: ReplicaProcess): Promise<CliResult> {
    this.#expected.add(replica);
    replica.child.kill('SIGTERM');
    return replica.exited;
  }

  /** Like cli.waitFor, but fails at once, with its log, when a replica exits unasked. */
  waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 30_000, everyMs = 50): Promise<void> {
    return waitFor(
      what,
      async () => {
        const died = this.#all.find(
          (r) => !this.#expected.has(r) && (r.child.exitCode !== null || r.child.signalCode !== null),
        );
        if (died) {
          throw new Error(
            `replica ${died.name} exited (${died.child.exitCode ?? died.child.signalCode}) while waiting for: ${what}\n${died.stderr()}`,
          );
        }
        return check();
      },
      timeoutMs,
      everyMs,
    );
  }

  /** Kills whatever is still running (test teardown); `printOutput` shows each one's log tail. */
  async killAll(options: { printOutput?: boolean } = {}): Promise<void> {
    if (options.printOutput) {
      for (const r of this.#all) {
        const tail = r.stderr().split('\n').slice(-15).join('\n# ');
        if (tail.trim()) console.log(`# ${r.name} (pid ${r.pid}) log tail:\n# ${tail}`);
      }
    }
    for (const r of this.#all) {
      if (r.child.exitCode === null && r.child.signalCode === null) {
        r.child.kill('SIGCONT');
        r.child.kill('SIGKILL');
      }
    }
    await Promise.all(this.#all.map((r) => r.exited));
  }
}

export interface LiveReplica {
  readonly replicaId: string;
  readonly instance: string;
  readonly pid: number;
  readonly generation: string;
  readonly shards: readonly number[];
}

/** Live replicas with their valid current-generation leases (the shardrelay.replicas view). */
export async function liveReplicas(db: Kysely<Database>): Promise<LiveReplica[]> {
  const rows = await db
    .selectFrom('shardrelay.replicas')
    .select(['replica_id', 'instance', 'pid', 'generation', 'shards'])
    .where('alive', '=', true)
    .orderBy('replica_id')
    .orderBy('pid')
    .execute();
  return rows.map((r) => ({
    replicaId: r.replica_id,
    instance: r.instance,
    pid: r.pid,
    generation: r.generation,
    shards: r.shards,
  }));
}

export interface LeasePicture {
  readonly shardCount: number;
  readonly generation: string;
  readonly replicas: readonly LiveReplica[];
  /** Shards of the current generation without a valid lease. */
  readonly unowned: number;
  /** Held counts of the live replicas, sorted descending, e.g. [4, 4, 4]. */
  readonly counts: readonly number[];
}

export async function leasePicture(db: Kysely<Database>): Promise<LeasePicture> {
  const config = await db
    .selectFrom('shardrelay.shard_config')
    .select(['shard_count', 'generation'])
    .executeTakeFirstOrThrow();
  const replicas = await liveReplicas(db);
  // From the lease table, not the shards view: the view also counts each shard's backlog, a scan
  // of the outbox that under a test's steady load took seconds and was being timed instead of
  // the replicas (a "re-division" measured at 3.3-3.5 s that the replicas' logs put at 0.8 s).
  const valid = await db
    .selectFrom('shardrelay.shard_lease')
    .select(sql<number>`count(*)::int`.as('n'))
    .where('generation', '=', config.generation)
    .where(sql<boolean>`expires_at > shardrelay.clock()`)
    .executeTakeFirstOrThrow();
  return {
    shardCount: config.shard_count,
    generation: config.generation,
    replicas,
    unowned: config.shard_count - valid.n,
    counts: replicas.map((r) => r.shards.length).sort((a, b) => b - a),
  };
}

/** Every shard leased, by exactly `live` replicas, with held counts equal to `expected`. */
export function isDivided(picture: LeasePicture, expected: readonly number[]): boolean {
  return picture.unowned === 0 && picture.counts.join() === expected.join();
}

/** Seconds since `start` (performance.now()), rounded to ms. */
export const secondsSince = (start: number) => Math.round(performance.now() - start) / 1000;

/**
 * Records every completion of a row as sent (a pending row deleted from the outbox, so a row
 * recorded as sent twice shows up twice), which relay process made it (the `shardrelay.pid`
 * session setting of relay connections), when its transaction began (= just before the claim) and
 * whether that process held the shard's lease at completion.
 */
export async function installSendAudit(db: Kysely<Database>): Promise<void> {
  await sql`
    CREATE TABLE public.send_audit (
      id bigint NOT NULL, shard integer NOT NULL, lane text NOT NULL, pid integer,
      xact_start timestamptz NOT NULL, completed_at timestamptz NOT NULL, held boolean NOT NULL
    )`.execute(db);
  await sql`
    CREATE FUNCTION public.audit_send() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      cfg record;
      sender integer := nullif(current_setting('shardrelay.pid', true), '')::integer;
    BEGIN
      SELECT shard_count, generation INTO cfg FROM shardrelay.shard_config;
      INSERT INTO public.send_audit VALUES (
        OLD.id, (OLD.id % cfg.shard_count)::integer, OLD.lane, sender, now(), clock_timestamp(),
        EXISTS (SELECT 1 FROM shardrelay.shard_lease l JOIN shardrelay.replica r ON r.instance = l.owner_instance
                 WHERE l.generation = cfg.generation AND l.shard = OLD.id % cfg.shard_count AND r.pid = sender));
      RETURN OLD;
    END $$`.execute(db);
  await sql`
    CREATE TRIGGER audit_send AFTER DELETE ON shardrelay.outbox FOR EACH ROW
      WHEN (OLD.status = 'pending') EXECUTE FUNCTION public.audit_send()`.execute(db);
}

/** How rows were delivered: duplicates are rows whose delivery was recorded more than once. */
export async function deliveryCounts(db: Kysely<Database>): Promise<{
  readonly total: number;
  readonly sent: number;
  readonly pending: number;
  readonly dead: number;
  /** Rows recorded as sent by more than one committed transaction (needs installSendAudit). */
  readonly deliveredTwice: number;
  /** Rows that needed more than one attempt (a failed attempt was recorded, then a retry). */
  readonly retried: number;
}> {
  const { rows } = await sql<{
    total: number;
    sent: number;
    pending: number;
    dead: number;
    twice: number;
    retried: number;
  }>`
    SELECT count(*)::int AS total,
           count(*) FILTER (WHERE status = 'sent')::int AS sent,
           count(*) FILTER (WHERE status = 'pending')::int AS pending,
           count(*) FILTER (WHERE status = 'dead')::int AS dead,
           count(*) FILTER (WHERE attempts > 1)::int AS retried,
           (SELECT count(*) FROM (SELECT id FROM public.send_audit GROUP BY id HAVING count(*) > 1) AS d)::int AS twice
      FROM shardrelay.events`.execute(db);
  const r = rows[0];
  if (!r) throw new Error('no counts');
  return {
    total: r.total,
    sent: r.sent,
    pending: r.pending,
    dead: r.dead,
    deliveredTwice: r.twice,
    retried: r.retried,
  };
}

/** pg-boss jobs: total and distinct ids (the job id is the event id). */
export async function pgBossJobs(db: Kysely<Database>): Promise<{ total: number; distinct: number }> {
  const { rows } = await sql<{ total: number; distinct: number }>`
    SELECT count(*)::int AS total, count(DISTINCT id)::int AS distinct FROM pgboss.job`.execute(db);
  return rows[0] ?? { total: 0, distinct: 0 };
}

/**
 * Enqueues `perTick` events every `everyMs` (one in ten real-time) until stopped or `max` is
 * reached: the application's steady write load.
 */
export function steadyEnqueue(
  db: Kysely<Database>,
  options: { perTick: number; everyMs: number; max: number; topic: string },
): { stop(): Promise<number>; readonly count: () => number } {
  let count = 0;
  let stopped = false;
  const run = (async () => {
    while (!stopped && count < options.max) {
      const n = Math.min(options.perTick, options.max - count);
      const realtime = Math.max(1, Math.round(n / 10));
      await enqueue(db, syntheticEvents(n - realtime, { topic: options.topic, startAt: count }));
      await enqueue(
        db,
        syntheticEvents(realtime, { topic: options.topic, startAt: count + n - realtime, lane: 'realtime' }),
      );
      count += n;
      await new Promise((r) => setTimeout(r, options.everyMs));
    }
  })();
  const handle = {
    count: () => count,
    stop: async () => {
      stopped = true;
      running.delete(handle);
      await run;
      return count;
    },
  };
  running.add(handle);
  return handle;
}

const running = new Set<{ stop(): Promise<number> }>();

/** Stops every steady enqueue still running (test teardown, also after a failed assertion). */
export async function stopSteadyEnqueues(): Promise<void> {
  await Promise.all([...running].map((load) => load.stop().catch(() => 0)));
}

/**
 * Rows of `shards` that are pending but locked: the batches in flight of the process holding those
 * shards (freeze it first). A SKIP LOCKED claim passes over exactly them.
 */
export function lockedPendingRows(
  db: Kysely<Database>,
  shardCount: number,
  shards: readonly number[],
): Promise<string[]> {
  return db.transaction().execute(async (trx) => {
    const n = sql.lit(shardCount);
    const pending = await sql<{ id: string }>`
      SELECT id FROM shardrelay.outbox WHERE status = 'pending' AND id % ${n} = ANY(${[...shards]}::int[])`.execute(
      trx,
    );
    const free = await sql<{ id: string }>`
      SELECT id FROM shardrelay.outbox WHERE status = 'pending' AND id % ${n} = ANY(${[...shards]}::int[])
         FOR UPDATE SKIP LOCKED`.execute(trx);
    const unlocked = new Set(free.rows.map((r) => r.id));
    return pending.rows.map((r) => r.id).filter((id) => !unlocked.has(id));
  });
}

/** SIGSTOPs `replica` at a moment it has a batch of `shards` in flight; returns those rows. */
export async function freezeMidBatch(
  db: Kysely<Database>,
  replica: ReplicaProcess,
  shardCount: number,
  shards: readonly number[],
): Promise<string[]> {
  for (let attempt = 0; attempt < 300; attempt++) {
    replica.child.kill('SIGSTOP');
    const inFlight = await lockedPendingRows(db, shardCount, shards);
    if (inFlight.length > 0) return inFlight;
    replica.child.kill('SIGCONT');
    await new Promise((r) => setTimeout(r, 10 + Math.random() * 20));
  }
  throw new Error(`${replica.name} never had a batch in flight when frozen`);
}
