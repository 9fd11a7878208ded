/**
 * The ordering mode in the database (migration 0012, src/relay/orderingMode.ts): the views and
 * `status` count a row in the shard the claim takes it from under the recorded mode, a relay
 * records its mode at start and refuses to start while replicas of the other mode run, and the
 * migration runs on a populated outbox without waiting on the previous release's transactions.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, beforeEach, describe, it } from 'node:test';
import { Migrator, sql, type Kysely } from 'kysely';
import pg from 'pg';
import { formatStatus } from '../../src/cli/formatStatus.js';
import { createDatabase, createPool } from '../../src/db/connection.js';
import { migrateToLatest, ShardRelayMigrationProvider } from '../../src/db/migrate.js';
import type { Database } from '../../src/db/schema.js';
import { enqueue } from '../../src/enqueue.js';
import { ConfigError } from '../../src/errors.js';
import { silentLogger } from '../../src/logger.js';
import {
  holdOrderingMode,
  ORDERING_LOCK_CLASS,
  type OrderingModeHold,
} from '../../src/relay/orderingMode.js';
import { readStatus } from '../../src/status.js';
import { startRelay, type Relay } from '../../src/wiring/relay.js';
import { testConfig } from '../support/relayConfig.js';
import {
  assertNoLeakedConnections,
  createEmptyTestDatabase,
  createTestDatabase,
  type TestDatabase,
} from '../support/testDatabase.js';

const N = 4;

/** The rule of the claim, computed here independently: first 32 bits of the key's MD5, or the id. */
function expectedShard(id: string, key: string | null, mode: 'off' | 'key'): number {
  if (mode === 'key' && key !== null)
    return Number(BigInt(`0x${createHash('md5').update(key).digest('hex').slice(0, 8)}`) % BigInt(N));
  return Number(BigInt(id) % BigInt(N));
}

describe('per-shard counts follow the recorded ordering mode', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('ordering_mode_counts');
    await sql`SELECT shardrelay.set_shard_count(${N})`.execute(t.db);
    // Keyed and unkeyed rows, pending and dead, with keys picked so that for most keyed rows
    // key_hash(key) % N differs from id % N (checked below: the two modes must give other counts).
    await enqueue(
      t.db,
      Array.from({ length: 40 }, (_, i) => ({
        topic: 'orders',
        payload: { i },
        ...(i % 4 === 3 ? {} : { key: `customer-${i % 7}` }),
      })),
    );
    await sql`UPDATE shardrelay.outbox SET status = 'dead', last_error = 'refused'
               WHERE id IN (SELECT id FROM shardrelay.outbox ORDER BY id LIMIT 6)`.execute(t.db);
  });
  after(() => t.close());

  async function expected(mode: 'off' | 'key') {
    const rows = await t.db.selectFrom('shardrelay.outbox').select(['id', 'key', 'status']).execute();
    const pending = Array<number>(N).fill(0);
    const dead = Array<number>(N).fill(0);
    for (const r of rows) {
      const shard = expectedShard(String(r.id), r.key, mode);
      if (r.status === 'pending') pending[shard] = (pending[shard] ?? 0) + 1;
      else dead[shard] = (dead[shard] ?? 0) + 1;
    }
    return { pending, dead, rows };
  }

  for (const mode of ['key', 'off'] as const) {
    it(`ordering ${mode}: shardrelay.shards, lag, events and status`, async () => {
      await sql`UPDATE shardrelay.ordering_mode SET mode = ${mode}`.execute(t.db);
      const want = await expected(mode);

      const view = await sql<{ shard: number; pending: string; ordering: string }>`
        SELECT shard, pending, ordering FROM shardrelay.shards ORDER BY shard`.execute(t.db);
      assert.deepEqual(
        view.rows.map((r) => Number(r.pending)),
        want.pending,
      );
      assert.ok(view.rows.every((r) => r.ordering === mode));

      const lag = await sql<{ shard: number; pending: string }>`
        SELECT shard, sum(pending_rows) AS pending FROM shardrelay.lag GROUP BY shard ORDER BY shard`.execute(
        t.db,
      );
      assert.deepEqual(
        lag.rows.map((r) => Number(r.pending)),
        want.pending,
      );

      const events = await sql<{ id: string; shard: number }>`
        SELECT id, shard FROM shardrelay.events ORDER BY id`.execute(t.db);
      for (const e of events.rows) {
        const row = want.rows.find((r) => String(r.id) === String(e.id));
        assert.equal(e.shard, expectedShard(String(e.id), row?.key ?? null, mode), `events row ${e.id}`);
      }

      const status = await readStatus(t.db);
      assert.equal(status.ordering, mode);
      assert.deepEqual(
        status.shards.map((s) => s.pending),
        want.pending,
      );
      assert.deepEqual(
        status.shards.map((s) => s.dead),
        want.dead,
      );
      assert.match(formatStatus(status), new RegExp(`^shards: ${N} \\(generation \\d+, ordering ${mode}\\)`));
    });
  }

  it('the two modes give different counts on these rows (the test above is not vacuous)', async () => {
    const [on, off] = [await expected('key'), await expected('off')];
    assert.notDeepEqual(on.pending, off.pending);
  });
});

describe('the insert trigger announces each row in the shard it is claimed from (migration 0013)', () => {
  let t: TestDatabase;
  let listener: pg.Client;
  const heard: string[] = [];
  let onNotice: (() => void) | undefined;
  const role = `producer_${randomBytes(4).toString('hex')}`;
  const rolePassword = randomBytes(8).toString('hex');
  before(async () => {
    t = await createTestDatabase('insert_notify');
    await sql`SELECT shardrelay.set_shard_count(${N})`.execute(t.db);
    listener = new pg.Client({ connectionString: t.url, application_name: 'test-listener' });
    await listener.connect();
    listener.on('notification', (n) => {
      heard.push(n.payload ?? '');
      onNotice?.();
    });
    await listener.query('LISTEN shardrelay_outbox');
    // A producer as applications have them: it may insert into the outbox and nothing more.
    await sql.raw(`CREATE ROLE ${role} LOGIN PASSWORD '${rolePassword}'`).execute(t.db);
    for (const grant of [
      `GRANT CONNECT ON DATABASE ${t.name} TO ${role}`,
      `GRANT USAGE ON SCHEMA shardrelay TO ${role}`,
      `GRANT INSERT ON shardrelay.outbox TO ${role}`,
      `GRANT USAGE ON ALL SEQUENCES IN SCHEMA shardrelay TO ${role}`,
    ])
      await sql.raw(grant).execute(t.db);
  });
  after(async () => {
    await listener.end();
    await sql.raw(`DROP OWNED BY ${role}`).execute(t.db);
    await t.close();
    const admin = new URL(t.url);
    admin.pathname = '/postgres';
    const client = new pg.Client(admin.toString());
    await client.connect();
    await client.query(`DROP ROLE IF EXISTS ${role}`);
    await client.end();
  });

  /** Inserts one row with plain SQL on `db` and returns it with the payload of its NOTIFY. */
  async function insertAndHear(db: Kysely<Database>, key: string | null) {
    const before = heard.length;
    const arrived = new Promise<void>((resolve) => {
      onNotice = () => heard.length > before && resolve();
    });
    await sql`INSERT INTO shardrelay.outbox (topic, payload, key) VALUES ('t', '{}', ${key})`.execute(db);
    await arrived;
    // The producer role cannot read the outbox: the row is looked up as the owner.
    const row = await t.db
      .selectFrom('shardrelay.outbox')
      .select(['id', 'key'])
      .orderBy('id', 'desc')
      .limit(1)
      .executeTakeFirstOrThrow();
    return { id: String(row.id), key: row.key, payload: heard.at(-1) };
  }

  for (const mode of ['off', 'key'] as const) {
    it(`ordering ${mode}: a keyed row's NOTIFY names its one shard, as does an unkeyed row's`, async () => {
      await sql`UPDATE shardrelay.ordering_mode SET mode = ${mode}`.execute(t.db);
      let discriminating = 0;
      for (const key of ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', null]) {
        const row = await insertAndHear(t.db, key);
        assert.equal(row.payload, String(expectedShard(row.id, row.key, mode)), `row ${row.id} key ${key}`);
        if (key !== null && expectedShard(row.id, key, 'off') !== expectedShard(row.id, key, 'key'))
          discriminating += 1;
      }
      // Rows whose two candidate shards differ: the ones that tell the old trigger from the new.
      assert.ok(discriminating > 0, 'some keyed row has two different candidate shards');
    });
  }

  it('an insert is never JIT-compiled because of the trigger (its plans, read with auto_explain)', async () => {
    // The trigger's statements once joined the outbox rows to two one-row tables without statistics:
    // estimated at millions of rows, every insert was JIT-compiled (190-250 ms for 25 rows).
    // auto_explain reports each nested statement's plan, JIT included, as a LOG message; with
    // jit_above_cost at 0 any statement that may use JIT would.
    const client = new pg.Client({ connectionString: t.url, application_name: 'test-auto-explain' });
    await client.connect();
    const plans: string[] = [];
    client.on('notice', (notice) => plans.push(notice.message ?? ''));
    try {
      await client.query(`LOAD 'auto_explain'`);
      for (const setting of [
        'auto_explain.log_min_duration = 0',
        'auto_explain.log_nested_statements = on',
        'auto_explain.log_analyze = on',
        'client_min_messages = log',
        'jit_above_cost = 0',
      ])
        await client.query(`SET ${setting}`);
      await client.query(`INSERT INTO shardrelay.outbox (topic, payload, key)
                          SELECT 't', jsonb_build_object('n', g), 'k' || g FROM generate_series(1, 25) AS g`);
    } finally {
      await client.end();
    }
    const nested = plans.filter((plan) => /inserted/.test(plan));
    assert.ok(nested.length > 0, `auto_explain showed the trigger's statements:\n${plans.join('\n---\n')}`);
    assert.deepEqual(
      nested.filter((plan) => /JIT:/.test(plan)),
      [],
      'a statement of the trigger was JIT-compiled',
    );
  });

  it('a producer role that may only insert gets its rows announced (the trigger reads the config as its owner); enqueue needs two SELECTs more', async () => {
    await sql`UPDATE shardrelay.ordering_mode SET mode = 'off'`.execute(t.db);
    const url = new URL(t.url);
    url.username = role;
    url.password = rolePassword;
    const pool = createPool({ connectionString: url.toString(), max: 1, applicationName: 'test-producer' });
    const producer = createDatabase(pool);
    try {
      const row = await insertAndHear(producer, 'customer-1');
      assert.equal(row.payload, String(expectedShard(row.id, row.key, 'off')));
      // `enqueue` with the two further grants the README names: RETURNING reads the outbox, and an
      // event id is looked up in the sent record.
      await sql.raw(`GRANT SELECT ON shardrelay.outbox, shardrelay.sent_event TO ${role}`).execute(t.db);
      const eventId = '0190a6e0-0000-7000-8000-000000000001';
      const first = await enqueue(producer, [{ topic: 't', payload: {}, eventId }]);
      const again = await enqueue(producer, [{ topic: 't', payload: {}, eventId }]);
      assert.deepEqual([first.length, first.skipped, again.length, again.skipped], [1, [], 0, [eventId]]);
    } finally {
      await producer.destroy();
    }
  });
});

describe('a relay records its ordering mode and refuses the other one while replicas run', () => {
  let t: TestDatabase;
  const relays: Relay[] = [];
  const holds: OrderingModeHold[] = [];
  before(async () => {
    t = await createTestDatabase('ordering_mode_start');
  });
  beforeEach(async () => {
    await Promise.all(relays.splice(0).map((r) => r.stop()));
    await Promise.all(holds.splice(0).map((h) => h.close()));
    await sql`DELETE FROM shardrelay.replica`.execute(t.db);
    await sql`UPDATE shardrelay.ordering_mode SET mode = 'off', changed_at = NULL, changed_by = NULL`.execute(
      t.db,
    );
  });
  after(async () => {
    await Promise.all(relays.splice(0).map((r) => r.stop()));
    await Promise.all(holds.splice(0).map((h) => h.close()));
    await t.close();
  });

  const start = async (replicaId: string, ordering: 'off' | 'key') => {
    const relay = await startRelay({ config: testConfig(t.url, { replicaId, ordering }) });
    relays.push(relay);
    return relay;
  };
  const recorded = async () =>
    (
      await t.db
        .selectFrom('shardrelay.ordering_mode')
        .select(['mode', 'changed_by'])
        .executeTakeFirstOrThrow()
    ).mode;

  it('the first replica records its mode; one of the other mode is refused with the fix; after a stop the mode changes', async () => {
    await start('a', 'key');
    assert.equal(await recorded(), 'key');
    await start('b', 'key'); // the same mode joins

    await assert.rejects(start('c', 'off'), (error: unknown) => {
      assert.ok(error instanceof ConfigError, String(error));
      assert.equal(error.code, 'CONFIG_INVALID');
      assert.match(error.message, /started with ordering off, but a replica with ordering key is running/);
      assert.match(error.message, /two modes at once/);
      assert.match(error.fix ?? '', /start this replica with --ordering key/);
      assert.match(error.fix ?? '', /stop every replica first/);
      return true;
    });
    assert.equal(await recorded(), 'key', 'the refused replica changed nothing');

    await Promise.all(relays.splice(0).map((r) => r.stop()));
    await start('c', 'off');
    const row = await t.db
      .selectFrom('shardrelay.ordering_mode')
      .select(['mode', 'changed_by', 'changed_at'])
      .executeTakeFirstOrThrow();
    assert.equal(row.mode, 'off');
    assert.equal(row.changed_by, 'c');
    assert.ok(row.changed_at);
  });

  it('a live replica of the previous release (no lock, mode off) refuses a replica with ordering key', async () => {
    // What a replica of the previous release leaves: a membership row with a fresh heartbeat.
    await sql`
      INSERT INTO shardrelay.replica (instance, replica_id, hostname, pid, lease_timeout_seconds, generation)
      VALUES (gen_random_uuid(), 'old-release', 'host-1', 4242, 10,
              (SELECT generation FROM shardrelay.shard_config))`.execute(t.db);
    await assert.rejects(start('new', 'key'), (error: unknown) => {
      assert.ok(error instanceof ConfigError, String(error));
      assert.match(error.message, /records ordering off and replicas are running/);
      assert.match(error.message, /old-release \(host-1, pid 4242\)/);
      return true;
    });
    // The same mode as the previous release is what a rolling upgrade starts with: accepted.
    await start('new', 'off');
    await Promise.all(relays.splice(0).map((r) => r.stop()));
    // Once the old replica is gone, the mode may change.
    await sql`DELETE FROM shardrelay.replica`.execute(t.db);
    await start('new', 'key');
    assert.equal(await recorded(), 'key');
  });

  it('a replica whose ordering session is cut takes its lock again, and still refuses the other mode', async () => {
    await start('a', 'key');
    const held = async () =>
      (
        await sql<{ n: number }>`
          SELECT count(*)::int AS n FROM pg_locks
           WHERE locktype = 'advisory' AND granted AND classid = ${ORDERING_LOCK_CLASS}::oid
             AND objid = 1 AND objsubid = 2
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`.execute(t.db)
      ).rows[0]?.n;
    assert.equal(await held(), 1);
    await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'shardrelay-ordering'`.execute(t.db);
    const deadline = Date.now() + 20_000;
    let seenGone = false;
    for (;;) {
      const n = await held();
      if (n === 0) seenGone = true;
      if (n === 1 && seenGone) break;
      assert.ok(Date.now() < deadline, 'the lock was not taken again within 20 s');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await assert.rejects(start('b', 'off'), ConfigError);
  });

  it('of two replicas of different modes starting at once, never both get through', async () => {
    for (let round = 0; round < 8; round++) {
      const tries = await Promise.allSettled(
        (['key', 'off'] as const).map((mode) =>
          holdOrderingMode({ connectionString: t.url, mode, replicaId: mode, logger: silentLogger }),
        ),
      );
      const through = tries.filter((r) => r.status === 'fulfilled');
      for (const r of through) holds.push(r.value);
      assert.ok(through.length <= 1, `round ${round}: both modes got through`);
      for (const r of tries)
        if (r.status === 'rejected') assert.ok(r.reason instanceof ConfigError, String(r.reason));
      await Promise.all(holds.splice(0).map((h) => h.close()));
    }
  });
});

describe('replicas of one mode starting at once', () => {
  let t: TestDatabase;
  const holds: OrderingModeHold[] = [];
  before(async () => {
    t = await createTestDatabase('ordering_same_mode');
  });
  after(async () => {
    await Promise.all(holds.splice(0).map((h) => h.close()));
    await t.close();
  });

  it('all get through, every round (a refused one would exit 2 at start)', async () => {
    for (let round = 0; round < 20; round++) {
      const tries = await Promise.allSettled(
        ['a', 'b', 'c'].map((replicaId) =>
          holdOrderingMode({ connectionString: t.url, mode: 'off', replicaId, logger: silentLogger }),
        ),
      );
      for (const r of tries) if (r.status === 'fulfilled') holds.push(r.value);
      const refused = tries.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
      assert.deepEqual(refused, [], `round ${round}`);
      await Promise.all(holds.splice(0).map((h) => h.close()));
    }
  });
});

describe('migration 0012 on a populated outbox, during a rolling upgrade', () => {
  let name: string;
  let url: string;
  let db: Kysely<Database>;
  before(async () => {
    ({ name, url } = await createEmptyTestDatabase('ordering_mode_migration'));
    db = createDatabase(createPool({ connectionString: url, max: 4, applicationName: 'test' }));
  });
  after(async () => {
    await db.destroy();
    await assertNoLeakedConnections(name);
  });

  it(
    'does not wait for an open producer transaction, keeps every row, and records off',
    { timeout: 60_000 },
    async () => {
      const migrator = new Migrator({
        db: db as unknown as Kysely<unknown>,
        provider: new ShardRelayMigrationProvider(undefined),
        migrationTableSchema: 'shardrelay',
        migrationTableName: 'migration',
        migrationLockTableName: 'migration_lock',
        allowUnorderedMigrations: true,
      });
      const to0011 = await migrator.migrateTo('0011_one_clock');
      assert.equal(to0011.error, undefined);
      await sql`
      INSERT INTO shardrelay.outbox (topic, key, payload)
      SELECT 'upgrade', CASE WHEN g % 2 = 0 THEN 'k' || (g % 13) END, jsonb_build_object('n', g)
        FROM generate_series(1, 5000) AS g`.execute(db);

      // A producer of the previous release mid-transaction: its insert holds locks on the outbox and
      // (through the insert trigger) on shard_config until it commits.
      const producer = new pg.Client(url);
      await producer.connect();
      await producer.query('BEGIN');
      await producer.query(`INSERT INTO shardrelay.outbox (topic, payload) VALUES ('upgrade', '{}')`);
      try {
        const migrated = await Promise.race([
          migrateToLatest(db),
          new Promise<'waited'>((resolve) => setTimeout(() => resolve('waited'), 20_000).unref()),
        ]);
        assert.notEqual(migrated, 'waited', 'the migration waited on the open producer transaction');
        assert.ok(migrated !== 'waited' && migrated.applied.includes('0012_ordering_mode'));
      } finally {
        await producer.query('COMMIT');
        await producer.end();
      }
      const mode = await db.selectFrom('shardrelay.ordering_mode').selectAll().executeTakeFirstOrThrow();
      assert.equal(mode.mode, 'off');
      assert.equal(mode.changed_at, null);
      const total = await sql<{ n: number; pending: number }>`
      SELECT count(*)::int AS n, (SELECT sum(pending)::int FROM shardrelay.shards) AS pending
        FROM shardrelay.outbox`.execute(db);
      assert.deepEqual(total.rows[0], { n: 5001, pending: 5001 });
    },
  );
});
