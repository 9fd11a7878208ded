-- shardrelay.latency: per lane, end-to-end latency (created_at to the broker's confirm, i.e. to
-- sent_at) of the rows sent in the last 5 minutes: the current minute and the five before it.
--
--   sent                  rows sent in the window (canary rows excluded)
--   avg_ms, max_ms        exact
--   p50_ms, p95_ms, p99_ms  from the summed per-minute histograms, interpolated inside a bucket like
--                         Prometheus' histogram_quantile (buckets: shardrelay.latency_bounds_ms())
--
-- The histograms live in rollup_minute, written at completion, so pruned rows still count. Cost:
-- the rollup rows of 6 minutes; independent of the outbox's size.
CREATE OR REPLACE VIEW shardrelay.latency AS
WITH minutes AS (
  SELECT r.*
    FROM shardrelay.rollup_minute AS r
   WHERE r.minute >= date_trunc('minute', shardrelay.now() - interval '5 minutes')
     AND r.minute <= shardrelay.now()
     AND r.sent > 0
), totals AS (
  SELECT lane, sum(sent) AS sent, sum(latency_ms_sum) AS latency_ms_sum, max(latency_ms_max) AS max_ms
    FROM minutes GROUP BY lane
), histograms AS (
  SELECT lane, array_agg(n ORDER BY k) AS buckets
    FROM (SELECT m.lane, u.k, sum(u.c)::bigint AS n
            FROM minutes AS m, unnest(m.latency_buckets) WITH ORDINALITY AS u(c, k)
           GROUP BY 1, 2) AS per_bucket
   GROUP BY lane
)
SELECT l.lane,
       coalesce(t.sent, 0) AS sent,
       round((t.latency_ms_sum / nullif(t.sent, 0))::numeric, 3)::float8 AS avg_ms,
       round(shardrelay.histogram_quantile(0.50, h.buckets, t.max_ms)::numeric, 3)::float8 AS p50_ms,
       round(shardrelay.histogram_quantile(0.95, h.buckets, t.max_ms)::numeric, 3)::float8 AS p95_ms,
       round(shardrelay.histogram_quantile(0.99, h.buckets, t.max_ms)::numeric, 3)::float8 AS p99_ms,
       t.max_ms
  FROM (VALUES ('realtime'), ('batch')) AS l(lane)
  LEFT JOIN totals AS t USING (lane)
  LEFT JOIN histograms AS h USING (lane);
