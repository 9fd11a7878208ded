import { createDatabase, createPool } from '../../src/db/connection.js';
import { startEmbeddedPostgres } from '../../src/db/embeddedPostgres.js';
import { migrateToLatest } from '../../src/db/migrate.js';

/**
 * Runs a study against DATABASE_URL, or else an embedded PostgreSQL started for it (and stopped
 * after), migrated to the latest schema first.
 */
export async function withStudyDatabase<T>(study: (url: string) => Promise<T>): Promise<T> {
  let url = process.env.DATABASE_URL;
  const embedded = url ? undefined : await startEmbeddedPostgres();
  url ??= embedded?.url as string;
  try {
    const db = createDatabase(createPool({ connectionString: url, max: 1, applicationName: 'bench-setup' }));
    await migrateToLatest(db);
    await db.destroy();
    return await study(url);
  } finally {
    await embedded?.stop();
  }
}
