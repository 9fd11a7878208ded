import { sql, type Kysely } from 'kysely';

/**
 * shardrelay.set_shard_count(n): what a shard-count migration calls. It changes the count, bumps
 * the generation and NOTIFYs the replicas, which finish their in-flight batches and switch within
 * a tick. It takes only the shard_config row lock (no lock on the outbox), so it neither waits on
 * nor blocks live replicas and applications; the lock_timeout bounds the one wait it could have
 * (a concurrent call) and turns it into a clear, retryable error. The expression index for the new
 * count is built by the relay with CREATE INDEX CONCURRENTLY (db/shardIndex.ts): building it here,
 * inside the migration's transaction, would block every insert into the outbox while it builds.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE FUNCTION shardrelay.set_shard_count(new_count integer, lock_timeout_ms integer DEFAULT 5000)
    RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE
      new_generation bigint;
    BEGIN
      IF new_count IS NULL OR new_count < 1 OR new_count > 1024 THEN
        RAISE EXCEPTION 'shard count must be a whole number from 1 to 1024, got %', new_count
          USING ERRCODE = '22023', HINT = 'call shardrelay.set_shard_count(n) with 1 <= n <= 1024';
      END IF;
      PERFORM set_config('lock_timeout', lock_timeout_ms::text || 'ms', true);
      UPDATE shardrelay.shard_config
         SET shard_count = new_count,
             generation = generation + CASE WHEN shard_count = new_count THEN 0 ELSE 1 END,
             updated_at = now()
      RETURNING generation INTO new_generation;
      PERFORM pg_notify('shardrelay_config', new_generation::text);
      RETURN new_generation;
    END $$`.execute(db);
}
