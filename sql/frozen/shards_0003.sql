-- Frozen: the text the migrations before 0012 install, kept as it was so that they build the
-- same schema on an empty database as they did on the databases they already ran on. The view of
-- today is in sql/ (installed by migration 0012, which added the ordering mode it reads).
--
-- shardrelay.shards: one row per shard of the current shard count, with its lease and backlog.
--
--   owner / owner_instance  replica id and process holding the lease; NULL when nobody does
--   lease_valid             false when the lease expired and nobody has taken it over yet
--   lease_expires_in_seconds  negative once expired
--   pending / oldest_pending_age_seconds  rows waiting in this shard (both lanes, including
--                          rows whose retry is not due yet)
--
-- Leases spread the work between replicas; correctness never depends on them (see
-- src/relay/claims.ts), so an unowned shard is late, never lost.
-- The time: written clock_timestamp() here, since migration 0003 installs this file before
-- shardrelay.clock() exists; migration 0011 installs it again reading shardrelay.clock() (the one clock).
CREATE OR REPLACE VIEW shardrelay.shards AS
WITH config AS (
  SELECT shard_count, generation FROM shardrelay.shard_config
), backlog AS (
  SELECT o.id % config.shard_count AS shard,
         count(*) AS pending,
         min(o.created_at) AS oldest_created_at
    FROM shardrelay.outbox o, config
   WHERE o.status = 'pending'
   GROUP BY 1
)
SELECT s.shard::integer AS shard,
       config.shard_count,
       config.generation,
       l.owner,
       l.owner_instance,
       l.acquired_at,
       l.renewed_at,
       l.expires_at,
       l.expires_at > clock_timestamp() AS lease_valid,
       round(extract(epoch FROM l.expires_at - clock_timestamp())::numeric, 3) AS lease_expires_in_seconds,
       coalesce(b.pending, 0) AS pending,
       round(extract(epoch FROM clock_timestamp() - b.oldest_created_at)::numeric, 3) AS oldest_pending_age_seconds
  FROM config
 CROSS JOIN generate_series(0, config.shard_count - 1) AS s(shard)
  LEFT JOIN shardrelay.shard_lease l ON l.generation = config.generation AND l.shard = s.shard
  LEFT JOIN backlog b ON b.shard = s.shard;
