import { sql, type Kysely } from 'kysely';
import { ShardRelayError } from '../errors.js';
import type { Database } from './schema.js';

/**
 * A relay often runs as a role of its own, not as the one that ran `shardrelay migrate`. Such a role
 * needs privileges the owner must grant; without them, the first claim would fail with "permission
 * denied" on every tick. This check runs at start and lists exactly what is missing and the GRANTs
 * that fix it. It reads the catalogs (visible to every role), so it works even without USAGE on the
 * schema, and tells a missing schema ("run migrate") apart from a missing privilege (GRANT).
 */

/**
 * What the relay does with each kind of object: claims, completes, prunes, records leases and
 * rollups; reads the views. Every table gets the same four privileges rather than a per-table list
 * that would drift with each migration; `migrate`'s own bookkeeping tables are left out.
 */
const NEEDED = `
  SELECT 'USAGE' AS privilege, 'schema shardrelay' AS object,
         has_schema_privilege(n.oid, 'USAGE') AS granted
    FROM pg_namespace n WHERE n.nspname = 'shardrelay'
  UNION ALL
  SELECT p.privilege, format('%s %I.%I', CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END,
         'shardrelay', c.relname),
         has_table_privilege(c.oid, p.privilege)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'shardrelay'
    CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p(privilege)
   WHERE (c.relkind IN ('r', 'p') AND c.relname NOT IN ('migration', 'migration_lock'))
      OR (c.relkind = 'v' AND p.privilege = 'SELECT')
  UNION ALL
  SELECT 'USAGE', format('sequence %I.%I', 'shardrelay', c.relname), has_sequence_privilege(c.oid, 'USAGE')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'shardrelay'
   WHERE c.relkind = 'S'
  UNION ALL
  SELECT 'EXECUTE', format('function %s', p.oid::regprocedure), has_function_privilege(p.oid, 'EXECUTE')
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'shardrelay'`;

/** The statements an owner runs to give `role` everything the relay needs. */
export function grantStatements(role: string): string[] {
  return [
    `GRANT USAGE ON SCHEMA shardrelay TO ${role};`,
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shardrelay TO ${role};`,
    `GRANT USAGE ON ALL SEQUENCES IN SCHEMA shardrelay TO ${role};`,
    `GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA shardrelay TO ${role};`,
  ];
}

/**
 * Throws SCHEMA_MISSING when the schema is not there (or not complete), PERMISSION_DENIED with
 * the GRANTs when the connected role lacks a privilege the relay uses. Both exit with code 2.
 */
export async function assertRelayPrivileges(db: Kysely<Database>): Promise<void> {
  const { rows: who } = await sql<{ role: string; owner: string | null; complete: boolean }>`
    SELECT quote_ident(current_user) AS role,
           (SELECT quote_ident(pg_get_userbyid(nspowner)) FROM pg_namespace WHERE nspname = 'shardrelay') AS owner,
           EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'shardrelay' AND c.relname = 'shard_config') AS complete`.execute(db);
  const { role, owner, complete } = who[0] ?? { role: 'current_user', owner: null, complete: false };
  if (owner === null || !complete) {
    throw new ShardRelayError('SCHEMA_MISSING', 'the shardrelay schema is missing or incomplete', {
      fix: 'run `shardrelay migrate` against this database first (as the role that should own the schema)',
    });
  }
  const { rows } = await sql<{
    privilege: string;
    object: string;
    granted: boolean;
  }>`${sql.raw(NEEDED)}`.execute(db);
  const missing = rows.filter((r) => !r.granted);
  if (missing.length === 0) return;
  const shown = missing.slice(0, 8).map((r) => `${r.privilege} on ${r.object}`);
  if (missing.length > shown.length) shown.push(`and ${missing.length - shown.length} more`);
  throw new ShardRelayError(
    'PERMISSION_DENIED',
    `role ${role} lacks privileges the relay needs: ${shown.join('; ')}`,
    {
      context: { role, owner },
      fix: `as ${owner} (the owner of schema shardrelay) or a superuser, run: ${grantStatements(role).join(' ')}`,
    },
  );
}
