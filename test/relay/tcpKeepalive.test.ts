/**
 * Every connection the relay opens to PostgreSQL has TCP keepalive on (db/connection.ts
 * `TCP_KEEPALIVE`): the lane and control pools, the LISTEN connection, the liveness and ordering
 * sessions. Read from the kernel with `ss`, which lists a keepalive timer only on sockets that
 * have SO_KEEPALIVE set.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { createNullSink } from '../../src/sinks/nullSink.js';
import { startRelay } from '../../src/wiring/relay.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** This process's established TCP connections to `port`, as `ss` prints them. */
function socketsTo(port: string): string[] {
  const out = execFileSync('ss', ['-tnopH', 'state', 'established', `( dport = :${port} )`], {
    encoding: 'utf8',
  });
  return out.split('\n').filter((line) => line.includes(`pid=${process.pid},`));
}

describe('TCP keepalive on every connection to PostgreSQL', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('tcp_keepalive');
  });
  after(() => t.close());

  it('the relay opens none without it', async () => {
    const relay = await startRelay({ config: testConfig(t.url), sink: createNullSink() });
    try {
      // Both lanes' pools connect once they have work.
      await enqueue(t.db, [
        { topic: 'a', payload: {}, lane: 'batch' },
        { topic: 'b', payload: {}, lane: 'realtime' },
      ]);
      await relay.whenDrained();
      const port = new URL(t.url).port || '5432';
      const sockets = socketsTo(port);
      const names = await sql<{ application_name: string }>`
        SELECT application_name FROM pg_stat_activity WHERE datname = current_database()`.execute(t.db);
      const applications = names.rows.map((r) => r.application_name).sort();
      // The relay's sessions are among them (and the test's own pool, also built by createPool).
      for (const name of [
        'shardrelay-batch',
        'shardrelay-control',
        'shardrelay-listener',
        'shardrelay-liveness',
      ])
        assert.ok(applications.includes(name), `${name} is connected (${applications.join(', ')})`);
      assert.ok(sockets.length >= applications.length, `${sockets.length} sockets:\n${sockets.join('\n')}`);
      const without = sockets.filter((line) => !/timer:\(keepalive,/.test(line));
      assert.deepEqual(without, [], `connections without keepalive (sessions: ${applications.join(', ')})`);
    } finally {
      await relay.stop();
    }
  });
});
