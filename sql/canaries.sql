-- shardrelay.canaries: per shard and lane, the synthetic canary events the relays inject (see
-- src/relay/canary.ts): the latest one's round trip, and those still out.
--
--   last_sent_at, last_latency_seconds  the newest canary confirmed by the broker, created_at to
--                                       sent_at (the latency src/relay/canary.ts exports)
--   outstanding, oldest_outstanding_seconds  canaries not yet confirmed; one older than three
--                                       canary intervals means delivery is broken on that path
--   dead, last_error                    canaries given up (e.g. no queue bound for their routing key)
--
-- Only canary rows are read, through the small partial index outbox_canary; the relays delete
-- their old canaries, so there are a few hundred at most.
CREATE OR REPLACE VIEW shardrelay.canaries AS
WITH c AS (
  SELECT (o.id % (SELECT shard_count FROM shardrelay.shard_config))::integer AS shard,
         CASE WHEN shardrelay.is_realtime(o) THEN 'realtime' ELSE 'batch' END AS lane,
         o.id, o.status, o.created_at, o.sent_at, o.last_error
    FROM shardrelay.outbox AS o
   WHERE o.canary
), last_sent AS (
  SELECT DISTINCT ON (shard, lane) shard, lane, created_at, sent_at
    FROM c WHERE status = 'sent'
   ORDER BY shard, lane, sent_at DESC
), summary AS (
  SELECT shard, lane,
         count(*) FILTER (WHERE status = 'pending') AS outstanding,
         min(created_at) FILTER (WHERE status = 'pending') AS oldest_outstanding,
         count(*) FILTER (WHERE status = 'dead') AS dead,
         (array_agg(last_error ORDER BY id DESC) FILTER (WHERE status = 'dead'))[1] AS last_error
    FROM c GROUP BY shard, lane
)
SELECT s.shard, s.lane,
       l.sent_at AS last_sent_at,
       extract(epoch FROM l.sent_at - l.created_at)::float8 AS last_latency_seconds,
       s.outstanding,
       greatest(extract(epoch FROM shardrelay.now() - s.oldest_outstanding), 0)::float8 AS oldest_outstanding_seconds,
       s.dead,
       s.last_error
  FROM summary AS s
  LEFT JOIN last_sent AS l USING (shard, lane)
 ORDER BY s.shard, s.lane;
