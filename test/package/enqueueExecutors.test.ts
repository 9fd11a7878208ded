/**
 * The handles `enqueue` writes through, recognised by shape (src/executor.ts). The packed-package
 * check (check.sh) runs the same against another kysely copy; this one runs in the suite.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import { enqueue, type OutboxEvent } from '../../src/enqueue.js';
import { ShardRelayError } from '../../src/errors.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('enqueue executors', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('enqueue_executors');
    // A row the database refuses, to fail the second statement of a long call.
    await sql`ALTER TABLE shardrelay.outbox ADD CONSTRAINT no_poison CHECK (topic <> 'poison')`.execute(t.db);
  });
  after(() => t.close());

  const count = async (topic: string) =>
    Number(
      (
        await sql<{ n: string }>`SELECT count(*) AS n FROM shardrelay.outbox WHERE topic = ${topic}`.execute(
          t.db,
        )
      ).rows[0]?.n,
    );
  const events = (topic: string, n: number, poisonAt?: number): OutboxEvent[] =>
    Array.from({ length: n }, (_, i) => ({ topic: i === poisonAt ? 'poison' : topic, payload: { i } }));

  it('a pg Pool, a PoolClient and a Client each write, returning ids and event ids', async () => {
    const client = await t.pool.connect();
    const single = new pg.Client(t.url);
    await single.connect();
    try {
      for (const [executor, topic] of [
        [t.pool, 'via.pool'],
        [client, 'via.poolclient'],
        [single, 'via.client'],
      ] as const) {
        const [written] = await enqueue(executor, events(topic, 1));
        assert.match(written?.id ?? '', /^\d+$/);
        assert.match(written?.eventId ?? '', /^[0-9a-f-]{36}$/);
        assert.equal(await count(topic), 1);
      }
    } finally {
      client.release();
      await single.end();
    }
  });

  it('more than one statement of events through a pg Pool is all or nothing', async () => {
    await assert.rejects(enqueue(t.pool, events('pool.long', 1500, 1200)), /no_poison/);
    assert.equal(await count('pool.long'), 0, 'the first 1,000 rows were rolled back with the rest');
    assert.equal((await enqueue(t.pool, events('pool.long', 1500))).length, 1500);
    assert.equal(await count('pool.long'), 1500);
  });

  it('more than one statement of events through a Kysely instance is all or nothing', async () => {
    await assert.rejects(enqueue(t.db, events('kysely.long', 1500, 1200)), /no_poison/);
    assert.equal(await count('kysely.long'), 0);
  });

  it('something that is no executor is refused with the fix', async () => {
    for (const wrong of [{}, null, 'postgres://x']) {
      await assert.rejects(enqueue(wrong as never, events('never', 1)), (error: unknown) => {
        assert.ok(error instanceof ShardRelayError);
        assert.equal(error.code, 'CONFIG_INVALID');
        assert.match(
          error.describe(),
          /enqueue cannot write through [\s\S]*fix: pass a Kysely instance or transaction, or a pg Pool, Client or PoolClient/,
        );
        return true;
      });
    }
  });
});
