-- shardrelay.health: one status per shard and lane, the same classes as the shardrelay_shard_status
-- metric and `shardrelay status`, first match wins:
--
--   STOP   no live owner: no unexpired lease on the shard under the current shard count
--          (shardrelay.shard_lease). Nothing is sent from it until a replica takes it over.
--   STALL  due rows have waited longer than the stall window and no batch of this shard and lane
--          has completed within it either: the owner holds the lease but its loop does not move
--          (a wedged sink, a stopped process whose lease has not expired yet, a lost lane thread).
--   ERROR  dead letters in the error window (new rows given up: rising dead letters).
--   WARN   the backlog rose over the trend window: its lowest count in the last minute (and now)
--          is above its highest count at the start of the window. Comparing a floor with a
--          ceiling ignores the normal saw-tooth of a lane that drains in batches.
--   OK     backlog empty, falling or flat, and none of the above.
--
-- Windows, overridable per session (SET shardrelay.stall_seconds = 30):
--   shardrelay.stall_seconds (default 60), shardrelay.trend_minutes (5), shardrelay.error_minutes (15).
-- `reason` says in words why a class was chosen (NULL for OK).
--
-- Cost: shardrelay.lag (pending rows only) plus small per-minute tables and the leases; see lag.sql.
CREATE OR REPLACE VIEW shardrelay.health AS
WITH settings AS (
  SELECT shardrelay.now() AS now,
         shardrelay.setting('shardrelay.stall_seconds', 60) AS stall_seconds,
         shardrelay.setting('shardrelay.trend_minutes', 5) AS trend_minutes,
         shardrelay.setting('shardrelay.error_minutes', 15) AS error_minutes
), lease AS (
  SELECT l.shard, l.owner, l.expires_at
    FROM shardrelay.shard_lease AS l
   WHERE l.generation = (SELECT generation FROM shardrelay.shard_config)
), dead AS (
  SELECT r.shard, r.lane, sum(r.dead) AS dead_rows
    FROM shardrelay.rollup_minute AS r, settings AS s
   WHERE r.minute >= date_trunc('minute', s.now - s.error_minutes * interval '1 minute')
     AND r.minute <= s.now
     AND r.dead > 0
   GROUP BY r.shard, r.lane
), trend AS (
  SELECT m.shard, m.lane,
         max(m.pending_max) FILTER (
           WHERE m.minute = date_trunc('minute', s.now - s.trend_minutes * interval '1 minute')) AS start_max,
         min(m.pending_min) FILTER (
           WHERE m.minute >= date_trunc('minute', s.now - interval '1 minute')) AS recent_min
    FROM shardrelay.lag_minute AS m, settings AS s
   WHERE m.minute >= date_trunc('minute', s.now - s.trend_minutes * interval '1 minute')
     AND m.minute <= s.now
   GROUP BY m.shard, m.lane
), facts AS (
  SELECT g.*, s.*, l.owner, l.expires_at, p.last_batch_at,
         coalesce(d.dead_rows, 0) AS dead_recent,
         t.start_max,
         coalesce(l.expires_at > s.now, false) AS live,
         extract(epoch FROM s.now - p.last_batch_at)::float8 AS since_batch,
         g.due_rows > 0 AND g.waiting_seconds > s.stall_seconds
           AND (p.last_batch_at IS NULL OR p.last_batch_at < s.now - s.stall_seconds * interval '1 second') AS stalled,
         t.start_max IS NOT NULL
           AND least(g.pending_rows, coalesce(t.recent_min, g.pending_rows)) > t.start_max AS rising
    FROM shardrelay.lag AS g
   CROSS JOIN settings AS s
    LEFT JOIN lease AS l ON l.shard = g.shard
    LEFT JOIN shardrelay.shard_progress AS p ON p.shard = g.shard AND p.lane = g.lane
    LEFT JOIN dead AS d ON d.shard = g.shard AND d.lane = g.lane
    LEFT JOIN trend AS t ON t.shard = g.shard AND t.lane = g.lane
)
SELECT f.shard,
       f.lane,
       CASE WHEN NOT f.live THEN 'STOP'
            WHEN f.stalled THEN 'STALL'
            WHEN f.dead_recent > 0 THEN 'ERROR'
            WHEN f.rising THEN 'WARN'
            ELSE 'OK' END AS status,
       CASE WHEN NOT f.live THEN
              'no live owner: ' || CASE WHEN f.owner IS NULL THEN 'no lease'
                ELSE 'lease of ' || f.owner || ' expired ' || round(extract(epoch FROM f.now - f.expires_at)) || ' s ago' END
            WHEN f.stalled THEN
              f.due_rows || ' due rows waiting ' || round(f.waiting_seconds::numeric) || ' s, last batch '
                || coalesce(round(f.since_batch::numeric) || ' s ago', 'never')
            WHEN f.dead_recent > 0 THEN f.dead_recent || ' dead letters in the last ' || f.error_minutes || ' min'
            WHEN f.rising THEN
              'backlog rose from ' || f.start_max || ' to ' || f.pending_rows || ' rows in ' || f.trend_minutes || ' min'
       END AS reason,
       f.owner,
       f.expires_at AS lease_expires_at,
       f.pending_rows,
       f.due_rows,
       f.oldest_due_seconds AS lag_seconds,
       f.waiting_seconds,
       f.last_batch_at,
       f.since_batch AS seconds_since_batch,
       f.dead_recent,
       f.start_max AS pending_at_window_start
  FROM facts AS f
 ORDER BY f.shard, f.lane;
