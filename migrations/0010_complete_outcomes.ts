import { sql, type Kysely } from 'kysely';

/**
 * `shardrelay.complete_outcomes`: the completion of a batch with the rows grouped by outcome, called
 * by relay/claims.ts `completeBatch` in the claim's transaction. Same effect as
 * `shardrelay.complete_batch` of 0007 (which stays, unchanged, for replicas of earlier releases):
 * confirmed business rows leave the outbox and leave a sent record (unless the retention is 0),
 * confirmed canary rows are marked `sent` in place, retried rows stay pending with a later
 * `available_at`, given-up rows become `dead`, and the batch is added to the shard's progress row
 * and the minute's rollup row. Lock order as in 0005 and 0007: outbox rows (locked by the claim),
 * progress row, rollup row.
 *
 * Why a new function: measured on 2 cores, PostgreSQL 15, one connection draining 24,000 rows in
 * batches of 1,000 (claim + completion), CPU of the PostgreSQL backend per 1,000 rows, median of 3
 * interleaved runs (load average 12-18, CPU figures of one backend; bench/studies/completionStudy.ts
 * repeated it at load 41-46: floor 18.3, this function 18.3, complete_batch of 0007 25.0):
 *
 *   complete_batch (0007): four arrays of 1,000, record INSERT ... ON CONFLICT DO NOTHING  15.8 ms
 *   one array of sent ids, same record statement                                          14.6
 *   one array of sent ids, plain record INSERT                                            12.1  <- this
 *   the same without the progress and rollup upserts                                      11.3
 *   the bench's same-schema floor (claim, DELETE + plain record INSERT)                   11.7
 *   claim + DELETE, no record                                                              7.1
 *
 * In `npm run bench` afterwards (relay-null, 50,000-row drains, load average 16-33) the relay's
 * PostgreSQL CPU per 1,000 rows was the same-schema floor's: 41.2 against 41.4 ms (before: 57.4
 * against 56.2 in a run at load 20-46; 33.0 against 28.0 on a quiet machine).
 *
 * - The rows grouped by outcome: a batch the broker confirmed whole (the usual one) sends one array
 *   of ids, written by the client as a literal `{1,2,...}`, instead of four arrays of 1,000 ids,
 *   statuses, delays and NULL errors (the process's side: see relay/claims.ts `completeBatch`).
 * - The record written with a plain INSERT: `ON CONFLICT DO NOTHING` makes every row a speculative
 *   insertion (an extra probe of sent_event_pkey and more WAL), 2.0-2.5 ms per 1,000 rows, to
 *   handle a case that almost never happens (an event id recorded already: enqueued again while its
 *   first copy was being completed). The plain INSERT runs in a block that, on a unique violation,
 *   rolls back to its start (a subtransaction) and runs the statement again with ON CONFLICT DO
 *   NOTHING, so the first record is kept as before.
 * - Progress and rollups stay in the claim's transaction (0.8 ms per 1,000 rows): moving them out
 *   would let them disagree with the rows they count after a crash.
 *
 * Mixed versions: this migration only adds a function. Replicas of the previous release keep
 * calling complete_batch, which is unchanged; both write the same rows, records, progress and
 * rollups, so the views, `status` and the pg-boss hand-off see one history.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE FUNCTION shardrelay.complete_outcomes(
      shard int, lane text,
      sent_ids bigint[],
      retry_ids bigint[], retry_delays_ms float8[], retry_errors text[],
      dead_ids bigint[], dead_errors text[],
      batch_ms int
    ) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
      completed_at constant timestamptz := shardrelay.clock();
      record_sent constant boolean :=
        coalesce(nullif(current_setting('shardrelay.sent_record', true), ''), 'on')::boolean;
      sender constant text := nullif(current_setting('shardrelay.replica', true), '');
      sink_name constant text := nullif(current_setting('shardrelay.sink', true), '');
      sent_count bigint := 0;
      last_sent bigint;
      latency_sum float8 := 0;
      latency_max float8;
      latencies float8[];
      canary_last_sent bigint;
      failed_count bigint := 0;
      dead_count bigint := 0;
    BEGIN
      IF cardinality(sent_ids) > 0 THEN
        IF record_sent THEN
          BEGIN
            WITH gone AS (
              DELETE FROM shardrelay.outbox o
               WHERE o.id = ANY(sent_ids) AND NOT o.canary
              RETURNING o.id, o.event_id, o.topic, o.key, o.lane, o.attempts, o.created_at,
                        extract(epoch FROM completed_at - o.created_at) * 1000 AS latency_ms
            ), recorded AS (
              INSERT INTO shardrelay.sent_event
                (event_id, id, topic, key, shard, lane, attempts, created_at, sent_at, replica, sink)
              SELECT g.event_id, g.id, g.topic, g.key, complete_outcomes.shard, g.lane, g.attempts + 1,
                     g.created_at, completed_at, sender, sink_name
                FROM gone AS g
            )
            SELECT count(*), max(id), coalesce(sum(latency_ms), 0), max(latency_ms), array_agg(latency_ms)
              INTO sent_count, last_sent, latency_sum, latency_max, latencies
              FROM gone;
          EXCEPTION WHEN unique_violation THEN
            -- An event id recorded already (enqueued again while its first copy was being
            -- completed): everything above is undone; keep the first record.
            WITH gone AS (
              DELETE FROM shardrelay.outbox o
               WHERE o.id = ANY(sent_ids) AND NOT o.canary
              RETURNING o.id, o.event_id, o.topic, o.key, o.lane, o.attempts, o.created_at,
                        extract(epoch FROM completed_at - o.created_at) * 1000 AS latency_ms
            ), recorded AS (
              INSERT INTO shardrelay.sent_event
                (event_id, id, topic, key, shard, lane, attempts, created_at, sent_at, replica, sink)
              SELECT g.event_id, g.id, g.topic, g.key, complete_outcomes.shard, g.lane, g.attempts + 1,
                     g.created_at, completed_at, sender, sink_name
                FROM gone AS g
              ON CONFLICT ON CONSTRAINT sent_event_pkey DO NOTHING
            )
            SELECT count(*), max(id), coalesce(sum(latency_ms), 0), max(latency_ms), array_agg(latency_ms)
              INTO sent_count, last_sent, latency_sum, latency_max, latencies
              FROM gone;
          END;
        ELSE
          WITH gone AS (
            DELETE FROM shardrelay.outbox o
             WHERE o.id = ANY(sent_ids) AND NOT o.canary
            RETURNING o.id, extract(epoch FROM completed_at - o.created_at) * 1000 AS latency_ms
          )
          SELECT count(*), max(id), coalesce(sum(latency_ms), 0), max(latency_ms), array_agg(latency_ms)
            INTO sent_count, last_sent, latency_sum, latency_max, latencies
            FROM gone;
        END IF;
        -- Canary rows stay, marked sent (shardrelay.canaries reads them, maintain() deletes them
        -- after an hour); they count in no business figure but move last_sent_id.
        IF sent_count < cardinality(sent_ids) THEN
          WITH marked AS (
            UPDATE shardrelay.outbox o SET
              status = 'sent', attempts = o.attempts + 1, sent_at = completed_at, last_error = NULL
             WHERE o.id = ANY(sent_ids) AND o.canary AND o.status = 'pending'
            RETURNING o.id
          )
          SELECT max(id) INTO canary_last_sent FROM marked;
          last_sent := GREATEST(last_sent, canary_last_sent);
        END IF;
      END IF;

      IF cardinality(retry_ids) > 0 THEN
        WITH updated AS (
          UPDATE shardrelay.outbox o SET
            attempts     = o.attempts + 1,
            available_at = completed_at + r.delay_ms * interval '1 millisecond',
            last_error   = r.error
            FROM unnest(retry_ids, retry_delays_ms, retry_errors) AS r(id, delay_ms, error)
           WHERE o.id = r.id AND o.status = 'pending'
          RETURNING o.canary
        )
        SELECT count(*) FILTER (WHERE NOT canary) INTO failed_count FROM updated;
      END IF;

      IF cardinality(dead_ids) > 0 THEN
        WITH updated AS (
          UPDATE shardrelay.outbox o SET
            status = 'dead', attempts = o.attempts + 1, last_error = d.error
            FROM unnest(dead_ids, dead_errors) AS d(id, error)
           WHERE o.id = d.id AND o.status = 'pending'
          RETURNING o.canary
        )
        SELECT count(*) FILTER (WHERE NOT canary) INTO dead_count FROM updated;
      END IF;

      INSERT INTO shardrelay.shard_progress AS p
        (shard, lane, last_sent_id, sent_total, failed_total, dead_total, last_batch_at, last_batch_ms)
      VALUES (complete_outcomes.shard, complete_outcomes.lane, last_sent, sent_count, failed_count, dead_count,
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
      VALUES (date_trunc('minute', completed_at), complete_outcomes.shard, complete_outcomes.lane, 1,
              sent_count, failed_count, dead_count, latency_sum, latency_max,
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
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`
    DROP FUNCTION shardrelay.complete_outcomes(int, text, bigint[], bigint[], float8[], text[], bigint[], text[], int)
  `.execute(db);
}
