/**
 * Typed readers of the observer's SQL views (sql/*.sql), shared by the relay's observer and
 * `shardrelay status`. bigint and numeric columns arrive as strings and are converted here.
 */
import { sql, type Kysely } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import type { ShardStatus } from './metrics.js';

/** One row of shardrelay.health. */
export interface HealthRow {
  readonly shard: number;
  readonly lane: Lane;
  readonly status: ShardStatus;
  /** Why the class was chosen, in words; null for OK. */
  readonly reason: string | null;
  /** Replica id holding the shard's lease (live or expired); null when there is no lease. */
  readonly owner: string | null;
  readonly pendingRows: number;
  readonly dueRows: number;
  /** Age of the oldest due row, in seconds. */
  readonly lagSeconds: number;
  readonly lastBatchAt: Date | null;
  readonly deadRecent: number;
}

export interface RawHealth {
  shard: number;
  lane: Lane;
  status: ShardStatus;
  reason: string | null;
  owner: string | null;
  pending_rows: string;
  due_rows: string;
  lag_seconds: number;
  last_batch_at: Date | null;
  dead_recent: string;
}

export function toHealthRow(r: RawHealth): HealthRow {
  return {
    shard: r.shard,
    lane: r.lane,
    status: r.status,
    reason: r.reason,
    owner: r.owner,
    pendingRows: Number(r.pending_rows),
    dueRows: Number(r.due_rows),
    lagSeconds: Number(r.lag_seconds),
    lastBatchAt: r.last_batch_at,
    deadRecent: Number(r.dead_recent),
  };
}

/** Every shard of the current count, both lanes, ordered by shard then lane. */
export async function readHealth(db: Kysely<Database>): Promise<HealthRow[]> {
  const { rows } = await sql<RawHealth>`SELECT * FROM shardrelay.health`.execute(db);
  return rows.map(toHealthRow);
}

/**
 * The backlog of each shard and lane at the end of each of the last `minutes` minutes (oldest
 * first, the current minute last), from the lag samples the owners' observers record; null for a
 * minute nobody sampled. Keyed `shard/lane`.
 */
export async function readLagTrend(
  db: Kysely<Database>,
  minutes: number,
): Promise<Map<string, (number | null)[]>> {
  const { rows } = await sql<{ shard: number; lane: Lane; points: (string | null)[] }>`
    WITH span AS (
      SELECT m AS minute, row_number() OVER (ORDER BY m) AS i
        FROM generate_series(date_trunc('minute', shardrelay.now()) - (${minutes - 1} * interval '1 minute'),
                             date_trunc('minute', shardrelay.now()), interval '1 minute') AS m
    ), keys AS (
      SELECT DISTINCT l.shard, l.lane FROM shardrelay.lag_minute AS l, span WHERE l.minute = span.minute
    )
    SELECT k.shard, k.lane, array_agg(l.pending_last ORDER BY s.i) AS points
      FROM keys AS k
     CROSS JOIN span AS s
      LEFT JOIN shardrelay.lag_minute AS l ON l.minute = s.minute AND l.shard = k.shard AND l.lane = k.lane
     GROUP BY k.shard, k.lane`.execute(db);
  return new Map(
    rows.map((r) => [`${r.shard}/${r.lane}`, r.points.map((p) => (p === null ? null : Number(p)))]),
  );
}
