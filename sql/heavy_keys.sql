-- shardrelay.heavy_keys: the 20 keys with the most rows in the last 5 minutes (pending and dead
-- rows in the outbox, plus rows sent in those 5 minutes from the sent record), heaviest first. With
-- per-key ordering on, a key's rows all go through one shard and, one after another, through one
-- chain of sends: a key holding a large share of the traffic is the "one partition overloaded"
-- case, and this view names it.
--
--   rows           rows of the key counted as above
--   share_percent  of all keyed rows counted
--   pending        of them still pending
--   shard          the shard the key lives in with ordering on (key_hash(key) % shard count)
--
-- Cost: reads the backlog and the sent records of 5 minutes (through their sent_at index); with
-- SHARDRELAY_SENT_RETENTION=0 only the backlog counts.
CREATE OR REPLACE VIEW shardrelay.heavy_keys AS
WITH counted AS (
  SELECT o.key, o.status = 'pending' AS pending
    FROM shardrelay.outbox o
   WHERE o.key IS NOT NULL AND o.status IN ('pending', 'dead') AND NOT o.canary
  UNION ALL
  SELECT s.key, false
    FROM shardrelay.sent_event s
   WHERE s.key IS NOT NULL AND s.sent_at > shardrelay.now() - interval '5 minutes'
), per_key AS (
  SELECT c.key, count(*) AS rows, count(*) FILTER (WHERE c.pending) AS pending
    FROM counted c
   GROUP BY c.key
)
SELECT k.key,
       k.rows,
       round(100.0 * k.rows / nullif(sum(k.rows) OVER (), 0), 1) AS share_percent,
       k.pending,
       (shardrelay.key_hash(k.key) % (SELECT shard_count FROM shardrelay.shard_config))::integer AS shard
  FROM per_key k
 ORDER BY k.rows DESC, k.key
 LIMIT 20;
