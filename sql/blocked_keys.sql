-- shardrelay.blocked_keys: keys whose delivery is held up, one row per key and reason. With
-- per-key ordering on (SHARDRELAY_ORDERING=key) no row of a key is sent before its earlier rows
-- (src/relay/claims.ts), so one row that waits holds up every later row of its key, and only them:
-- the shard's other keys keep flowing.
--
--   reason         'retrying': the key's earliest pending row failed and waits for its retry
--                  (available_at in the future); 'dead': the key has a dead row with pending rows
--                  after it; it holds them only with SHARDRELAY_ORDERING_DEAD=hold (the default,
--                  release, sends them; replaying the dead row then delivers it after them)
--   blocking_id    the outbox id of that row (`shardrelay dead replay` / `dead discard` take it)
--   attempts, last_error, retry_in_seconds  the blocking row's delivery attempts so far, last
--                  error, and time until its next attempt (NULL for a dead row)
--   waiting        pending rows of the key after it
--   oldest_waiting_age_seconds  how long the blocking row has existed
--
-- Cost: reads every pending and dead keyed row (the backlog, not the sent history); meant for
-- `shardrelay status` and an operator, not for a dashboard polling every second.
CREATE OR REPLACE VIEW shardrelay.blocked_keys AS
WITH first_pending AS (
  SELECT DISTINCT ON (o.key) o.key, o.id, o.available_at, o.attempts, o.last_error, o.created_at
    FROM shardrelay.outbox o
   WHERE o.key IS NOT NULL AND o.status = 'pending' AND NOT o.canary
   ORDER BY o.key, o.id
), first_dead AS (
  SELECT DISTINCT ON (o.key) o.key, o.id, o.attempts, o.last_error, o.created_at
    FROM shardrelay.outbox o
   WHERE o.key IS NOT NULL AND o.status = 'dead' AND NOT o.canary
   ORDER BY o.key, o.id
), blocked AS (
  SELECT p.key, 'retrying'::text AS reason, p.id, p.attempts, p.last_error,
         round(extract(epoch FROM p.available_at - shardrelay.now())::numeric, 3) AS retry_in_seconds,
         p.created_at
    FROM first_pending p
   WHERE p.available_at > shardrelay.now()
  UNION ALL
  SELECT d.key, 'dead'::text, d.id, d.attempts, d.last_error, NULL::numeric, d.created_at
    FROM first_dead d
   WHERE EXISTS (SELECT 1 FROM shardrelay.outbox w
                  WHERE w.key = d.key AND w.status = 'pending' AND w.id > d.id)
)
SELECT b.key,
       b.reason,
       b.id AS blocking_id,
       b.attempts,
       b.last_error,
       b.retry_in_seconds,
       (SELECT count(*) FROM shardrelay.outbox w
         WHERE w.key = b.key AND w.status = 'pending' AND w.id > b.id) AS waiting,
       round(extract(epoch FROM shardrelay.now() - b.created_at)::numeric, 3) AS oldest_waiting_age_seconds
  FROM blocked b;
