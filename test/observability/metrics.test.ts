import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startObservabilityServer, type ObservabilityServer } from '../../src/observability/httpServer.js';
import { createMetrics, type RelayMetrics } from '../../src/observability/metrics.js';
import { SETTINGS } from '../../src/config.js';
import { observeRoutes } from '../../src/observability/routeMetrics.js';
import { parseRoutes } from '../../src/routing/routes.js';
import { createRoutingSink } from '../../src/routing/routingSink.js';
import { createNullSink } from '../../src/sinks/nullSink.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const ALERTS = 'deploy/prometheus/alerts.yml';
const ALERT_TESTS = 'deploy/prometheus/alerts.test.yml';
const DASHBOARD = 'deploy/grafana/shardrelay.json';

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Parses the sample lines of the Prometheus text format (enough for what prom-client writes). */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    assert.ok(match, `unparseable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key as string] = value as string;
    }
    const raw = match[3] as string;
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw);
    samples.push({ name: match[1] as string, labels, value });
  }
  return samples;
}

/** The value of the one sample named `name` whose labels include `labels`; fails on zero or several. */
function valueOf(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  assert.equal(found.length, 1, `expected one ${name}${JSON.stringify(labels)}, found ${found.length}`);
  return (found[0] as Sample).value;
}

function has(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): boolean {
  return samples.some((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

async function scrape(server: ObservabilityServer): Promise<Sample[]> {
  const res = await fetch(`${server.url}/metrics`);
  assert.equal(res.status, 200);
  return parseExposition(await res.text());
}

/** Calls every reporting method once, so that every metric has at least one series. */
function exerciseEveryMetric(metrics: RelayMetrics): void {
  metrics.recordBatch({
    shard: 0,
    lane: 'realtime',
    sent: 3,
    failedRetryable: 1,
    failedPermanent: 1,
    unknown: 1,
    dead: 1,
    batchSeconds: 0.02,
    confirmSeconds: 0.01,
    latenciesSeconds: [0.004, 0.03, 0.2],
  });
  metrics.setLag({ shard: 0, lane: 'realtime', events: 12, seconds: 1.5 });
  metrics.setShardsOwned(4);
  metrics.setUnownedShards(0);
  metrics.setShardStatus(0, 'realtime', 'OK');
  metrics.setInflight(7);
  metrics.observeCanary(0, 'realtime', 0.08);
  metrics.setOutboxMaxId('123456');
}

// --- PromQL names --------------------------------------------------------------------------------

interface RuleFile {
  readonly exprs: string[];
  readonly records: string[];
  readonly alerts: string[];
}

/**
 * Reads the rules file without a YAML library: `record:`/`alert:` names and each `expr:`, either
 * inline (quoted or not) or as a block scalar (`expr: |`) spanning the more-indented lines below.
 */
function readRules(text: string): RuleFile {
  const lines = text.split('\n');
  const exprs: string[] = [];
  const records: string[] = [];
  const alerts: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    const named = /^\s*(?:-\s+)?(record|alert):\s*(\S+)\s*$/.exec(line);
    if (named) (named[1] === 'record' ? records : alerts).push(named[2] as string);
    const expr = /^(\s*)(?:-\s+)?expr:\s*(.*)$/.exec(line);
    if (!expr) continue;
    const indent = (expr[1] as string).length;
    const rest = (expr[2] as string).trim();
    if (rest.startsWith('|') || rest.startsWith('>')) {
      const block: string[] = [];
      while (i + 1 < lines.length) {
        const next = lines[i + 1] as string;
        if (next.trim() !== '' && next.length - next.trimStart().length <= indent) break;
        block.push(next.trim());
        i++;
      }
      exprs.push(block.join(' ').trim());
    } else {
      exprs.push(rest.replace(/^'(.*)'$/, '$1').replace(/^"(.*)"$/, '$1'));
    }
  }
  return { exprs, records, alerts };
}

/** Every `expr` of the dashboard's panels plus the template variables' queries. */
function dashboardQueries(dashboard: unknown): string[] {
  const found: string[] = [];
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (node !== null && typeof node === 'object') {
      for (const [key, value] of Object.entries(node)) {
        if (key === 'expr' && typeof value === 'string') found.push(value);
        else walk(value);
      }
    }
  };
  const root = dashboard as {
    panels?: unknown;
    templating?: { list?: { type?: string; query?: unknown }[] };
  };
  walk(root.panels);
  for (const variable of root.templating?.list ?? []) {
    if (variable.type !== 'query') continue;
    const query = variable.query;
    if (typeof query === 'string') found.push(query);
    else if (query && typeof query === 'object' && typeof (query as { query?: unknown }).query === 'string') {
      found.push((query as { query: string }).query);
    }
  }
  return found;
}

/** Metric names in a PromQL expression: identifiers starting with shardrelay_ or shardrelay:. */
function metricNames(expr: string): string[] {
  // Label values are not metric names: drop string literals first (e.g. job="shardrelay").
  const code = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""');
  return [...code.matchAll(/(?<![A-Za-z0-9_:])shardrelay[_:][A-Za-z0-9_:]*/g)].map((m) => m[0]);
}

// --- promtool -------------------------------------------------------------------------------------

/**
 * True (and the test skipped) when promtool is missing on a developer's machine; in CI a missing
 * promtool fails instead, so the alert tests cannot silently stop running there.
 */
function skipWithoutPromtool(t: TestContext): boolean {
  const probe = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
  if (!probe.error) return false;
  const reason = `promtool is not installed (Debian: apt-get install -y prometheus): ${probe.error.message}`;
  if (process.env.CI === 'true') assert.fail(reason);
  t.skip(reason);
  return true;
}

/** Runs promtool from the repository root; resolves with its stdout, fails the test with its output. */
async function promtool(args: string[]): Promise<string> {
  try {
    const { stdout } = await promisify(execFile)('promtool', args, { cwd: repoRoot, timeout: 60_000 });
    return stdout;
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    assert.fail(`promtool ${args.join(' ')} failed:\n${stdout ?? ''}${stderr ?? ''}`);
  }
}

const REQUIRED_METRICS = [
  'shardrelay_events_sent_total',
  'shardrelay_events_failed_total',
  'shardrelay_events_dead_total',
  'shardrelay_lag_events',
  'shardrelay_lag_seconds',
  'shardrelay_end_to_end_latency_seconds_bucket',
  'shardrelay_batch_duration_seconds_bucket',
  'shardrelay_confirm_duration_seconds_bucket',
  'shardrelay_inflight_unconfirmed',
  'shardrelay_shards_owned',
  'shardrelay_unowned_shards',
  'shardrelay_canary_latency_seconds',
  'shardrelay_shard_status',
  'shardrelay_outbox_max_id',
];

describe('observability server', () => {
  let metrics: RelayMetrics;
  let server: ObservabilityServer;
  let alive = true;
  let readiness: () => Promise<{ ready: boolean; reason?: string }> = async () => ({ ready: true });

  before(async () => {
    metrics = createMetrics({ replica: 'relay-a', sink: 'null' });
    server = await startObservabilityServer({
      port: 0,
      registry: metrics.registry,
      isAlive: () => alive,
      isReady: () => readiness(),
      readyTimeoutMs: 200,
    });
  });
  after(() => server.close());

  it('binds to 127.0.0.1 by default and reports the port it got', () => {
    assert.equal(server.host, '127.0.0.1');
    assert.ok(server.port > 0);
    assert.equal(server.url, `http://127.0.0.1:${server.port}`);
  });

  it('exposes recorded batches as counters and histograms on /metrics', async () => {
    const base = { shard: 2, lane: 'realtime' as const, batchSeconds: 0.004 };
    metrics.recordBatch({
      ...base,
      sent: 10,
      failedRetryable: 2,
      failedPermanent: 1,
      unknown: 3,
      dead: 1,
      confirmSeconds: 0.003,
      latenciesSeconds: [0.001, 0.004, 0.02, 0.02, 0.3, 1.5, 7, 0.05, 0.06, -0.002],
    });
    metrics.recordBatch({
      ...base,
      sent: 5,
      failedRetryable: 0,
      failedPermanent: 0,
      unknown: 0,
      dead: 0,
      confirmSeconds: 0.002,
      latenciesSeconds: [0.01, 0.01, 0.01, 0.01, 0.01],
    });
    // A batch that sent nothing has no confirm duration.
    metrics.recordBatch({
      ...base,
      lane: 'batch',
      sent: 0,
      failedRetryable: 0,
      failedPermanent: 0,
      unknown: 0,
      dead: 0,
      latenciesSeconds: [],
    });

    const res = await fetch(`${server.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const samples = parseExposition(await res.text());
    const shard = { replica: 'relay-a', sink: 'null', shard: '2', lane: 'realtime' };
    assert.equal(valueOf(samples, 'shardrelay_events_sent_total', shard), 15);
    assert.equal(valueOf(samples, 'shardrelay_events_failed_total', { ...shard, kind: 'retryable' }), 2);
    assert.equal(valueOf(samples, 'shardrelay_events_failed_total', { ...shard, kind: 'permanent' }), 1);
    assert.equal(valueOf(samples, 'shardrelay_events_failed_total', { ...shard, kind: 'unknown' }), 3);
    assert.equal(valueOf(samples, 'shardrelay_events_dead_total', shard), 1);

    const lane = { replica: 'relay-a', sink: 'null', lane: 'realtime' };
    assert.equal(valueOf(samples, 'shardrelay_end_to_end_latency_seconds_count', lane), 15);
    // 0.001, 0.004 and the negative (clock skew, clamped to 0) fall in the first bucket.
    assert.equal(
      valueOf(samples, 'shardrelay_end_to_end_latency_seconds_bucket', { ...lane, le: '0.005' }),
      3,
    );
    assert.equal(
      valueOf(samples, 'shardrelay_end_to_end_latency_seconds_bucket', { ...lane, le: '0.01' }),
      8,
    );
    assert.equal(valueOf(samples, 'shardrelay_end_to_end_latency_seconds_bucket', { ...lane, le: '10' }), 15);
    assert.equal(valueOf(samples, 'shardrelay_batch_duration_seconds_count', lane), 2);
    assert.equal(valueOf(samples, 'shardrelay_confirm_duration_seconds_count', lane), 2);
    const batchLane = { ...lane, lane: 'batch' };
    assert.equal(valueOf(samples, 'shardrelay_batch_duration_seconds_count', batchLane), 1);
    assert.equal(has(samples, 'shardrelay_confirm_duration_seconds_count', batchLane), false);
    // No shard label on histograms: it would multiply every bucket by the shard count.
    assert.equal(
      samples.some((s) => s.name.startsWith('shardrelay_end_to_end_latency_seconds') && 'shard' in s.labels),
      false,
    );
    // Node's process metrics are in the same registry.
    assert.ok(has(samples, 'process_cpu_user_seconds_total', { replica: 'relay-a' }));
    assert.ok(has(samples, 'nodejs_heap_size_total_bytes', { replica: 'relay-a' }));
  });

  it('sets one shard status class to 1 and the others to 0, and forgets a dropped shard', async () => {
    metrics.setLag({ shard: 5, lane: 'batch', events: 4200, seconds: 93.5 });
    metrics.setShardStatus(5, 'batch', 'STALL');
    let samples = await scrape(server);
    const labels = { replica: 'relay-a', shard: '5', lane: 'batch' };
    assert.equal(valueOf(samples, 'shardrelay_lag_events', labels), 4200);
    assert.equal(valueOf(samples, 'shardrelay_lag_seconds', labels), 93.5);
    for (const status of ['OK', 'WARN', 'STALL', 'STOP', 'ERROR']) {
      assert.equal(
        valueOf(samples, 'shardrelay_shard_status', { ...labels, status }),
        status === 'STALL' ? 1 : 0,
      );
    }
    // A shard this replica just took over has zero-valued counters before its first dead letter,
    // so Prometheus' increase() sees the first one.
    assert.equal(valueOf(samples, 'shardrelay_events_dead_total', labels), 0);

    metrics.setShardStatus(5, 'batch', 'OK');
    samples = await scrape(server);
    assert.equal(valueOf(samples, 'shardrelay_shard_status', { ...labels, status: 'STALL' }), 0);
    assert.equal(valueOf(samples, 'shardrelay_shard_status', { ...labels, status: 'OK' }), 1);

    metrics.dropShard(5);
    samples = await scrape(server);
    assert.equal(has(samples, 'shardrelay_shard_status', labels), false);
    assert.equal(has(samples, 'shardrelay_lag_events', labels), false);
    // Totals of what this replica did stay.
    assert.equal(has(samples, 'shardrelay_events_dead_total', labels), true);
  });

  it('reports gauges for ownership, in-flight messages, canaries and the outbox id', async () => {
    const beforeCanary = Date.now() / 1000;
    metrics.setShardsOwned(3);
    metrics.setUnownedShards(1);
    metrics.setInflight(250);
    metrics.observeCanary(1, 'realtime', 0.042);
    metrics.setOutboxMaxId(9_000_000_001n);
    const samples = await scrape(server);
    assert.equal(valueOf(samples, 'shardrelay_shards_owned', { replica: 'relay-a' }), 3);
    assert.equal(valueOf(samples, 'shardrelay_unowned_shards', { replica: 'relay-a' }), 1);
    assert.equal(
      valueOf(samples, 'shardrelay_inflight_unconfirmed', { replica: 'relay-a', sink: 'null' }),
      250,
    );
    const canary = { replica: 'relay-a', shard: '1', lane: 'realtime' };
    assert.equal(valueOf(samples, 'shardrelay_canary_latency_seconds', canary), 0.042);
    const at = valueOf(samples, 'shardrelay_canary_last_success_timestamp_seconds', canary);
    assert.ok(at >= beforeCanary && at <= Date.now() / 1000 + 1, `canary timestamp ${at}`);
    assert.equal(valueOf(samples, 'shardrelay_outbox_max_id', { replica: 'relay-a' }), 9_000_000_001);
  });

  it('rejects unbounded or invalid values without counting half a batch', async () => {
    const batch = {
      shard: 2,
      lane: 'realtime' as const,
      sent: 100,
      failedRetryable: 0,
      failedPermanent: 0,
      unknown: 0,
      dead: -1,
      batchSeconds: 0.01,
      latenciesSeconds: [],
    };
    const sentBefore = valueOf(await scrape(server), 'shardrelay_events_sent_total', {
      shard: '2',
      lane: 'realtime',
    });
    assert.throws(() => metrics.recordBatch(batch), RangeError);
    assert.throws(() => metrics.recordBatch({ ...batch, dead: 0, shard: 1.5 }), RangeError);
    assert.throws(() => metrics.recordBatch({ ...batch, dead: 0, batchSeconds: Number.NaN }), RangeError);
    // @ts-expect-error: a lane outside the type must be refused at run time too (it comes from config).
    assert.throws(() => metrics.setLag({ shard: 0, lane: 'express', events: 1, seconds: 1 }), RangeError);
    // @ts-expect-error: likewise a status outside the five classes.
    assert.throws(() => metrics.setShardStatus(0, 'realtime', 'BROKEN'), RangeError);
    const sentAfter = valueOf(await scrape(server), 'shardrelay_events_sent_total', {
      shard: '2',
      lane: 'realtime',
    });
    assert.equal(sentAfter, sentBefore);
  });

  it('keeps relays in one process apart (one registry each)', async () => {
    const other = createMetrics({ replica: 'relay-b', sink: 'null' });
    other.recordBatch({
      shard: 2,
      lane: 'realtime',
      sent: 1000,
      failedRetryable: 0,
      failedPermanent: 0,
      unknown: 0,
      dead: 0,
      batchSeconds: 0.1,
      latenciesSeconds: [],
    });
    const mine = await scrape(server);
    assert.equal(has(mine, 'shardrelay_events_sent_total', { replica: 'relay-b' }), false);
    const theirs = parseExposition(await other.registry.metrics());
    assert.equal(valueOf(theirs, 'shardrelay_events_sent_total', { replica: 'relay-b', shard: '2' }), 1000);
  });

  it('answers /healthz with 200 while alive and 503 when not', async () => {
    alive = true;
    let res = await fetch(`${server.url}/healthz`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { alive: true });
    alive = false;
    res = await fetch(`${server.url}/healthz`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { alive: false });
    alive = true;
  });

  it('answers /readyz with 503 and the reason while not ready, 200 after', async () => {
    readiness = async () => ({ ready: false, reason: 'database unreachable: connection refused' });
    let res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 503);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    assert.deepEqual(await res.json(), { ready: false, reason: 'database unreachable: connection refused' });

    readiness = async () => ({ ready: true });
    res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { ready: true });
  });

  it('answers /readyz with 503 when the check throws or hangs', async () => {
    readiness = async () => {
      throw new Error('pool is closed');
    };
    let res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 503);
    assert.match(((await res.json()) as { reason: string }).reason, /pool is closed/);

    let release: () => void = () => {};
    readiness = () =>
      new Promise((resolve) => {
        release = () => resolve({ ready: true });
      });
    res = await fetch(`${server.url}/readyz`);
    release();
    assert.equal(res.status, 503);
    assert.match(((await res.json()) as { reason: string }).reason, /did not answer within 200 ms/);
    readiness = async () => ({ ready: true });
  });

  it('answers 404 for unknown paths and 405 for other methods', async () => {
    const missing = await fetch(`${server.url}/nope`);
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    const post = await fetch(`${server.url}/metrics`, { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
    await post.body?.cancel();
    const query = await fetch(`${server.url}/healthz?verbose=1`);
    assert.equal(query.status, 200);
    await query.body?.cancel();
  });

  it('stops answering after close()', async () => {
    const extra = await startObservabilityServer({
      port: 0,
      registry: metrics.registry,
      isAlive: () => true,
      isReady: async () => ({ ready: true }),
    });
    assert.equal((await fetch(`${extra.url}/healthz`)).status, 200);
    await extra.close();
    await assert.rejects(fetch(`${extra.url}/healthz`));
  });

  it('refuses to start on a port that is taken', async () => {
    await assert.rejects(
      startObservabilityServer({
        port: server.port,
        registry: metrics.registry,
        isAlive: () => true,
        isReady: async () => ({ ready: true }),
      }),
      /EADDRINUSE/,
    );
  });
});

describe('dashboards and alert rules', () => {
  let metrics: RelayMetrics;
  let server: ObservabilityServer;
  let exported: Set<string>;

  before(async () => {
    metrics = createMetrics({ replica: 'relay-names', sink: 'null' });
    exerciseEveryMetric(metrics);
    // The per-route metrics exist when routes are configured (ShardRelayRouteDown reads them).
    const routes = parseRoutes({ sinks: { main: { type: 'null' } }, default: 'main' }, SETTINGS, {});
    observeRoutes(
      createRoutingSink({ table: routes, sinks: new Map([['main', createNullSink()]]) }),
      metrics,
    );
    server = await startObservabilityServer({
      port: 0,
      registry: metrics.registry,
      isAlive: () => true,
      isReady: async () => ({ ready: true }),
    });
    exported = new Set((await scrape(server)).map((s) => s.name));
  });
  after(() => server.close());

  it('the relay exports every metric the issue asks for', () => {
    const missing = REQUIRED_METRICS.filter((name) => !exported.has(name));
    assert.deepEqual(missing, []);
  });

  it('name only metrics the relay exports or recording rules define', () => {
    const rules = readRules(readFileSync(new URL(`../../${ALERTS}`, import.meta.url), 'utf8'));
    // One expr per rule: if the reader missed one, the counts differ.
    assert.equal(rules.exprs.length, rules.records.length + rules.alerts.length);
    assert.ok(rules.records.length >= 4, `recording rules found: ${rules.records.join(', ')}`);
    for (const alert of [
      'ShardRelayLagRising',
      'ShardRelayLagHigh',
      'ShardRelayShardStalled',
      'ShardRelayShardUnowned',
      'ShardRelayDeadLettersRising',
      'ShardRelayCanaryMissing',
      'ShardRelayCanarySlow',
      'ShardRelayNoLiveReplica',
      'ShardRelayRouteDown',
    ]) {
      assert.ok(rules.alerts.includes(alert), `alert ${alert} missing from ${ALERTS}`);
    }
    const dashboard: unknown = JSON.parse(
      readFileSync(new URL(`../../${DASHBOARD}`, import.meta.url), 'utf8'),
    );
    const panelQueries = dashboardQueries(dashboard);
    assert.ok(panelQueries.length >= 15, `dashboard queries found: ${panelQueries.length}`);

    const known = new Set([...exported, ...rules.records]);
    const unknown: string[] = [];
    for (const [source, exprs] of [
      [ALERTS, rules.exprs],
      [DASHBOARD, panelQueries],
    ] as const) {
      for (const expr of exprs) {
        const names = metricNames(expr);
        assert.ok(names.length > 0, `${source}: no shardrelay metric in ${expr}`);
        for (const name of names) if (!known.has(name)) unknown.push(`${source}: ${name} in ${expr}`);
      }
    }
    assert.deepEqual(unknown, []);
  });

  it('the name check itself catches a misspelt metric', () => {
    // Guards the tokenizer: a typo and a recording-rule-looking name must both come out as names.
    assert.deepEqual(metricNames('sum(rate(shardrelay_events_snt_total{job="shardrelay_x"}[5m]))'), [
      'shardrelay_events_snt_total',
    ]);
    assert.deepEqual(metricNames('shardrelay:events_sent:rate5m > on() shardrelay_lag_events'), [
      'shardrelay:events_sent:rate5m',
      'shardrelay_lag_events',
    ]);
    assert.equal(exported.has('shardrelay_events_snt_total'), false);
  });

  it('alert rules pass promtool check rules and their unit tests', async (t) => {
    if (skipWithoutPromtool(t)) return;
    assert.match(await promtool(['check', 'rules', ALERTS]), /SUCCESS/);
    assert.match(await promtool(['test', 'rules', ALERT_TESTS]), /SUCCESS/);
  });

  it('dashboard queries are valid PromQL', async (t) => {
    if (skipWithoutPromtool(t)) return;
    // promtool parses PromQL only inside rule files, so each panel query becomes a recording rule.
    // Template variables appear only inside label matchers' strings, which parse as they are.
    const dashboard: unknown = JSON.parse(
      readFileSync(new URL(`../../${DASHBOARD}`, import.meta.url), 'utf8'),
    );
    const exprs = dashboardQueries(dashboard).filter((q) => !q.startsWith('label_values('));
    const rules = exprs.map(
      (expr, i) => `      - record: dashboard:query_${i}\n        expr: ${JSON.stringify(expr)}\n`,
    );
    const dir = await mkdtemp(path.join(tmpdir(), 'shardrelay-dashboard-'));
    try {
      const file = path.join(dir, 'dashboard-queries.yml');
      await writeFile(file, `groups:\n  - name: dashboard\n    rules:\n${rules.join('')}`);
      assert.match(
        await promtool(['check', 'rules', file]),
        new RegExp(`SUCCESS: ${exprs.length} rules found`),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
