/**
 * `shardrelay status` shows the picture of the views (owner, lag, class and a trend per shard and
 * lane); `status --watch` redraws it in place on a terminal and prints frames one after the other
 * elsewhere.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { sparkline } from '../../src/cli/formatStatus.js';
import { watch } from '../../src/cli/watch.js';
import { runCli, spawnCli, waitFor } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** The views' clock for the CLI process, through its connection URL (a session setting). */
const T = '2030-01-01T12:10:30Z';
const withClock = (url: string) => {
  const parsed = new URL(url);
  parsed.searchParams.set('options', `-c shardrelay.now=${T}`);
  return parsed.toString();
};

describe('shardrelay status', () => {
  let t: TestDatabase;
  let url: string;
  before(async () => {
    t = await createTestDatabase('status_watch');
    url = withClock(t.url);
    // 3 rows per shard, created 30 s before T.
    await sql`
      INSERT INTO shardrelay.outbox (topic, payload, created_at, available_at)
      SELECT 'orders.created', '{}', ${T}::timestamptz - interval '30 seconds', ${T}::timestamptz - interval '30 seconds'
        FROM generate_series(1, 24)`.execute(t.db);
    // Shard 1 is held by a live replica, the others by nobody; shard 1's backlog rose over the
    // last minutes (lag samples as its owner's observer records them).
    await sql`
      INSERT INTO shardrelay.shard_lease (generation, shard, owner, owner_instance, acquired_at, renewed_at, expires_at)
      VALUES (1, 1, 'relay-a', gen_random_uuid(), ${T}, ${T}, ${T}::timestamptz + interval '1 hour')`.execute(
      t.db,
    );
    await sql`
      INSERT INTO shardrelay.lag_minute (minute, shard, lane, pending_min, pending_max, pending_last, sampled_at)
      SELECT date_trunc('minute', ${T}::timestamptz) - k * interval '1 minute', 1, 'batch',
             2 * (6 - k), 2 * (6 - k), 2 * (6 - k), ${T}::timestamptz
        FROM generate_series(0, 5) AS k`.execute(t.db);
  });
  after(() => t.close());

  it('prints owner, backlog, class, trend and reason per shard and lane', async () => {
    const { code, stdout } = await runCli(['status'], { DATABASE_URL: url });
    assert.equal(code, 0);
    assert.match(stdout, /pending 24 .* health: 1 OK, 1 WARN, 14 STOP/);
    const fields = (shard: number, lane: string) =>
      stdout
        .split('\n')
        .find((l) => l.trim().startsWith(`${shard}  ${lane} `))
        ?.trim()
        .split(/\s+/);
    // shard, lane, class, owner, pending, lag, trend (samples 2, 4 .. 12 over the last 6 minutes), reason
    const [, , status, owner, pending, lag, trend, ...reason] = fields(1, 'batch') ?? [];
    assert.deepEqual([status, owner, pending, trend, reason.join(' ')], ['WARN', 'relay-a', '3', '····▂▃▅▆▇█', 'backlog rose from 2 to 3 rows in 5 min']); // prettier-ignore
    assert.equal(lag, '30.0s');
    assert.deepEqual(fields(1, 'realtime')?.slice(2, 6), ['OK', 'relay-a', '0', '-']);
    assert.deepEqual(fields(0, 'batch')?.slice(2, 5), ['STOP', '-', '3']);
    assert.match(stdout, /^\s+0 {2}batch .* no live owner: no lease$/m);
    const json = JSON.parse((await runCli(['status', '--json'], { DATABASE_URL: url })).stdout);
    assert.deepEqual(json.health[2].trend, [null, null, null, null, 2, 4, 6, 8, 10, 12]);
  });

  it('--watch prints a fresh frame every interval', { timeout: 90_000 }, async () => {
    const child = spawnCli(['status', '--watch', '0.5'], { DATABASE_URL: url });
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor(
        'three frames',
        async () => (out.match(/every [\d.]+s.*, Ctrl-C to stop/g) ?? []).length >= 3,
        60_000,
      );
    } finally {
      child.kill('SIGINT');
    }
    // Not a terminal (a pipe): plain frames, no escape codes.
    assert.equal(out.includes('\x1b['), false);
    assert.equal((out.match(/^shard {2}lane {6}class/gm) ?? []).length >= 3, true);
  });

  it('redraws in place on a terminal: home, overwrite each line, erase the rest', async () => {
    const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 20 });
    let written = '';
    terminal.on('data', (d: Buffer) => (written += d.toString()));
    const frames = ['first frame\nsecond line that is longer than twenty', 'short'];
    const stop = new AbortController();
    let n = 0;
    await watch(
      async () => {
        const frame = frames[n++] as string;
        if (n === frames.length) stop.abort();
        return frame;
      },
      { seconds: 0.5, out: terminal, signal: stop.signal },
    );
    // ESC written as <ESC>: <ESC>[2J clears the screen, <ESC>[H homes the cursor, <ESC>[K erases
    // to the end of the line, <ESC>[J erases below.
    const shown = written.replaceAll('\x1b', '<ESC>');
    const [cleared, first, second] = shown.split('<ESC>[H');
    assert.equal(cleared, '<ESC>[2J', 'the screen is cleared once, before the first frame');
    assert.match(first ?? '', /\n<ESC>\[K\nfirst frame<ESC>\[K\nsecond line that is <ESC>\[K\n<ESC>\[J$/);
    assert.match(second ?? '', /\n<ESC>\[K\nshort<ESC>\[K\n<ESC>\[J$/);
    assert.equal(second?.includes('<ESC>[2J'), false, 'later frames overwrite instead of clearing');
  });

  it('waits at least four reads between reads when a read is dear, and says so', async () => {
    const out = new PassThrough();
    let written = '';
    out.on('data', (d: Buffer) => (written += d.toString()));
    const stop = new AbortController();
    const starts: number[] = [];
    await watch(
      async () => {
        starts.push(performance.now());
        if (starts.length === 2) stop.abort();
        // A read of 300 ms (a large backlog's count), against a 0.5 s interval.
        await new Promise((resolve) => setTimeout(resolve, 300));
        return 'picture';
      },
      { seconds: 0.5, out, signal: stop.signal },
    );
    const gap = (starts[1] ?? 0) - (starts[0] ?? 0);
    // 300 ms of read, then at least 4 × 300 ms of wait (timers may fire up to ~2 ms early).
    assert.ok(gap >= 1_490, `the second read started ${gap.toFixed(0)} ms after the first`);
    assert.match(written, /every 1\.[2-9]s \(the read took 0\.3s; asked 0\.5s\), Ctrl-C to stop/);
  });

  it('draws the backlog of each minute as a bar scaled to its peak', () => {
    assert.equal(sparkline([0, 2, 4, 8, null, 8]), '▁▃▅█·█');
    assert.equal(sparkline([0, 0, null]), '▁▁·');
  });

  it('--json gives per lane: pending, oldest pending age and latency p50/p95/p99', async () => {
    // Real-time rows sent 2 minutes before T: 90 in the bucket [2.5, 5) ms, 10 in [50, 100) ms (the
    // slowest 60 ms, which caps the top bucket).
    await sql`
      INSERT INTO shardrelay.rollup_minute
        (minute, shard, lane, batches, sent, failed, dead, latency_ms_sum, latency_ms_max, latency_buckets)
      VALUES (date_trunc('minute', ${T}::timestamptz) - interval '2 minutes', 1, 'realtime', 100, 100, 0, 0,
              90 * 3 + 10 * 60, 60,
              shardrelay.latency_histogram(array_cat(array_fill(3::float8, ARRAY[90]), array_fill(60::float8, ARRAY[10]))))`.execute(
      t.db,
    );
    const { code, stdout } = await runCli(['status', '--json'], { DATABASE_URL: url });
    assert.equal(code, 0);
    const lanes = (JSON.parse(stdout) as { lanes: Record<string, unknown>[] }).lanes;
    const batch = lanes.find((l) => l.lane === 'batch');
    const realtime = lanes.find((l) => l.lane === 'realtime');
    assert.deepEqual(batch, {
      lane: 'batch',
      pending: 24,
      oldestPendingSeconds: 30,
      p50Ms: null,
      p95Ms: null,
      p99Ms: null,
    });
    assert.equal(realtime?.pending, 0);
    assert.equal(realtime?.oldestPendingSeconds, null);
    const [p50, p95, p99] = [realtime?.p50Ms, realtime?.p95Ms, realtime?.p99Ms].map(Number);
    assert.ok(p50 !== undefined && p50 >= 2.5 && p50 < 5, `p50 ${p50}`);
    assert.ok(p95 !== undefined && p95 >= 50 && p95 <= 60, `p95 ${p95}`);
    assert.ok(p99 !== undefined && p99 >= 50 && p99 <= 60, `p99 ${p99}`);
  });
});
