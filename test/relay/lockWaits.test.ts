/**
 * Someone else's transaction holds a relay table (an operator's `LOCK TABLE`, a migration, a stuck
 * session): the relay's control statements and the observer's read give up their lock wait within
 * seconds and say why, instead of waiting silently for as long as the lock is held.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import { enqueue } from '../../src/enqueue.js';
import { createNullSink } from '../../src/sinks/nullSink.js';
import { startRelay } from '../../src/wiring/relay.js';
import { captureLog, type CapturedLog } from '../support/brokers.js';
import { waitFor } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('a relay table locked by another session', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('lock_waits');
  });
  after(() => t.close());

  const renewed = async () =>
    (
      await sql<{ at: Date }>`SELECT max(renewed_at) AS at FROM shardrelay.shard_lease`.execute(t.db)
    ).rows[0]?.at?.getTime() ?? 0;

  /** A relay on the null sink that logs into `captured` and observes every 500 ms; stopped after `test`. */
  async function withRelay(test: (captured: CapturedLog) => Promise<void>): Promise<void> {
    const captured = captureLog();
    const relay = await startRelay({
      config: testConfig(t.url),
      sink: createNullSink(),
      logger: captured.log,
      observeIntervalMs: 500,
    });
    try {
      await waitFor('the relay holds leases', async () => (await renewed()) > 0);
      await test(captured);
    } finally {
      await relay.stop();
    }
  }

  /** Runs `during` while another session holds `table` in ACCESS EXCLUSIVE mode; released after. */
  async function whileLocked(table: string, during: () => Promise<void>): Promise<void> {
    const holder = new pg.Client(t.url);
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
      await during();
    } finally {
      await holder.query('ROLLBACK');
      await holder.end();
    }
  }

  it(
    'the tick and the observer report the lock wait within seconds, and go on when it ends',
    { timeout: 60_000 },
    () =>
      withRelay(async (captured) => {
        const lockedAt = performance.now();
        await whileLocked('shardrelay.shard_lease', async () => {
          // Before, nothing at all was logged until the lock ended (a 30 s lock: 30 s of silence).
          const tick = await captured.waitFor('scheduler tick failed', 8_000);
          assert.match(JSON.stringify(tick), /lock timeout/);
          const observation = await captured.waitFor('observing the views failed', 8_000);
          assert.match(String(observation.err), /lock timeout/);
          console.log(
            `# lock held: the tick and the observer said so within ${Math.round(performance.now() - lockedAt)} ms`,
          );
        });
        const released = await renewed();
        await waitFor('a lease renewal after the lock', async () => (await renewed()) > released, 10_000);
        // A failed read is not a measure of the read's cost: it does not pace the metrics refresh
        // (before, the read that waited paced the next one 20 times its length later: ten minutes
        // after a 30 s lock). A read that got its lock late still counts what it waited.
        const pacedByFailure = captured.lines.filter(
          (l) => String(l.msg).startsWith('observing less often') && Number(l.cycleMs) >= 1_900,
        );
        assert.deepEqual(pacedByFailure, [], 'a failed read stretched the metrics period');
      }),
  );

  it(
    'the outbox locked: the due-rows probe says so once, and again when it works; rows flow after',
    { timeout: 60_000 },
    () =>
      withRelay(async (captured) => {
        await whileLocked('shardrelay.outbox', async () => {
          // Before: at debug level only; claims waited for the lock and nothing at warn said why.
          const failed = await captured.waitFor('due-rows probe failed', 8_000);
          assert.equal(failed.level, 40);
          assert.match(String(failed.err), /lock timeout/);
          // Wait out more ticks: the warning is not repeated.
          await captured.waitFor('observing the views failed', 8_000);
          await new Promise((resolve) => setTimeout(resolve, 3_000));
          const warned = captured.lines.filter(
            (l) => String(l.msg).startsWith('due-rows probe failed') && l.level === 40,
          );
          assert.equal(
            warned.length,
            new Set(warned.map((l) => l.lane)).size,
            'warned more than once per lane',
          );
        });
        await captured.waitFor('due-rows probe works again', 8_000);
        const [event] = await enqueue(t.db, [{ topic: 'after.lock', payload: {} }]);
        const status = async () =>
          (
            await sql<{
              status: string;
            }>`SELECT status FROM shardrelay.events WHERE event_id = ${event?.eventId}`.execute(t.db)
          ).rows[0]?.status;
        await waitFor('the event enqueued after the lock is sent', async () => (await status()) === 'sent');
      }),
  );
});
