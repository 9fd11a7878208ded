import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { startReplica } from '../../src/wiring/replica.js';
import { waitFor } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('the LISTEN connection', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('listener');
  });
  after(() => t.close());

  const listeners = async () =>
    (
      await sql<{ pid: number }>`SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'shardrelay-listener'`.execute(t.db)
    ).rows.map((r) => r.pid);

  const sendOne = async () => {
    const [row] = await enqueue(t.db, [{ topic: 'rt', payload: {}, lane: 'realtime' }]);
    const id = (row as { id: string }).id;
    await waitFor(
      'the row to be sent',
      async () => {
        const r = await t.db
          .selectFrom('shardrelay.events')
          .select('status')
          .where('id', '=', id)
          .executeTakeFirstOrThrow();
        return r.status === 'sent';
      },
      20_000,
      10,
    );
    const r = await t.db
      .selectFrom('shardrelay.events')
      .select(sql<number>`extract(epoch FROM sent_at - created_at) * 1000`.as('ms'))
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
    return Number(r.ms);
  };

  it(
    'killed with pg_terminate_backend: rows are still delivered by polling, and it comes back',
    { timeout: 60_000 },
    async () => {
      // A long tick, so a delivery faster than a tick can only come from a NOTIFY wake-up.
      const relay = await startReplica({
        config: testConfig(t.url, { tickSeconds: 4 }),
        lanes: ['realtime'],
      });
      try {
        await waitFor('the listener to connect', async () => (await listeners()).length === 1);
        assert.ok((await sendOne()) < 1000, 'woken by NOTIFY before the kill');

        const [pid] = await listeners();
        await sql`SELECT pg_terminate_backend(${pid}::int)`.execute(t.db);
        await waitFor('the relay to notice', async () => !relay.listener.connected, 5_000, 5);
        // While the listener is down, polling still delivers (within a tick or two).
        const withoutListener = await sendOne();
        assert.ok(withoutListener < 10_000, `delivered by polling in ${Math.round(withoutListener)} ms`);

        await waitFor(
          'the listener to come back',
          async () => relay.listener.connected && (await listeners()).length === 1,
          20_000,
        );
        const [newPid] = await listeners();
        assert.notEqual(newPid, pid, 'a new LISTEN connection');
        const latencies = [await sendOne(), await sendOne(), await sendOne()];
        assert.ok(
          Math.max(...latencies) < 1000,
          `woken by NOTIFY again: ${latencies.map(Math.round).join(', ')} ms`,
        );
      } finally {
        await relay.stop();
      }
    },
  );
});
