import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { collect, runCli, spawnCli, waitFor } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('a relay process killed with SIGKILL', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('crash');
  });
  after(() => t.close());

  const count = async (where: string) =>
    Number((await sql.raw<{ n: string }>(`SELECT count(*) AS n FROM ${where}`).execute(t.db)).rows[0]?.n);

  it(
    'mid-batch loses no row, and no row is sent that pg-boss does not hold',
    { timeout: 120_000 },
    async () => {
      const total = 30_000;
      await enqueue(t.db, syntheticEvents(total, { topic: 'crash.test' }));
      const env = { DATABASE_URL: t.url };

      const first = spawnCli(['run', '--sink', 'pgboss', '--batch-size', '500'], env);
      const firstDone = collect(first);
      await waitFor(
        'the first relay sends some rows',
        async () => (await count(`shardrelay.events WHERE status = 'sent'`)) > 2_000,
      );
      // Evidence that the kill lands mid-batch: a batch transaction of the relay is open right now.
      await waitFor('a batch transaction is open', async () => {
        const open = await count(
          `pg_stat_activity WHERE datname = current_database() AND application_name IN ('shardrelay-batch', 'shardrelay-realtime') AND xact_start IS NOT NULL`,
        );
        return open > 0;
      });
      first.kill('SIGKILL');
      const killed = await firstDone;
      assert.equal(killed.signal, 'SIGKILL');

      const sentAtKill = await count(`shardrelay.events WHERE status = 'sent'`);
      assert.ok(sentAtKill < total, `the kill came before the end (${sentAtKill} of ${total} sent)`);
      // The dead process's transactions roll back; its rows are pending again, none half-recorded.
      await waitFor(
        'the killed backends are gone',
        async () =>
          (await count(
            `pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'shardrelay-%'`,
          )) === 0,
      );
      const sentWithoutJob = await count(
        `shardrelay.events o WHERE o.status = 'sent' AND NOT EXISTS (SELECT 1 FROM pgboss.job j WHERE j.id = o.event_id)`,
      );
      assert.equal(sentWithoutJob, 0, 'every row recorded as sent has its pg-boss job');
      const jobsWithoutSent = await count(
        `pgboss.job j WHERE NOT EXISTS (SELECT 1 FROM shardrelay.events o WHERE o.event_id = j.id AND o.status = 'sent')`,
      );
      assert.equal(jobsWithoutSent, 0, 'no job exists for a row that is still pending (same transaction)');

      const second = await runCli(['run', '--sink', 'pgboss', '--until-drained'], env);
      assert.equal(second.code, 0, second.stderr);
      assert.equal(await count(`shardrelay.events WHERE status = 'sent'`), total);
      const jobs = await sql<{ total: number; distinct: number }>`
      SELECT count(*)::int AS total, count(DISTINCT id)::int AS distinct FROM pgboss.job`.execute(t.db);
      assert.deepEqual(jobs.rows[0], { total, distinct: total });
    },
  );
});
