import { sql, type Expression, type ExpressionBuilder, type SqlBool } from 'kysely';
import { z } from 'zod';
import type { Database, Lane } from '../db/schema.js';

/**
 * The lane predicate P decides which rows are real-time: the real-time lane claims rows where P is
 * TRUE, the batch lane rows where `(P) IS NOT TRUE`. Every row is therefore in exactly one lane,
 * including rows where P is NULL (a NULL column), which go to batch rather than being lost.
 *
 * P is typed configuration, never SQL: columns come from a fixed list of the outbox's own columns,
 * operators from a fixed list, and values are bound parameters compiled by Kysely.
 */
export const LANE_COLUMNS = ['lane', 'priority', 'topic', 'key', 'correlation_id', 'attempts'] as const;
export const LANE_OPERATORS = [
  '=',
  '<>',
  '<',
  '<=',
  '>',
  '>=',
  'in',
  'not in',
  'is null',
  'is not null',
] as const;

export type LaneColumn = (typeof LANE_COLUMNS)[number];
export type LaneOperator = (typeof LANE_OPERATORS)[number];
type Scalar = string | number;

export type LanePredicate =
  | { readonly column: LaneColumn; readonly op: LaneOperator; readonly value?: Scalar | readonly Scalar[] }
  | { readonly and: readonly LanePredicate[] }
  | { readonly or: readonly LanePredicate[] }
  | { readonly not: LanePredicate };

/**
 * Values are bound parameters, so they cannot change the query; still, a value that looks like SQL
 * (quotes, semicolons, comments, parentheses) is almost certainly a configuration mistake or an
 * injection attempt, and is refused at start rather than silently matching nothing.
 */
const SAFE_VALUE = /^[A-Za-z0-9_.:@/ +-]{0,200}$/;
const scalar = z.union([
  z.string().regex(SAFE_VALUE, 'value may only hold letters, digits, space and _ . : @ / + - (at most 200)'),
  z.number().finite(),
]);

const condition = z
  .object({
    column: z.enum(LANE_COLUMNS, { error: `column must be one of the outbox's: ${LANE_COLUMNS.join(', ')}` }),
    op: z.enum(LANE_OPERATORS, { error: `op must be one of: ${LANE_OPERATORS.join(', ')}` }),
    value: z.union([scalar, z.array(scalar).min(1).max(1000)]).optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    const isList = c.op === 'in' || c.op === 'not in';
    const isNullTest = c.op === 'is null' || c.op === 'is not null';
    if (isNullTest && c.value !== undefined)
      ctx.addIssue({ code: 'custom', message: `"${c.op}" takes no value` });
    if (!isNullTest && c.value === undefined)
      ctx.addIssue({ code: 'custom', message: `"${c.op}" needs a value` });
    if (isList && !Array.isArray(c.value))
      ctx.addIssue({ code: 'custom', message: `"${c.op}" needs a list value` });
    if (!isList && Array.isArray(c.value))
      ctx.addIssue({ code: 'custom', message: `"${c.op}" takes a single value` });
  });

/**
 * Validates a predicate tree by hand rather than with a schema union, so a refusal names the exact
 * place and reason ("at or.1.column: column must be one of ...") instead of "invalid input".
 */
function check(input: unknown, path: string): LanePredicate {
  const where = path ? ` at ${path}` : '';
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new Error(`lane predicate refused${where}: expected an object`);
  }
  const keys = Object.keys(input);
  for (const combinator of ['and', 'or'] as const) {
    if (combinator in input) {
      const list = (input as Record<string, unknown>)[combinator];
      if (keys.length !== 1 || !Array.isArray(list) || list.length === 0) {
        throw new Error(
          `lane predicate refused${where}: "${combinator}" takes a non-empty list and nothing beside it`,
        );
      }
      const parts = list.map((q, i) => check(q, `${path ? `${path}.` : ''}${combinator}.${i}`));
      return combinator === 'and' ? { and: parts } : { or: parts };
    }
  }
  if ('not' in input) {
    if (keys.length !== 1)
      throw new Error(`lane predicate refused${where}: "not" takes one predicate and nothing beside it`);
    return { not: check((input as { not: unknown }).not, `${path ? `${path}.` : ''}not`) };
  }
  const result = condition.safeParse(input);
  if (!result.success) {
    const issue = result.error.issues[0];
    const field = issue && issue.path.length > 0 ? `${path ? `${path}.` : ''}${issue.path.join('.')}` : path;
    throw new Error(`lane predicate refused${field ? ` at ${field}` : ''}: ${issue?.message ?? 'invalid'}`);
  }
  return result.data as LanePredicate;
}

/** The default: the `lane` column that `enqueue` sets (default 'batch'). */
export const DEFAULT_LANE_PREDICATE: LanePredicate = Object.freeze({
  column: 'lane',
  op: '=',
  value: 'realtime',
});

/**
 * Whether `p` makes a row real-time exactly when its `lane` column is 'realtime' (the default, or
 * the same written as a one-value `in`): then the insert trigger, which reads that column, can tell
 * the lanes' wake-ups apart (relay/outboxListener.ts).
 */
export function isLaneColumnPredicate(p: LanePredicate): boolean {
  if (!('column' in p) || p.column !== 'lane') return false;
  if (p.op === '=') return p.value === 'realtime';
  return p.op === 'in' && Array.isArray(p.value) && p.value.length === 1 && p.value[0] === 'realtime';
}

/** Parses and validates a predicate; throws with a message naming what is wrong and where. */
export function parseLanePredicate(input: unknown): LanePredicate {
  return check(input, '');
}

type OutboxBuilder = ExpressionBuilder<Database, 'shardrelay.outbox'>;

function compile(eb: OutboxBuilder, p: LanePredicate): Expression<SqlBool> {
  if ('and' in p) return eb.and(p.and.map((q) => compile(eb, q)));
  if ('or' in p) return eb.or(p.or.map((q) => compile(eb, q)));
  if ('not' in p) return eb.not(compile(eb, p.not));
  const column = eb.ref(p.column);
  switch (p.op) {
    case 'is null':
      return eb(column, 'is', null);
    case 'is not null':
      return eb(column, 'is not', null);
    case 'in':
    case 'not in':
      return eb(column, p.op, p.value as Scalar[]);
    default:
      return eb(column, p.op, p.value as Scalar);
  }
}

/**
 * The claim filter of one lane. Real-time is plain `P`: in a WHERE clause that keeps exactly the rows
 * where P IS TRUE, and it lets PostgreSQL match partial indexes written as `WHERE <P>`. Batch is
 * `(P) IS NOT TRUE`, which also keeps the rows where P is NULL.
 */
export function laneFilter(predicate: LanePredicate, lane: Lane): (eb: OutboxBuilder) => Expression<SqlBool> {
  return (eb) => {
    const p = compile(eb, predicate);
    return lane === 'realtime' ? p : sql<SqlBool>`(${p}) IS NOT TRUE`;
  };
}
