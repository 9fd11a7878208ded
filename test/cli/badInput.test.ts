import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue, type OutboxEvent } from '../../src/enqueue.js';
import { InvalidEventError } from '../../src/errors.js';
import { runCli } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('bad input', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('bad_input');
  });
  after(() => t.close());

  const outboxCount = async () =>
    Number((await sql<{ n: string }>`SELECT count(*) AS n FROM shardrelay.outbox`.execute(t.db)).rows[0]?.n);

  const circular: Record<string, unknown> = {};
  circular.self = circular;
  const cases: [string, OutboxEvent, RegExp][] = [
    ['no topic', { payload: {} } as unknown as OutboxEvent, /event #1 is invalid: topic: topic is required/],
    ['a topic with spaces', { topic: 'has space', payload: {} }, /topic must be 1-200 characters/],
    ['a payload with a cycle', { topic: 't', payload: circular }, /payload is not JSON-serialisable/],
    ['a BigInt payload', { topic: 't', payload: { n: 10n } }, /payload is not JSON-serialisable/],
    ['an undefined payload', { topic: 't', payload: undefined }, /payload is missing/],
    [
      'a payload over the maximum',
      { topic: 't', payload: 'x'.repeat(2000) },
      /payload is 2002 bytes, over the maximum of 1000/,
    ],
    ['an unknown field', { topic: 't', payload: {}, prio: 1 } as unknown as OutboxEvent, /Unrecognized key/],
  ];
  for (const [name, bad, message] of cases) {
    it(`enqueue refuses ${name} with a clear error and writes nothing of the call`, async () => {
      const before = await outboxCount();
      await assert.rejects(
        enqueue(t.db, [{ topic: 'ok', payload: { fine: true } }, bad], { maxPayloadBytes: 1000 }),
        (error: unknown) => {
          assert.ok(error instanceof InvalidEventError);
          assert.match(error.message, message);
          assert.ok(error.fix, 'the error says how to fix it');
          return true;
        },
      );
      assert.equal(await outboxCount(), before);
    });
  }

  it('enqueue inside a rolled-back transaction leaves nothing behind', async () => {
    const before = await outboxCount();
    await assert.rejects(
      t.db.transaction().execute(async (trx) => {
        await enqueue(trx, [{ topic: 'orders.created', payload: { id: 1 } }]);
        throw new Error('business change failed');
      }),
      /business change failed/,
    );
    assert.equal(await outboxCount(), before);
  });

  const badConfigs: [string, string[], NodeJS.ProcessEnv, RegExp][] = [
    [
      'an unknown sink',
      ['run', '--sink', 'mqtt'],
      {},
      /invalid setting --sink \/ SHARDRELAY_SINK: mqtt[\s\S]*fix: use one of: pgboss, null/,
    ],
    [
      'a shard count of 0',
      ['shards', 'new-migration', '0'],
      {},
      /shard count: 0 is not a whole number from 1 to 1024[\s\S]*fix:/,
    ],
    [
      'a batch size of 0',
      ['run', '--batch-size', '0'],
      {},
      /--batch-size \/ SHARDRELAY_BATCH_SIZE[\s\S]*fix: use a whole number from 1 to 10000/,
    ],
    [
      'a lane predicate on a foreign column',
      ['run', '--lane-predicate', '{"column":"password","op":"=","value":1}'],
      {},
      /lane predicate refused at column/,
    ],
    [
      'no database URL',
      ['run'],
      { DATABASE_URL: '' },
      /--database-url \/ DATABASE_URL: is required[\s\S]*fix: set DATABASE_URL/,
    ],
    [
      'an unreachable database',
      ['run', '--sink', 'null'],
      { DATABASE_URL: 'postgres://shardrelay:secret@127.0.0.1:1/nowhere' },
      /cannot reach PostgreSQL at postgres:\/\/shardrelay:\*\*\*@127\.0\.0\.1:1\/nowhere[\s\S]*fix: check DATABASE_URL/,
    ],
    [
      'an unreachable broker',
      ['run', '--sink', 'rabbitmq', '--amqp-url', 'amqp://shardrelay:secret@127.0.0.1:1/'],
      {},
      /cannot connect to RabbitMQ at amqp:\/\/shardrelay:\*\*\*@127\.0\.0\.1:1\/[\s\S]*fix: check that RabbitMQ is running and reachable/,
    ],
    [
      'a malformed broker URL',
      ['run', '--sink', 'jetstream', '--nats-url', 'http://127.0.0.1:4222'],
      {},
      /--nats-url \/ NATS_URL: http:\/\/127\.0\.0\.1:4222 \(must be a URL starting with nats:\/\/ or tls:\/\/\)/,
    ],
    [
      'a STOMP destination without {topic}',
      ['run', '--sink', 'stomp', '--stomp-destination', '/queue/orders'],
      {},
      /--stomp-destination \/ SHARDRELAY_STOMP_DESTINATION: \/queue\/orders \(must contain \{topic\}\)[\s\S]*fix: give a destination template containing \{topic\}/,
    ],
    [
      'an unreachable STOMP broker',
      ['run', '--sink', 'stomp', '--stomp-url', 'stomp://shardrelay:secret@127.0.0.1:1'],
      {},
      // The sink's own message and fix reach the operator (not the generic "could not start").
      /cannot connect to STOMP at stomp:\/\/shardrelay:\*\*\*@127\.0\.0\.1:1[\s\S]*fix: check that the broker is running/,
    ],
    [
      'an unreachable database for migrate',
      ['migrate'],
      { DATABASE_URL: 'postgres://127.0.0.1:1/nowhere' },
      /cannot reach PostgreSQL[\s\S]*fix:/,
    ],
  ];
  for (const [name, args, env, message] of badConfigs) {
    it(`the CLI exits 2 on ${name}, naming the fix`, { timeout: 90_000 }, async () => {
      const result = await runCli(args, { DATABASE_URL: t.url, ...env });
      assert.equal(result.code, 2, `exit code (stderr: ${result.stderr})`);
      assert.match(result.stderr, message);
      assert.doesNotMatch(result.stderr, /secret/, 'no password in the message');
    });
  }
});
