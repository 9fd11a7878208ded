/**
 * The claim cursor (relay/claimCursor.ts) against a real PostgreSQL: a claim after the previous
 * batch's last id skips the index entries of the rows already sent, and a row that became claimable
 * below the cursor (a transaction that took its id earlier and committed later) is still delivered,
 * by the next claim from the shard's first entry, once to a real receiver.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import { enqueue } from '../../src/enqueue.js';
import { DEFAULT_LANE_PREDICATE } from '../../src/lanes/lanePredicate.js';
import { ClaimCursor } from '../../src/relay/claimCursor.js';
import { CLAIM_SESSION_SETTINGS, claimQuery } from '../../src/relay/claims.js';
import { deliverBatch, type DeliverySettings } from '../../src/relay/deliverBatch.js';
import { createHttpSink } from '../../src/sinks/httpSink.js';
import { startRelay } from '../../src/wiring/relay.js';
import type { Sink } from '../../src/sinks/sink.js';
import { testConfig } from '../support/relayConfig.js';
import { startSlowWebhook } from '../support/slowWebhook.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const SHARDS = 8;
const SHARD = 0;

describe('the claim cursor', () => {
  let t: TestDatabase;
  let receiver: Awaited<ReturnType<typeof startSlowWebhook>>;
  let sink: Sink;
  before(async () => {
    t = await createTestDatabase('claim_cursor');
    receiver = await startSlowWebhook(0);
    sink = createHttpSink({ url: receiver.url });
    await sink.start();
  });
  after(async () => {
    await sink.close();
    await receiver.close();
    await t.close();
  });

  const settings = (cursor: ClaimCursor, batchSize: number): DeliverySettings => ({
    lanePredicate: DEFAULT_LANE_PREDICATE,
    batchSize,
    retry: { maxAttempts: 5, baseMs: 1_000, capMs: 1_000 },
    sendTimeoutMs: 10_000,
    cursor,
  });

  const pendingIdsOfShard = async () =>
    (
      await sql<{ id: string }>`
        SELECT id::text AS id FROM shardrelay.outbox
         WHERE status = 'pending' AND id % ${sql.lit(SHARDS)} = ${SHARD} ORDER BY outbox.id`.execute(t.db)
    ).rows.map((r) => r.id);

  it(
    'a row committed below the cursor during a drain is delivered by the next claim from the first entry',
    { timeout: 60_000 },
    async () => {
      // A transaction that takes its ids first and commits last, as an application's can.
      const late = await t.pool.connect();
      let lateIds: string[];
      try {
        await late.query('BEGIN');
        lateIds = (
          await late.query<{ id: string }>(
            `INSERT INTO shardrelay.outbox (topic, payload)
             SELECT 'cursor.late', jsonb_build_object('n', g) FROM generate_series(1, ${SHARDS}) g
             RETURNING id::text AS id`,
          )
        ).rows.map((r) => r.id);
        await enqueue(
          t.db,
          Array.from({ length: SHARDS * 30 }, (_, i) => ({ topic: 'cursor.backlog', payload: { i } })),
        );
        const clock = { now: 0 };
        const cursor = new ClaimCursor({ fullScanEveryMs: 1_000, now: () => clock.now });
        const first = await deliverBatch(t.db, sink, SHARD, SHARDS, 'batch', settings(cursor, 10));
        assert.equal(first.sent, 10);
        await late.query('COMMIT');
        const lateOfShard = lateIds.find((id) => BigInt(id) % BigInt(SHARDS) === BigInt(SHARD));
        assert.ok(lateOfShard, 'one of the late rows is in the shard');
        assert.ok((await pendingIdsOfShard()).includes(lateOfShard));

        // Within the second: the claim starts after the first batch's last id.
        const second = await deliverBatch(t.db, sink, SHARD, SHARDS, 'batch', settings(cursor, 10));
        assert.equal(second.sent, 10);
        assert.equal((await pendingIdsOfShard())[0], lateOfShard, 'the cursor claim passed over it');

        // A second after the last claim from the first entry: the next one reads from there.
        clock.now = 1_000;
        await deliverBatch(t.db, sink, SHARD, SHARDS, 'batch', settings(cursor, 10));
        assert.ok(!(await pendingIdsOfShard()).includes(lateOfShard), 'the late row was claimed');

        // Drain the shard: every row of it once at the receiver, the late one included.
        while ((await pendingIdsOfShard()).length > 0) {
          clock.now += 100;
          await deliverBatch(t.db, sink, SHARD, SHARDS, 'batch', settings(cursor, 10));
        }
      } finally {
        late.release();
      }
      const delivered = [...receiver.counts.entries()];
      assert.equal(delivered.length, 31, 'the 30 backlog rows of the shard and its late row');
      assert.ok(
        delivered.every(([, n]) => n === 1),
        'each once',
      );
    },
  );

  it('a batch that left its rows pending resets the cursor', async () => {
    await enqueue(
      t.db,
      Array.from({ length: SHARDS * 20 }, (_, i) => ({ topic: 'cursor.reset', payload: { i } })),
    );
    const cursor = new ClaimCursor({ fullScanEveryMs: 60_000 });
    await deliverBatch(t.db, sink, SHARD, SHARDS, 'batch', settings(cursor, 5));
    assert.ok(cursor.startAfter() !== undefined, 'a full batch: the next claim starts after it');
    // The lease lapsed while the claim ran: the batch sends nothing, its rows stay pending.
    let asked = 0;
    const result = await deliverBatch(t.db, sink, SHARD, SHARDS, 'batch', {
      ...settings(cursor, 5),
      mayClaim: () => ++asked < 2,
    });
    assert.equal(result.claimed, 0);
    assert.equal(cursor.startAfter(), undefined);
  });

  it('a claim after an id starts its index scan there: the sent rows’ dead entries are not read', async () => {
    await sql`TRUNCATE shardrelay.outbox`.execute(t.db);
    await sql`
      INSERT INTO shardrelay.outbox (topic, payload)
      SELECT 'cursor.plan', jsonb_build_object('n', g) FROM generate_series(1, 160000) g`.execute(t.db);
    // The first 16,000 rows of each shard sent (deleted), not yet vacuumed.
    const { rows } = await sql<{ last: string }>`
      WITH gone AS (
        DELETE FROM shardrelay.outbox
         WHERE id IN (SELECT id FROM shardrelay.outbox ORDER BY id LIMIT 128000) RETURNING id)
      SELECT max(id)::text AS last FROM gone WHERE id % ${sql.lit(SHARDS)} = ${SHARD}`.execute(t.db);
    const last = rows[0]?.last;
    assert.ok(last);
    await sql`ANALYZE shardrelay.outbox`.execute(t.db);

    const claimPlan = async (afterId?: string) =>
      t.db.transaction().execute(async (trx) => {
        for (const [name, value] of Object.entries(CLAIM_SESSION_SETTINGS))
          await sql`SELECT set_config(${name}, ${value}, true)`.execute(trx);
        const query = claimQuery(trx, {
          shard: SHARD,
          shardCount: SHARDS,
          lane: 'batch',
          lanePredicate: DEFAULT_LANE_PREDICATE,
          batchSize: 10,
          ...(afterId ? { afterId } : {}),
        });
        const [row] = await query.explain('json', sql`analyze, buffers`);
        return JSON.stringify(row);
      });
    const buffers = (plan: string) => {
      const hit = /"Shared Hit Blocks":(\d+)/.exec(plan);
      const read = /"Shared Read Blocks":(\d+)/.exec(plan);
      return Number(hit?.[1] ?? 0) + Number(read?.[1] ?? 0);
    };
    // The first scan over the dead entries visits the heap for each and marks them; later ones
    // still read their index pages.
    await claimPlan();
    const fromFirst = await claimPlan();
    const fromCursor = await claimPlan(last);
    assert.match(fromCursor, /"Index Cond":"[^"]*id > /, 'the id bound is an index condition');
    assert.ok(
      buffers(fromCursor) * 3 < buffers(fromFirst),
      `buffers: after the cursor ${buffers(fromCursor)}, from the shard's first entry ${buffers(fromFirst)}`,
    );
  });
});

describe('the relay draining a backlog while transactions that took ids earlier commit', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('claim_cursor_relay');
  });
  after(() => t.close());

  it('delivers every row once to a real receiver, the late ones included', { timeout: 120_000 }, async () => {
    const receiver = await startSlowWebhook(0);
    // Eight transactions take their ids first (one per shard) and commit while the relay drains
    // the 4,000 rows committed after them in full batches of 20, its cursors long past their ids.
    // Connections of their own: the test pool has fewer than eight.
    const late = Array.from({ length: 8 }, () => new pg.Client({ connectionString: t.url }));
    await Promise.all(late.map((client) => client.connect()));
    try {
      for (const [i, client] of late.entries()) {
        await client.query('BEGIN');
        await client.query(
          `INSERT INTO shardrelay.outbox (topic, payload) VALUES ('cursor.late', jsonb_build_object('late', ${i}::int))`,
        );
      }
      await enqueue(
        t.db,
        Array.from({ length: 4_000 }, (_, i) => ({ topic: 'cursor.backlog', payload: { i } })),
      );
      const config = testConfig(t.url, {
        sink: 'http',
        webhookUrl: receiver.url,
        batchBatchSize: 20,
      });
      // Signalled by the relay's batch hook once a quarter of the backlog is through.
      let sent = 0;
      let quarterSent = () => {};
      const quarterThrough = new Promise<void>((resolve) => (quarterSent = resolve));
      const relay = await startRelay({
        config,
        hooks: {
          onBatch: (_shard, _lane, result) => {
            sent += result.sent;
            if (sent >= 1_000) quarterSent();
          },
        },
      });
      try {
        await quarterThrough;
        for (const client of late) await client.query('COMMIT');
        await relay.whenDrained();
      } finally {
        await relay.stop();
      }
    } finally {
      await Promise.all(late.map((client) => client.end()));
      await receiver.close();
    }
    assert.equal(receiver.counts.size, 4_008, 'every row, the 8 late ones included');
    const twice = [...receiver.counts.values()].filter((n) => n !== 1).length;
    assert.equal(twice, 0, 'each once');
    const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM shardrelay.outbox`.execute(t.db);
    assert.equal(rows[0]?.n, 0);
  });
});
