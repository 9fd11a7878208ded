import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue, type OutboxEvent } from '../../src/enqueue.js';
import { InvalidEventError } from '../../src/errors.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const HIGH = '\uD83D'; // the first half of an emoji, alone
const LOW = '\uDE00'; // the second half, alone

/**
 * Text PostgreSQL cannot store (NUL, lone surrogates) is refused by enqueue before the insert, so
 * the caller's transaction is not aborted and its business change can still commit.
 */
describe('enqueue refuses text PostgreSQL cannot store', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('storable_text');
    await sql`CREATE TABLE orders (id int PRIMARY KEY)`.execute(t.db);
  });
  after(() => t.close());

  const items = [{ name: 'a' }, { name: 'b' }, { name: 'c' }, { name: `bad\0name` }];
  const cases: [string, Partial<OutboxEvent>, RegExp][] = [
    [
      'a NUL in a nested payload string',
      { payload: { items } },
      /payload\.items\[3\]\.name: contains a NUL character \(U\+0000\) at character 3/,
    ],
    [
      'a lone high surrogate in the payload',
      { payload: { note: `cut ${HIGH}` } },
      /payload\.note: contains an unpaired UTF-16 surrogate \(U\+D83D\)/,
    ],
    [
      'a lone low surrogate in a payload array',
      { payload: ['ok', `${LOW}x`] },
      /payload\[1\]: contains an unpaired UTF-16 surrogate \(U\+DE00\)/,
    ],
    [
      'a NUL in a payload key',
      { payload: { 'we\0ird key': 1 } },
      /payload\["we\\u0000ird key"\] \(the key\): contains a NUL/,
    ],
    ['a NUL in a top-level string payload', { payload: 'a\0' }, /payload: contains a NUL/],
    ['a NUL in the key', { key: 'k\0' }, /key: contains a NUL/],
    ['a lone surrogate in the key', { key: `k${LOW}` }, /key: contains an unpaired UTF-16 surrogate/],
    ['a NUL in a header value', { headers: { tenant: 'a\0b' } }, /headers\.tenant: contains a NUL/],
    [
      'a lone surrogate in a header name',
      { headers: { [`x-${HIGH}`]: 'v' } },
      /headers\["x-\\ud83d"\] \(the name\): contains an unpaired/,
    ],
    ['a NUL in the correlation id', { correlationId: 'c\0' }, /correlationId: contains a NUL/],
  ];

  const count = async () =>
    Number((await sql<{ n: string }>`SELECT count(*) AS n FROM shardrelay.outbox`.execute(t.db)).rows[0]?.n);

  let orderId = 0;
  for (const [name, fields, message] of cases) {
    it(`${name}: InvalidEventError naming the field; the caller's transaction still commits`, async () => {
      const before = await count();
      const id = ++orderId;
      await t.db.transaction().execute(async (trx) => {
        await sql`INSERT INTO orders VALUES (${id})`.execute(trx);
        await assert.rejects(
          enqueue(trx, [
            { topic: 'ok', payload: { fine: true } },
            { topic: 't', payload: {}, ...fields },
          ]),
          (error: unknown) => {
            assert.ok(error instanceof InvalidEventError, String(error));
            assert.match(error.message, /^event #1 is invalid: /);
            assert.match(error.message, message);
            assert.match(error.fix ?? '', /remove NUL characters and unpaired UTF-16 surrogates/);
            return true;
          },
        );
        // The transaction is still usable: PostgreSQL saw no failed statement.
        await enqueue(trx, [{ topic: 'after.refusal', payload: { id } }]);
      });
      const order = await sql`SELECT id FROM orders WHERE id = ${id}`.execute(t.db);
      assert.equal(order.rows.length, 1, 'the business change committed');
      assert.equal(await count(), before + 1, 'only the event enqueued after the refusal was written');
    });
  }

  it('refuses the same through a pg client, leaving its transaction usable', async () => {
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      await assert.rejects(
        enqueue(client, [{ topic: 't', payload: { items } }]),
        /payload\.items\[3\]\.name: contains a NUL/,
      );
      await client.query('SELECT 1');
      await client.query('COMMIT');
    } finally {
      // Destroyed, not returned: should the test fail, its connection is inside an aborted transaction.
      client.release(true);
    }
  });

  it('stores what only looks similar exactly: escaped text, paired surrogates, other control characters', async () => {
    const payload = { text: '\\u0000 and \\ud83d are plain text', emoji: '😀', tab: 'a\tb\u0001' };
    const [row] = await enqueue(t.db, [
      { topic: 'fine', payload, key: 'k😀', headers: { h: 'v😀' }, correlationId: 'c😀' },
    ]);
    const stored = await t.db
      .selectFrom('shardrelay.outbox')
      .select(['payload', 'key', 'headers', 'correlation_id'])
      .where('id', '=', row?.id ?? '0')
      .executeTakeFirstOrThrow();
    assert.deepEqual(stored.payload, payload);
    assert.equal(stored.key, 'k😀');
    assert.deepEqual(stored.headers, { h: 'v😀' });
    assert.equal(stored.correlation_id, 'c😀');
  });
});
