import { sql, type Kysely } from 'kysely';

/**
 * A cheaper `shardrelay.uuid_v7()`, the default of every event id an application inserts.
 *
 * The layout is unchanged (RFC 9562 UUIDv7: 48 bits of Unix milliseconds, version 7, variant 10,
 * random bits). The body of 0007 built it from three random UUIDs and byte surgery on their binary
 * forms (overlay, two set_byte, three uuid_send, hex encoding); this one takes one random (v4) UUID
 * as text and puts the milliseconds in front of it: the first 12 hex digits become the time, the
 * version digit `4` becomes `7`, and the rest, which begins with v4's variant bits `10` already, is
 * kept. PostgreSQL reads the 32 digits with hyphens after groups of four.
 *
 * Why: the default cost an application's insert more than the row's other defaults, its indexes and
 * the trigger would suggest. `bench/studies/insertCost.ts` (2 cores; one statement inserting
 * 100,000 rows of ~200 B, rolled back; the inserting backend's CPU, medians of 5 alternated rounds):
 *
 *   event id default                    PostgreSQL 15    PostgreSQL 18 (embedded)
 *   0007's body                         9.4 ms / 1,000   12.3 ms / 1,000 rows
 *   this body                           7.6              10.4
 *   explicit gen_random_uuid() (no      8.5              10.9
 *   time order, random index writes)
 *
 * About 1.9 µs of PostgreSQL CPU less per inserted row, 15-19 % of the insert.
 *
 * Safe on a populated outbox while replicas and producers run: CREATE OR REPLACE FUNCTION locks
 * only the function; an insert uses the old body or the new, both valid UUIDv7s.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE OR REPLACE FUNCTION shardrelay.uuid_v7() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
      SELECT (lpad(to_hex(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
              || '7' || substr(gen_random_uuid()::text, 16))::uuid
    $$`.execute(db);
}
