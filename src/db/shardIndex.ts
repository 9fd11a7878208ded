import { sql, type Kysely } from 'kysely';
import { ShardRelayError } from '../errors.js';
import type { Database } from './schema.js';

/**
 * The claim filters `id % N = shard` with N as a literal, so PostgreSQL can use an expression index
 * on `((id % N), id)` restricted to pending rows; the planner matches it only when the query's
 * expression is the same, i.e. with the same literal N, so each shard count gets its own index.
 * The second index serves the real-time lane of the default lane predicate (`lane = 'realtime'`).
 *
 * Is an index per N worth it? Measured on this project's 2-core machine (PostgreSQL 15, shared with
 * other work: load average 4-8, so absolute figures vary about 2x between runs; the ratios held),
 * with bench/studies/claimIndex.ts: 500,000 pending rows, 1% real-time, N = 16, the variants interleaved
 * batch by batch over the same backlog, three runs:
 *
 *                                       claim 1000    claim 100   real-time 100   drain (rows/s)
 *   ((id % 16), id) WHERE pending       10.5-30.8 ms  2.0-3.5 ms    1.0-1.7 ms     9,300-19,300
 *   (id) WHERE pending (plain partial)  18.2-44.1 ms  2.6-3.8 ms    7.4-11.9 ms    8,300-18,300
 *   no pending index (primary key)      20.3-33.9 ms  2.6-3.7 ms    196-432 ms     5,600-12,200
 *
 * (drain = claim 1000 + mark sent + commit on one connection; the completion dominates it.) So:
 * the per-N index makes a batch claim 1.4-1.8x faster and a drain 5-13% faster than a plain partial
 * index, and a real-time claim under a batch backlog 7x faster (without any pending index a
 * real-time claim scans the backlog: 0.2-0.4 s). It costs little: both indexes of a new count build
 * CONCURRENTLY over those 500,000 rows in 1.0-2.0 s, and until they exist claims use the old count's
 * index or the primary key (correct, slower). Indexes of earlier counts are dropped once the new
 * ones are built: with those of three counts, inserts ran at 20,700 rows/s against 22,700 with one
 * count's (about 9% slower). Decision: keep one pair per shard count, built and pruned by the relay.
 */
export function pendingShardIndexSql(shardCount: number, ordering: boolean = false): string[] {
  if (!Number.isInteger(shardCount) || shardCount < 1) throw new Error(`bad shard count ${shardCount}`);
  if (ordering) return orderedShardIndexSql(shardCount);
  return [
    `CREATE INDEX IF NOT EXISTS outbox_pending_mod${shardCount}
       ON shardrelay.outbox ((id % ${shardCount}), id) WHERE status = 'pending'`,
    `CREATE INDEX IF NOT EXISTS outbox_pending_realtime_mod${shardCount}
       ON shardrelay.outbox ((id % ${shardCount}), id) WHERE status = 'pending' AND lane = 'realtime'`,
  ];
}

/**
 * The shard of a row as the claim computes it, with N as a literal (see above). Ordering off:
 * `id % N`. Ordering on (SHARDRELAY_ORDERING=key): a row with a key goes to
 * `shardrelay.key_hash(key) % N` (migrations/0009_key_ordering.ts: the first 32 bits of the key's
 * MD5, the same on every PostgreSQL version and platform), so all rows of a key are in one shard
 * under any count; a row without a key keeps `id % N`. The claim, the indexes below and the views
 * must write it the same way for the planner to match them, hence one function.
 */
export function shardExpression(shardCount: number, ordering: boolean, alias = ''): string {
  const n = Math.trunc(shardCount);
  const a = alias === '' ? '' : `${alias}.`;
  if (!ordering) return `${a}id % ${n}`;
  return `(CASE WHEN ${a}key IS NULL THEN ${a}id ELSE shardrelay.key_hash(${a}key) END) % ${n}`;
}

/**
 * Ordering on: the claim indexes over the key-aware shard expression, plus the index of each key's
 * rows in id order that the ordering checks probe (claims.ts: "the key's earliest unsent row").
 * They exist only where ordering is used: the key index costs an entry per keyed insert, which a
 * relay that does not order has no use for.
 */
function orderedShardIndexSql(shardCount: number): string[] {
  const shard = shardExpression(shardCount, true);
  return [
    `CREATE INDEX IF NOT EXISTS outbox_pending_keyed_mod${shardCount}
       ON shardrelay.outbox ((${shard}), id) WHERE status = 'pending'`,
    `CREATE INDEX IF NOT EXISTS outbox_pending_realtime_keyed_mod${shardCount}
       ON shardrelay.outbox ((${shard}), id) WHERE status = 'pending' AND lane = 'realtime'`,
    `CREATE INDEX IF NOT EXISTS outbox_key_order
       ON shardrelay.outbox (key, id) WHERE key IS NOT NULL AND status IN ('pending', 'dead')`,
  ];
}

function concurrently(statement: string): string {
  return statement.replace('CREATE INDEX IF NOT EXISTS', 'CREATE INDEX CONCURRENTLY IF NOT EXISTS');
}

/**
 * Only the owner of a table may index it or drop its indexes. A relay that runs as a role of its own
 * (with the GRANTs of db/privileges.ts) can do neither for a new shard count; claims still work, but
 * slower (see the figures above), so the warning says exactly what the owner must run.
 */
async function notOwner(
  session: Kysely<Database>,
  shardCount: number,
  missing: boolean,
  cause: unknown,
  ordering: boolean = false,
): Promise<ShardRelayError> {
  const { rows } = await sql<{ role: string; owner: string }>`
    SELECT quote_ident(current_user) AS role, quote_ident(pg_get_userbyid(relowner)) AS owner
      FROM pg_class WHERE oid = 'shardrelay.outbox'::regclass`.execute(session);
  const { role, owner } = rows[0] ?? { role: 'this role', owner: 'the owner of shardrelay.outbox' };
  const { rows: others } = await sql<{ name: string }>`
    SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'shardrelay' AND c.relkind = 'i' AND c.relname LIKE 'outbox_pending%'`.execute(
    session,
  );
  const statements = [
    ...(missing
      ? pendingShardIndexSql(shardCount, ordering).map((s) => `${concurrently(s).replace(/\s+/g, ' ')};`)
      : []),
    ...others
      .filter((i) => {
        const count = COUNT_INDEX.exec(i.name)?.[1];
        return count !== undefined && Number(count) !== shardCount;
      })
      .map((i) => `DROP INDEX CONCURRENTLY IF EXISTS shardrelay.${i.name};`),
  ];
  const problem = missing
    ? `cannot build the claim index for shard count ${shardCount}; claims work without it, slower (a batch claim about 1.5x, a real-time claim under a backlog about 7x)`
    : `cannot drop the claim indexes of earlier shard counts, which slow every insert (about 9% with three counts' indexes)`;
  return new ShardRelayError(
    'PERMISSION_DENIED',
    `${problem}: role ${role} does not own shardrelay.outbox (${owner} does)`,
    {
      cause,
      context: { role, owner, shardCount },
      fix: `as ${owner}, outside a transaction (e.g. in psql), run: ${statements.join(' ')}`,
    },
  );
}

/** Indexes of the pending backlog named after a shard count (ours; no other index matches). */
const COUNT_INDEX = /^outbox_pending_(?:realtime_)?(?:keyed_)?mod(\d+)$/;

/**
 * Builds the indexes for `shardCount` without blocking writers (CREATE INDEX CONCURRENTLY, which
 * cannot run in a transaction, hence here and not in a migration), then drops those of other counts,
 * which only cost writes once no replica claims with them. Every replica calls it when it sees a
 * count (first tick, each change); one builds at a time, under a session advisory lock, and the
 * others return at once ('busy'). One builder matters: a concurrent CREATE INDEX CONCURRENTLY of the
 * same index ends in a deadlock or a duplicate-name error, and the INVALID index another session is
 * still building would look like the leftover of a failed build (which is dropped and built again).
 * Until the index exists, claims for the new count still work, only slower.
 */
export async function ensurePendingShardIndexes(
  db: Kysely<Database>,
  shardCount: number,
  ordering: boolean = false,
): Promise<'present' | 'built' | 'busy'> {
  const statements = pendingShardIndexSql(shardCount, ordering);
  return db.connection().execute(async (session) => {
    const { rows: lock } = await sql<{ locked: boolean }>`
      SELECT pg_try_advisory_lock(hashtext('shardrelay.pending_shard_indexes')) AS locked`.execute(session);
    if (!lock[0]?.locked) return 'busy';
    try {
      const existing = async () =>
        (
          await sql<{ name: string; valid: boolean }>`
            SELECT c.relname AS name, i.indisvalid AS valid
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'shardrelay' AND c.relname LIKE 'outbox_pending%'`.execute(session)
        ).rows;
      let built = false;
      for (const statement of statements) {
        const name = /INDEX IF NOT EXISTS (\w+)/.exec(statement)?.[1] as string;
        const index = (await existing()).find((i) => i.name === name);
        if (index?.valid === true) continue;
        try {
          if (index) await sql.raw(`DROP INDEX CONCURRENTLY IF EXISTS shardrelay.${name}`).execute(session);
          await sql.raw(concurrently(statement)).execute(session);
        } catch (error) {
          if ((error as { code?: unknown }).code === '42501')
            throw await notOwner(session, shardCount, true, error, ordering);
          throw error;
        }
        built = true;
      }
      const { rows: config } = await sql<{ shard_count: number }>`
        SELECT shard_count FROM shardrelay.shard_config`.execute(session);
      if (config[0]?.shard_count === shardCount) {
        for (const index of await existing()) {
          const count = COUNT_INDEX.exec(index.name)?.[1];
          if (count === undefined || Number(count) === shardCount) continue;
          try {
            await sql.raw(`DROP INDEX CONCURRENTLY IF EXISTS shardrelay.${index.name}`).execute(session);
          } catch (error) {
            if ((error as { code?: unknown }).code === '42501')
              throw await notOwner(session, shardCount, false, error, ordering);
            throw error;
          }
        }
      }
      return built ? 'built' : 'present';
    } finally {
      await sql`SELECT pg_advisory_unlock(hashtext('shardrelay.pending_shard_indexes'))`.execute(session);
    }
  });
}
