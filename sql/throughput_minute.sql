-- shardrelay.throughput_minute: per minute of the last 6 hours (oldest first, the current minute
-- last), what came in against what went out, with 5-minute sliding averages.
--
--   produced         rows inserted into the outbox in the minute: the rise of max(id) since the
--                    previous minute's sample, less the ids the canaries took (see produced_minute in
--                    migrations/0004_observability.ts); NULL when no relay sampled the minute
--   sent, failed,    rows confirmed, delivery attempts retried, rows dead-lettered, summed over
--   dead             shards and lanes (canary rows excluded)
--   *_avg_5m         the average per minute over this minute and the four before it
--
-- Cost: at most 366 produced_minute rows and the rollup rows of 6 hours (about 16 a minute with
-- 8 shards), read by primary-key range; independent of the outbox's size. Longer periods:
-- shardrelay.volume_hourly.
CREATE OR REPLACE VIEW shardrelay.throughput_minute AS
WITH clock AS (
  SELECT date_trunc('minute', shardrelay.now()) AS last_minute
), minutes AS (
  SELECT m AS minute
    FROM clock, generate_series(last_minute - interval '6 hours 4 minutes', last_minute, interval '1 minute') AS m
), rollup AS (
  SELECT r.minute, sum(r.sent) AS sent, sum(r.failed) AS failed, sum(r.dead) AS dead
    FROM shardrelay.rollup_minute AS r, clock
   WHERE r.minute >= clock.last_minute - interval '6 hours 4 minutes' AND r.minute <= clock.last_minute
   GROUP BY r.minute
), produced AS (
  SELECT p.minute,
         p.max_id - lag(p.max_id) OVER w - p.reserved_ids AS produced
    FROM shardrelay.produced_minute AS p, clock
   WHERE p.minute >= clock.last_minute - interval '6 hours 5 minutes' AND p.minute <= clock.last_minute
  WINDOW w AS (ORDER BY p.minute)
), series AS (
  SELECT m.minute,
         CASE WHEN p.produced IS NOT NULL THEN greatest(p.produced, 0) END AS produced,
         coalesce(r.sent, 0) AS sent,
         coalesce(r.failed, 0) AS failed,
         coalesce(r.dead, 0) AS dead
    FROM minutes AS m
    LEFT JOIN produced AS p USING (minute)
    LEFT JOIN rollup AS r USING (minute)
)
SELECT s.minute,
       s.produced,
       s.sent,
       s.failed,
       s.dead,
       round(avg(s.produced) OVER w, 2)::float8 AS produced_avg_5m,
       round(avg(s.sent) OVER w, 2)::float8 AS sent_avg_5m,
       round(avg(s.dead) OVER w, 2)::float8 AS dead_avg_5m
  FROM series AS s
WINDOW w AS (ORDER BY s.minute ROWS BETWEEN 4 PRECEDING AND CURRENT ROW)
ORDER BY s.minute
OFFSET 4;
