import { existsSync } from 'node:fs';
import { startEmbeddedPostgres } from '../../src/db/embeddedPostgres.js';

export interface ProvisionedPostgres {
  readonly url: string;
  readonly kind: 'DATABASE_URL' | 'testcontainers' | 'embedded';
  stop(): Promise<void>;
}

function dockerEngineLikely(): boolean {
  return Boolean(process.env.DOCKER_HOST) || existsSync('/var/run/docker.sock');
}

/**
 * A real PostgreSQL for the suite, in this order: `DATABASE_URL` if set; else a testcontainers
 * PostgreSQL where a Docker engine answers; else an embedded PostgreSQL (only Node needed).
 */
export async function provisionPostgres(): Promise<ProvisionedPostgres> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) return { url: fromEnv, kind: 'DATABASE_URL', stop: async () => {} };

  if (dockerEngineLikely()) {
    try {
      const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
      const container = await new PostgreSqlContainer('postgres:16-alpine')
        .withCommand(['postgres', '-c', 'max_connections=200'])
        .start();
      return {
        url: container.getConnectionUri(),
        kind: 'testcontainers',
        stop: () => container.stop().then(() => {}),
      };
    } catch (error) {
      console.error(
        `testcontainers could not start PostgreSQL (${String(error)}); using embedded PostgreSQL`,
      );
    }
  }

  const embedded = await startEmbeddedPostgres();
  return { url: embedded.url, kind: 'embedded', stop: () => embedded.stop() };
}
