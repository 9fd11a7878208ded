import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { collect, spawnCli, waitFor } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('a full connection pool during a broker stall', () => {
  let t: TestDatabase;
  let stalled: http.Server;
  let url: string;
  let requests = 0;
  before(async () => {
    t = await createTestDatabase('pool_wait');
    // A receiver that accepts every request and never answers: a stalled broker.
    stalled = http.createServer(() => {
      requests++;
    });
    await new Promise<void>((resolve) => stalled.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(stalled.address() as AddressInfo).port}/events`;
    // Rows in every shard of the default 8, so every batch-lane loop wants a connection.
    await enqueue(
      t.db,
      Array.from({ length: 80 }, (_, i) => ({ topic: 'stalled', payload: { i } })),
    );
  });
  after(async () => {
    stalled.closeAllConnections();
    await new Promise<void>((resolve) => stalled.close(() => resolve()));
    await t.close();
  });

  it('is logged as waiting for a connection, not as a failed batch', async () => {
    // One connection per lane and a send timeout beyond the pool's 10 s checkout timeout: while one
    // batch waits for the stalled receiver, the other shards' loops find no free connection.
    const relay = spawnCli(
      [
        'run',
        '--sink',
        'http',
        '--webhook-url',
        url,
        '--connections-per-lane',
        '1',
        '--send-timeout-ms',
        '20000',
      ],
      { DATABASE_URL: t.url },
    );
    const output = collect(relay);
    let stderr = '';
    relay.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await waitFor(
        'the pool wait to be logged',
        async () => /waiting for a database connection/.test(stderr),
        40_000,
      );
    } finally {
      relay.kill('SIGKILL');
    }
    await output;
    const lines = stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: number; msg: string; fix?: string; lane?: string });
    const wait = lines.find((l) => /waiting for a database connection/.test(l.msg));
    assert.equal(wait?.level, 40, 'a warning, not an error');
    assert.match(
      wait?.msg ?? '',
      /the only connection of the batch lane is busy \(batches waiting for the sink's confirms\); \d+ batch\(es\) found none within 10 s, claimed nothing/,
    );
    assert.match(wait?.fix ?? '', /raise --connections-per-lane \(now 1\)/);
    assert.deepEqual(
      lines.filter((l) => /batch failed/.test(l.msg)).map((l) => l.msg),
      [],
      'no batch reported as failed',
    );
    assert.ok(requests > 0, 'the receiver was reached and stalled');
    const { rows } = await sql<{ n: string }>`
      SELECT count(*) AS n FROM shardrelay.outbox WHERE status = 'pending'`.execute(t.db);
    assert.equal(Number(rows[0]?.n), 80, 'every row is still pending');
  });
});
