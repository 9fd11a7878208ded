/**
 * shardrelay.health against real failures: an owner process frozen with SIGSTOP (STALL while its
 * leases last, STOP once they expire), an owner killed with SIGKILL (STOP), and dead letters rising
 * (ERROR). The stall window is set per query (shardrelay.stall_seconds) so the test need not wait a
 * minute; the rest runs on the real clock.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { startRelay, type Relay } from '../../src/wiring/relay.js';
import { confirmed, permanent, type Sink } from '../../src/sinks/sink.js';
import { collect, spawnCli, waitFor, type CliResult } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

const LEASE_TIMEOUT_SECONDS = 10;

interface Health {
  shard: number;
  lane: string;
  status: string;
  reason: string | null;
  owner: string | null;
}

describe('health classes of real failures', { timeout: 240_000 }, () => {
  let t: TestDatabase;
  let owner: ChildProcess | undefined;
  let output: Promise<CliResult> | undefined;
  let observer: Relay | undefined;

  const health = (stallSeconds = 1) =>
    t.db.transaction().execute(async (trx) => {
      await sql`SELECT set_config('shardrelay.stall_seconds', ${String(stallSeconds)}, true)`.execute(trx);
      return (
        await sql<Health>`SELECT shard, lane, status, reason, owner FROM shardrelay.health`.execute(trx)
      ).rows;
    });
  const classes = (rows: readonly Health[]) => [...new Set(rows.map((r) => `${r.lane} ${r.status}`))].sort();
  const pending = async () =>
    Number(
      (
        await sql<{
          n: string;
        }>`SELECT count(*) AS n FROM shardrelay.outbox WHERE status = 'pending'`.execute(t.db)
      ).rows[0]?.n,
    );
  const ownsAll = async (replica: string) =>
    (
      await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM shardrelay.shards WHERE owner = ${replica} AND lease_valid`.execute(
        t.db,
      )
    ).rows[0]?.n === 8;
  const startOwner = async (replica: string) => {
    owner = spawnCli(
      [
        'run',
        '--sink',
        'null',
        '--replica-id',
        replica,
        '--lease-timeout-seconds',
        String(LEASE_TIMEOUT_SECONDS),
      ],
      { DATABASE_URL: t.url },
    );
    output = collect(owner);
    await waitFor(`${replica} holds every shard`, () => ownsAll(replica), 60_000);
  };

  before(async () => {
    t = await createTestDatabase('health_classes');
  });
  after(async () => {
    if (owner?.pid && owner.exitCode === null && owner.signalCode === null) {
      process.kill(owner.pid, 'SIGCONT'); // a frozen process cannot even die
      owner.kill('SIGKILL');
    }
    await output;
    await observer?.stop();
    await t.close();
  });

  it('an owner frozen with SIGSTOP: STALL while its leases last, STOP after, OK once it runs again', async () => {
    await startOwner('frozen-owner');
    await enqueue(
      t.db,
      Array.from({ length: 80 }, (_, i) => ({ topic: 'orders.created', payload: { i } })),
    );
    await waitFor('drained', async () => (await pending()) === 0, 60_000);
    assert.deepEqual(classes(await health()), ['batch OK', 'realtime OK']);

    process.kill(owner?.pid as number, 'SIGSTOP');
    const frozenAt = Date.now();
    await enqueue(
      t.db,
      Array.from({ length: 80 }, (_, i) => ({ topic: 'orders.created', payload: { i } })),
    );
    await new Promise((r) => setTimeout(r, 1_500));
    const stalled = await health();
    assert.ok(
      Date.now() - frozenAt < (LEASE_TIMEOUT_SECONDS - 2) * 1000,
      'checked while the leases are valid',
    );
    // Every shard got 10 batch rows; the real-time lane has nothing due.
    assert.deepEqual(classes(stalled), ['batch STALL', 'realtime OK']);
    assert.match(
      stalled.find((r) => r.status === 'STALL')?.reason ?? '',
      /^10 due rows waiting \d+ s, last batch \d+ s ago$/,
    );
    assert.equal(stalled[0]?.owner, 'frozen-owner');

    await waitFor(
      'leases expired',
      async () => classes(await health()).every((c) => c.endsWith('STOP')),
      60_000,
      250,
    );
    const stopped = await health();
    assert.match(stopped[0]?.reason ?? '', /^no live owner: lease of frozen-owner expired \d+ s ago$/);

    process.kill(owner?.pid as number, 'SIGCONT');
    await waitFor('drained after SIGCONT', async () => (await pending()) === 0, 60_000);
    await waitFor(
      'healthy again',
      async () => classes(await health(60)).join() === 'batch OK,realtime OK',
      60_000,
      250,
    );
  });

  it('a dead owner (SIGKILL): STOP, and a standing-by replica exports it as shard_status STOP', async () => {
    owner?.kill('SIGKILL');
    await output;
    // A replica that takes no shards (as when more replicas run than there are shards) and only
    // observes: its metrics say which shards nobody owns.
    observer = await startRelay({
      config: testConfig(t.url, { metricsPort: 0, replicaId: 'standby' }),
      ownership: { refresh: async () => [], release: async () => {} },
      observeIntervalMs: 300,
    });
    await waitFor(
      'leases expired',
      async () => classes(await health(60)).join() === 'batch STOP,realtime STOP',
      60_000,
      250,
    );
    await observer.observer.observe();
    const text = await (await fetch(`${observer.observer.server?.url}/metrics`)).text();
    assert.match(text, /^shardrelay_unowned_shards\{replica="standby"\} 8$/m);
    assert.match(
      text,
      /^shardrelay_shard_status\{replica="standby",shard="5",lane="batch",status="STOP"\} 1$/m,
    );
    assert.match(text, /^shardrelay_shards_owned\{replica="standby"\} 0$/m);
    await observer.stop();
    observer = undefined;
  });

  it('dead letters rising: ERROR on the shards and lanes that dead-lettered', async () => {
    const refusing: Sink = {
      name: 'refusing',
      start: async () => {},
      close: async () => {},
      sendBatch: async (messages) =>
        messages.map((m) =>
          (JSON.parse(m.payloadJson) as { poison?: boolean }).poison
            ? permanent('schema 9 unknown')
            : confirmed,
        ),
    };
    observer = await startRelay({
      config: testConfig(t.url, { metricsPort: 0, replicaId: 'error-relay' }),
      sink: refusing,
      observeIntervalMs: 300,
    });
    await waitFor('error-relay holds every shard', () => ownsAll('error-relay'), 60_000);
    // Three poison rows among 16: they are dead-lettered in whichever shard their id puts them.
    const rows = await enqueue(
      t.db,
      Array.from({ length: 16 }, (_, i) => ({
        topic: 'orders.created',
        payload: { poison: [0, 1, 8].includes(i) },
        lane: i % 2 ? ('realtime' as const) : ('batch' as const),
      })),
    );
    await waitFor('drained', async () => (await pending()) === 0, 60_000);
    const expected = new Map<string, number>();
    for (const i of [0, 1, 8]) {
      const key = `${Number(rows[i]?.id) % 8} ${i % 2 ? 'realtime' : 'batch'}`;
      expected.set(key, (expected.get(key) ?? 0) + 1);
    }
    const rowsNow = await health(60);
    assert.deepEqual(
      rowsNow.filter((r) => r.status !== 'OK').map((r) => `${r.shard} ${r.lane} ${r.status}: ${r.reason}`),
      [...expected]
        .sort(([a], [b]) => Number(a.split(' ')[0]) - Number(b.split(' ')[0]) || a.localeCompare(b))
        .map(([key, n]) => `${key} ERROR: ${n} dead letters in the last 15 min`),
    );
    await observer.observer.observe();
    const text = await (await fetch(`${observer.observer.server?.url}/metrics`)).text();
    for (const key of expected.keys()) {
      const [shard, lane] = key.split(' ');
      const series = `shardrelay_shard_status{replica="error-relay",shard="${shard}",lane="${lane}",status="ERROR"} 1`;
      assert.ok(text.includes(series), series);
    }
    assert.equal((text.match(/status="ERROR"\} 1$/gm) ?? []).length, expected.size);
  });
});
