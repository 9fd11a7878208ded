import { sql, type Kysely } from 'kysely';

/**
 * The last statement a backend ran and when it started (pg_stat_activity): unchanged over a
 * period means the session ran nothing in it. Undefined when the backend is gone.
 */
export async function lastStatement<DB>(
  db: Kysely<DB>,
  pid: number,
): Promise<{ readonly query: string; readonly started: Date } | undefined> {
  const { rows } = await sql<{ query: string; started: Date }>`
    SELECT query, query_start AS started FROM pg_stat_activity WHERE pid = ${pid}::int`.execute(db);
  return rows[0];
}
