/**
 * Per-key ordering on one shard, batch by batch against real PostgreSQL: a failed row blocks its
 * key and not the shard's other keys, `shardrelay.blocked_keys` and `status` show it, and a dead
 * row releases its key or holds it (SHARDRELAY_ORDERING_DEAD).
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { deliverBatch } from '../../src/relay/deliverBatch.js';
import type { KeyOrdering } from '../../src/relay/claims.js';
import { confirmed, permanent, retryable, type OutboxMessage, type Sink } from '../../src/sinks/sink.js';
import { readStatus } from '../../src/status.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** Confirms every message except those whose payload says `fail`; records what it was given. */
function recordingSink(fail: (m: OutboxMessage) => 'retry' | 'dead' | undefined) {
  const sent: string[] = [];
  const sink: Sink = {
    name: 'recording',
    start: async () => {},
    close: async () => {},
    sendBatch: async (messages) =>
      messages.map((m) => {
        const how = fail(m);
        if (how === 'retry') return retryable('receiver busy');
        if (how === 'dead') return permanent('refused');
        sent.push(String((JSON.parse(m.payloadJson) as { name: string }).name));
        return confirmed;
      }),
  };
  return { sink, sent };
}

describe('per-key ordering on one shard', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('blocked_keys');
    await sql`SELECT shardrelay.set_shard_count(1)`.execute(t.db);
  });
  after(() => t.close());
  beforeEach(async () => {
    await sql`DELETE FROM shardrelay.outbox`.execute(t.db);
    await enqueue(
      t.db,
      ['a1', 'b1', 'a2', 'b2', 'a3', 'n1'].map((name) => ({
        topic: 'orders',
        ...(name.startsWith('n') ? {} : { key: name[0] }),
        payload: { name },
      })),
    );
  });

  const batch = (sink: Sink, ordering: KeyOrdering) =>
    deliverBatch(t.db, sink, 0, 1, 'batch', {
      lanePredicate: DEFAULT_LANE_PREDICATE,
      batchSize: 100,
      retry: { maxAttempts: 10, baseMs: 60_000, capMs: 60_000 },
      sendTimeoutMs: 5_000,
      ordering,
    });

  it('a failed row blocks its key only; blocked_keys and status show it', async () => {
    const { sink, sent } = recordingSink((m) =>
      (JSON.parse(m.payloadJson) as { name: string }).name === 'a1' ? 'retry' : undefined,
    );
    const first = await batch(sink, { holdDead: false });
    assert.deepEqual([...sent].sort(), ['b1', 'b2', 'n1']);
    assert.equal(first.retried, 1);
    assert.equal(first.held, 2, 'a2 and a3 wait behind a1');
    const second = await batch(sink, { holdDead: false });
    assert.equal(second.claimed, 0, 'the next claim passes over key a while a1 waits for its retry');
    const blocked = await sql<{ key: string; reason: string; waiting: string }>`
      SELECT key, reason, waiting FROM shardrelay.blocked_keys`.execute(t.db);
    assert.deepEqual(blocked.rows, [{ key: 'a', reason: 'retrying', waiting: '2' }]);
    const status = await readStatus(t.db);
    assert.equal(status.blockedKeys.retrying, 1);
    assert.equal(status.blockedKeys.top[0]?.key, 'a');
    assert.equal(status.blockedKeys.top[0]?.waiting, 2);
  });

  it('a dead row releases its key by default, and holds it with hold', async () => {
    const { sink, sent } = recordingSink((m) =>
      (JSON.parse(m.payloadJson) as { name: string }).name === 'a1' ? 'dead' : undefined,
    );
    await batch(sink, { holdDead: true });
    assert.deepEqual([...sent].sort(), ['b1', 'b2', 'n1'], 'hold: a2 and a3 stay behind the dead a1');
    await batch(sink, { holdDead: true });
    assert.deepEqual([...sent].sort(), ['b1', 'b2', 'n1'], 'hold: still held on the next batch');
    const blocked = await sql<{ key: string; reason: string }>`
      SELECT key, reason FROM shardrelay.blocked_keys`.execute(t.db);
    assert.deepEqual(blocked.rows, [{ key: 'a', reason: 'dead' }]);
    await batch(sink, { holdDead: false });
    assert.deepEqual(sent.slice(3), ['a2', 'a3'], 'release: the key goes on, in order');
  });
});
