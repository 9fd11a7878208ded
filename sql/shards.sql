-- shardrelay.shards: one row per shard of the current shard count, with its lease and backlog.
--
--   owner / owner_instance  replica id and process holding the lease; NULL when nobody does
--   lease_valid             false when the lease expired and nobody has taken it over yet
--   lease_expires_in_seconds  negative once expired
--   pending / oldest_pending_age_seconds  rows waiting in this shard (both lanes, including
--                          rows whose retry is not due yet)
--   ordering               the sharding the counts use, the mode the replicas run
--                          (shardrelay.ordering_mode, migration 0012): 'off' puts a row in
--                          id % N, 'key' puts a keyed row in key_hash(key) % N
--
-- A row's shard is shardrelay.shard_of(...), the rule the claim applies (src/db/shardIndex.ts).
-- Leases spread the work between replicas; correctness never depends on them (see
-- src/relay/claims.ts), so an unowned shard is late, never lost.
CREATE OR REPLACE VIEW shardrelay.shards AS
WITH config AS (
  SELECT c.shard_count, c.generation, m.mode AS ordering
    FROM shardrelay.shard_config c CROSS JOIN shardrelay.ordering_mode m
), backlog AS (
  SELECT shardrelay.shard_of(o.id, o.key, config.shard_count, config.ordering) AS shard,
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
       l.expires_at > shardrelay.clock() AS lease_valid,
       round(extract(epoch FROM l.expires_at - shardrelay.clock())::numeric, 3) AS lease_expires_in_seconds,
       coalesce(b.pending, 0) AS pending,
       round(extract(epoch FROM shardrelay.clock() - b.oldest_created_at)::numeric, 3) AS oldest_pending_age_seconds,
       config.ordering
  FROM config
 CROSS JOIN generate_series(0, config.shard_count - 1) AS s(shard)
  LEFT JOIN shardrelay.shard_lease l ON l.generation = config.generation AND l.shard = s.shard
  LEFT JOIN backlog b ON b.shard = s.shard;
