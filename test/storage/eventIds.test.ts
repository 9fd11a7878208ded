/**
 * The event id an application gets by default (`shardrelay.uuid_v7()`, migration 0014): a UUIDv7
 * (RFC 9562) whose first 48 bits are the insert's Unix milliseconds, so the unique indexes on event
 * ids append in time order instead of writing at random.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('default event ids', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('event_ids');
  });
  after(() => t.close());

  it('are UUIDv7: the insert time in milliseconds, version 7, variant 10, the rest random', async () => {
    const before = Date.now();
    const { rows } = await sql<{ event_id: string }>`
      INSERT INTO shardrelay.outbox (topic, payload)
      SELECT 'ids', '{}' FROM generate_series(1, 2000) RETURNING event_id::text`.execute(t.db);
    const after = Date.now();
    assert.equal(rows.length, 2000);
    for (const { event_id: id } of rows) {
      assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, id);
      const ms = Number.parseInt(id.replaceAll('-', '').slice(0, 12), 16);
      // The database's clock, read per row; the machine's clock here: the same host.
      assert.ok(ms >= before - 5 && ms <= after + 5, `${id}: ${ms} not within ${before}..${after}`);
    }
    assert.equal(new Set(rows.map((r) => r.event_id)).size, 2000, 'an id repeated');
    // 2,000 ids carry 2,000 × 74 random bits: the digits after the time are not all alike.
    assert.ok(new Set(rows.map((r) => r.event_id.slice(-12))).size === 2000);
  });

  it('order by insert time across statements', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const { rows } = await sql<{ event_id: string }>`
        INSERT INTO shardrelay.outbox (topic, payload) VALUES ('ids', '{}') RETURNING event_id::text`.execute(
        t.db,
      );
      ids.push(rows[0]?.event_id ?? '');
      await new Promise((resolve) => setTimeout(resolve, 3));
    }
    assert.deepEqual([...ids].sort(), ids);
  });
});
