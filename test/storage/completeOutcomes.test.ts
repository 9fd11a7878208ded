import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { completeBatch } from '../../src/relay/claims.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/**
 * shardrelay.complete_outcomes (migrations/0010) through relay/claims.ts `completeBatch`: every
 * outcome of one batch at once, and the rare path of its plain record INSERT (an event id already
 * recorded), which must keep the first record, delete the row and count it once.
 */
describe('completion by outcome', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('complete_outcomes');
  });
  after(() => t.close());

  const insert = async (topic: string, options: { canary?: boolean; eventId?: string } = {}) => {
    const { rows } = await sql<{ id: string }>`
      INSERT INTO shardrelay.outbox (topic, payload, canary, event_id)
      VALUES (${topic}, '{}', ${options.canary ?? false}, coalesce(${options.eventId ?? null}::uuid, shardrelay.uuid_v7()))
      RETURNING id::text AS id`.execute(t.db);
    return (rows[0] as { id: string }).id;
  };

  it('deletes and records confirmed rows, marks a confirmed canary sent, retries and dead-letters the rest', async () => {
    const sent = await insert('a');
    const canary = await insert('canary', { canary: true });
    const retried = await insert('b');
    const dead = await insert('c');
    await t.db.transaction().execute((trx) =>
      completeBatch(trx, {
        shard: 0,
        lane: 'batch',
        batchMs: 4,
        completions: [
          { id: sent, status: 'sent' },
          { id: canary, status: 'sent' },
          { id: retried, status: 'pending', retryInMs: 60_000, error: 'refused' },
          { id: dead, status: 'dead', error: 'permanent: bad' },
        ],
      }),
    );
    const { rows } = await sql<{
      id: string;
      status: string;
      attempts: number;
      error: string | null;
      later: boolean;
    }>`
      SELECT id::text AS id, status, attempts, last_error AS error, available_at > now() + interval '30 s' AS later
        FROM shardrelay.outbox ORDER BY id`.execute(t.db);
    assert.deepEqual(rows, [
      { id: canary, status: 'sent', attempts: 1, error: null, later: false },
      { id: retried, status: 'pending', attempts: 1, error: 'refused', later: true },
      { id: dead, status: 'dead', attempts: 1, error: 'permanent: bad', later: false },
    ]);
    const records = await sql<{ id: string }>`SELECT id::text AS id FROM shardrelay.sent_event`.execute(t.db);
    assert.deepEqual(records.rows, [{ id: sent }]);
    const progress = await sql<Record<string, string>>`
      SELECT last_sent_id::text AS last, sent_total::text AS sent, failed_total::text AS failed, dead_total::text AS dead
        FROM shardrelay.shard_progress WHERE shard = 0 AND lane = 'batch'`.execute(t.db);
    // The canary moves last_sent_id but counts in no business figure.
    assert.deepEqual(progress.rows, [{ last: canary, sent: '1', failed: '1', dead: '1' }]);
    const rollup = await sql<{ sent: string; failed: string; dead: string; buckets: string[] }>`
      SELECT sent::text AS sent, failed::text AS failed, dead::text AS dead, latency_buckets::text[] AS buckets
        FROM shardrelay.rollup_minute WHERE shard = 0 AND lane = 'batch'`.execute(t.db);
    const [minute] = rollup.rows;
    assert.deepEqual(
      { sent: minute?.sent, failed: minute?.failed, dead: minute?.dead },
      { sent: '1', failed: '1', dead: '1' },
    );
    // One latency in the histogram: the one business row sent.
    assert.equal(
      minute?.buckets.reduce((n, c) => n + Number(c), 0),
      1,
    );
  });

  it('keeps the first record of an event id recorded already, and still deletes and counts the row', async () => {
    await sql`TRUNCATE shardrelay.outbox, shardrelay.sent_event, shardrelay.shard_progress, shardrelay.rollup_minute`.execute(
      t.db,
    );
    const eventId = '0190a5c4-0000-7000-8000-0000000000aa';
    await sql`
      INSERT INTO shardrelay.sent_event (event_id, id, topic, shard, lane, attempts, created_at, sent_at)
      VALUES (${eventId}, 1, 'first copy', 0, 'batch', 1, now(), now())`.execute(t.db);
    const again = await insert('second copy', { eventId });
    const other = await insert('other');
    await t.db.transaction().execute((trx) =>
      completeBatch(trx, {
        shard: 0,
        lane: 'batch',
        batchMs: 4,
        completions: [
          { id: again, status: 'sent' },
          { id: other, status: 'sent' },
        ],
      }),
    );
    const left = await sql<{ n: string }>`SELECT count(*)::text AS n FROM shardrelay.outbox`.execute(t.db);
    assert.equal(left.rows[0]?.n, '0');
    const records = await sql<{
      topic: string;
    }>`SELECT topic FROM shardrelay.sent_event ORDER BY topic`.execute(t.db);
    assert.deepEqual(
      records.rows.map((r) => r.topic),
      ['first copy', 'other'],
    );
    const progress = await sql<{ sent: string }>`
      SELECT sent_total::text AS sent FROM shardrelay.shard_progress`.execute(t.db);
    assert.deepEqual(progress.rows, [{ sent: '2' }]);
  });
});
