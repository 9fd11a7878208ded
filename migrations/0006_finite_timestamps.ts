import { sql, type Kysely } from 'kysely';

/**
 * The outbox refuses timestamps the relay cannot compute with: `created_at` and `available_at`
 * must be finite (CHECK isfinite). An application could insert 'infinity' or '-infinity' by SQL;
 * such a row made every completion of its batch fail ("cannot subtract infinite timestamps" in the
 * latency arithmetic), and made `shardrelay status` and the metrics observer fail on the views.
 *
 * Rows that already hold one are kept, not lost, and marked so a person can find them:
 * - a non-finite `created_at` becomes the migration's now(); the row keeps its status (a pending
 *   row is delivered normally, its latency counted from the migration);
 * - `available_at = '-infinity'` becomes now() (the row was due anyway);
 * - `available_at = 'infinity'` on a pending row (never due: parked by hand?) makes the row `dead`,
 *   so it is not delivered by surprise: `shardrelay dead` lists it and `shardrelay dead replay`
 *   sends it;
 * each such row gets a line in `last_error` saying what was changed from what.
 *
 * Locks and cost: ADD CONSTRAINT takes an ACCESS EXCLUSIVE lock on the outbox until the migration
 * commits (inserts and the relay wait), so it comes first: no new bad row can slip in between the
 * fix-up and the constraint. The fix-up is then one sequential scan of the outbox under that lock
 * (its time grows with the outbox size). The constraint is added NOT VALID, which skips a second
 * scan: every existing row was fixed above under the same lock, and new rows are checked either
 * way. `ALTER TABLE shardrelay.outbox VALIDATE CONSTRAINT outbox_timestamps_finite` marks it
 * validated later if wanted (it blocks no writes).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    ALTER TABLE shardrelay.outbox ADD CONSTRAINT outbox_timestamps_finite
      CHECK (isfinite(created_at) AND isfinite(available_at)) NOT VALID`.execute(db);
  await sql`
    UPDATE shardrelay.outbox SET
      status       = CASE WHEN status = 'pending' AND available_at = 'infinity' THEN 'dead' ELSE status END,
      created_at   = CASE WHEN isfinite(created_at) THEN created_at ELSE now() END,
      available_at = CASE WHEN isfinite(available_at) THEN available_at ELSE now() END,
      last_error   = concat_ws(' | ', last_error,
        'migration 0006 replaced non-finite timestamps with ' || now()::text || ':'
        || CASE WHEN isfinite(created_at) THEN '' ELSE ' created_at was ' || created_at::text END
        || CASE WHEN isfinite(available_at) THEN '' ELSE ' available_at was ' || available_at::text END
        || CASE WHEN status = 'pending' AND available_at = 'infinity'
                THEN ' (never due, so marked dead rather than sent)' ELSE '' END)
    WHERE NOT (isfinite(created_at) AND isfinite(available_at))`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE shardrelay.outbox DROP CONSTRAINT outbox_timestamps_finite`.execute(db);
}
