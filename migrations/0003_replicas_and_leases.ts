import { readFile } from 'node:fs/promises';
import { sql, type Kysely } from 'kysely';

/** `sql/` at the package root: `../sql/` from `migrations/` in the source tree and from `dist/migrations`. */
const SQL_DIR = new URL('../sql/', import.meta.url);

async function runSqlFile(db: Kysely<unknown>, name: string): Promise<void> {
  // One simple-protocol query, so the file may hold several statements.
  await sql.raw(await readFile(new URL(name, SQL_DIR), 'utf8')).execute(db);
}

/**
 * Membership and shard leases (src/relay/shardLeases.ts documents who writes and reads each field),
 * the `replicas` and `shards` views, and a clearer lock-timeout error from set_shard_count.
 *
 * The views live in `sql/replicas.sql` and `sql/shards.sql` (CREATE OR REPLACE VIEW); a later
 * change to them ships as a new migration that runs the changed file again.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  // One row per running relay process. `instance` is a random token of the process, so two
  // processes started with the same replica id are still two members, never one that both
  // believe they are.
  await sql`
    CREATE TABLE shardrelay.replica (
      instance              uuid PRIMARY KEY,
      replica_id            text NOT NULL,
      hostname              text NOT NULL,
      pid                   integer NOT NULL,
      started_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
      heartbeat_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
      lease_timeout_seconds integer NOT NULL CHECK (lease_timeout_seconds > 0),
      generation            bigint NOT NULL
    )`.execute(db);
  await sql`CREATE INDEX replica_replica_id ON shardrelay.replica (replica_id)`.execute(db);

  // One row per (generation, shard): a lease is a term of one shard under one shard count, so a
  // change of the count never overwrites or extends a lease of the old count; old-generation rows
  // are deleted by their owners when they switch (or by anyone once expired).
  await sql`
    CREATE TABLE shardrelay.shard_lease (
      generation     bigint NOT NULL,
      shard          integer NOT NULL CHECK (shard >= 0),
      owner          text NOT NULL,
      owner_instance uuid NOT NULL,
      acquired_at    timestamptz NOT NULL,
      renewed_at     timestamptz NOT NULL,
      expires_at     timestamptz NOT NULL,
      PRIMARY KEY (generation, shard)
    )`.execute(db);
  await sql`CREATE INDEX shard_lease_owner ON shardrelay.shard_lease (owner_instance)`.execute(db);

  await runSqlFile(db, 'replicas.sql');
  // The view as of this release; migration 0012 replaced sql/shards.sql (see sql/frozen/).
  await runSqlFile(db, 'frozen/shards_0003.sql');

  // Same behaviour as 0002, but a lock timeout becomes an error that says what happened and that
  // retrying is safe (nothing was changed), instead of PostgreSQL's bare "canceling statement".
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.set_shard_count(new_count integer, lock_timeout_ms integer DEFAULT 5000)
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
      BEGIN
        UPDATE shardrelay.shard_config
           SET shard_count = new_count,
               generation = generation + CASE WHEN shard_count = new_count THEN 0 ELSE 1 END,
               updated_at = now()
        RETURNING generation INTO new_generation;
      EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'set_shard_count(%) gave up after waiting % ms (lock timeout) for the shard_config row, which another session holds; nothing was changed, retrying is safe',
          new_count, lock_timeout_ms
          USING ERRCODE = '55P03',
                HINT = 'run the migration again (shardrelay migrate); relay replicas never lock this row, so look for another migration or a manual transaction on shardrelay.shard_config';
      END;
      PERFORM pg_notify('shardrelay_config', new_generation::text);
      RETURN new_generation;
    END $$`.execute(db);
}
