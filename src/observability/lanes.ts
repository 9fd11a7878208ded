/**
 * The views classify pending rows into lanes with the SQL function `shardrelay.is_realtime(o)`, since
 * they cannot read the relay's configuration. Migration 0004 installs it for the default predicate;
 * a relay started with another predicate installs its own at start (`syncLaneFunction`), so that
 * `shardrelay.lag` and `shardrelay.health` count rows in the lane the relay claims them from.
 *
 * The body is the relay's own claim filter (lanes/lanePredicate.ts) compiled by Kysely, with the
 * bound values written as SQL literals (a function body cannot take parameters). That is safe:
 * columns and operators come from fixed lists, numbers are finite, strings are quoted with their
 * quotes doubled (and the predicate parser refuses quotes anyway). A one-expression SQL function is
 * inlined by the planner, so it costs what the expression costs.
 */
import { sql, type Kysely } from 'kysely';
import { queryCompiler } from '../db/queryCompiler.js';
import type { Database } from '../db/schema.js';
import { toError } from '../errors.js';
import { LANE_COLUMNS, laneFilter, type LanePredicate } from '../lanes/lanePredicate.js';
import type { Logger } from '../logger.js';

function literal(value: unknown): string {
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value === 'string') return `'${value.replace(/'/g, "''")}'`;
  throw new Error(`lane predicate value ${JSON.stringify(value)} cannot be written as SQL`);
}

/** The body of shardrelay.is_realtime(o shardrelay.outbox) for a predicate. */
export function isRealtimeFunctionBody(predicate: LanePredicate): string {
  const compiled = queryCompiler
    .selectFrom('shardrelay.outbox')
    .select(sql<number>`1`.as('one'))
    .where(laneFilter(predicate, 'realtime'))
    .compile();
  const where = compiled.sql.slice(compiled.sql.indexOf(' where ') + ' where '.length);
  const columns = new RegExp(`"(${LANE_COLUMNS.join('|')})"`, 'g');
  const expression = where
    .replace(/\$(\d+)/g, (_, n: string) => literal(compiled.parameters[Number(n) - 1]))
    .replace(columns, 'o."$1"');
  return ` SELECT (${expression}) IS TRUE `;
}

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
