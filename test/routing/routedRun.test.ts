/**
 * The installed path: `shardrelay run --routes-file` builds the routing sink from configuration
 * (two RabbitMQ exchanges as two sinks, and a webhook), on both lanes (the real-time lane's
 * worker thread gets the routes too), and a row no route takes becomes dead naming the route.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import amqp from 'amqplib';
import { enqueue } from '../../src/enqueue.js';
import { syntheticEvents } from '../../src/synthetic.js';
import { AMQP_URL, ReceivedIds, hostAndPort, requireBroker, uniqueName } from '../support/brokers.js';
import { collect, spawnCli, waitFor } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

describe('shardrelay run with routes', () => {
  let t: TestDatabase;
  let dir: string;
  before(async () => {
    t = await createTestDatabase('routed_run');
    dir = await mkdtemp(path.join(os.tmpdir(), 'routes-run-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
    await t.close();
  });

  it(
    'delivers each topic to its own exchange or webhook, on both lanes, and kills unroutable rows',
    { timeout: 240_000 },
    async (ctx) => {
      const { host, port } = hostAndPort(AMQP_URL, 5672);
      const skip = await requireBroker('RabbitMQ', host, port);
      if (skip) return ctx.skip(skip);
      const connection = await amqp.connect(AMQP_URL);
      const channel = await connection.createChannel();
      const received = { orders: new ReceivedIds(), emails: new ReceivedIds(), hooks: new ReceivedIds() };
      const names = { orders: uniqueName('sr_route_orders'), emails: uniqueName('sr_route_emails') };
      for (const route of ['orders', 'emails'] as const) {
        await channel.assertExchange(names[route], 'topic', { durable: true });
        const queue = uniqueName(`${names[route]}_q`);
        await channel.assertQueue(queue, { durable: false, exclusive: true });
        await channel.bindQueue(queue, names[route], '#');
        await channel.consume(queue, (m) => m && received[route].add(String(m.properties.messageId)), {
          noAck: true,
        });
      }
      const server = http.createServer((request, response) => {
        let body = '';
        request.on('data', (chunk: Buffer) => (body += chunk.toString()));
        request.on('end', () => {
          received.hooks.add((JSON.parse(body) as { id: string }).id);
          response.writeHead(204).end();
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const file = path.join(dir, 'routes.json');
        await writeFile(
          file,
          JSON.stringify({
            sinks: {
              orders: { type: 'rabbitmq', amqpUrl: { env: 'TEST_AMQP_URL' }, amqpExchange: names.orders },
              emails: { type: 'rabbitmq', amqpUrl: { env: 'TEST_AMQP_URL' }, amqpExchange: names.emails },
              hooks: {
                type: 'http',
                webhookUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/in`,
              },
            },
            rules: [
              { match: { topic: 'orders.#' }, sink: 'orders' },
              { match: { topic: 'emails.*' }, sink: 'emails' },
              { match: { topic: 'hooks.*' }, sink: 'hooks' },
            ],
          }),
        );
        const topics = {
          orders: 'orders.eu.created',
          emails: 'emails.welcome',
          hooks: 'hooks.ping',
        } as const;
        const ids: Record<keyof typeof topics, string[]> = { orders: [], emails: [], hooks: [] };
        for (const route of ['orders', 'emails', 'hooks'] as const) {
          for (const lane of ['realtime', 'batch'] as const) {
            const enqueued = await enqueue(t.db, syntheticEvents(500, { topic: topics[route], lane }));
            ids[route].push(...enqueued.map((e) => e.eventId));
          }
        }
        const [stray] = await enqueue(t.db, syntheticEvents(1, { topic: 'stray.event' }));
        // Kept running until the consumers have everything, so its /metrics can be read.
        const metricsPort = 20_000 + Math.floor(Math.random() * 20_000);
        const child = spawnCli(['run', '--routes-file', file], {
          DATABASE_URL: t.url,
          TEST_AMQP_URL: AMQP_URL,
          SHARDRELAY_METRICS_PORT: String(metricsPort),
        });
        const exited = collect(child);
        let metrics = '';
        try {
          for (const route of ['orders', 'emails', 'hooks'] as const) {
            await received[route].waitForAll(ids[route], 60_000);
            assert.equal(received[route].counts.size, 1000, `${route} received exactly its 1,000 events`);
          }
          // Per-route counters of both lanes: the real-time worker thread forwards its parts.
          const confirmedOf = (route: string) =>
            Number(
              new RegExp(
                `shardrelay_route_events_total\\{[^}]*route="${route}",outcome="confirmed"\\} (\\d+)`,
              ).exec(metrics)?.[1] ?? -1,
            );
          await waitFor('per-route counters of both lanes', async () => {
            metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`)
              .then((r) => r.text())
              .catch(() => '');
            return ['orders', 'emails', 'hooks'].every((r) => confirmedOf(r) >= 1000);
          });
          for (const route of ['orders', 'emails', 'hooks']) assert.equal(confirmedOf(route), 1000, route);
        } finally {
          child.kill('SIGTERM');
        }
        const run = await exited;
        assert.equal(run.code, 0, run.stderr);
        const dead = await t.db
          .selectFrom('shardrelay.outbox')
          .select(['event_id', 'last_error'])
          .where('status', '=', 'dead')
          .execute();
        assert.equal(dead.length, 1);
        assert.equal(dead[0]?.event_id, stray?.eventId);
        assert.match(dead[0]?.last_error ?? '', /no route: no rule matches topic "stray\.event"/);
      } finally {
        server.close();
        for (const exchange of Object.values(names)) await channel.deleteExchange(exchange).catch(() => {});
        await connection.close();
      }
    },
  );
});
