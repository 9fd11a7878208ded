import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { ConfigError } from '../errors.js';
import { laneFilter, type LaneColumn, type LanePredicate } from './lanePredicate.js';

type Scalar = string | number;

/** One value of one condition, with its place in the predicate ("or.1.value.2"). */
interface ValueAtPlace {
  readonly place: string;
  readonly column: LaneColumn;
  readonly value: Scalar;
}

function valuesOf(p: LanePredicate, path: string): ValueAtPlace[] {
  const at = (part: string) => (path ? `${path}.${part}` : part);
  if ('and' in p) return p.and.flatMap((q, i) => valuesOf(q, at(`and.${i}`)));
  if ('or' in p) return p.or.flatMap((q, i) => valuesOf(q, at(`or.${i}`)));
  if ('not' in p) return valuesOf(p.not, at('not'));
  if (p.value === undefined) return [];
  if (Array.isArray(p.value)) {
    return (p.value as readonly Scalar[]).map((value, i) => ({
      place: at(`value.${i}`),
      column: p.column,
      value,
    }));
  }
  return [{ place: at('value'), column: p.column, value: p.value as Scalar }];
}

const EXAMPLES: Readonly<Record<string, string>> = {
  integer: '5',
  bigint: '5',
  smallint: '5',
  numeric: '5.5',
  text: '"payments.captured"',
  boolean: 'true',
};

/**
 * Checks every value of the lane predicate against the type its column has in the database, at
 * start, before any claim. Without it a value such as "abc" for the integer `priority` passes the
 * parser (it is a safe string), and then every claim fails with "invalid input syntax for type
 * integer" while nothing is delivered.
 *
 * Checked against the database, not against the TypeScript schema: the claim binds values as
 * parameters that PostgreSQL converts to the column's type, so the check asks PostgreSQL the very
 * question the claim will ask. A migration of the operator's own may have changed a column's type
 * (priority as numeric or bigint), and the typed schema in src/db/schema.ts would not know. The
 * check runs the claim's own compiled filter in a statement that reads no row (LIMIT 0: PostgreSQL
 * still converts the bound values); when it fails, each value is tried alone, so the error names
 * its exact place.
 */
export async function assertLanePredicateFitsColumns(
  db: Kysely<Database>,
  predicate: LanePredicate,
): Promise<void> {
  // One statement for the whole predicate (a list may hold 1,000 values); only when it fails is
  // each value tried alone, to name its place.
  const whole = await conversionError(db, predicate);
  if (!whole) return;
  for (const { place, column, value } of valuesOf(predicate, '')) {
    const error = await conversionError(db, { column, op: '=', value });
    if (!error) continue;
    const { rows } = await sql<{ type: string }>`
      SELECT format_type(a.atttypid, a.atttypmod) AS type
        FROM pg_attribute a
       WHERE a.attrelid = 'shardrelay.outbox'::regclass AND a.attname = ${column}`.execute(db);
    const type = rows[0]?.type ?? 'its type';
    const example = EXAMPLES[type] ?? 'a value of that type';
    const op = example === '"payments.captured"' ? '=' : '>=';
    throw new ConfigError(
      SETTING,
      `at ${place}: ${JSON.stringify(value)} is not a valid ${type}, the type of shardrelay.outbox.${column} ` +
        `(PostgreSQL: ${error.message}); every claim would fail with it`,
      `give ${column} a ${type} value, e.g. {"column":"${column}","op":"${op}","value":${example}}`,
    );
  }
  throw new ConfigError(
    SETTING,
    `PostgreSQL refuses it: ${whole.message}; every claim would fail with it`,
    'give each column a value of its type in shardrelay.outbox',
  );
}

const SETTING = '--lane-predicate / SHARDRELAY_LANE_PREDICATE';

/**
 * Runs the claim's filter for `predicate` on no row: PostgreSQL still converts the bound values
 * to the columns' types. Returns the error of a value that does not convert (SQLSTATE class 22,
 * "data exception"); anything else (a lost connection) is thrown.
 */
async function conversionError(db: Kysely<Database>, predicate: LanePredicate): Promise<Error | undefined> {
  try {
    await db
      .selectFrom('shardrelay.outbox')
      .select(sql<number>`1`.as('one'))
      .where(laneFilter(predicate, 'realtime'))
      .limit(0)
      .execute();
    return undefined;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('22') && error instanceof Error) return error;
    throw error;
  }
}
