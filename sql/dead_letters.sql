-- shardrelay.dead_letters: rows given up, by topic and reason, most numerous first.
--
--   reason            the row's last error with digits folded to "N", so "gave up after 10 attempts:
--                     http 503 from :8080" and the same error after 12 attempts group together
--   dead_rows         how many dead rows share topic and reason
--   oldest_created_at, newest_created_at   when the oldest and newest of them were enqueued
--   oldest_seconds    age of the oldest (how long the oldest has waited for a person)
--   sample_id, sample_error   the newest such row and its exact error, to start the investigation
--   (`shardrelay dead list --topic <topic>`, `shardrelay dead replay`)
--
-- Canary rows are excluded. Cost: it reads dead rows only, through the partial index outbox_dead;
-- dead letters are few unless something is badly wrong, and replaying them takes them out.
CREATE OR REPLACE VIEW shardrelay.dead_letters AS
WITH by_error AS (
  -- Group by the exact text first, so the digit folding runs once per distinct error, not per row.
  SELECT o.topic, o.last_error, count(*) AS dead_rows, min(o.created_at) AS oldest_created_at,
         max(o.created_at) AS newest_created_at, max(o.id) AS sample_id
    FROM shardrelay.outbox AS o
   WHERE o.status = 'dead' AND NOT o.canary
   GROUP BY o.topic, o.last_error
), grouped AS (
  SELECT topic,
         left(regexp_replace(coalesce(last_error, '(no error recorded)'), '[0-9]+', 'N', 'g'), 300) AS reason,
         sum(dead_rows) AS dead_rows,
         min(oldest_created_at) AS oldest_created_at,
         max(newest_created_at) AS newest_created_at,
         max(sample_id) AS sample_id
    FROM by_error
   GROUP BY 1, 2
)
SELECT g.topic,
       g.reason,
       g.dead_rows,
       g.oldest_created_at,
       g.newest_created_at,
       greatest(extract(epoch FROM shardrelay.now() - g.oldest_created_at), 0)::float8 AS oldest_seconds,
       g.sample_id,
       o.last_error AS sample_error
  FROM grouped AS g
  JOIN shardrelay.outbox AS o ON o.id = g.sample_id
 ORDER BY g.dead_rows DESC, g.topic, g.reason;
