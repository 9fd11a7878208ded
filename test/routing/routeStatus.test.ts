import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { enqueue } from '../../src/enqueue.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { runCli } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('status with routes', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('route_status');
  });
  after(() => t.close());

  it('shows per-route throughput, pending, retrying, dead and lag, and rows no route takes', async () => {
    await enqueue(t.db, [
      ...syntheticEvents(30, { topic: 'orders.created' }),
      ...syntheticEvents(20, { topic: 'emails.welcome' }),
      ...syntheticEvents(5, { topic: 'stray.event' }),
    ]);
    // 30 orders sent just now; 4 emails retrying, 2 dead; the rest pending.
    await sql`UPDATE shardrelay.outbox SET status = 'sent', sent_at = now() WHERE topic = 'orders.created'`.execute(
      t.db,
    );
    await sql`UPDATE shardrelay.outbox SET attempts = 1, last_error = 'nack'
               WHERE id IN (SELECT id FROM shardrelay.outbox WHERE topic = 'emails.welcome' ORDER BY id LIMIT 6)`.execute(
      t.db,
    );
    await sql`UPDATE shardrelay.outbox SET status = 'dead'
               WHERE id IN (SELECT id FROM shardrelay.outbox WHERE topic = 'emails.welcome' ORDER BY id LIMIT 2)`.execute(
      t.db,
    );
    const routes = JSON.stringify({
      sinks: { orders: { type: 'rabbitmq' }, mail: { type: 'jetstream' } },
      rules: [
        { match: { topic: 'orders.#' }, sink: 'orders' },
        { match: { topic: 'emails.*' }, sink: 'mail' },
      ],
    });
    const result = await runCli(['status', '--json'], { DATABASE_URL: t.url, SHARDRELAY_ROUTES: routes });
    assert.equal(result.code, 0, result.stderr);
    const status = JSON.parse(result.stdout) as {
      routes: { route: string; pending: number; retrying: number; dead: number; sentPerSecond5m: number }[];
    };
    const by = new Map(status.routes.map((r) => [r.route, r]));
    assert.deepEqual(
      { ...by.get('orders'), lagSeconds: undefined },
      {
        route: 'orders',
        sink: 'rabbitmq',
        sentPerSecond5m: 0.1,
        pending: 0,
        retrying: 0,
        dead: 0,
        lagSeconds: undefined,
      },
    );
    assert.equal(by.get('mail')?.pending, 18);
    assert.equal(by.get('mail')?.retrying, 4);
    assert.equal(by.get('mail')?.dead, 2);
    assert.equal(by.get('(no route)')?.pending, 5);
    const text = await runCli(['status'], { DATABASE_URL: t.url, SHARDRELAY_ROUTES: routes });
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      /routes:\nroute +sink +sent\/s \(5m\) +pending +retrying +dead +lag s\norders +rabbitmq +0\.1 +0 +0 +0 +0\n/,
    );
  });
});
