/**
 * The lane predicate evaluated in JavaScript, on a row held in memory: the canary uses it to find
 * inputs that put a canary row in a given lane before inserting it. It must agree with the SQL
 * renderings (`laneFilter` in lanePredicate.ts, the views' `shardrelay.is_realtime` in
 * isRealtimeFunction.ts); test/lanes/predicateAgreement.test.ts checks that on random predicates
 * and rows against PostgreSQL.
 *
 * Text is ordered by UTF-16 code unit, which is the database's order under the C and C.UTF-8
 * collations (and for the ASCII the predicate parser allows, under any deterministic collation for
 * `=`, `<>`, `in`). Under a linguistic collation such as en_US, `<`/`>` on text columns may differ.
 */
import type { LaneColumn, LanePredicate } from './lanePredicate.js';

/** The lane predicate's inputs: the outbox columns a predicate may name. */
export interface LaneRow {
  readonly lane: string;
  readonly priority: number;
  readonly topic: string;
  readonly key: string | null;
  readonly correlation_id: string | null;
  readonly attempts: number;
}

type Value = string | number | null;

export const NUMERIC_LANE_COLUMNS: readonly LaneColumn[] = ['priority', 'attempts'];

function compare(column: LaneColumn, a: string | number, b: string | number): number {
  if (NUMERIC_LANE_COLUMNS.includes(column)) return Number(a) - Number(b);
  const [x, y] = [String(a), String(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

/** The predicate on a row with SQL's three-valued logic: true, false or null (unknown). */
export function evaluateLanePredicate(p: LanePredicate, row: LaneRow): boolean | null {
  if ('and' in p) {
    const values = p.and.map((q) => evaluateLanePredicate(q, row));
    return values.includes(false) ? false : values.includes(null) ? null : true;
  }
  if ('or' in p) {
    const values = p.or.map((q) => evaluateLanePredicate(q, row));
    return values.includes(true) ? true : values.includes(null) ? null : false;
  }
  if ('not' in p) {
    const value = evaluateLanePredicate(p.not, row);
    return value === null ? null : !value;
  }
  const actual = row[p.column] as Value;
  if (p.op === 'is null') return actual === null;
  if (p.op === 'is not null') return actual !== null;
  if (actual === null) return null;
  if (p.op === 'in' || p.op === 'not in') {
    const found = (p.value as readonly (string | number)[]).some((v) => compare(p.column, actual, v) === 0);
    return p.op === 'in' ? found : !found;
  }
  const c = compare(p.column, actual, p.value as string | number);
  switch (p.op) {
    case '=':
      return c === 0;
    case '<>':
      return c !== 0;
    case '<':
      return c < 0;
    case '<=':
      return c <= 0;
    case '>':
      return c > 0;
    default:
      return c >= 0;
  }
}
