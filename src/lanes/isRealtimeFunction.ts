/**
 * The lane predicate rendered as the body of the SQL function `shardrelay.is_realtime(o)`, which the
 * views use to split pending rows into lanes (observability/lanes.ts installs it).
 *
 * The body is the relay's own claim filter (`laneFilter` in lanePredicate.ts) compiled by Kysely,
 * with the bound values written as SQL literals (a function body cannot take parameters). That is
 * safe: columns and operators come from fixed lists, numbers are finite, strings are quoted with
 * their quotes doubled (and the predicate parser refuses quotes anyway). A one-expression SQL
 * function is inlined by the planner, so it costs what the expression costs.
 */
import { sql } from 'kysely';
import { queryCompiler } from '../db/queryCompiler.js';
import { LANE_COLUMNS, laneFilter, type LanePredicate } from './lanePredicate.js';

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
