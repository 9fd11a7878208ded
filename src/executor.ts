/**
 * What `enqueue` writes through: the caller's Kysely instance or transaction, or a `pg` Pool,
 * Client or PoolClient. Recognised by shape, never by `instanceof`: the application has its own
 * copy of kysely and pg (another version, or a second install next to shardrelay's), and a class
 * from one copy is not an instance of the same class from another. Shapes used:
 *
 * - Kysely (0.27 and 0.28, instance or transaction): `executeQuery(compiledQuery)` and
 *   `isTransaction`. The statement is compiled by shardrelay's own compiler and run by the
 *   caller's Kysely, on the caller's connection or transaction, through its plugins and logging.
 * - pg: `query(text, values)`. A Pool also has `connect()` and `totalCount`, which `enqueue`
 *   uses to run a call of several statements in one transaction.
 */
import { ShardRelayError } from './errors.js';

/** A Kysely instance or transaction, of any copy of kysely. */
export interface KyselyExecutor {
  readonly isTransaction: boolean;
  // A `never` parameter: any Kysely's `executeQuery` accepts the compiled query shardrelay passes,
  // whatever that copy's own type of it is named.
  executeQuery(query: never): PromiseLike<{ readonly rows: readonly unknown[] }>;
  transaction(): { execute<T>(callback: (trx: KyselyExecutor) => Promise<T>): PromiseLike<T> };
}

/** A `pg` Client, PoolClient or Pool. */
export interface PgQueryable {
  query(text: string, values?: unknown[]): PromiseLike<{ readonly rows: readonly unknown[] }>;
}

interface PgPool extends PgQueryable {
  readonly totalCount: number;
  connect(): Promise<PgQueryable & { release(error?: Error | boolean): void }>;
}

/** Something that can run a query in the caller's transaction: a Kysely handle or a pg client. */
export type Executor = KyselyExecutor | PgQueryable;

export type ExecutorKind =
  | { readonly type: 'kysely'; readonly executor: KyselyExecutor }
  | { readonly type: 'pgPool'; readonly executor: PgPool }
  | { readonly type: 'pg'; readonly executor: PgQueryable };

const has = (value: object, name: string, type: string): boolean =>
  typeof (value as Record<string, unknown>)[name] === type;

export function executorKind(executor: unknown): ExecutorKind {
  if (typeof executor === 'object' && executor !== null) {
    if (has(executor, 'executeQuery', 'function') && has(executor, 'isTransaction', 'boolean'))
      return { type: 'kysely', executor: executor as KyselyExecutor };
    if (has(executor, 'query', 'function')) {
      return has(executor, 'connect', 'function') && has(executor, 'totalCount', 'number')
        ? { type: 'pgPool', executor: executor as PgPool }
        : { type: 'pg', executor: executor as PgQueryable };
    }
  }
  throw new ShardRelayError(
    'CONFIG_INVALID',
    `enqueue cannot write through ${executor === null ? 'null' : typeof executor === 'object' ? (executor.constructor?.name ?? 'this object') : typeof executor}`,
    {
      fix: 'pass a Kysely instance or transaction, or a pg Pool, Client or PoolClient (the one your business change uses)',
    },
  );
}
