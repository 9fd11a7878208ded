import pg from 'pg';

export interface LeakedConnection {
  readonly pid: number;
  readonly applicationName: string;
  readonly state: string;
}

/**
 * A backend whose client has gone away exits on its own a moment later (after it reads EOF), so a
 * connection counts as leaked only if it is still there after this grace period. 5 s is far above
 * the few milliseconds a closed pool's backends take to exit on loopback, even on a loaded host.
 */
const GRACE_MS = 5_000;
const POLL_MS = 50;

/**
 * Connections to `database` other than the checker's own, after waiting up to `GRACE_MS` for
 * closed ones to go. Used before a test database is dropped, so a test that leaks a pool, a
 * client or a child process fails instead of `DROP DATABASE … WITH (FORCE)` hiding it.
 */
export async function leakedConnections(adminUrl: string, database: string): Promise<LeakedConnection[]> {
  const client = new pg.Client({ connectionString: adminUrl, application_name: 'test-leak-check' });
  await client.connect();
  try {
    const deadline = Date.now() + GRACE_MS;
    for (;;) {
      const { rows } = await client.query<{ pid: number; application_name: string; state: string | null }>(
        `SELECT pid, application_name, state FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid() ORDER BY application_name, pid`,
        [database],
      );
      if (rows.length === 0 || Date.now() > deadline)
        return rows.map((r) => ({
          pid: r.pid,
          applicationName: r.application_name,
          state: r.state ?? 'unknown',
        }));
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  } finally {
    await client.end();
  }
}
