-- shardrelay.lag: per shard and lane, how far behind the relay is, in rows and in seconds.
--
--   pending_rows            rows waiting to be sent (canary rows excluded)
--   due_rows                of those, rows whose available_at has come (the rest wait out a retry)
--   oldest_pending_seconds  age of the oldest pending row (0 when none)
--   oldest_due_seconds      age of the oldest due row: the lag a consumer feels (0 when none)
--   waiting_seconds         how long the longest-waiting due row has been due (since it was
--                           created or its retry delay ended); what the STALL class looks at
--
-- Cost: it reads pending rows only, through the partial index on pending rows that the claims
-- use (outbox_pending_mod<N>, WHERE status = 'pending'), never the sent and dead rows that make up
-- almost all of a large outbox (shardrelay.pending_summary, in migrations/0004_observability.ts).
-- So its cost follows the backlog, not the table: measured on a 2-core machine with 1,000,000
-- rows, 7 ms with 10,000 pending and 110 ms with 200,000 pending (about 0.5 us per pending row;
-- test/observability/viewTimings.test.ts prints both).
-- Every shard and lane has a row, also when nothing is pending.
CREATE OR REPLACE VIEW shardrelay.lag AS
WITH clock AS (
  SELECT shardrelay.now() AS now
)
SELECT s.shard,
       l.lane,
       coalesce(p.pending_rows, 0) AS pending_rows,
       coalesce(p.due_rows, 0) AS due_rows,
       coalesce(greatest(extract(epoch FROM k.now - p.oldest_created_at), 0), 0)::float8 AS oldest_pending_seconds,
       coalesce(greatest(extract(epoch FROM k.now - p.oldest_due_created_at), 0), 0)::float8 AS oldest_due_seconds,
       coalesce(greatest(extract(epoch FROM k.now - p.due_since), 0), 0)::float8 AS waiting_seconds
  FROM generate_series(0, (SELECT shard_count FROM shardrelay.shard_config) - 1) AS s(shard)
 CROSS JOIN (VALUES ('realtime'), ('batch')) AS l(lane)
 CROSS JOIN clock AS k
  LEFT JOIN shardrelay.pending_summary(k.now) AS p ON p.shard = s.shard AND p.lane = l.lane;
