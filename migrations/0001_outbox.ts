import { sql, type Kysely } from 'kysely';
import { pendingShardIndexSql } from '../src/db/shardIndex.js';

/**
 * The outbox, the shard configuration and per-shard progress.
 * Runs inside the migrator's transaction, under its advisory lock, so two replicas that migrate at
 * once apply it exactly once.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE SCHEMA IF NOT EXISTS shardrelay`.execute(db);

  await sql`
    CREATE TABLE shardrelay.outbox (
      id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      event_id       uuid NOT NULL DEFAULT gen_random_uuid(),
      topic          text NOT NULL CHECK (topic <> ''),
      key            text,
      payload        jsonb NOT NULL,
      headers        jsonb NOT NULL DEFAULT '{}'::jsonb,
      correlation_id text,
      traceparent    text,
      lane           text NOT NULL DEFAULT 'batch' CHECK (lane IN ('realtime', 'batch')),
      priority       integer NOT NULL DEFAULT 0,
      created_at     timestamptz NOT NULL DEFAULT now(),
      available_at   timestamptz NOT NULL DEFAULT now(),
      attempts       integer NOT NULL DEFAULT 0,
      max_attempts   integer CHECK (max_attempts > 0),
      status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
      sent_at        timestamptz,
      last_error     text
    )`.execute(db);
  await sql`CREATE UNIQUE INDEX outbox_event_id ON shardrelay.outbox (event_id)`.execute(db);
  // Dead letters are listed and replayed by status; a small partial index keeps that cheap.
  await sql`CREATE INDEX outbox_dead ON shardrelay.outbox (id) WHERE status = 'dead'`.execute(db);
  // Pruning finds old sent rows without scanning pending ones.
  await sql`CREATE INDEX outbox_sent_at ON shardrelay.outbox (sent_at) WHERE status = 'sent'`.execute(db);
  for (const statement of pendingShardIndexSql(8)) await sql.raw(statement).execute(db);

  await sql`
    CREATE TABLE shardrelay.shard_config (
      singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
      shard_count integer NOT NULL CHECK (shard_count BETWEEN 1 AND 1024),
      generation  bigint NOT NULL,
      updated_at  timestamptz NOT NULL DEFAULT now()
    )`.execute(db);
  await sql`INSERT INTO shardrelay.shard_config (shard_count, generation) VALUES (8, 1)`.execute(db);

  await sql`
    CREATE TABLE shardrelay.shard_progress (
      shard         integer NOT NULL,
      lane          text NOT NULL,
      last_sent_id  bigint,
      sent_total    bigint NOT NULL DEFAULT 0,
      failed_total  bigint NOT NULL DEFAULT 0,
      dead_total    bigint NOT NULL DEFAULT 0,
      last_batch_at timestamptz,
      last_batch_ms integer,
      PRIMARY KEY (shard, lane)
    )`.execute(db);

  // Wakes the relay when rows arrive, so a real-time row does not wait for the next poll. One
  // NOTIFY per statement (not per row), carrying the distinct shards of the inserted rows;
  // PostgreSQL folds identical notifications of one transaction into one.
  await sql`
    CREATE FUNCTION shardrelay.notify_outbox_insert() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
      n integer;
      shards text;
    BEGIN
      SELECT shard_count INTO n FROM shardrelay.shard_config;
      SELECT string_agg(DISTINCT (id % n)::text, ',') INTO shards FROM inserted;
      IF shards IS NOT NULL THEN
        PERFORM pg_notify('shardrelay_outbox', shards);
      END IF;
      RETURN NULL;
    END $$`.execute(db);
  await sql`
    CREATE TRIGGER outbox_notify_insert
      AFTER INSERT ON shardrelay.outbox
      REFERENCING NEW TABLE AS inserted
      FOR EACH STATEMENT EXECUTE FUNCTION shardrelay.notify_outbox_insert()`.execute(db);
}
