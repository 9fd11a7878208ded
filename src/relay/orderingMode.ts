import type { Kysely } from 'kysely';
import pg from 'pg';
import { TCP_KEEPALIVE } from '../db/connection.js';
import type { Database } from '../db/schema.js';
import { ConfigError, ShardRelayError, toError } from '../errors.js';
import type { Logger } from '../logger.js';

export type OrderingMode = 'off' | 'key';

/**
 * The first key of the ordering-mode locks ('SROM'), in the two-int advisory lock space; the second
 * is the mode (0 off, 1 key). Apart from the liveness locks' class (relay/leaseStatements.ts).
 */
export const ORDERING_LOCK_CLASS = 0x53524f4d;
const LOCK_OF: Record<OrderingMode, number> = { off: 0, key: 1 };

/**
 * Whether any session of this database holds, or waits for, the lock of a mode (the two-int
 * advisory form shows as classid = key 1, objid = key 2, objsubid = 2). Read from pg_locks, not by
 * trying the lock exclusively: an exclusive probe is itself a holder while it lasts, so two
 * replicas of the same mode starting at once saw each other's probe and one was refused as if the
 * other mode ran (seen in the full suite: a replica of a ledger test exited 2 at start).
 * Advisory locks are never taken by the fast path, so a granted one is in pg_locks at once.
 */
const OTHER_MODE_HELD = `
  SELECT EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory'
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2
  ) AS held`;

/** The mode the replicas run, as recorded in shardrelay.ordering_mode (migration 0012). */
export async function readOrderingMode(db: Kysely<Database>): Promise<OrderingMode> {
  const row = await db.selectFrom('shardrelay.ordering_mode').select('mode').executeTakeFirstOrThrow();
  return row.mode;
}

export interface OrderingModeHold {
  /** Ends the session, and with it this replica's claim to its mode. */
  close(): Promise<void>;
}

export interface HoldOrderingModeOptions {
  readonly connectionString: string;
  readonly mode: OrderingMode;
  readonly replicaId: string;
  readonly logger: Logger;
  /** How long to wait for the ordering_mode row or a lock (another replica starting); default 5 s. */
  readonly lockTimeoutMs?: number;
}

/**
 * Makes sure no replica runs the other ordering mode, records this replica's mode and holds it for
 * as long as the replica runs. Two modes at once would put a key's rows in two shards (`id % N` and
 * `key_hash(key) % N`), run by two replicas that each send them in their own order.
 *
 * How a running replica is seen:
 * - A replica of this release holds a shared advisory lock on its mode, on a session of its own
 *   (this one), until it stops; PostgreSQL drops it the moment the process or its connection dies
 *   (exact, no clock).
 *   A session lost while the replica runs (PostgreSQL restarted, the connection cut) is opened
 *   again and the lock taken again, every 5 s until it works.
 *   A starting replica takes the shared lock of its mode first, then looks in pg_locks for the
 *   other mode's lock: any holder refuses it. Of two replicas of different modes starting at once,
 *   at most one gets through (each holds its own mode before it looks at the other one's: if both
 *   looked before the other's lock was there, each took its own before the other looked); both
 *   may be refused, and a restart settles it. Replicas of the same mode never refuse each other.
 * - A replica of the previous release holds no such lock, and runs 'off' (it has no ordering),
 *   which is what migration 0012 records. So when the recorded mode is not this replica's, any live
 *   member of shardrelay.replicas (heartbeat younger than its lease timeout) refuses the change.
 *   Otherwise the new mode is recorded, under the row's lock.
 *
 * A rolling change of the mode is therefore not possible, by design: stop every replica, then start
 * them with the new mode (README, "Per-key ordering"). A replica refused here exits with the fix.
 */
export async function holdOrderingMode(options: HoldOrderingModeOptions): Promise<OrderingModeHold> {
  const { mode, logger } = options;
  const other: OrderingMode = mode === 'key' ? 'off' : 'key';
  let closing = false;
  let client: pg.Client | undefined;
  let retry: NodeJS.Timeout | undefined;

  /** A session holding the shared lock of `mode`, after checking the other mode is not held. */
  const lockSession = async (): Promise<pg.Client> => {
    const session = new pg.Client({
      connectionString: options.connectionString,
      application_name: 'shardrelay-ordering',
      ...TCP_KEEPALIVE,
      connectionTimeoutMillis: 10_000,
    });
    // Without a listener a dropped connection would end the process.
    session.on('error', (error) => lost(session, error.message));
    session.on('end', () => lost(session, 'session ended'));
    try {
      await session.connect();
      await session.query(`SET lock_timeout = ${Math.trunc(options.lockTimeoutMs ?? 5_000)}`);
      await session.query('SELECT pg_advisory_lock_shared($1, $2)', [ORDERING_LOCK_CLASS, LOCK_OF[mode]]);
      const { rows } = await session.query<{ held: boolean }>(OTHER_MODE_HELD, [
        ORDERING_LOCK_CLASS,
        LOCK_OF[other],
      ]);
      if (rows[0]?.held) throw await refusal(session, mode, other, 'running');
      return session;
    } catch (error) {
      await endQuietly(session);
      throw error;
    }
  };

  const endQuietly = async (session: pg.Client) => {
    session.removeAllListeners('end');
    session.on('error', () => {});
    await session.end().catch(() => {});
  };

  /**
   * The session died (a restart of PostgreSQL, a cut connection): the lock went with it, and until
   * it is back a replica of the other mode would not be refused. Take it again, every 5 s until
   * done; if a replica of the other mode got in meanwhile, say so loudly each time.
   */
  const lost = (session: pg.Client, reason: string) => {
    if (closing || client !== session) return;
    client = undefined;
    void endQuietly(session);
    logger.warn({ reason }, 'ordering-mode session lost; taking its lock again');
    const again = () => {
      retry = undefined;
      if (closing) return;
      lockSession()
        .then(async (session) => {
          if (closing) return endQuietly(session);
          client = session;
          logger.info({ ordering: mode }, 'ordering-mode lock taken again');
        })
        .catch((error: unknown) => {
          if (error instanceof ConfigError)
            logger.error(
              { err: error.message, fix: error.fix },
              'replicas of both ordering modes are running',
            );
          else logger.warn({ err: toError(error).message }, 'taking the ordering-mode lock again failed');
          retry = setTimeout(again, 5_000);
          retry.unref();
        });
    };
    retry = setTimeout(again, 1_000);
    retry.unref();
  };

  try {
    client = await lockSession();
    await recordMode(client, options, other);
  } catch (error) {
    closing = true;
    if (client) await endQuietly(client);
    if (error instanceof ConfigError) throw error;
    if ((error as { code?: string }).code === '42P01')
      throw new ShardRelayError('SCHEMA_MISSING', 'the shardrelay schema predates migration 0012', {
        cause: error,
        fix: 'run `shardrelay migrate` against this database first',
      });
    throw new Error(`could not check the ordering mode of the running replicas: ${toError(error).message}`, {
      cause: error,
    });
  }
  return {
    close: async () => {
      closing = true;
      if (retry) clearTimeout(retry);
      if (client) await endQuietly(client);
      client = undefined;
    },
  };
}

/** Records this replica's mode, unless live replicas run the recorded one (see above). */
async function recordMode(
  client: pg.Client,
  options: HoldOrderingModeOptions,
  other: OrderingMode,
): Promise<void> {
  const { mode } = options;
  await client.query('BEGIN');
  try {
    const recorded = await client.query<{ mode: OrderingMode }>(
      'SELECT mode FROM shardrelay.ordering_mode FOR UPDATE',
    );
    const was = recorded.rows[0]?.mode ?? 'off';
    if (was !== mode) {
      const live = await client.query('SELECT 1 FROM shardrelay.replicas WHERE alive LIMIT 1');
      if (live.rows.length > 0) {
        await client.query('ROLLBACK');
        throw await refusal(client, mode, other, 'recorded');
      }
      await client.query(
        'UPDATE shardrelay.ordering_mode SET mode = $1, changed_at = shardrelay.clock(), changed_by = $2',
        [mode, options.replicaId],
      );
      options.logger.info({ from: was, to: mode }, 'ordering mode changed: no replica was running');
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  }
}

/** The refusal, naming the live replicas (shardrelay.replicas) and what to do. */
async function refusal(
  client: pg.Client,
  mode: OrderingMode,
  other: OrderingMode,
  seenBy: 'running' | 'recorded',
): Promise<ConfigError> {
  const live = await client
    .query<{ replica_id: string; hostname: string; pid: number }>(
      'SELECT replica_id, hostname, pid FROM shardrelay.replicas WHERE alive ORDER BY replica_id LIMIT 10',
    )
    .then((r) => r.rows.map((x) => `${x.replica_id} (${x.hostname}, pid ${x.pid})`).join(', '))
    .catch(() => '');
  const seen = live === '' ? '' : ` (live replicas: ${live})`;
  const problem =
    seenBy === 'running'
      ? `this replica was started with ordering ${mode}, but a replica with ordering ${other} is running or starting${seen}`
      : `this replica was started with ordering ${mode}, but the database records ordering ${other} and replicas are running${seen} (a replica of the previous release runs ${other} too)`;
  return new ConfigError(
    '--ordering (SHARDRELAY_ORDERING)',
    `${problem}; two modes at once would put one key's rows in two shards, owned by two replicas`,
    `start this replica with --ordering ${other}, as the running ones; to change the mode, stop every replica first (a crashed one counts until its heartbeat is older than its lease timeout), then start them all with --ordering ${mode} (README, "Per-key ordering")`,
  );
}
