import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SETTINGS } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { parseRoutes, routeOf } from '../../src/routing/routes.js';
import { topicMatches, topicPatternCovers } from '../../src/routing/topicPattern.js';
import { startReplica } from '../../src/wiring/replica.js';
import { runCli } from '../support/cli.js';
import { testConfig } from '../support/relayConfig.js';

const good = {
  sinks: {
    orders: { type: 'rabbitmq', amqpExchange: 'orders' },
    mail: { type: 'jetstream', natsStream: 'MAIL' },
    hooks: { type: 'http', webhookUrl: 'http://127.0.0.1:9/hook' },
  },
  rules: [
    { match: { topic: 'orders.#' }, sink: 'orders' },
    { match: { topic: 'emails.*', lane: 'realtime' }, sink: 'mail' },
    { match: { headers: { tenant: 'acme' } }, sink: 'mail' },
  ],
  default: 'hooks',
};

describe('topic patterns', () => {
  it('match AMQP-style: * one word, # zero or more', () => {
    assert.ok(topicMatches('orders.*', 'orders.created'));
    assert.ok(!topicMatches('orders.*', 'orders'));
    assert.ok(!topicMatches('orders.*', 'orders.eu.created'));
    assert.ok(topicMatches('orders.#', 'orders'));
    assert.ok(topicMatches('orders.#', 'orders.eu.created'));
    assert.ok(topicMatches('#.created', 'orders.eu.created'));
    assert.ok(!topicMatches('orders.created', 'orders.updated'));
  });
  it('cover exactly when every topic of the inner pattern matches the outer', () => {
    assert.ok(topicPatternCovers('orders.#', 'orders.*'));
    assert.ok(topicPatternCovers('orders.#', 'orders.eu.#'));
    assert.ok(topicPatternCovers('#', 'anything.*.#'));
    assert.ok(!topicPatternCovers('orders.*', 'orders.#'));
    assert.ok(!topicPatternCovers('*.#', '#'));
    assert.ok(!topicPatternCovers('orders.*', 'orders'));
  });
});

describe('routes', () => {
  it('first matching rule wins, then the default; sink settings keep their defaults', () => {
    const table = parseRoutes(good, SETTINGS, {});
    const row = (topic: string, lane: 'realtime' | 'batch' = 'batch', headers = {}) => ({
      topic,
      lane,
      key: null,
      headers,
    });
    assert.equal(routeOf(table, row('orders.created')), 'orders');
    assert.equal(routeOf(table, row('emails.welcome', 'realtime')), 'mail');
    assert.equal(routeOf(table, row('emails.welcome')), 'hooks');
    assert.equal(routeOf(table, row('billing.x', 'batch', { tenant: 'acme' })), 'mail');
    assert.equal(table.sinks.orders?.settings.amqpUrl, 'amqp://guest:guest@127.0.0.1:5672');
  });
  it('reads { "env": NAME } values from the environment', () => {
    const table = parseRoutes(
      { sinks: { a: { type: 'rabbitmq', amqpUrl: { env: 'ORDERS_AMQP' } } }, default: 'a' },
      SETTINGS,
      { ORDERS_AMQP: 'amqp://u:p@10.0.0.1:5672' },
    );
    assert.equal(table.sinks.a?.settings.amqpUrl, 'amqp://u:p@10.0.0.1:5672');
  });
});

describe('routes refused before start (CLI, exit 2, place and fix)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'routes-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const mutate = (f: (r: typeof good & Record<string, unknown>) => unknown) => {
    const copy = structuredClone(good) as typeof good & Record<string, unknown>;
    f(copy);
    return copy;
  };
  const cases: [string, unknown, RegExp, RegExp][] = [
    [
      'an unknown sink',
      mutate((r) => (r.rules[1] = { match: { topic: 'emails.*' }, sink: 'mails' })),
      /routes\.rules\[1\]\.sink: names sink "mails"/,
      /use one of: orders, mail, hooks/,
    ],
    [
      'a rule an earlier rule covers',
      mutate((r) => r.rules.splice(1, 0, { match: { topic: 'orders.*' }, sink: 'mail' })),
      /routes\.rules\[1\]\.match: can never match: routes\.rules\[0\]/,
      /move this rule above routes\.rules\[0\]/,
    ],
    [
      'a bad wildcard',
      mutate((r) => (r.rules[0] = { match: { topic: 'orders.x*' }, sink: 'orders' })),
      /routes\.rules\[0\]\.match\.topic: "orders\.x\*"/,
      /\* stands for exactly one word, # for zero or more/,
    ],
    [
      'missing sink settings',
      mutate((r) => (r.sinks.hooks = { type: 'http' } as never)),
      /routes\.sinks\.hooks\.webhookUrl: is required by the http sink/,
      /add "webhookUrl" to routes\.sinks\.hooks/,
    ],
    [
      'a setting of another sink type',
      mutate((r) => (r.sinks.orders = { type: 'rabbitmq', natsStream: 'X' } as never)),
      /routes\.sinks\.orders\.natsStream: is not a setting of the rabbitmq sink/,
      /use only: amqpUrl, amqpExchange/,
    ],
    [
      'a bad setting value',
      mutate((r) => (r.sinks.orders = { type: 'rabbitmq', amqpUrl: 'http://x' } as never)),
      /routes\.sinks\.orders\.amqpUrl: must be a URL starting with amqp:\/\//,
      /set AMQP_URL/,
    ],
    ['text that is not JSON', '{"sinks":', /is not JSON/, /write the routes as JSON/],
  ];
  for (const [name, routes, problem, fix] of cases) {
    it(`refuses ${name}: routes check and run both exit 2 naming the place and the fix`, async () => {
      const file = path.join(dir, `${name.replace(/\W+/g, '_')}.json`);
      await writeFile(file, typeof routes === 'string' ? routes : JSON.stringify(routes));
      const check = await runCli(['routes', 'check', '--file', file]);
      assert.equal(check.code, 2, check.stderr);
      assert.match(check.stderr, problem);
      assert.match(check.stderr, fix);
      // `run` refuses before connecting: the database URL points at a closed port.
      const run = await runCli(['run', '--routes-file', file], {
        DATABASE_URL: 'postgres://postgres@127.0.0.1:9/none',
      });
      assert.equal(run.code, 2, run.stderr);
      assert.match(run.stderr, problem);
      assert.doesNotMatch(run.stderr, /DATABASE|ECONNREFUSED/);
    });
  }

  it('startReplica from code refuses bad routes before any thread or connection', async () => {
    // The database URL points at a closed port: a connection attempt would fail differently.
    const config = testConfig('postgres://postgres@127.0.0.1:9/none', { routes: '{"sinks":' });
    await assert.rejects(startReplica({ config }), (error: unknown) => {
      assert.ok(error instanceof ConfigError, String(error));
      assert.match(error.message, /--routes \/ SHARDRELAY_ROUTES.*is not JSON/);
      return true;
    });
  });

  it('accepts good routes and prints where sample and given events go', async () => {
    const file = path.join(dir, 'good.json');
    await writeFile(file, JSON.stringify(good));
    const result = await runCli([
      'routes',
      'check',
      '--file',
      file,
      '--event',
      '{"topic":"orders.eu.created"}',
      '{"topic":"emails.welcome","lane":"realtime"}',
      '{"topic":"other"}',
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /orders\.eu\.created \[lane=batch\] -> orders \(rabbitmq\) by rules\[0\]/);
    assert.match(result.stdout, /emails\.welcome \[lane=realtime\] -> mail \(jetstream\) by rules\[1\]/);
    assert.match(result.stdout, /other \[lane=batch\] -> hooks \(http\) by default/);
    const env = await runCli(['routes', 'check'], {
      SHARDRELAY_ROUTES: JSON.stringify({
        sinks: { orders: good.sinks.orders },
        rules: [good.rules[0]],
      }),
    });
    assert.equal(env.code, 0, env.stderr);
    assert.match(env.stdout, /unrouted\.example \[lane=batch\] -> DEAD \(no route\)/);
  });
});
