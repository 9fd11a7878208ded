import { sql, type Kysely } from 'kysely';

/**
 * The insert trigger also names, on a channel of their own (`shardrelay_outbox_realtime`), the
 * shards that received rows whose `lane` column is 'realtime'.
 *
 * Until now one NOTIFY named every shard that received rows, and each relay woke the loops of both
 * lanes for them. The batch lane gathers its wake-ups (`--batch-gather-ms`); the real-time lane
 * cannot (every millisecond is its latency), so every insert statement of batch rows cost one
 * empty real-time claim per shard it touched: BEGIN, a claim that finds nothing, COMMIT, with the
 * claim's planning (0.6-2.2 ms with ~220 buffer reads on a busy outbox) dominating. Measured in the
 * bench's soak (embedded PostgreSQL 18, 10,300 batch rows/s inserted in ~200 statements/s, 8
 * shards): 1,765 scans/s of the real-time lane's partial index, and the real-time lane's
 * connections used 0.25-0.31 cores of PostgreSQL, against 0.58-0.76 for the batch lane that sent
 * every row.
 *
 * Relays of this version whose lanes are told apart by the `lane` column (the default lane
 * predicate) LISTEN on both channels: the real-time lane wakes only for the new one, the batch lane
 * for the old one (relay/outboxListener.ts). A relay with another lane predicate, and relays of
 * the previous release, still wake both lanes for the old channel, whose payload is unchanged
 * (every shard with new rows, comma-separated). A relay finds out whether the trigger sends the
 * new channel by reading this function's source (`pg_proc`, readable by every role), so a relay
 * of this version on a database not migrated yet keeps waking both lanes as before.
 *
 * Measured by `npm run bench -- --only relay-null,max-sustainable` (2 cores, PostgreSQL 15), before
 * and after, alternated: max sustainable 35,535 and 36,642 → 45,568 and 39,973 rows/s; per 1,000
 * rows PostgreSQL's CPU 38.0-40.1 → 30.9-33.9 ms and the relay's 12.3-12.6 → 8.1-10.1.
 *
 * Cost: one pass over the inserted rows as before, two DISTINCT aggregates instead of one, and a
 * second NOTIFY only when the statement inserted real-time rows; not measurable by pgbench (one
 * client, 8 s each, alternated 3 times, batch rows): one-row inserts 2,012-2,365 statements/s with
 * this body against 1,899-2,224 with 0013's, 100-row inserts 736-826 against 652-755.
 *
 * Safe on a populated outbox while replicas and producers run: CREATE OR REPLACE FUNCTION locks
 * only the function; an insert uses the old body or the new.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.notify_outbox_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    DECLARE
      n integer;
      ordering text;
      shards text;
      realtime_shards text;
    BEGIN
      SELECT c.shard_count, m.mode INTO n, ordering
        FROM shardrelay.shard_config AS c, shardrelay.ordering_mode AS m;
      SELECT string_agg(DISTINCT r.shard::text, ','),
             string_agg(DISTINCT r.shard::text, ',') FILTER (WHERE r.lane = 'realtime')
        INTO shards, realtime_shards
        FROM (SELECT shardrelay.shard_of(id, key, n, ordering) AS shard, lane FROM inserted) AS r;
      IF shards IS NOT NULL THEN
        PERFORM pg_notify('shardrelay_outbox', shards);
      END IF;
      IF realtime_shards IS NOT NULL THEN
        PERFORM pg_notify('shardrelay_outbox_realtime', realtime_shards);
      END IF;
      RETURN NULL;
    END $$`.execute(db);
}
