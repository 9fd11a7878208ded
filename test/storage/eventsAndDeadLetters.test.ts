import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { startRelay } from '../../src/wiring/relay.js';
import { runCli } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('event lookup, dead discard and idempotent enqueue', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('events_dead');
  });
  after(() => t.close());

  it(
    '`event <id>` says when, by which replica and to which sink an event was sent',
    { timeout: 60_000 },
    async () => {
      const [sent] = await enqueue(t.db, [{ topic: 'orders.created', payload: { n: 1 }, key: 'order-1' }]);
      assert.ok(sent);
      const relay = await startRelay({
        config: testConfig(t.url, { replicaId: 'replica east 1', sentRetentionSeconds: '1h' }),
      });
      await relay.whenDrained();
      await relay.stop();

      const json = await runCli(['event', sent.eventId, '--json'], { DATABASE_URL: t.url });
      assert.equal(json.code, 0, json.stderr);
      const event = JSON.parse(json.stdout) as Record<string, unknown>;
      assert.equal(event.status, 'sent');
      assert.equal(event.replica, 'replica east 1', 'a replica id with spaces survives the session setting');
      assert.equal(event.sink, 'null');
      assert.equal(event.topic, 'orders.created');
      assert.equal(event.attempts, 1);
      assert.ok(
        typeof event.sentAt === 'string' && Date.parse(event.sentAt) >= Date.parse(String(event.createdAt)),
      );

      const text = await runCli(['event', sent.eventId.toUpperCase()], { DATABASE_URL: t.url });
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /status\s+sent/);
      assert.match(text.stdout, /by\s+replica east 1 to sink null/);

      const view = await sql<{ status: string; replica: string }>`
      SELECT status, replica FROM shardrelay.events WHERE event_id = ${sent.eventId}`.execute(t.db);
      assert.deepEqual(view.rows, [{ status: 'sent', replica: 'replica east 1' }]);

      const unknown = await runCli(['event', '0190a5c4-0000-7000-8000-000000000000'], {
        DATABASE_URL: t.url,
      });
      assert.equal(unknown.code, 1);
      assert.match(unknown.stdout, /is not known/);
      const bad = await runCli(['event', 'not-a-uuid'], { DATABASE_URL: t.url });
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /not a uuid/);
    },
  );

  it(
    '`dead discard` deletes only the selected dead rows, with the selectors of replay',
    { timeout: 60_000 },
    async () => {
      const { rows } = await sql<{ id: string; topic: string }>`
      INSERT INTO shardrelay.outbox (topic, payload, status, attempts, last_error)
      SELECT CASE WHEN g <= 3 THEN 'dead.a' ELSE 'dead.b' END, '{}', 'dead', 10, 'gave up'
        FROM generate_series(1, 6) AS g
      RETURNING id, topic`.execute(t.db);
      await sql`INSERT INTO shardrelay.outbox (topic, payload) VALUES ('dead.a', '{}')`.execute(t.db);
      const a = rows.filter((r) => r.topic === 'dead.a').map((r) => r.id);
      const b = rows.filter((r) => r.topic === 'dead.b').map((r) => r.id);
      const left = async () =>
        (
          await sql<{
            id: string;
          }>`SELECT id FROM shardrelay.outbox WHERE status = 'dead' ORDER BY id`.execute(t.db)
        ).rows.map((r) => r.id);

      const nothing = await runCli(['dead', 'discard'], { DATABASE_URL: t.url });
      assert.equal(nothing.code, 2);
      assert.match(nothing.stderr, /nothing selected.*--id <id\.\.\.>, --topic <topic> or --all/s);

      const one = await runCli(['dead', 'discard', '--id', a[0] as string], { DATABASE_URL: t.url });
      assert.equal(one.code, 0, one.stderr);
      assert.match(one.stdout, /discarded 1 dead letters/);
      assert.deepEqual(await left(), [...a.slice(1), ...b]);

      const topic = await runCli(['dead', 'discard', '--topic', 'dead.a'], { DATABASE_URL: t.url });
      assert.match(topic.stdout, /discarded 2 dead letters/);
      assert.deepEqual(await left(), b);
      const pending = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.outbox WHERE topic = 'dead.a' AND status = 'pending'`.execute(
        t.db,
      );
      assert.equal(pending.rows[0]?.n, 1, 'a pending row of the same topic is not touched');

      const all = await runCli(['dead', 'discard', '--all'], { DATABASE_URL: t.url });
      assert.match(all.stdout, /discarded 3 dead letters/);
      assert.deepEqual(await left(), []);
    },
  );

  it(
    'a duplicate eventId is skipped inside the caller’s transaction, which still commits',
    { timeout: 60_000 },
    async () => {
      const first = '0190a5c4-1111-7000-8000-000000000001';
      const second = '0190a5c4-1111-7000-8000-000000000002';
      const sentEarlier = '0190a5c4-1111-7000-8000-000000000003';
      await enqueue(t.db, [{ topic: 'idem', payload: 3, eventId: sentEarlier }]);
      // `sentEarlier` is sent and leaves the outbox; its record keeps it known.
      const relay = await startRelay({ config: testConfig(t.url, { sentRetentionSeconds: '1h' }) });
      await relay.whenDrained();
      await relay.stop();
      const gone = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.outbox WHERE event_id = ${sentEarlier}`.execute(t.db);
      assert.equal(gone.rows[0]?.n, 0);
      await enqueue(t.db, [{ topic: 'idem', payload: 1, eventId: first }]); // pending

      const result = await t.db.transaction().execute(async (trx) => {
        await sql`CREATE TEMP TABLE business (n int) ON COMMIT DROP`.execute(trx);
        const enqueued = await enqueue(trx, [
          { topic: 'idem', payload: 'dup of pending', eventId: first.toUpperCase() },
          { topic: 'idem', payload: 'new', eventId: second },
          { topic: 'idem', payload: 'dup within the call', eventId: second },
          { topic: 'idem', payload: 'dup of sent', eventId: sentEarlier },
        ]);
        // The transaction is still usable: no 23505 aborted it.
        await sql`INSERT INTO business VALUES (1)`.execute(trx);
        return enqueued;
      });
      assert.deepEqual(
        result.map((r) => r.eventId),
        [second],
      );
      assert.deepEqual([...result.skipped].sort(), [first, second, sentEarlier].sort());

      // A pg client in a transaction: the same.
      const client = await t.pool.connect();
      try {
        await client.query('BEGIN');
        const viaPg = await enqueue(client, [{ topic: 'idem', payload: 'again', eventId: second }]);
        await client.query('SELECT 1');
        await client.query('COMMIT');
        assert.equal(viaPg.length, 0);
        assert.deepEqual(viaPg.skipped, [second]);
      } finally {
        client.release();
      }
      const copies = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM shardrelay.events WHERE event_id IN (${first}, ${second}, ${sentEarlier})`.execute(
        t.db,
      );
      assert.equal(copies.rows[0]?.n, 3, 'one copy of each event');
    },
  );
});
