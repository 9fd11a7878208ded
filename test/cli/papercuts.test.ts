/**
 * The CLI's rough edges a new user met first, each with its message and exit code (README, exit
 * codes): status on an empty database, a metrics port in use, defaults in --help, gone replicas in
 * status, a shard whose owner stopped heartbeating, and the JetStream subject prefix and overlap.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { StorageType, connect } from 'nats';
import pg from 'pg';
import { enqueue } from '../../src/enqueue.js';
import { formatStatus } from '../../src/cli/formatStatus.js';
import { readStatus, type RelayStatus } from '../../src/status.js';
import { NATS_URL, hostAndPort, requireBroker, uniqueName } from '../support/brokers.js';
import { runCli, waitFor } from '../support/cli.js';
import { ReplicaProcesses } from '../support/replicaHarness.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const EXIT_BAD_CONFIG = 2;
const nats = hostAndPort(NATS_URL, 4222);
const skipNats = await requireBroker('NATS', nats.host, nats.port);

/** An empty database (no shardrelay schema), dropped afterwards. */
async function emptyDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const admin = process.env.SHARDRELAY_TEST_ADMIN_URL as string;
  const name = uniqueName('t_empty')
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, '_');
  const run = async (statement: string) => {
    const client = new pg.Client(admin);
    await client.connect();
    await client.query(statement).finally(() => client.end());
  };
  await run(`CREATE DATABASE ${name}`);
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

describe('CLI papercuts', () => {
  let t: TestDatabase;
  let replicas: ReplicaProcesses;
  before(async () => {
    t = await createTestDatabase('papercuts');
    replicas = new ReplicaProcesses({ DATABASE_URL: t.url }, [
      '--canary-interval-seconds',
      '0',
      '--sink',
      'null',
    ]);
  });
  after(async () => {
    await replicas.killAll();
    await t.close();
  });

  it('status and run on a database without the schema: exit 2, "run shardrelay migrate", no stack trace', async () => {
    const empty = await emptyDatabase();
    try {
      for (const args of [['status'], ['run', '--sink', 'null']]) {
        const result = await runCli(args, { DATABASE_URL: empty.url });
        assert.equal(result.code, EXIT_BAD_CONFIG, `${args.join(' ')}: ${result.stderr}`);
        assert.match(
          result.stderr,
          /this database has no shardrelay schema\n {2}fix: run `shardrelay migrate`/,
        );
        assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
      }
      // An older schema: a built-in migration missing is named.
      await runCli(['migrate'], { DATABASE_URL: empty.url });
      const client = new pg.Client(empty.url);
      await client.connect();
      await client.query(`DELETE FROM shardrelay.migration WHERE name = '0005_complete_batch_function'`);
      await client.end();
      const older = await runCli(['status'], { DATABASE_URL: empty.url });
      assert.equal(older.code, EXIT_BAD_CONFIG, older.stderr);
      assert.match(
        older.stderr,
        /older than this version of shardrelay: 0005_complete_batch_function not applied/,
      );
    } finally {
      await empty.drop();
    }
  });

  it('a metrics port in use stops `run` before anything starts, with the fix', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const result = await runCli(['run', '--sink', 'pgboss', '--metrics-port', String(port)], {
        DATABASE_URL: t.url,
      });
      assert.equal(result.code, EXIT_BAD_CONFIG, result.stderr);
      assert.match(
        result.stderr,
        new RegExp(
          `--metrics-port / SHARDRELAY_METRICS_PORT: port ${port} on 127.0.0.1 is already in use\\n  fix: stop what listens there`,
        ),
      );
      assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
      // Nothing started: no membership row, no pg-boss schema.
      const members = await t.db.selectFrom('shardrelay.replica').select('instance').execute();
      assert.equal(members.length, 0);
      const { rows } = await sql<{ n: string }>`
        SELECT count(*) AS n FROM pg_namespace WHERE nspname = 'pgboss'`.execute(t.db);
      assert.equal(Number(rows[0]?.n), 0, 'the sink was never started');
    } finally {
      blocker.close();
    }
  });

  it('--help shows the default of every option', async () => {
    const run = await runCli(['run', '--help']);
    assert.equal(run.code, 0);
    for (const expected of [
      /--sink <value>\s+\(env\s+SHARDRELAY_SINK;\s+default: pgboss\)/,
      /--batch-size <value>\s+\(env\s+SHARDRELAY_BATCH_SIZE;\s+default: 1000\)/,
      /--replica-id <value>\s+\(env\s+SHARDRELAY_REPLICA_ID;\s+default:\s+hostname-pid\)/,
      /--metrics-port <value>\s+\(env\s+SHARDRELAY_METRICS_PORT;\s+default:\s+unset\)/,
      /--nats-subject-prefix <value>\s+\(env\s+SHARDRELAY_NATS_SUBJECT_PREFIX;\s+default:\s+shardrelay\)/,
    ]) {
      assert.match(run.stdout, expected);
    }
    const top = await runCli(['--help']);
    assert.match(top.stdout, /--database-url <value>\s+\(env DATABASE_URL; default: required\)/);
    const status = await runCli(['status', '--help']);
    assert.match(status.stdout, /--hide-gone-after <seconds>[\s\S]*\(default: 60\)/);
    const migrate = await runCli(['migrate', '--help']);
    assert.match(migrate.stdout, /default:\s+.\/shardrelay-migrations when it exists/);
  });

  it(
    'status leaves out replicas gone longer than --hide-gone-after, and says so',
    { timeout: 60_000 },
    async () => {
      const gone = replicas.start('papercut-gone', 'gone', ['--lease-timeout-seconds', '2']);
      await replicas.waitFor('the replica heartbeats', async () =>
        (await t.db.selectFrom('shardrelay.replica').select('replica_id').execute()).some(
          (r) => r.replica_id === 'papercut-gone',
        ),
      );
      replicas.expectExit(gone);
      gone.child.kill('SIGKILL');
      await gone.exited;
      await waitFor('the replica has been gone over 3 s', async () => {
        const status = await readStatus(t.db);
        const r = status.replicas.find((x) => x.replicaId === 'papercut-gone');
        return r !== undefined && !r.alive && r.heartbeatAgeSeconds > 3;
      });
      const hidden = await runCli(['status', '--hide-gone-after', '3'], { DATABASE_URL: t.url });
      assert.equal(hidden.code, 0, hidden.stderr);
      // The replicas table has no line for it (the shard table still names the last lease holder).
      assert.doesNotMatch(hidden.stdout, /^papercut-gone\s+\S+:\d+\s+gone/m);
      assert.match(hidden.stdout, /replicas: 0 live \(1 gone longer not shown\)/);
      const shown = await runCli(['status', '--hide-gone-after', '3600', '--json'], { DATABASE_URL: t.url });
      const json = JSON.parse(shown.stdout) as { replicas: { replicaId: string; alive: boolean }[] };
      assert.deepEqual(
        json.replicas.filter((r) => r.replicaId === 'papercut-gone').map((r) => r.alive),
        [false],
      );
    },
  );

  it(
    'a shard whose owner stopped heartbeating shows SILENT before its lease expires',
    { timeout: 90_000 },
    async () => {
      // Lease 15 s: heartbeats at least every 5 s, silent after 6 s, leases valid up to 15 s.
      const frozen = replicas.start('papercut-frozen', 'frozen', ['--lease-timeout-seconds', '15']);
      await enqueue(t.db, [{ topic: 'papercut.silent', payload: {} }]);
      await replicas.waitFor(
        'the replica holds every shard',
        async () => {
          const status = await readStatus(t.db);
          return status.shardOwners.every((s) => s.owner === 'papercut-frozen' && s.leaseValid);
        },
        60_000,
      );
      replicas.expectExit(frozen);
      frozen.child.kill('SIGSTOP');
      const stoppedAt = Date.now();
      // One snapshot, read and printed in-process (the `status` command prints the same through
      // formatStatus): a CLI start under load could outlast the lease and prove nothing.
      let snapshot: RelayStatus | undefined;
      await waitFor(
        'every shard reads as silent',
        async () => {
          snapshot = await readStatus(t.db);
          return snapshot.shardOwners.every((s) => s.ownerSilent);
        },
        20_000,
        200,
      );
      const silentAfterMs = Date.now() - stoppedAt;
      const status = snapshot as RelayStatus;
      assert.ok(
        status.shardOwners.every((s) => s.leaseValid && (s.leaseExpiresInSeconds ?? 0) > 0),
        'the leases were still valid',
      );
      assert.ok(
        status.health.every((h) => h.status !== 'STOP'),
        'the view alone does not show the shards as ownerless yet',
      );
      const text = formatStatus(status);
      assert.match(text, /health: [^\n]*\b16 SILENT\b/);
      assert.match(text, /SILENT\s+papercut-frozen[^\n]*its owner stopped heartbeating/);
      assert.match(text, /with a silent owner: 8/);
      assert.match(text, /SILENT owner: no heartbeat for \d+\.\ds/);
      console.log(`# silent after ${silentAfterMs} ms of SIGSTOP (lease timeout 15 s)`);
      frozen.child.kill('SIGKILL');
      await frozen.exited;
    },
  );
});

describe('JetStream subject prefix', { skip: skipNats }, () => {
  let t: TestDatabase;
  const cleanups: (() => Promise<unknown>)[] = [];
  before(async () => {
    t = await createTestDatabase('papercuts_nats');
  });
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    await t.close();
  });

  it('events go to <--nats-subject-prefix>.<topic>', { timeout: 60_000 }, async () => {
    const nc = await connect({ servers: NATS_URL });
    cleanups.push(() => nc.close());
    const jsm = await nc.jetstreamManager();
    const stream = uniqueName('SRP')
      .toUpperCase()
      .replace(/[^A-Z0-9_]/g, '_');
    const prefix = `${uniqueName('srp').replace(/[^a-z0-9_]/gi, '_')}.events`;
    cleanups.push(() => jsm.streams.delete(stream));
    await enqueue(t.db, [
      { topic: 'orders.created', payload: { n: 1 } },
      { topic: 'orders.paid', payload: { n: 2 } },
    ]);
    const result = await runCli(
      [
        'run',
        '--until-drained',
        '--sink',
        'jetstream',
        '--nats-stream',
        stream,
        '--nats-subject-prefix',
        prefix,
      ],
      { DATABASE_URL: t.url, NATS_URL },
    );
    assert.equal(result.code, 0, result.stderr);
    const info = await jsm.streams.info(stream);
    assert.deepEqual(info.config.subjects, [`${prefix}.>`]);
    const subjects = [];
    for (const seq of [1, 2]) subjects.push((await jsm.streams.getMessage(stream, { seq })).subject);
    assert.deepEqual(subjects.sort(), [`${prefix}.orders.created`, `${prefix}.orders.paid`]);
  });

  it('a stream whose subjects overlap an existing stream: exit 2 naming that stream and the fix', async () => {
    const nc = await connect({ servers: NATS_URL });
    cleanups.push(() => nc.close());
    const jsm = await nc.jetstreamManager();
    const prefix = uniqueName('sro').replace(/[^a-z0-9_]/gi, '_');
    const other = uniqueName('SRO_OTHER')
      .toUpperCase()
      .replace(/[^A-Z0-9_]/g, '_');
    await jsm.streams.add({ name: other, subjects: [`${prefix}.orders.>`], storage: StorageType.Memory });
    cleanups.push(() => jsm.streams.delete(other));
    const mine = uniqueName('SRO_MINE')
      .toUpperCase()
      .replace(/[^A-Z0-9_]/g, '_');
    const result = await runCli(
      ['run', '--sink', 'jetstream', '--nats-stream', mine, '--nats-subject-prefix', prefix],
      { DATABASE_URL: t.url, NATS_URL },
    );
    assert.equal(result.code, EXIT_BAD_CONFIG, result.stderr);
    assert.match(
      result.stderr,
      new RegExp(
        `cannot create stream ${mine} on "${prefix}\\.>": stream ${other} already captures subjects under it`,
      ),
    );
    assert.match(
      result.stderr,
      new RegExp(`fix: publish into that stream \\(SHARDRELAY_NATS_STREAM=${other}`),
    );
    assert.match(result.stderr, /SHARDRELAY_NATS_SUBJECT_PREFIX/);
    assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
  });
});
