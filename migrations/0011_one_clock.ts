import { readFile } from 'node:fs/promises';
import { sql, type Kysely } from 'kysely';

/** `sql/` at the package root: `../sql/` from `migrations/` in the source tree and from `dist/migrations`. */
const SQL_DIR = new URL('../sql/', import.meta.url);

/**
 * One clock. Every statement of the relay reads the time through `shardrelay.now()` (transaction
 * time) or `shardrelay.clock()` (statement time), the two functions of migration 0004 that return
 * the session setting `shardrelay.now` when it is set and the real time otherwise. Before, the claim
 * read now() and the leases clock_timestamp() directly, so a test had to rewrite `available_at` or
 * `expires_at`, or wait out a real lease timeout, where it can now move the clock
 * (`SELECT set_config('shardrelay.now', '…', true)`). In production nothing changes: with the
 * setting unset, shardrelay.clock() is clock_timestamp() and shardrelay.now() is now().
 *
 * The claim (relay/claims.ts) reads it as `(SELECT shardrelay.now())`, once per statement:
 * inlined, the function is evaluated per row the claim filters, which doubled the filter's cost
 * (measured on 1M rows, EXPLAIN ANALYZE, best of 6 at load 28-33: 1.10 s against 0.52 s for
 * now()); as a scalar subquery it costs what now() does (0.48 s).
 *
 * The statements themselves live in the code (relay/claims.ts, relay/leaseStatements.ts); what
 * the schema holds is the two views that still read clock_timestamp(): `shardrelay.replicas` and
 * `shardrelay.shards`. Their files are installed first by migration 0003, before shardrelay.clock()
 * exists (0004), so the files keep clock_timestamp() and this migration installs them with it read
 * as shardrelay.clock(): the same function, moved by the same setting. CREATE OR REPLACE VIEW with
 * the same columns: no lock a relay statement waits on beyond the catalog update.
 *
 * Left on now() on purpose: the outbox's column defaults (`created_at`, `available_at`), which
 * producers' inserts evaluate with their own roles; a role without EXECUTE on shardrelay's functions
 * must keep being able to enqueue.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  // shards.sql as of this release; migration 0012 replaced sql/shards.sql (see sql/frozen/).
  for (const name of ['replicas.sql', 'frozen/shards_0003.sql']) {
    const text = await readFile(new URL(name, SQL_DIR), 'utf8');
    if (!text.includes('clock_timestamp()')) continue;
    await sql.raw(text.replaceAll('clock_timestamp()', 'shardrelay.clock()')).execute(db);
  }
}
