/**
 * The command line of `npm run bench`, and the sizes of a full and a `--quick` run. The sizes are
 * chosen so that a full run ends within 10 minutes and a quick one within 2 on a 2-core machine
 * (see bench/RESULTS.md); the driver also enforces the time budget (main.ts).
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_BATCH_GATHER_MS, defaultConnectionsPerLane } from '../../src/config.js';
import { EXTERNAL_PHASES, PHASES, type PhaseName } from './results.js';

export interface BenchOptions {
  readonly quick: boolean;
  /** Rounds of the interleaved schedule: every drain phase runs once per round. */
  readonly runs: number;
  /** Rounds that also run the load phases (max-sustainable, recovery): all, or the last one in --quick. */
  readonly loadPhaseRuns: number;
  /** Backlog of each drain phase. */
  readonly rows: number;
  readonly payloadBytes: number;
  readonly shards: number;
  readonly batchSize: number;
  /** Connections of the relay's batch lane, and of the floor; default the relay's own default. */
  readonly connections: number;
  /** The relay's --batch-gather-ms; default the relay's own default. */
  readonly batchGatherMs: number | undefined;
  /** Offered load of the latency window after each relay drain, rows/s, and its length. */
  readonly latencyRowsPerSec: number;
  readonly latencyWindowMs: number;
  /** Max sustainable throughput: length of a step and the most steps. */
  readonly sustainStepMs: number;
  readonly sustainMaxSteps: number;
  readonly recoverySpikeRows: number;
  readonly recoveryBaselineMs: number;
  readonly recoveryMaxMs: number;
  /** Wall-clock budget; phases that no longer fit are skipped and reported as skipped. */
  readonly budgetMs: number;
  readonly jsonPath: string;
  readonly chartPath: string;
  readonly databaseUrl: string | undefined;
  readonly amqpUrl: string;
  /** CI=true: RabbitMQ must be reachable. */
  readonly requireRabbitMq: boolean;
  readonly phases: ReadonlySet<PhaseName>;
  readonly soakMinutes: number | undefined;
  /** Offered load of the soak, rows/s; default 80% of the max sustainable rate measured first. */
  readonly soakRowsPerSec: number | undefined;
  /** The relay's sent-record retention during the soak (SHARDRELAY_SENT_RETENTION syntax). */
  readonly soakSentRetention: string;
  readonly rssBacklogRows: number | undefined;
  /** Write a V8 CPU profile of every relay process here. */
  readonly cpuProfileDir: string | undefined;
  /** Extra Node/V8 flags of every relay process (e.g. `--trace-gc-nvp`), split at spaces. */
  readonly relayNodeFlags: readonly string[];
  /** The command as typed, for the report. */
  readonly command: string;
}

const positiveInt = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a whole number ≥ 1');
  return n;
};

const phaseList = (value: string): PhaseName[] => {
  const names = value.split(',').map((s) => s.trim());
  for (const name of names) {
    if (!(PHASES as readonly string[]).includes(name)) {
      throw new InvalidArgumentError(`unknown phase ${name}; phases: ${PHASES.join(', ')}`);
    }
  }
  return names as PhaseName[];
};

export function parseOptions(argv: readonly string[], env: NodeJS.ProcessEnv): BenchOptions {
  const program = new Command()
    .name('npm run bench --')
    .description(
      'Measures the relay against the SQL floor on the same data, interleaved, and prints a table ' +
        '(stdout), JSON (--json) and a chart of the recovery phase (--chart).',
    )
    .option(
      '--quick',
      'a short run (about 2 minutes): 10,000-row backlogs, shorter windows, load phases once, ' +
        'a 50,000-row recovery spike, no lane or pipelining scenario unless named in --only',
    )
    .option('--runs <n>', 'rounds; every phase runs once per round (at least 3)', positiveInt, 3)
    .option('--rows <n>', 'backlog of each drain phase (default 100000, quick 10000)', positiveInt)
    .option('--payload-bytes <n>', 'JSON payload size of a row', positiveInt, 200)
    .option('--shards <n>', 'shard count', positiveInt, 8)
    .option('--batch-size <n>', 'batch size of the relay batch lane and the floor', positiveInt, 1000)
    .option(
      '--connections <n>',
      `connections of the relay batch lane and the floor (default the relay's: ${defaultConnectionsPerLane()} on this machine)`,
      positiveInt,
      defaultConnectionsPerLane(),
    )
    .option(
      '--batch-gather-ms <n>',
      `the relay's --batch-gather-ms (default the relay's, ${DEFAULT_BATCH_GATHER_MS})`,
      (value: string) => {
        const n = Number(value);
        if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a whole number ≥ 0');
        return n;
      },
    )
    .option(
      '--latency-rate <n>',
      'offered rows/s while measuring latency after each drain',
      positiveInt,
      5000,
    )
    .addOption(
      new Option('--only <phases>', `run only these (comma-separated): ${PHASES.join(', ')}`).argParser(
        phaseList,
      ),
    )
    .addOption(new Option('--skip <phases>', 'skip these (comma-separated)').argParser(phaseList))
    .option('--json <path>', 'where to write the full JSON', 'bench/results/bench.json')
    .option('--chart <path>', 'where to write the recovery chart (.svg)', 'bench/results/recovery.svg')
    .option('--database-url <url>', 'a local PostgreSQL server (default: DATABASE_URL, else an embedded one)')
    .option('--amqp-url <url>', 'RabbitMQ (default: AMQP_URL, else amqp://guest:guest@127.0.0.1:5672)')
    .option('--budget-minutes <n>', 'time budget (default 15, quick 2, soak its minutes + 5)', positiveInt)
    .option('--cpu-prof <dir>', 'write a V8 CPU profile of every relay process into this folder')
    .option(
      '--relay-node-flags <flags>',
      'extra Node/V8 flags of every relay process, e.g. "--trace-gc-nvp" (where its garbage collection goes)',
    )
    .option(
      '--soak [minutes]',
      'only a soak of the relay at 80% of its max sustainable rate (default 30 minutes)',
    )
    .option('--soak-rate <rows/s>', 'offered load of the soak instead of 80% of max sustainable', positiveInt)
    .option('--soak-retention <duration>', 'sent-record retention of the relay in the soak', '5m')
    .option('--rss-backlog [rows]', 'only the relay peak RSS while draining a backlog (default 1000000)')
    .exitOverride((error) => {
      process.exit(error.exitCode === 0 ? 0 : 2);
    })
    .parse([...argv], { from: 'user' });
  const o = program.opts<{
    quick?: boolean;
    runs: number;
    rows?: number;
    payloadBytes: number;
    shards: number;
    batchSize: number;
    connections: number;
    batchGatherMs?: number;
    latencyRate: number;
    only?: PhaseName[];
    skip?: PhaseName[];
    json: string;
    chart: string;
    databaseUrl?: string;
    amqpUrl?: string;
    budgetMinutes?: number;
    cpuProf?: string;
    relayNodeFlags?: string;
    soak?: boolean | string;
    soakRate?: number;
    soakRetention: string;
    rssBacklog?: boolean | string;
  }>();
  if (o.runs < 3) {
    console.error('--runs must be at least 3: medians of fewer runs do not say how noisy a figure is');
    process.exit(2);
  }
  const quick = o.quick === true;
  // The lane scenario alone takes minutes; --quick leaves the scenarios of other issues out unless asked.
  const selected = new Set<PhaseName>(
    o.only ?? (quick ? PHASES.filter((p) => !(EXTERNAL_PHASES as readonly string[]).includes(p)) : PHASES),
  );
  for (const name of o.skip ?? []) selected.delete(name);
  const optionalNumber = (value: boolean | string | undefined, fallback: number) =>
    value === undefined ? undefined : value === true ? fallback : positiveInt(String(value));
  return {
    quick,
    runs: o.runs,
    loadPhaseRuns: quick ? 1 : o.runs,
    rows: o.rows ?? (quick ? 10_000 : 100_000),
    payloadBytes: o.payloadBytes,
    shards: o.shards,
    batchSize: o.batchSize,
    connections: o.connections,
    batchGatherMs: o.batchGatherMs,
    latencyRowsPerSec: o.latencyRate,
    latencyWindowMs: quick ? 1_000 : 4_000,
    sustainStepMs: quick ? 1_200 : 3_000,
    sustainMaxSteps: 12,
    // Inserting 100,000 rows alone takes 7-11 s on the loaded 2-core machine; --quick halves it.
    recoverySpikeRows: quick ? 50_000 : 100_000,
    recoveryBaselineMs: quick ? 1_000 : 3_000,
    recoveryMaxMs: 60_000,
    // A soak runs as long as asked, plus its max-sustainable measurement and start-up. The default
    // run: 3 rounds of the phases and the scenarios took 294 s on a quiet 2-core machine (fourteenth
    // session); 15 minutes holds the scenarios' estimates (external.ts) and the rounds on a machine
    // twice as slow.
    budgetMs:
      (o.budgetMinutes ?? (o.soak !== undefined ? (optionalNumber(o.soak, 30) ?? 30) + 5 : quick ? 2 : 15)) *
      60_000,
    jsonPath: o.json,
    chartPath: o.chart,
    databaseUrl: o.databaseUrl ?? (env.DATABASE_URL || undefined),
    amqpUrl: o.amqpUrl ?? (env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672'),
    requireRabbitMq: env.CI === 'true',
    phases: selected,
    soakMinutes: optionalNumber(o.soak, 30),
    soakRowsPerSec: o.soakRate,
    soakSentRetention: o.soakRetention,
    rssBacklogRows: optionalNumber(o.rssBacklog, 1_000_000),
    cpuProfileDir: o.cpuProf,
    relayNodeFlags: (o.relayNodeFlags ?? '').split(' ').filter((flag) => flag.length > 0),
    command: ['npm run bench', ...(argv.length > 0 ? ['--', ...argv] : [])].join(' '),
  };
}
