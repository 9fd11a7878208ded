-- shardrelay.shard_rates: per shard of the current count, rows produced and sent per second over
-- the last 5 minutes, so an unbalanced distribution shows (one shard producing or sending far more
-- than the others).
--
--   produced_per_second          rows created in the last 5 minutes that are in this shard under
--                                the key-aware sharding of SHARDRELAY_ORDERING=key (a keyed row
--                                in key_hash(key) % N, a row without key in id % N)
--   produced_by_id_per_second    the same rows, sharded id % N (ordering off)
--   sent_per_second              rows the relay confirmed for this shard, from the per-minute
--                                rollup (whichever sharding the relay ran)
--   pending                      rows pending in the shard now, key-aware sharding
--
-- Produced counts come from the outbox and the sent record (rows created in the window; with
-- SHARDRELAY_SENT_RETENTION=0 sent rows are not counted). Cost: the backlog plus 5 minutes of sent
-- records; sent figures read at most 5 rollup minutes per shard and lane.
CREATE OR REPLACE VIEW shardrelay.shard_rates AS
WITH config AS (
  SELECT shard_count AS n, shardrelay.now() - interval '5 minutes' AS since FROM shardrelay.shard_config
), created AS (
  SELECT o.id, o.key, o.created_at, o.status = 'pending' AS pending
    FROM shardrelay.outbox o
   WHERE o.status IN ('pending', 'dead') AND NOT o.canary
  UNION ALL
  SELECT s.id, s.key, s.created_at, false
    FROM shardrelay.sent_event s, config
   WHERE s.sent_at > config.since AND s.created_at > config.since
), sharded AS (
  SELECT (CASE WHEN c.key IS NULL THEN c.id ELSE shardrelay.key_hash(c.key) END) % config.n AS by_key,
         c.id % config.n AS by_id,
         c.created_at > config.since AS recent,
         c.pending
    FROM created c, config
), produced AS (
  SELECT s.shard,
         count(*) FILTER (WHERE x.by_key = s.shard AND x.recent) AS by_key,
         count(*) FILTER (WHERE x.by_id = s.shard AND x.recent) AS by_id,
         count(*) FILTER (WHERE x.by_key = s.shard AND x.pending) AS pending
    FROM config CROSS JOIN generate_series(0, config.n - 1) AS s(shard)
    JOIN sharded x ON x.by_key = s.shard OR x.by_id = s.shard
   GROUP BY s.shard
), sent AS (
  SELECT r.shard, sum(r.sent) AS sent
    FROM shardrelay.rollup_minute r, config
   WHERE r.minute >= date_trunc('minute', config.since)
   GROUP BY r.shard
)
SELECT s.shard::integer AS shard,
       round(coalesce(p.by_key, 0) / 300.0, 1) AS produced_per_second,
       round(coalesce(p.by_id, 0) / 300.0, 1) AS produced_by_id_per_second,
       round(coalesce(t.sent, 0) / 300.0, 1) AS sent_per_second,
       coalesce(p.pending, 0) AS pending
  FROM config
 CROSS JOIN generate_series(0, config.n - 1) AS s(shard)
  LEFT JOIN produced p ON p.shard = s.shard
  LEFT JOIN sent t ON t.shard = s.shard
 ORDER BY s.shard;
