import { readFile } from 'node:fs/promises';
import { sql, type Kysely } from 'kysely';

/**
 * The observer: what the SQL views in `sql/` read, and the views themselves.
 *
 * Why these tables and not queries on the outbox: the outbox holds millions of rows (sent rows stay
 * until pruned), and a view that Grafana or `shardrelay status --watch` runs every few seconds must
 * not scan it. So the relay keeps small per-minute tables, each row written by one writer:
 *
 * - `rollup_minute` (minute, shard, lane): rows sent, retried, dead and a latency histogram.
 *   Written by the completion statement itself (relay/claims.ts `completeBatch`), in the claim's
 *   transaction, so a rollup can never disagree with the rows it counts, and it outlives pruning.
 *   Keyed by shard and lane, the row is written only by the loop of that shard and lane, exactly
 *   like `shard_progress`: no row that every loop contends for. About 16 rows a minute at 8 shards.
 * - `produced_minute` (minute): the highest outbox id, sampled by every replica's observer every
 *   few seconds. Ids come from an identity, so the rise of max(id) from one minute to the next is
 *   the rows inserted meanwhile (a rolled-back insert leaves a gap, so it is an upper bound by the
 *   number of aborted inserts). The exact alternative, counting in the insert trigger, would make
 *   every producer transaction update one shared counter row and hold its lock until commit, i.e.
 *   serialise the application's writes: the one thing an outbox must never do. max(id) is one probe
 *   of the primary key. Canary rows and the ids drawn for them are counted in `reserved_ids` and
 *   subtracted (see relay/canary.ts).
 * - `lag_minute` (minute, shard, lane): the lowest, highest and last pending count seen in the
 *   minute, sampled by the observer of the shard's owner. It is the lag history `health` needs to
 *   tell a rising backlog from a falling one, and the trend `shardrelay status` draws.
 *
 * Canary rows (`outbox.canary`) travel the real path but are left out of every business figure.
 *
 * The clock: views read `shardrelay.now()` and the completer stamps `sent_at` with
 * `shardrelay.clock()`; both return the session setting `shardrelay.now` when it is set (tests:
 * `SELECT set_config('shardrelay.now', '2030-01-01 12:00:00+00', true)`), else the real time.
 *
 * Views are installed from `sql/<name>.sql` (one file per view) with CREATE OR REPLACE VIEW. A
 * later migration that changes a view re-installs its file; a view file may only use objects that
 * exist by the first migration that installs it.
 */

const SQL_DIR = new URL('../sql/', import.meta.url);

/** In dependency order: health reads lag. */
export const OBSERVER_VIEWS = [
  'lag',
  'throughput_minute',
  'volume_hourly',
  'latency',
  'dead_letters',
  'canaries',
  'health',
] as const;

export async function installView(db: Kysely<unknown>, name: string): Promise<void> {
  const text = await readFile(new URL(`${name}.sql`, SQL_DIR), 'utf8');
  await sql.raw(text).execute(db);
}

export async function up(db: Kysely<unknown>): Promise<void> {
  // ADD COLUMN with a constant default is a catalog change (no table rewrite), but it needs a brief
  // exclusive lock on the outbox: wait at most 5 s for running claims rather than queue every
  // producer behind us; a timeout fails the migration, which can simply be run again.
  await sql`SET LOCAL lock_timeout = '5s'`.execute(db);
  await sql`ALTER TABLE shardrelay.outbox ADD COLUMN canary boolean NOT NULL DEFAULT false`.execute(db);
  // Canary rows are few (one per shard and lane per interval, deleted after a while): a tiny index
  // finds them without touching business rows.
  await sql`CREATE INDEX outbox_canary ON shardrelay.outbox (id) WHERE canary`.execute(db);

  await sql`
    CREATE FUNCTION shardrelay.now() RETURNS timestamptz
    LANGUAGE sql STABLE AS $$
      SELECT coalesce(nullif(current_setting('shardrelay.now', true), '')::timestamptz, now())
    $$`.execute(db);
  await sql`
    CREATE FUNCTION shardrelay.clock() RETURNS timestamptz
    LANGUAGE sql VOLATILE AS $$
      SELECT coalesce(nullif(current_setting('shardrelay.now', true), '')::timestamptz, clock_timestamp())
    $$`.execute(db);
  // Windows of the health classes, overridable per session (SET shardrelay.stall_seconds = 30).
  await sql`
    CREATE FUNCTION shardrelay.setting(name text, fallback float8) RETURNS float8
    LANGUAGE sql STABLE AS $$
      SELECT coalesce(nullif(current_setting(name, true), '')::float8, fallback)
    $$`.execute(db);

  // Which lane a row is in, for the views (the relay claims with its configured predicate; views
  // cannot read the relay's configuration). Installed for the default predicate `lane = 'realtime'`;
  // a relay started with another predicate replaces the body with its own (observability/lanes.ts).
  // A one-expression SQL function is inlined by the planner: no call per row.
  await sql`
    CREATE FUNCTION shardrelay.is_realtime(o shardrelay.outbox) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$ SELECT (o."lane" = 'realtime') IS TRUE $$`.execute(db);

  // Latency histogram buckets in milliseconds: the Prometheus histogram's bounds (so both agree)
  // plus finer steps below 5 ms and longer ones up to an hour for batch backlogs. Bucket k
  // (1-based) of a histogram array counts latencies in [bound k-1, bound k), width_bucket's
  // convention; the last bucket counts everything from the last bound up.
  await sql`
    CREATE FUNCTION shardrelay.latency_bounds_ms() RETURNS float8[]
    LANGUAGE sql IMMUTABLE AS $$
      SELECT '{1,2.5,5,10,25,50,100,250,500,1000,2500,5000,10000,30000,60000,120000,300000,600000,1800000,3600000}'::float8[]
    $$`.execute(db);
  await sql`
    CREATE FUNCTION shardrelay.latency_histogram(latencies_ms float8[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE AS $$
      SELECT array_agg(coalesce(h.n, 0) ORDER BY k.k)
        FROM generate_series(0, cardinality(shardrelay.latency_bounds_ms())) AS k(k)
        LEFT JOIN (SELECT width_bucket(l, shardrelay.latency_bounds_ms()) AS k, count(*) AS n
                     FROM unnest(latencies_ms) AS l GROUP BY 1) AS h ON h.k = k.k
    $$`.execute(db);
  await sql`
    CREATE FUNCTION shardrelay.add_counts(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE AS $$
      SELECT array_agg(coalesce(a[i], 0) + coalesce(b[i], 0) ORDER BY i)
        FROM generate_series(1, greatest(cardinality(a), cardinality(b))) AS i
    $$`.execute(db);
  // The q-quantile of a histogram, interpolated linearly inside its bucket like Prometheus'
  // histogram_quantile; the top of the bucket holding the largest latency is that latency, so the
  // open last bucket has an end and p99 never exceeds the slowest row.
  await sql`
    CREATE FUNCTION shardrelay.histogram_quantile(q float8, counts bigint[], max_ms float8) RETURNS float8
    LANGUAGE sql IMMUTABLE AS $$
      WITH b AS (
        SELECT k, c::float8 AS c, sum(c) OVER (ORDER BY k)::float8 AS cum,
               CASE WHEN k = 1 THEN 0 ELSE bounds[k - 1] END AS lo,
               coalesce(bounds[k], 'infinity') AS hi
          FROM unnest(counts) WITH ORDINALITY AS u(c, k), shardrelay.latency_bounds_ms() AS bounds
      ), rank AS (SELECT q * sum(c) AS r FROM b)
      SELECT lo + (greatest(lo, least(hi, max_ms)) - lo) * (r - (cum - c)) / c
        FROM b, rank
       WHERE c > 0 AND cum >= r AND r > 0
       ORDER BY k
       LIMIT 1
    $$`.execute(db);

  // fillfactor: the row of the current minute is updated by every batch of its shard and lane;
  // free room on the page lets PostgreSQL keep those updates HOT (no index entry per update).
  await sql`
    CREATE TABLE shardrelay.rollup_minute (
      minute          timestamptz NOT NULL,
      shard           integer NOT NULL,
      lane            text NOT NULL,
      batches         bigint NOT NULL DEFAULT 0,
      sent            bigint NOT NULL DEFAULT 0,
      failed          bigint NOT NULL DEFAULT 0,
      dead            bigint NOT NULL DEFAULT 0,
      latency_ms_sum  float8 NOT NULL DEFAULT 0,
      latency_ms_max  float8,
      latency_buckets bigint[] NOT NULL,
      PRIMARY KEY (minute, shard, lane)
    ) WITH (fillfactor = 70)`.execute(db);
  // The same per hour, folded from the minutes by shardrelay.maintain() once an hour is over, so
  // volume_hourly reads 168 rows per shard and lane for a week instead of 10,080.
  await sql`
    CREATE TABLE shardrelay.rollup_hour (LIKE shardrelay.rollup_minute INCLUDING DEFAULTS)`.execute(db);
  await sql`ALTER TABLE shardrelay.rollup_hour RENAME COLUMN minute TO hour`.execute(db);
  await sql`ALTER TABLE shardrelay.rollup_hour ADD PRIMARY KEY (hour, shard, lane)`.execute(db);
  await sql`
    CREATE TABLE shardrelay.produced_minute (
      minute       timestamptz PRIMARY KEY,
      max_id       bigint NOT NULL,
      reserved_ids bigint NOT NULL DEFAULT 0,
      sampled_at   timestamptz NOT NULL
    ) WITH (fillfactor = 70)`.execute(db);
  await sql`
    CREATE TABLE shardrelay.produced_hour (
      hour         timestamptz PRIMARY KEY,
      max_id       bigint NOT NULL,
      reserved_ids bigint NOT NULL DEFAULT 0
    )`.execute(db);
  await sql`
    CREATE TABLE shardrelay.lag_minute (
      minute       timestamptz NOT NULL,
      shard        integer NOT NULL,
      lane         text NOT NULL,
      pending_min  bigint NOT NULL,
      pending_max  bigint NOT NULL,
      pending_last bigint NOT NULL,
      sampled_at   timestamptz NOT NULL,
      PRIMARY KEY (minute, shard, lane)
    ) WITH (fillfactor = 70)`.execute(db);

  // Housekeeping, called by every relay's observer every few minutes (any number of callers at
  // once is fine: every step is idempotent). Folds finished hours (ended 10 minutes ago, longer than
  // any batch transaction can stay open) into the hourly tables, re-folding the last folded hour in
  // case a late batch added to it, then prunes: minutes after 2 days, lag samples after 1 day,
  // hours after 90 days, completed canary rows after 1 hour.
  await sql`
    CREATE FUNCTION shardrelay.maintain() RETURNS void
    LANGUAGE sql AS $$
      WITH minutes AS (
        SELECT * FROM shardrelay.rollup_minute
         WHERE minute >= coalesce((SELECT max(hour) FROM shardrelay.rollup_hour), '-infinity')
           AND minute < date_trunc('hour', shardrelay.now() - interval '10 minutes')
      ), buckets AS (
        SELECT hour, shard, lane, array_agg(n ORDER BY k) AS latency_buckets
          FROM (SELECT date_trunc('hour', m.minute) AS hour, m.shard, m.lane, u.k, sum(u.c) AS n
                  FROM minutes AS m, unnest(m.latency_buckets) WITH ORDINALITY AS u(c, k)
                 GROUP BY 1, 2, 3, 4) AS per_bucket
         GROUP BY 1, 2, 3
      )
      INSERT INTO shardrelay.rollup_hour AS h
        (hour, shard, lane, batches, sent, failed, dead, latency_ms_sum, latency_ms_max, latency_buckets)
      SELECT t.hour, t.shard, t.lane, t.batches, t.sent, t.failed, t.dead, t.latency_ms_sum, t.latency_ms_max,
             b.latency_buckets
        FROM (SELECT date_trunc('hour', minute) AS hour, shard, lane, sum(batches) AS batches, sum(sent) AS sent,
                     sum(failed) AS failed, sum(dead) AS dead, sum(latency_ms_sum) AS latency_ms_sum,
                     max(latency_ms_max) AS latency_ms_max
                FROM minutes GROUP BY 1, 2, 3) AS t
        JOIN buckets AS b USING (hour, shard, lane)
      ON CONFLICT (hour, shard, lane) DO UPDATE SET
        batches = EXCLUDED.batches, sent = EXCLUDED.sent, failed = EXCLUDED.failed, dead = EXCLUDED.dead,
        latency_ms_sum = EXCLUDED.latency_ms_sum, latency_ms_max = EXCLUDED.latency_ms_max,
        latency_buckets = EXCLUDED.latency_buckets;
      INSERT INTO shardrelay.produced_hour AS h (hour, max_id, reserved_ids)
      SELECT date_trunc('hour', p.minute), max(p.max_id), sum(p.reserved_ids)
        FROM shardrelay.produced_minute AS p
       WHERE p.minute >= coalesce((SELECT max(hour) FROM shardrelay.produced_hour), '-infinity')
         AND p.minute < date_trunc('hour', shardrelay.now() - interval '10 minutes')
       GROUP BY 1
      ON CONFLICT (hour) DO UPDATE SET max_id = EXCLUDED.max_id, reserved_ids = EXCLUDED.reserved_ids;
      DELETE FROM shardrelay.rollup_minute WHERE minute < shardrelay.now() - interval '2 days';
      DELETE FROM shardrelay.produced_minute WHERE minute < shardrelay.now() - interval '2 days';
      DELETE FROM shardrelay.lag_minute WHERE minute < shardrelay.now() - interval '1 day';
      DELETE FROM shardrelay.rollup_hour WHERE hour < shardrelay.now() - interval '90 days';
      DELETE FROM shardrelay.produced_hour WHERE hour < shardrelay.now() - interval '90 days';
      DELETE FROM shardrelay.outbox
       WHERE canary AND status <> 'pending' AND created_at < shardrelay.now() - interval '1 hour';
    $$`.execute(db);

  // Pending rows per shard and lane: the one part of the views that reads the outbox (pending rows
  // only, through the claims' partial index). A function for its settings, which a view cannot
  // have: the planner cannot know that id % shard_count has shard_count values, guesses one group
  // per row and sorts the whole backlog (spilling to disk beyond a few ten thousand rows) where a
  // hash of 16 entries does (measured: 48 ms instead of 70 ms for 50,000 pending rows); and with a
  // large backlog the estimated cost passes jit_above_cost, and compiling the query with LLVM
  // costs more than the scan it would speed up. ROWS: one row per shard and lane at most.
  await sql`
    CREATE FUNCTION shardrelay.pending_summary(at timestamptz)
    RETURNS TABLE (shard integer, lane text, pending_rows bigint, due_rows bigint,
                   oldest_created_at timestamptz, oldest_due_created_at timestamptz, due_since timestamptz)
    LANGUAGE sql STABLE ROWS 16 SET enable_sort = off SET jit = off AS $$
      SELECT (o.id % c.shard_count)::integer,
             CASE WHEN shardrelay.is_realtime(o) THEN 'realtime' ELSE 'batch' END,
             count(*),
             count(*) FILTER (WHERE o.available_at <= at),
             min(o.created_at),
             min(o.created_at) FILTER (WHERE o.available_at <= at),
             min(greatest(o.created_at, o.available_at)) FILTER (WHERE o.available_at <= at)
        FROM shardrelay.outbox AS o, shardrelay.shard_config AS c
       WHERE o.status = 'pending' AND NOT o.canary
       GROUP BY 1, 2
    $$`.execute(db);

  for (const view of OBSERVER_VIEWS) await installView(db, view);
}
