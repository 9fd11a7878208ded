/**
 * An application as a team would write it, type-checked and run in an empty project that installed
 * the packed shardrelay tarball (test/package/check.sh). It uses its own kysely (another version
 * than shardrelay's, so two copies are installed) and its own pg, and enqueues through each kind
 * of executor `enqueue` accepts. Exits non-zero on the first broken promise.
 */
import assert from 'node:assert/strict';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import {
  InvalidEventError,
  ShardRelayError,
  confirmed,
  enqueue,
  loadConfig,
  migrate,
  retryable,
  startReplica,
  type OutboxEvent,
  type OutboxMessage,
  type SendOutcome,
  type Sink,
} from 'shardrelay';

const url = process.env.DATABASE_URL;
if (!url) throw new Error('set DATABASE_URL');

interface AppDatabase {
  orders: { id: number; customer: string };
}

const pool = new pg.Pool({ connectionString: url, max: 4 });
const db = new Kysely<AppDatabase>({ dialect: new PostgresDialect({ pool }) });
const outboxRows = async (topic: string): Promise<number> =>
  Number(
    (await pool.query('SELECT count(*) AS n FROM shardrelay.outbox WHERE topic = $1', [topic])).rows[0].n,
  );
const event = (topic: string, n: number): OutboxEvent => ({ topic, payload: { n }, key: `k${n}` });

// `shardrelay migrate` ran before this; from code it finds nothing left to do.
assert.deepEqual((await migrate({ databaseUrl: url })).applied, []);

await sql`CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, customer text NOT NULL)`.execute(db);

// The application's Kysely instance, and a transaction with the business change.
const [fromKysely] = await enqueue(db, [event('app.kysely', 1)]);
assert.match(fromKysely?.eventId ?? '', /^[0-9a-f-]{36}$/);
await db.transaction().execute(async (trx) => {
  await trx.insertInto('orders').values({ id: 1, customer: 'c1' }).execute();
  await enqueue(trx, [event('app.kysely.trx', 1), event('app.kysely.trx', 2)]);
});
assert.equal(await outboxRows('app.kysely'), 1);
assert.equal(await outboxRows('app.kysely.trx'), 2);

// A rolled-back business change leaves no event behind.
await assert.rejects(
  db.transaction().execute(async (trx) => {
    await trx.insertInto('orders').values({ id: 2, customer: 'c2' }).execute();
    await enqueue(trx, [event('app.rolledback', 1)]);
    throw new Error('business rule says no');
  }),
  /business rule says no/,
);
assert.equal(await outboxRows('app.rolledback'), 0);

// More rows than one statement holds, through a Kysely instance: one transaction, all or nothing.
await enqueue(
  db,
  Array.from({ length: 2500 }, (_, i) => event('app.kysely.many', i)),
);
assert.equal(await outboxRows('app.kysely.many'), 2500);

// A pg Pool, a PoolClient in a transaction, and a plain Client.
await enqueue(pool, [event('app.pool', 1)]);
await enqueue(
  pool,
  Array.from({ length: 1500 }, (_, i) => event('app.pool.many', i)),
);
const poolClient = await pool.connect();
try {
  await poolClient.query('BEGIN');
  await poolClient.query(`INSERT INTO orders VALUES (3, 'c3')`);
  await enqueue(poolClient, [event('app.poolclient', 1)]);
  await poolClient.query('COMMIT');
} finally {
  poolClient.release();
}
const client = new pg.Client({ connectionString: url });
await client.connect();
await enqueue(client, [event('app.client', 1)]);
await client.end();
assert.equal(await outboxRows('app.pool'), 1);
assert.equal(await outboxRows('app.pool.many'), 1500);
assert.equal(await outboxRows('app.poolclient'), 1);
assert.equal(await outboxRows('app.client'), 1);

// Bad input: the package's error classes, with the fix.
await assert.rejects(enqueue(pool, [{ topic: 'has space', payload: {} }]), (error: unknown) => {
  assert.ok(error instanceof InvalidEventError && error instanceof ShardRelayError);
  assert.ok(error.fix);
  return true;
});

// A custom sink type-checks against the public interface.
const sink: Sink = {
  name: 'custom',
  async start() {},
  async sendBatch(messages: readonly OutboxMessage[]): Promise<SendOutcome[]> {
    return messages.map((m) => (m.topic === 'retry.me' ? retryable('not now') : confirmed));
  },
  async close() {},
};
assert.equal(sink.name, 'custom');

// The relay started from code with a sink of the application's own: every event reaches it.
const delivered = new Set<string>();
const recording: Sink = {
  name: 'recording',
  async start() {},
  async sendBatch(messages) {
    for (const m of messages) delivered.add(m.eventId);
    return messages.map(() => confirmed);
  },
  async close() {},
};
const total = Number((await pool.query('SELECT count(*) AS n FROM shardrelay.outbox')).rows[0].n);
const relay = await startReplica({
  config: loadConfig({ databaseUrl: url, canaryIntervalSeconds: 0, replicaId: 'app' }),
  sink: recording,
});
await relay.whenDrained();
assert.deepEqual(await relay.stop(), { clean: true });
assert.equal(delivered.size, total);

// Left for `shardrelay run` (the installed bin) to deliver.
await enqueue(
  pool,
  Array.from({ length: 100 }, (_, i) => event('app.for.cli', i)),
);

await db.destroy();
console.log(
  `app: enqueue through Kysely (instance, transaction) and pg (Pool, PoolClient, Client), migrate, a relay with its own sink (${delivered.size} events) ok`,
);
