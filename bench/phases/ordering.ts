/**
 * Scenario `ordering`: what per-key ordering (`--ordering key`) costs. The relay (its own process,
 * as in the drain phases) drains the same keyed backlog with ordering off and on, with two key
 * distributions, the four variants interleaved round by round (ABBA, as the rounds of the drain
 * phases) so that a noisy neighbour hits them alike:
 *
 *   keys    100 keys, evenly (consecutive rows have different keys)
 *   skewed  one key holds 50 % of the rows (every other row), the rest over 100 keys: with ordering
 *           on, that key lives in one shard and its rows go one broker round trip after another
 *
 * The figure is the ratio to ordering off in the same round and distribution; absolute rates
 * depend on whatever else the machine runs. RabbitMQ when it answers (the cost of ordering is
 * broker round trips); otherwise the null sink, which shows only the relay's own cost of ordering.
 * Each run is timed as the drain phases time theirs: relay started first, a warm-up backlog
 * drained untimed, then the backlog committed in one transaction and the clock run from that
 * commit to the last batch; CPU per 1,000 rows of the relay, PostgreSQL and the broker.
 *
 * The indexes of ordering (db/shardIndex.ts) are built by the relay with ordering on; the run
 * waits for them before its clock starts. Before a run with ordering off they are dropped, as an
 * installation that never orders does not have them (each costs every completion an index update).
 */
import os from 'node:os';
import type { ChildUsage, SinkKind } from '../harness/ipc.js';
import { CpuWindow } from '../harness/cpuWindow.js';
import { cpuPer1k, mb, otherCores, rowsPerBatch, type CpuPer1k } from '../harness/results.js';
import { median } from '../harness/stats.js';
import type { PhaseContext } from './context.js';
import { warmupRows } from './floor.js';
import { problemsOf, startRelayChild } from './relayChild.js';

const KEYS = 100;

export interface OrderingVariant {
  readonly ordering: 'off' | 'key';
  readonly distribution: 'keys' | 'skewed';
}

const VARIANTS: readonly OrderingVariant[] = [
  { ordering: 'off', distribution: 'keys' },
  { ordering: 'key', distribution: 'keys' },
  { ordering: 'off', distribution: 'skewed' },
  { ordering: 'key', distribution: 'skewed' },
];

export interface OrderingRun extends OrderingVariant {
  readonly round: number;
  readonly rows: number;
  readonly seconds: number;
  readonly rowsPerSec: number;
  readonly cpuMsPer1kRows: CpuPer1k;
  readonly rowsPerBatch: number | null;
  readonly otherCpuCores: number | null;
  readonly peakRssMb: number;
  /** 1-minute load average at the start and the end of the run. */
  readonly load: readonly [number, number];
  readonly problems: readonly string[];
}

export interface OrderingBenchResult {
  readonly sink: SinkKind;
  readonly rows: number;
  readonly rounds: number;
  readonly shards: number;
  readonly batchSize: number;
  readonly cores: number;
  readonly runs: readonly OrderingRun[];
  /** Per variant: median rows/s, and the median of its ratio to ordering off in the same round. */
  readonly summary: readonly (OrderingVariant & {
    readonly rowsPerSec: number;
    readonly ratioToOff: number;
    readonly relayCpuMsPer1k: number | null;
    readonly postgresCpuMsPer1k: number | null;
    readonly brokerCpuMsPer1k: number | null;
  })[];
  readonly loadBefore: string;
  readonly loadAfter: string;
}

export interface OrderingBenchOptions {
  readonly context: PhaseContext;
  readonly rows?: number;
  readonly rounds?: number;
}

export async function runOrderingBench(options: OrderingBenchOptions): Promise<OrderingBenchResult> {
  const { context } = options;
  const quick = context.options.quick;
  // The skewed run with ordering on sends half its rows one round trip apart (about 250 rows/s on
  // RabbitMQ on the loaded 2-core machine), so the backlog stays small: with 3,000 rows the eight
  // quick runs take about 80 s, within the quick bench's 2 minutes.
  const rows = options.rows ?? Math.min(context.options.rows, quick ? 3_000 : 10_000);
  const rounds = options.rounds ?? 2;
  const sink: SinkKind = context.amqp ? 'rabbitmq' : 'null';
  const loadBefore = uptime();
  const runs: OrderingRun[] = [];
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? VARIANTS : [...VARIANTS].reverse();
    for (const variant of order) {
      context.log(`ordering: ${variant.ordering}, ${variant.distribution} (round ${round})`);
      const run = await runVariant(context, sink, variant, round, rows);
      context.log(
        `ordering: ${variant.ordering}, ${variant.distribution}: ${Math.round(run.rowsPerSec)} rows/s, load ${run.load.join('-')}`,
      );
      runs.push(run);
    }
  }
  const summary = VARIANTS.map((v) => {
    const mine = runs.filter((r) => r.ordering === v.ordering && r.distribution === v.distribution);
    const ratios = mine.flatMap((r) => {
      const off = runs.find(
        (o) => o.round === r.round && o.distribution === r.distribution && o.ordering === 'off',
      );
      return off ? [r.rowsPerSec / off.rowsPerSec] : [];
    });
    const cpu = (of: keyof CpuPer1k) => {
      const known = mine.map((r) => r.cpuMsPer1kRows[of]).filter((c): c is number => c !== null);
      return known.length > 0 ? median(known) : null;
    };
    return {
      ...v,
      rowsPerSec: median(mine.map((r) => r.rowsPerSec)),
      ratioToOff: median(ratios),
      relayCpuMsPer1k: cpu('client'),
      postgresCpuMsPer1k: cpu('postgres'),
      brokerCpuMsPer1k: cpu('broker'),
    };
  });
  return {
    sink,
    rows,
    rounds,
    shards: context.options.shards,
    batchSize: context.options.batchSize,
    cores: os.cpus().length,
    runs,
    summary,
    loadBefore,
    loadAfter: uptime(),
  };
}

async function runVariant(
  context: PhaseContext,
  sink: SinkKind,
  variant: OrderingVariant,
  round: number,
  rows: number,
): Promise<OrderingRun> {
  const { database } = context;
  await database.reset();
  if (sink === 'rabbitmq') await context.amqp?.purge();
  if (variant.ordering === 'off') await dropOrderingIndexes(context);
  const child = await startRelayChild(context, sink, { settings: { ordering: variant.ordering } });
  try {
    if (variant.ordering === 'key') await waitForOrderingIndexes(context);
    const warmup = warmupRows(rows);
    await loadKeyedBacklog(context, 1, warmup, variant.distribution);
    await child.waitForSent(warmup, timeoutMs(warmup));

    let window: CpuWindow | undefined;
    let startedAt = 0;
    let loadStart = 0;
    await loadKeyedBacklog(context, warmup + 1, rows, variant.distribution, async () => {
      loadStart = os.loadavg()[0] ?? 0;
      window = await CpuWindow.open(child, database, sink === 'rabbitmq' ? context.amqp : undefined);
      startedAt = Date.now();
    });
    if (!window) throw new Error('the backlog was committed without opening the CPU window');
    const drained: ChildUsage = await child.waitForSent(warmup + rows, timeoutMs(rows));
    const cpu = await window.close();
    const seconds = (drained.lastBatchAt - startedAt) / 1000;
    const usage = await child.usage();
    return {
      ...variant,
      round,
      rows,
      seconds,
      rowsPerSec: rows / seconds,
      cpuMsPer1kRows: cpuPer1k(cpu, rows),
      rowsPerBatch: rowsPerBatch(cpu),
      otherCpuCores: otherCores(cpu),
      peakRssMb: mb(usage.maxRssBytes),
      load: [round1(loadStart), round1(os.loadavg()[0] ?? 0)],
      problems: problemsOf(usage, await database.statusCounts()),
    };
  } finally {
    await child.stop();
  }
}

/** Ordering on sends a hot key's rows one round trip apart: allow 20 ms a row beyond a minute. */
const timeoutMs = (rows: number) => 60_000 + rows * 20;

/**
 * `rows` rows numbered from `first`, keyed by `distribution`, in one transaction; `beforeCommit`
 * runs inside it, right before the commit (the CPU window opens there, as in the drain phases).
 */
async function loadKeyedBacklog(
  context: PhaseContext,
  first: number,
  rows: number,
  distribution: OrderingVariant['distribution'],
  beforeCommit?: () => Promise<void>,
): Promise<void> {
  const client = await context.database.newClient();
  try {
    await client.query('BEGIN');
    await client.query(
      `INSERT INTO shardrelay.outbox (topic, key, payload)
       SELECT 'bench.ordering',
              CASE WHEN $4 AND g % 2 = 0 THEN 'hot' ELSE 'key-' || (g % ${KEYS}) END,
              jsonb_build_object('n', g, 'padding', $3::text)
         FROM generate_series($1::int, $1::int + $2::int - 1) AS g`,
      [first, rows, 'x'.repeat(Math.max(0, context.options.payloadBytes - 40)), distribution === 'skewed'],
    );
    // Statistics in the same transaction, as the drain phases' backlog has (database.ts loadBacklog).
    await client.query('ANALYZE shardrelay.outbox');
    await beforeCommit?.();
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  } finally {
    await client.end();
  }
}

async function dropOrderingIndexes(context: PhaseContext): Promise<void> {
  const client = await context.database.newClient();
  try {
    const { rows } = await client.query<{ name: string }>(
      `SELECT indexname AS name FROM pg_indexes
        WHERE schemaname = 'shardrelay' AND tablename = 'outbox'
          AND (indexname LIKE 'outbox\\_pending\\_%keyed\\_mod%' OR indexname = 'outbox_key_order')`,
    );
    for (const { name } of rows) await client.query(`DROP INDEX IF EXISTS shardrelay.${name}`);
  } finally {
    await client.end();
  }
}

async function waitForOrderingIndexes(context: PhaseContext): Promise<void> {
  const wanted = [`outbox_pending_keyed_mod${context.options.shards}`, 'outbox_key_order'];
  const client = await context.database.newClient();
  try {
    for (let i = 0; i < 1_200; i++) {
      const { rows } = await client.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE c.relname = ANY($1::text[]) AND i.indisvalid`,
        [wanted],
      );
      if ((rows[0]?.n ?? 0) === wanted.length) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`the relay did not build ${wanted.join(', ')} within 120 s`);
  } finally {
    await client.end();
  }
}

const round1 = (n: number) => Math.round(n * 10) / 10;

function uptime(): string {
  return os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(', ');
}

const fmt = (n: number | null | undefined, digits = 0) =>
  n === null || n === undefined || !Number.isFinite(n)
    ? '-'
    : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** The lines the bench prints under its table. */
export function formatOrderingReport(result: OrderingBenchResult): string {
  const lines = [
    `Per-key ordering: ${result.sink} sink, ${fmt(result.rows)} rows a run, ${result.rounds} rounds interleaved, ` +
      `${result.shards} shards, batch ${fmt(result.batchSize)}, ${result.cores} cores; ` +
      `load average before ${result.loadBefore}, after ${result.loadAfter} (1, 5, 15 min)`,
    '',
    '| keys | ordering | rows/s (median) | × ordering off, same round (median) | CPU ms / 1,000 rows: relay | PostgreSQL | broker | load (start-end of each run) |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const s of result.summary) {
    const mine = result.runs.filter((r) => r.ordering === s.ordering && r.distribution === s.distribution);
    lines.push(
      `| ${s.distribution === 'keys' ? `${KEYS} keys, even` : '1 key = 50 %'} | ${s.ordering} | ${fmt(s.rowsPerSec)} | ` +
        `${fmt(s.ratioToOff, 2)} | ${fmt(s.relayCpuMsPer1k, 1)} | ${fmt(s.postgresCpuMsPer1k, 1)} | ` +
        `${fmt(s.brokerCpuMsPer1k, 1)} | ${mine.map((r) => r.load.join('-')).join(', ')} |`,
    );
  }
  const problems = result.runs.flatMap((r) =>
    r.problems.map((p) => `${r.ordering}, ${r.distribution}, round ${r.round}: ${p}`),
  );
  for (const p of problems) lines.push(`- problem: ${p}`);
  return lines.join('\n');
}
