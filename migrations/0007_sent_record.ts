import { readFile } from 'node:fs/promises';
import { sql, type Kysely } from 'kysely';

const SQL_DIR = new URL('../sql/', import.meta.url);

/**
 * The row lifecycle, chosen by measurement (bench/lifecycleStudy.ts, figures in bench/RESULTS.md):
 * a confirmed row leaves the outbox at completion (DELETE) and, when a retention window is set,
 * leaves behind a slim append-only record in `shardrelay.sent_event`, pruned after the window.
 *
 * Why: the outbox's UPDATE to `sent` wrote a new full-width tuple (payload included) and an entry in
 * every index, one of them the random-order event_id index. DELETE only marks the tuple dead and
 * writes no index entry. Measured on 2 cores, PostgreSQL 15 stock settings, 200,000 rows of ~200 B,
 * 8 shards, 8 connections, batch 1,000, the relay's claim with the lock held across a round trip,
 * two interleaved rounds on a quiet machine (load 0.0-1.3):
 *
 *   UPDATE to sent (0001-0006)                       85,000-99,000 rows/s
 *   DELETE                                          189,000-275,000
 *   DELETE + slim record, random (v4) event ids      157,000-188,000
 *   DELETE + slim record, UUIDv7 event ids           192,000-199,000
 *   DELETE + slim record, UUIDv7, BRIN on sent_at    200,000-202,000
 *   DELETE + slim record, UUIDv7, btree on sent_at   see bench/RESULTS.md  <- this migration
 *   narrow table, DELETE (the physical floor)       257,000-277,000
 *
 * So: DELETE at completion; the record holds what an operator asks about a sent event (when, by
 * which replica, to which sink) and what idempotent enqueue checks, in ~100 bytes instead of the
 * row's ~400; event ids default to UUIDv7 (time-ordered) so both unique indexes append at their
 * right edge instead of dirtying a random leaf per row; the retention pruner finds old records
 * through a btree on sent_at (see below why not a BRIN).
 *
 * Mixed versions: replicas of the previous release keep calling `shardrelay.complete_batch` with
 * the same arguments and get this definition at their next call (PL/pgSQL recompiles a replaced
 * function), so they delete and record too. Rows they marked `sent` before the migration stay in
 * the outbox as they were and are pruned by the new replicas' retention (in bounded batches,
 * through the existing outbox_sent_at partial index); `shardrelay.events` shows both kinds.
 * Nothing pending is touched: the migration rewrites no row and takes only brief catalog locks.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  // Catalog changes on the outbox need a brief lock: wait at most 5 s for running claims rather
  // than queue every producer behind us; a timeout fails the migration, which can be run again.
  await sql`SET LOCAL lock_timeout = '5s'`.execute(db);

  // UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, the version, then random bits. PostgreSQL 18
  // has uuidv7(); this works on 13+. Measured above: +4-22% on the drain against v4 ids.
  await sql`
    CREATE FUNCTION shardrelay.uuid_v7() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
      SELECT encode(
               set_byte(
                 set_byte(
                   overlay(uuid_send(gen_random_uuid())
                           PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                           FROM 1 FOR 6),
                   6, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112),
                 8, (get_byte(uuid_send(gen_random_uuid()), 8) & 63) | 128),
               'hex')::uuid
    $$`.execute(db);
  await sql`ALTER TABLE shardrelay.outbox ALTER COLUMN event_id SET DEFAULT shardrelay.uuid_v7()`.execute(db);

  // The outbox is now a queue: every row is inserted once and deleted once. Autovacuum's defaults
  // (vacuum at 20% dead, throttled by cost_delay) let a table that turns over its whole content
  // every few seconds bloat between runs; vacuum it at 1% dead and without throttling. Claims never
  // wait for vacuum (it takes no lock they conflict with).
  await sql`
    ALTER TABLE shardrelay.outbox SET (
      autovacuum_vacuum_scale_factor = 0.01,
      autovacuum_vacuum_threshold = 5000,
      autovacuum_vacuum_cost_delay = 0,
      autovacuum_analyze_scale_factor = 0.05
    )`.execute(db);

  // One row per sent event, written by complete_batch in the claim's transaction (so it exists if
  // and only if the row left the outbox as sent), deleted by the retention pruner. Who writes and
  // reads each column: complete_batch writes all; `shardrelay event <id>` and shardrelay.events
  // read them; enqueue reads event_id (idempotent enqueue); the pruner reads sent_at.
  //   shard    id % shard_count at the time it was sent
  //   replica  the sending replica's id (NULL when sent by a release that did not say)
  //   sink     the sink's name (pgboss, rabbitmq, ...)
  await sql`
    CREATE TABLE shardrelay.sent_event (
      event_id   uuid NOT NULL,
      id         bigint NOT NULL,
      topic      text NOT NULL,
      key        text,
      shard      integer NOT NULL,
      lane       text NOT NULL,
      attempts   integer NOT NULL,
      created_at timestamptz NOT NULL,
      sent_at    timestamptz NOT NULL,
      replica    text,
      sink       text,
      CONSTRAINT sent_event_pkey PRIMARY KEY (event_id)
    ) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0,
            autovacuum_vacuum_insert_scale_factor = 0.05)`.execute(db);
  // A btree, not a BRIN: sent_at only grows, so entries append at the right edge (cheap), and a
  // prune step reads only the entries it deletes. A BRIN was tried first and measured in the
  // 30-minute soak: once vacuum lets new records reuse the pages of pruned ones, every block range
  // spans old and new times, so each 5,000-row prune step read 13,600 pages and rechecked 662,000
  // rows (446 ms at minute 21, 1.2 million records). With this btree the same step took 10 ms.
  await sql`CREATE INDEX sent_event_sent_at ON shardrelay.sent_event (sent_at)`.execute(db);

  // Same arguments as 0005 (relay/claims.ts completeBatch and replicas of the previous release call
  // it unchanged); three session settings of the lane connections add what it cannot be passed:
  //   shardrelay.sent_record  'off' when the retention is 0: no record at all (fastest)
  //   shardrelay.replica, shardrelay.sink  stored in the record
  // Business rows confirmed by the broker are deleted (and recorded); canary rows are still marked
  // `sent` in place (shardrelay.canaries reads them, maintain() deletes them after an hour); retried
  // rows stay pending with a later available_at; given-up rows become `dead` with their error.
  // Lock order as in 0005: outbox rows (locked by the claim), progress row, rollup row.
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.complete_batch(
      shard int, lane text, ids bigint[], statuses text[], delays_ms float8[], errors text[], batch_ms int
    ) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
      completed_at constant timestamptz := shardrelay.clock();
      record_sent constant boolean :=
        coalesce(nullif(current_setting('shardrelay.sent_record', true), ''), 'on')::boolean;
      sender constant text := nullif(current_setting('shardrelay.replica', true), '');
      sink_name constant text := nullif(current_setting('shardrelay.sink', true), '');
      sent_count bigint;
      last_sent bigint;
      latency_sum float8;
      latency_max float8;
      latencies float8[];
      rest_failed bigint := 0;
      rest_dead bigint := 0;
      rest_last_sent bigint;
    BEGIN
      WITH gone AS (
        DELETE FROM shardrelay.outbox o
         USING unnest(ids, statuses) AS v(id, status)
         WHERE o.id = v.id AND v.status = 'sent' AND NOT o.canary
        RETURNING o.id, o.event_id, o.topic, o.key, o.lane, o.attempts, o.created_at,
                  extract(epoch FROM completed_at - o.created_at) * 1000 AS latency_ms
      ), recorded AS (
        INSERT INTO shardrelay.sent_event
          (event_id, id, topic, key, shard, lane, attempts, created_at, sent_at, replica, sink)
        SELECT g.event_id, g.id, g.topic, g.key, complete_batch.shard, g.lane, g.attempts + 1, g.created_at,
               completed_at, sender, sink_name
          FROM gone AS g
         WHERE record_sent
        -- A duplicate of an already-recorded event (enqueued again while its first copy was being
        -- completed) was delivered with the same event id; keep the first record.
        ON CONFLICT ON CONSTRAINT sent_event_pkey DO NOTHING
      )
      SELECT count(*), max(id), coalesce(sum(latency_ms), 0), max(latency_ms), array_agg(latency_ms)
        INTO sent_count, last_sent, latency_sum, latency_max, latencies
        FROM gone;

      -- Everything else (retries, dead letters, canaries): only when the batch had any.
      IF sent_count < cardinality(ids) THEN
        WITH outcome AS (
          SELECT * FROM unnest(ids, statuses, delays_ms, errors) AS v(id, status, delay_ms, error)
        ), updated AS (
          UPDATE shardrelay.outbox o SET
            status       = outcome.status,
            attempts     = o.attempts + 1,
            sent_at      = CASE WHEN outcome.status = 'sent' THEN completed_at END,
            available_at = CASE WHEN outcome.status = 'pending'
                                THEN completed_at + outcome.delay_ms * interval '1 millisecond'
                                ELSE o.available_at END,
            last_error   = outcome.error
          FROM outcome
          WHERE o.id = outcome.id AND o.status = 'pending'
          RETURNING o.id, o.status, o.canary
        )
        SELECT count(*) FILTER (WHERE status = 'pending' AND NOT canary),
               count(*) FILTER (WHERE status = 'dead' AND NOT canary),
               max(id) FILTER (WHERE status = 'sent')
          INTO rest_failed, rest_dead, rest_last_sent
          FROM updated;
      END IF;
      last_sent := GREATEST(last_sent, rest_last_sent);

      INSERT INTO shardrelay.shard_progress AS p
        (shard, lane, last_sent_id, sent_total, failed_total, dead_total, last_batch_at, last_batch_ms)
      VALUES (complete_batch.shard, complete_batch.lane, last_sent, sent_count, rest_failed, rest_dead,
              completed_at, batch_ms)
      ON CONFLICT ON CONSTRAINT shard_progress_pkey DO UPDATE SET
        last_sent_id  = GREATEST(p.last_sent_id, EXCLUDED.last_sent_id),
        sent_total    = p.sent_total + EXCLUDED.sent_total,
        failed_total  = p.failed_total + EXCLUDED.failed_total,
        dead_total    = p.dead_total + EXCLUDED.dead_total,
        last_batch_at = EXCLUDED.last_batch_at,
        last_batch_ms = EXCLUDED.last_batch_ms;

      INSERT INTO shardrelay.rollup_minute AS r
        (minute, shard, lane, batches, sent, failed, dead, latency_ms_sum, latency_ms_max, latency_buckets)
      VALUES (date_trunc('minute', completed_at), complete_batch.shard, complete_batch.lane, 1,
              sent_count, rest_failed, rest_dead, latency_sum, latency_max,
              shardrelay.latency_histogram(latencies))
      ON CONFLICT ON CONSTRAINT rollup_minute_pkey DO UPDATE SET
        batches         = r.batches + 1,
        sent            = r.sent + EXCLUDED.sent,
        failed          = r.failed + EXCLUDED.failed,
        dead            = r.dead + EXCLUDED.dead,
        latency_ms_sum  = r.latency_ms_sum + EXCLUDED.latency_ms_sum,
        latency_ms_max  = GREATEST(r.latency_ms_max, EXCLUDED.latency_ms_max),
        latency_buckets = shardrelay.add_counts(r.latency_buckets, EXCLUDED.latency_buckets);
    END $$`.execute(db);

  // The retention pruner's one bounded step (relay/sentPruner.ts calls it until it returns less
  // than max_rows). One caller at a time across all replicas: a second caller gets -1 at once
  // instead of deleting the same rows in parallel. Deletes sent records older than the window,
  // then rows an earlier release left in the outbox as `sent` (never pending or dead rows), at most
  // max_rows in all, in one short transaction that locks no row a claim wants.
  await sql`
    CREATE FUNCTION shardrelay.prune_sent(retention interval, max_rows integer) RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
      cutoff constant timestamptz := shardrelay.clock() - retention;
      records bigint;
      legacy bigint := 0;
    BEGIN
      IF NOT pg_try_advisory_xact_lock(hashtext('shardrelay.prune_sent')) THEN
        RETURN -1;
      END IF;
      DELETE FROM shardrelay.sent_event
       WHERE ctid = ANY(ARRAY(SELECT ctid FROM shardrelay.sent_event WHERE sent_at < cutoff
                               ORDER BY sent_at LIMIT max_rows));
      GET DIAGNOSTICS records = ROW_COUNT;
      IF records < max_rows THEN
        DELETE FROM shardrelay.outbox
         WHERE id = ANY(ARRAY(SELECT id FROM shardrelay.outbox
                               WHERE status = 'sent' AND NOT canary AND sent_at < cutoff
                               LIMIT max_rows - records));
        GET DIAGNOSTICS legacy = ROW_COUNT;
      END IF;
      RETURN records + legacy;
    END $$`.execute(db);

  // shardrelay.events: every event the database still knows, from the outbox or the sent record.
  // The view as of this release; migration 0012 replaced sql/events.sql (see sql/frozen/).
  await sql.raw(await readFile(new URL('frozen/events_0007.sql', SQL_DIR), 'utf8')).execute(db);
}
