-- Frozen: the text the migrations before 0012 install, kept as it was so that they build the
-- same schema on an empty database as they did on the databases they already ran on. The view of
-- today is in sql/ (installed by migration 0012, which added the ordering mode it reads).
--
-- shardrelay.events: every event the database still knows of, one row each: pending and dead rows
-- of the outbox, sent events from the sent record (shardrelay.sent_event, kept for the retention
-- window, SHARDRELAY_SENT_RETENTION), and rows an earlier release left in the outbox as sent.
-- Answers "was event X sent, when, by which replica, to which sink?":
--
--   SELECT status, sent_at, replica, sink FROM shardrelay.events WHERE event_id = '...';
--
--   status     pending | dead | sent
--   shard      id % shard count (for sent events: the shard that sent it)
--   attempts   delivery attempts so far (for sent events: including the one confirmed)
--   replica, sink  who sent it (NULL for pending and dead rows, and for rows sent by a release
--                  that did not record them)
--
-- Cost: by event_id, two unique-index probes. Canary rows are left out.
CREATE OR REPLACE VIEW shardrelay.events AS
SELECT o.event_id, o.id, o.topic, o.key,
       (o.id % (SELECT shard_count FROM shardrelay.shard_config))::integer AS shard,
       o.lane, o.status, o.attempts, o.created_at, o.sent_at,
       NULL::text AS replica, NULL::text AS sink, o.last_error
  FROM shardrelay.outbox AS o
 WHERE NOT o.canary
UNION ALL
SELECT s.event_id, s.id, s.topic, s.key, s.shard, s.lane, 'sent', s.attempts, s.created_at, s.sent_at,
       s.replica, s.sink, NULL::text
  FROM shardrelay.sent_event AS s;
