-- shardrelay.volume_hourly: per hour of the last 7 days (oldest first), rows produced, sent
-- (in total and per lane), retried and dead-lettered. Canary rows are excluded. produced is NULL
-- for an hour no relay sampled.
--
-- Cost: finished hours come from rollup_hour and produced_hour, which shardrelay.maintain() folds
-- from the minute tables once an hour is over (168 rows per shard and lane for the week); only the
-- hours not folded yet (the current one, usually) are summed from the minutes. Independent of the
-- outbox's size.
CREATE OR REPLACE VIEW shardrelay.volume_hourly AS
WITH clock AS (
  SELECT date_trunc('hour', shardrelay.now()) AS last_hour,
         date_trunc('hour', shardrelay.now()) - interval '167 hours' AS first_hour
), folded AS (
  SELECT coalesce((SELECT max(hour) + interval '1 hour' FROM shardrelay.rollup_hour), '-infinity') AS rollups,
         coalesce((SELECT max(hour) + interval '1 hour' FROM shardrelay.produced_hour), '-infinity') AS samples
), rollup_rows AS (
  SELECT r.hour, r.lane, r.sent, r.failed, r.dead
    FROM shardrelay.rollup_hour AS r, clock, folded
   WHERE r.hour >= clock.first_hour AND r.hour < folded.rollups
  UNION ALL
  SELECT date_trunc('hour', m.minute), m.lane, m.sent, m.failed, m.dead
    FROM shardrelay.rollup_minute AS m, clock, folded
   WHERE m.minute >= greatest(clock.first_hour, folded.rollups) AND m.minute < clock.last_hour + interval '1 hour'
), rollup AS (
  SELECT hour,
         sum(sent) AS sent,
         sum(sent) FILTER (WHERE lane = 'realtime') AS sent_realtime,
         sum(sent) FILTER (WHERE lane = 'batch') AS sent_batch,
         sum(failed) AS failed,
         sum(dead) AS dead
    FROM rollup_rows
   GROUP BY hour
), sample_rows AS (
  -- One more hour than shown: the first hour's produced is measured from the sample before it.
  SELECT p.hour, p.max_id, p.reserved_ids
    FROM shardrelay.produced_hour AS p, clock, folded
   WHERE p.hour >= clock.first_hour - interval '1 hour' AND p.hour < folded.samples
  UNION ALL
  SELECT date_trunc('hour', m.minute), m.max_id, m.reserved_ids
    FROM shardrelay.produced_minute AS m, clock, folded
   WHERE m.minute >= greatest(clock.first_hour - interval '1 hour', folded.samples)
     AND m.minute < clock.last_hour + interval '1 hour'
), samples AS (
  SELECT hour, max(max_id) AS max_id, sum(reserved_ids) AS reserved_ids FROM sample_rows GROUP BY hour
), produced AS (
  SELECT hour, max_id - lag(max_id) OVER (ORDER BY hour) - reserved_ids AS produced FROM samples
)
SELECT h.hour,
       CASE WHEN p.produced IS NOT NULL THEN greatest(p.produced, 0) END AS produced,
       coalesce(r.sent, 0) AS sent,
       coalesce(r.sent_realtime, 0) AS sent_realtime,
       coalesce(r.sent_batch, 0) AS sent_batch,
       coalesce(r.failed, 0) AS failed,
       coalesce(r.dead, 0) AS dead
  FROM clock
 CROSS JOIN generate_series(clock.first_hour, clock.last_hour, interval '1 hour') AS h(hour)
  LEFT JOIN produced AS p USING (hour)
  LEFT JOIN rollup AS r USING (hour)
 ORDER BY h.hour;
