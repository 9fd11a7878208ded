-- shardrelay.replicas: one row per relay process that has heartbeated (a graceful stop deletes
-- its row; a crashed replica stays visible, alive = false, until it has been gone 15 minutes,
-- unless another replica finds its liveness lock free and evicts it at once: migration 0008).
--
--   alive                  heartbeat younger than the replica's lease timeout; only live
--                          replicas count when the shards are divided
--   heartbeat_age_seconds  seconds since its last heartbeat (renewed about every second)
--   shards_held            leases it holds now on the current shard generation
--   on_current_generation  false while it still finishes batches of an older shard count
--   duplicate_id           another live process uses the same replica id (each still gets its
--                          own share, but logs and metrics of the two are hard to tell apart)
-- The time: written clock_timestamp() here, since migration 0003 installs this file before
-- shardrelay.clock() exists; migration 0011 installs it again reading shardrelay.clock() (the one clock).
CREATE OR REPLACE VIEW shardrelay.replicas AS
WITH config AS (
  SELECT generation FROM shardrelay.shard_config
), held AS (
  SELECT l.owner_instance,
         count(*) AS shards_held,
         array_agg(l.shard ORDER BY l.shard) AS shards
    FROM shardrelay.shard_lease l, config
   WHERE l.generation = config.generation
     AND l.expires_at > clock_timestamp()
   GROUP BY l.owner_instance
), members AS (
  SELECT r.*,
         r.heartbeat_at + r.lease_timeout_seconds * interval '1 second' > clock_timestamp() AS alive
    FROM shardrelay.replica r
)
SELECT m.replica_id,
       m.instance,
       m.hostname,
       m.pid,
       m.alive,
       m.started_at,
       m.heartbeat_at,
       round(extract(epoch FROM clock_timestamp() - m.heartbeat_at)::numeric, 3) AS heartbeat_age_seconds,
       m.lease_timeout_seconds,
       m.generation,
       m.generation = config.generation AS on_current_generation,
       coalesce(h.shards_held, 0) AS shards_held,
       coalesce(h.shards, ARRAY[]::integer[]) AS shards,
       m.alive AND count(*) FILTER (WHERE m.alive) OVER (PARTITION BY m.replica_id) > 1 AS duplicate_id
  FROM members m
  CROSS JOIN config
  LEFT JOIN held h ON h.owner_instance = m.instance;
