import { sql, type Kysely } from 'kysely';

/**
 * The insert trigger names only the shard each row is claimed from.
 *
 * Until now it named both candidates of a keyed row, `id % N` and `key_hash(key) % N` (0009),
 * because it could not know the mode: the trigger runs with the privileges of whoever inserts, and
 * a producer's role may read nothing of shardrelay's. So with ordering off (the default) every
 * keyed insert also woke a shard that had nothing for it: an empty claim in each lane of its owner.
 *
 * Now the trigger function is SECURITY DEFINER (it runs as the owner of the schema, who ran
 * `migrate`) and reads the recorded mode, `shardrelay.ordering_mode` (0012), through the claim's own
 * rule, `shardrelay.shard_of`. A producer's role needs no privilege on `shard_config` or
 * `ordering_mode` for it, where before it needed SELECT on `shard_config`. `search_path` is pinned,
 * as every SECURITY DEFINER function's must be, so an inserting role cannot put its own objects in
 * front of the function's; every name in it is schema-qualified anyway.
 *
 * A mode change comes only from a relay starting in the other mode, after every replica of the old
 * mode stopped (relay/orderingMode.ts); rows inserted just before it were announced for the old
 * mode's shard, and the new mode's relays find them at their first tick's poll, as they find any
 * row whose NOTIFY they missed.
 *
 * Cost: the two settings are read first, on their own, and the rows are aggregated alone. Joined to
 * the rows, the two one-row tables (which have no statistics) made the planner estimate 33 million
 * rows, so every insert statement was JIT-compiled: 190-250 ms for an insert of 25 rows, where the
 * previous trigger took 1 ms (pgbench on a 2-core machine; the bench's relay-null phase showed it as
 * a steady-load latency of 322 ms against 69). `jit = off` keeps a large multi-row insert from
 * paying the same compile for a statement this cheap. Measured after the change: see
 * bench/RESULTS.md, eighth session.
 *
 * Safe on a populated outbox while replicas run: CREATE OR REPLACE FUNCTION locks only the
 * function; an insert uses the old body or the new. The payload keeps its format (shard numbers,
 * comma-separated), so relays of the previous release read it as before.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.notify_outbox_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    DECLARE
      n integer;
      ordering text;
      shards text;
    BEGIN
      SELECT c.shard_count, m.mode INTO n, ordering
        FROM shardrelay.shard_config AS c, shardrelay.ordering_mode AS m;
      SELECT string_agg(DISTINCT shardrelay.shard_of(id, key, n, ordering)::text, ',') INTO shards
        FROM inserted;
      IF shards IS NOT NULL THEN
        PERFORM pg_notify('shardrelay_outbox', shards);
      END IF;
      RETURN NULL;
    END $$`.execute(db);
}
