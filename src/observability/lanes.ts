/**
 * The views classify pending rows into lanes with the SQL function `shardrelay.is_realtime(o)`, since
 * they cannot read the relay's configuration. Migration 0004 installs it for the default predicate;
 * a relay started with another predicate installs its own at start (`syncLaneFunction`), so that
 * `shardrelay.lag` and `shardrelay.health` count rows in the lane the relay claims them from.
 *
 * The body is rendered by lanes/isRealtimeFunction.ts.
 */
import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import { isRealtimeFunctionBody } from '../lanes/isRealtimeFunction.js';
import type { LanePredicate } from '../lanes/lanePredicate.js';
import type { Logger } from '../logger.js';

/**
 * Installs the relay's lane predicate as shardrelay.is_realtime unless it is there already. Best
 * effort: a failure (no privilege to replace the function, a concurrent replacement by another
 * replica) is logged, and only the views' lane split is affected, never delivery.
 */
export async function syncLaneFunction(
  db: Kysely<Database>,
  predicate: LanePredicate,
  logger: Logger,
): Promise<void> {
  const body = isRealtimeFunctionBody(predicate);
  try {
    const { rows } = await sql<{ body: string }>`
      SELECT prosrc AS body FROM pg_proc
       WHERE oid = to_regprocedure('shardrelay.is_realtime(shardrelay.outbox)')`.execute(db);
    if (rows[0]?.body === body) return;
    await sql
      .raw(
        `CREATE OR REPLACE FUNCTION shardrelay.is_realtime(o shardrelay.outbox) RETURNS boolean
         LANGUAGE sql IMMUTABLE AS $lane$${body}$lane$`,
      )
      .execute(db);
    logger.info({ body: body.trim() }, 'lane predicate installed for the SQL views (shardrelay.is_realtime)');
  } catch (error) {
    logger.warn(
      { err: toError(error).message },
      'could not install the lane predicate for the SQL views; shardrelay.lag and shardrelay.health may split lanes differently from this relay',
    );
  }
}
