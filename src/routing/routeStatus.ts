/**
 * Per-route figures for `shardrelay status`, read from the outbox itself: rows carry no route
 * (routes can change between deployments), so the rows are grouped by the columns the rules read
 * and each group is routed with the current routes. Only the columns some rule reads are grouped
 * on, so a table with many keys costs one group per (topic, lane) unless a rule matches on keys.
 *
 * Throughput is rows sent in the last 5 minutes; lag is the age of the oldest pending row;
 * failures are pending rows that failed at least once (retrying) and dead rows.
 */
import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { routeOf, type RouteTable } from './routes.js';

export interface RouteStatus {
  readonly route: string;
  readonly sink: string;
  readonly sentPerSecond5m: number;
  readonly pending: number;
  readonly retrying: number;
  readonly dead: number;
  /** Seconds since the oldest pending row was created; 0 with nothing pending. */
  readonly lagSeconds: number;
}

interface Group {
  topic: string;
  lane: 'realtime' | 'batch';
  key: string | null;
  headers: Record<string, string> | null;
  sent5m: string;
  pending: string;
  retrying: string;
  dead: string;
  lag: number | null;
}

export async function readRouteStatus(db: Kysely<Database>, table: RouteTable): Promise<RouteStatus[]> {
  const byKey = table.rules.some((r) => r.match.key !== undefined);
  const byHeaders = table.rules.some((r) => r.match.headers !== undefined);
  const key = byKey ? sql`key` : sql`NULL::text`;
  const headers = byHeaders ? sql`headers` : sql`NULL::jsonb`;
  // Sent rows leave the outbox at completion (migrations/0007_sent_record.ts): the last 5 minutes'
  // sends are read from the sent record, which keeps topic, lane and key but not headers, so a
  // rule that matches on headers attributes sent rows by their other columns only. With
  // `--sent-retention 0` there is no record and sent/s reads 0.
  const { rows } = await sql<Group>`
    SELECT topic, lane, key, headers,
           count(*) FILTER (WHERE status = 'sent') AS sent5m,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS retrying,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           extract(epoch FROM shardrelay.now() - min(created_at) FILTER (WHERE status = 'pending'))::float8 AS lag
      FROM (SELECT topic, lane, ${key} AS key, ${headers} AS headers, status, attempts, created_at
              FROM shardrelay.outbox
             WHERE status <> 'sent' OR sent_at > shardrelay.now() - interval '5 minutes'
            UNION ALL
            SELECT topic, lane, ${key} AS key, NULL::jsonb AS headers, 'sent', attempts, created_at
              FROM shardrelay.sent_event
             WHERE sent_at > shardrelay.now() - interval '5 minutes') AS r
     GROUP BY 1, 2, 3, 4`.execute(db);
  const result = new Map<
    string,
    { sent: number; pending: number; retrying: number; dead: number; lag: number }
  >();
  const routeNames = [...Object.keys(table.sinks), '(no route)'];
  for (const name of routeNames) result.set(name, { sent: 0, pending: 0, retrying: 0, dead: 0, lag: 0 });
  for (const group of rows) {
    const route = routeOf(table, { ...group, headers: group.headers ?? {} }) ?? '(no route)';
    const r = result.get(route);
    if (!r) continue;
    r.sent += Number(group.sent5m);
    r.pending += Number(group.pending);
    r.retrying += Number(group.retrying);
    r.dead += Number(group.dead);
    r.lag = Math.max(r.lag, group.lag ?? 0);
  }
  return routeNames
    .map((route) => {
      const r = result.get(route) as {
        sent: number;
        pending: number;
        retrying: number;
        dead: number;
        lag: number;
      };
      return {
        route,
        sink: table.sinks[route]?.type ?? '-',
        sentPerSecond5m: Math.round((r.sent / 300) * 10) / 10,
        pending: r.pending,
        retrying: r.retrying,
        dead: r.dead,
        lagSeconds: Math.round(r.lag * 10) / 10,
      };
    })
    .filter((s) => s.route !== '(no route)' || s.pending + s.dead > 0);
}

export function formatRouteStatus(routes: readonly RouteStatus[]): string {
  const header = ['route', 'sink', 'sent/s (5m)', 'pending', 'retrying', 'dead', 'lag s'];
  const lines = routes.map((r) => [
    r.route,
    r.sink,
    String(r.sentPerSecond5m),
    String(r.pending),
    String(r.retrying),
    String(r.dead),
    String(r.lagSeconds),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] as string).length)));
  const row = (cells: readonly string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] as number))
      .join('  ')
      .trimEnd();
  return ['routes:', row(header), ...lines.map(row)].join('\n');
}
