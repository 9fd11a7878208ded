import { sql, type Kysely } from 'kysely';

/**
 * The completion statement as a PL/pgSQL function, `shardrelay.complete_batch`, called by
 * relay/claims.ts `completeBatch` in the claim's transaction.
 *
 * Why a function: the statement it replaces (one UPDATE of the outbox plus the progress and rollup
 * upserts, in CTEs) was planned again for every batch, because the driver sends unnamed statements.
 * Measured on 2 cores with a one-row real-time batch: planning took 1.4 ms of the statement's
 * 2.0 ms, and the completion was the largest part of a real-time row's time in the relay
 * (notify → commit p50 4.2 ms). PL/pgSQL keeps the plan of each statement for the session, so a
 * batch pays only execution: completion p50 2.0 → 0.9 ms.
 *
 * Lock order, fixed here: the outbox rows (already locked by the claim), then the shard's progress
 * row, then the minute's rollup row. Every completer takes them in that order, so two transactions
 * that complete batches of the same shard and lane (a stale replica during a hand-off) wait for
 * each other instead of deadlocking.
 *
 * `latency_histogram` and `add_counts` become PL/pgSQL for the same reason: as SQL functions with
 * aggregates they cannot be inlined, and their bodies were planned on every call (0.6 ms).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.latency_histogram(latencies_ms float8[]) RETURNS bigint[]
    LANGUAGE plpgsql IMMUTABLE AS $$
    DECLARE
      histogram bigint[];
    BEGIN
      SELECT array_agg(coalesce(h.n, 0) ORDER BY k.k) INTO histogram
        FROM generate_series(0, cardinality(shardrelay.latency_bounds_ms())) AS k(k)
        LEFT JOIN (SELECT width_bucket(l, shardrelay.latency_bounds_ms()) AS k, count(*) AS n
                     FROM unnest(latencies_ms) AS l GROUP BY 1) AS h ON h.k = k.k;
      RETURN histogram;
    END $$`.execute(db);
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.add_counts(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE plpgsql IMMUTABLE AS $$
    DECLARE
      total bigint[];
    BEGIN
      SELECT array_agg(coalesce(a[i], 0) + coalesce(b[i], 0) ORDER BY i) INTO total
        FROM generate_series(1, greatest(cardinality(a), cardinality(b))) AS i;
      RETURN total;
    END $$`.execute(db);

  // One row per claimed row in the four arrays (same order). Rows confirmed by the broker become
  // `sent`, stamped with one completion time (after the confirm); retried rows stay `pending` with
  // a later `available_at`; given-up rows become `dead` with their error. `attempts` counts every
  // delivery attempt. Canary rows count in neither progress nor rollup (business figures), but
  // their ids do move `last_sent_id`.
  await sql`
    CREATE FUNCTION shardrelay.complete_batch(
      shard int, lane text, ids bigint[], statuses text[], delays_ms float8[], errors text[], batch_ms int
    ) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
      completed_at constant timestamptz := shardrelay.clock();
      sent_count bigint;
      failed_count bigint;
      dead_count bigint;
      last_sent bigint;
      latency_sum float8;
      latency_max float8;
      latencies float8[];
    BEGIN
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
        WHERE o.id = outcome.id
        RETURNING o.id, o.status, o.canary, extract(epoch FROM completed_at - o.created_at) * 1000 AS latency_ms
      )
      SELECT count(*) FILTER (WHERE status = 'sent' AND NOT canary),
             count(*) FILTER (WHERE status = 'pending' AND NOT canary),
             count(*) FILTER (WHERE status = 'dead' AND NOT canary),
             max(id) FILTER (WHERE status = 'sent'),
             coalesce(sum(latency_ms) FILTER (WHERE status = 'sent' AND NOT canary), 0),
             max(latency_ms) FILTER (WHERE status = 'sent' AND NOT canary),
             array_agg(latency_ms) FILTER (WHERE status = 'sent' AND NOT canary)
        INTO sent_count, failed_count, dead_count, last_sent, latency_sum, latency_max, latencies
        FROM updated;

      INSERT INTO shardrelay.shard_progress AS p
        (shard, lane, last_sent_id, sent_total, failed_total, dead_total, last_batch_at, last_batch_ms)
      VALUES (complete_batch.shard, complete_batch.lane, last_sent, sent_count, failed_count, dead_count,
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
  await sql`DROP FUNCTION shardrelay.complete_batch(int, text, bigint[], text[], float8[], text[], int)`.execute(
    db,
  );
}
