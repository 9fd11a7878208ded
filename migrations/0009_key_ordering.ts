import { readFile } from 'node:fs/promises';
import { sql, type Kysely } from 'kysely';

const SQL_DIR = new URL('../sql/', import.meta.url);

/**
 * Per-key ordering (SHARDRELAY_ORDERING=key, src/relay/claims.ts `claimOrdered`): what the database
 * must know for it. It changes no table and rewrites no row, so it is safe on a populated outbox
 * while replicas run; ordering stays off until the relay is started with it.
 *
 * - `shardrelay.key_hash(key)`: the shard hash of a key, the first 32 bits of its MD5 as a
 *   non-negative bigint. MD5 rather than PostgreSQL's internal `hashtext`: its value is the same
 *   on every PostgreSQL version and platform, and any language can compute it, so a key's shard
 *   never moves on an upgrade and an operator can tell which shard a key lives in.
 * - The insert trigger also names the key-hash shard of each keyed row in its NOTIFY, so a replica
 *   that orders by key is woken for the right shard (a replica that does not wakes for one more
 *   shard, which finds nothing: one empty claim).
 * - Views (sql/): `shardrelay.blocked_keys` (keys whose earliest unsent row waits for a retry or is
 *   dead, and how many rows wait behind it), `shardrelay.heavy_keys` (the keys with most rows in
 *   the outbox and the sent record), `shardrelay.shard_rates` (per-shard produced and sent rows in
 *   the last minutes, both ways of sharding).
 *
 * The indexes ordering needs are built by the relay, CONCURRENTLY, only when it runs with ordering
 * on (src/db/shardIndex.ts): built here they would block every insert while they build, and cost
 * every keyed insert an index entry on installations that never order.
 *
 * `shardrelay.complete_batch` is not changed: the ordering logic runs around it, in the claim's
 * transaction (claims.ts).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE FUNCTION shardrelay.key_hash(key text) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
      SELECT ('x' || substr(md5(key), 1, 8))::bit(32)::bigint
    $$`.execute(db);

  // As in 0001, plus the key-hash shard of keyed rows (see above).
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.notify_outbox_insert() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
      n integer;
      shards text;
    BEGIN
      SELECT shard_count INTO n FROM shardrelay.shard_config;
      SELECT string_agg(DISTINCT s::text, ',') INTO shards
        FROM inserted,
             LATERAL (VALUES (inserted.id % n),
                             (CASE WHEN inserted.key IS NOT NULL THEN shardrelay.key_hash(inserted.key) % n END)) AS v(s)
       WHERE s IS NOT NULL;
      IF shards IS NOT NULL THEN
        PERFORM pg_notify('shardrelay_outbox', shards);
      END IF;
      RETURN NULL;
    END $$`.execute(db);

  for (const view of ['blocked_keys', 'heavy_keys', 'shard_rates'])
    await sql.raw(await readFile(new URL(`${view}.sql`, SQL_DIR), 'utf8')).execute(db);
}
