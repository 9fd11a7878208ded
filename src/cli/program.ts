import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { Kysely } from 'kysely';
import { SETTINGS, loadConfig, type ConfigOverrides, type RelayConfig } from '../config.js';
import { assertReachable, createDatabase, createPool } from '../db/connection.js';
import { grantStatements } from '../db/privileges.js';
import { DEFAULT_MIGRATIONS_DIR, assertSchemaCurrent, migrateToLatest } from '../db/migrate.js';
import type { Database } from '../db/schema.js';
import {
  discardDeadLetters,
  listDeadLetters,
  replayDeadLetters,
  type DeadLetterSelection,
} from '../deadLetters.js';
import { runDemo } from '../demo.js';
import { enqueue } from '../enqueue.js';
import { ConfigError, ShardRelayError, toError, type ErrorCode } from '../errors.js';
import { findEvent, isEventId } from '../events.js';
import { createLogger } from '../logger.js';
import { redact } from '../redact.js';
import { assertPortFree, portError } from '../observability/portCheck.js';
import { limitHeapGrowth } from '../wiring/heapGrowth.js';
import { startReplica } from '../wiring/replica.js';
import { DEFAULT_HIDE_GONE_AFTER_SECONDS, readStatus } from '../status.js';
import { syntheticEvents } from '../synthetic.js';
import { formatStatus } from './formatStatus.js';
import { routeTableOf } from '../routing/loadRoutes.js';
import { formatRouteStatus, readRouteStatus } from '../routing/routeStatus.js';
import { addRoutesCommand } from './routesCommand.js';
import { watch } from './watch.js';

/**
 * Exit codes (the README's table): 0 done, 1 failure while running, 2 refused before doing anything
 * because of something the operator must fix (a setting, an input, an unreachable database or
 * broker, a missing schema, missing privileges).
 */
const EXIT_BAD_CONFIG = 2;
const REFUSED: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'CONFIG_INVALID',
  'DATABASE_UNREACHABLE',
  'SINK_UNAVAILABLE',
  'EVENT_INVALID',
  'SCHEMA_MISSING',
  'PERMISSION_DENIED',
]);

function wholeNumber(name: string, min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

/** How `--help` shows a setting's default: the value, or what it is computed from. */
function defaultText(key: keyof RelayConfig): string {
  if (key === 'replicaId') return 'hostname-pid';
  const s = SETTINGS[key];
  if (!s.default) return key === 'databaseUrl' ? 'required' : 'unset';
  const value: unknown = s.default();
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** Adds the flags of the given settings to a command (names, env and default from the SETTINGS table). */
function withSettings(command: Command, keys: readonly (keyof RelayConfig)[]): Command {
  for (const key of keys) {
    const s = SETTINGS[key];
    // Not commander's own default: a flag's default would hide the environment variable.
    command.addOption(
      new Option(`${s.flag} <value>`, `(env ${s.env}; default: ${defaultText(key)})`).argParser((v) => v),
    );
  }
  return command;
}

function overridesFrom(command: Command, keys: readonly (keyof RelayConfig)[]): ConfigOverrides {
  const opts = command.optsWithGlobals<Record<string, unknown>>();
  const result: Record<string, unknown> = {};
  for (const key of keys) {
    const attribute = new Option(`${SETTINGS[key].flag} <value>`).attributeName();
    if (opts[attribute] !== undefined) result[key] = opts[attribute];
  }
  return result;
}

/** Opens a small pool, checks the database is reachable and (unless `migrate`) migrated, runs `work`. */
async function withDatabase<T>(
  config: RelayConfig,
  work: (db: Kysely<Database>) => Promise<T>,
  { requireSchema = true }: { requireSchema?: boolean } = {},
): Promise<T> {
  const pool = createPool({
    connectionString: config.databaseUrl,
    max: 4,
    applicationName: 'shardrelay-cli',
  });
  const db = createDatabase(pool);
  try {
    await assertReachable(db, config.databaseUrl);
    if (requireSchema) await assertSchemaCurrent(db);
    return await work(db);
  } finally {
    await db.destroy();
  }
}

interface StatusOptions {
  readonly json?: boolean;
  readonly watch?: string | boolean;
  readonly hideGoneAfter: number;
}

const RUN_SETTINGS = Object.keys(SETTINGS) as (keyof RelayConfig)[];

export function buildProgram(): Command {
  const program = new Command('shardrelay')
    .description('PostgreSQL outbox relay: sharded claims, confirmed delivery, real-time and batch lanes')
    .showHelpAfterError()
    .exitOverride();
  withSettings(program, ['databaseUrl', 'logLevel']);

  program
    .command('migrate')
    .description('create or upgrade the shardrelay schema (safe when replicas run it at once)')
    .option(
      '--migrations-dir <dir>',
      `also apply your own .sql migrations from this folder (env SHARDRELAY_MIGRATIONS_DIR; default: ./${DEFAULT_MIGRATIONS_DIR} when it exists)`,
    )
    .action(async (opts: { migrationsDir?: string }, command: Command) => {
      const config = loadConfig(overridesFrom(command, ['databaseUrl', 'logLevel']));
      const given = opts.migrationsDir ?? process.env.SHARDRELAY_MIGRATIONS_DIR;
      if (given !== undefined && given !== '' && !existsSync(given)) {
        throw new ConfigError(
          '--migrations-dir / SHARDRELAY_MIGRATIONS_DIR',
          `folder ${given} does not exist`,
          `give the folder your migrations are in (\`shards new-migration\` writes to ./${DEFAULT_MIGRATIONS_DIR})`,
        );
      }
      const migrationsDir =
        given || (existsSync(DEFAULT_MIGRATIONS_DIR) ? DEFAULT_MIGRATIONS_DIR : undefined);
      const { applied } = await withDatabase(
        config,
        (db) => migrateToLatest(db, migrationsDir ? { migrationsDir } : {}),
        { requireSchema: false },
      );
      const source = migrationsDir ? ` (built-in and ${migrationsDir}/)` : '';
      console.log(
        applied.length ? `applied${source}: ${applied.join(', ')}` : `schema is up to date${source}`,
      );
    });

  withSettings(
    program
      .command('run')
      .description('run a relay replica until SIGTERM/SIGINT')
      .option('--until-drained', 'exit 0 once no row is pending'),
    RUN_SETTINGS.filter((k) => k !== 'databaseUrl' && k !== 'logLevel'),
  ).action(async (opts: { untilDrained?: boolean }, command: Command) => {
    const config = loadConfig(overridesFrom(command, RUN_SETTINGS));
    // Bad routes stop the command here (exit 2), before it connects to anything; the relay builds
    // its sinks from this table.
    const routeTable = routeTableOf(config);
    // Set-up problems are found before anything starts: a taken metrics port, an unmigrated database.
    const { metricsPort, metricsHost } = config;
    if (metricsPort !== undefined) await assertPortFree(metricsHost, metricsPort);
    await withDatabase(config, async () => {});
    const logger = createLogger(config.logLevel, { replica: config.replicaId });
    // This process is the relay's own: it sets its heap policy (wiring/heapGrowth.ts).
    limitHeapGrowth();
    // ... and, when --batch-lane-nice asks for it, the batch lane thread's priority
    // (wiring/batchLanePriority.ts; off by default).
    const relay = await startReplica({ config, logger, routeTable, lowerBatchLanePriority: true }).catch(
      (error: unknown) => {
        const code = (error as NodeJS.ErrnoException | null)?.code;
        // The port was taken between the check above and the server's bind.
        throw metricsPort !== undefined && (code === 'EADDRINUSE' || code === 'EACCES')
          ? portError(metricsHost, metricsPort, error as NodeJS.ErrnoException)
          : error;
      },
    );
    let exiting = false;
    const shutdown = async (reason: string) => {
      if (exiting) return;
      exiting = true;
      logger.info({ reason }, 'stopping: finishing in-flight batches');
      // A hard bound: whatever happens, the process is gone shortly after the shutdown timeout.
      setTimeout(() => process.exit(1), config.shutdownTimeoutMs + 2_000).unref();
      const { clean } = await relay.stop();
      process.exit(clean ? 0 : 1);
    };
    process.on('SIGTERM', () => void shutdown('SIGTERM'));
    process.on('SIGINT', () => void shutdown('SIGINT'));
    if (opts.untilDrained) {
      await relay.whenDrained();
      await shutdown('drained');
    }
    await new Promise(() => {}); // runs until a signal
  });

  withSettings(
    program
      .command('enqueue')
      .description('enqueue synthetic events (for demos and tests)')
      .requiredOption('--count <n>', 'how many events', wholeNumber('--count', 1, 10_000_000))
      .option('--topic <topic>', 'topic of the events', 'demo.event')
      .option(
        '--payload-bytes <bytes>',
        'approximate payload size',
        wholeNumber('--payload-bytes', 0, 64 * 1024 * 1024),
        200,
      )
      .addOption(new Option('--lane <lane>', 'lane column of the events').choices(['realtime', 'batch'])),
    ['maxPayloadBytes'],
  ).action(
    async (
      opts: { count: number; topic: string; payloadBytes: number; lane?: 'realtime' | 'batch' },
      command: Command,
    ) => {
      const config = loadConfig(overridesFrom(command, ['databaseUrl', 'logLevel', 'maxPayloadBytes']));
      await withDatabase(config, async (db) => {
        const chunk = 10_000;
        for (let done = 0; done < opts.count; done += chunk) {
          const events = syntheticEvents(Math.min(chunk, opts.count - done), {
            topic: opts.topic,
            payloadBytes: opts.payloadBytes,
            startAt: done,
            ...(opts.lane ? { lane: opts.lane } : {}),
          });
          await enqueue(db, events, { maxPayloadBytes: config.maxPayloadBytes });
        }
      });
      console.log(`enqueued ${opts.count} events on topic ${opts.topic}`);
    },
  );

  withSettings(
    program
      .command('status')
      .description('per shard and lane: owner, backlog, lag, health class and trend; totals')
      .option('--json', 'print one JSON object')
      .option('--watch [seconds]', 'redraw in place every few seconds (default 2)')
      .option(
        '--hide-gone-after <seconds>',
        'leave out replicas whose last heartbeat is older than this',
        wholeNumber('--hide-gone-after', 0, 31_536_000),
        DEFAULT_HIDE_GONE_AFTER_SECONDS,
      ),
    ['routes', 'routesFile'],
  ).action(async (opts: StatusOptions, command: Command) => {
    const config = loadConfig(overridesFrom(command, ['databaseUrl', 'logLevel', 'routes', 'routesFile']));
    const table = routeTableOf(config);
    await withDatabase(config, async (db) => {
      const show = async () => {
        const status = await readStatus(db, { hideGoneAfterSeconds: opts.hideGoneAfter });
        // With routes configured: per-route throughput, failures and lag (src/routing/routeStatus.ts).
        const routes = table ? await readRouteStatus(db, table) : undefined;
        if (opts.json) return JSON.stringify(routes ? { ...status, routes } : status, null, 2);
        return routes ? `${formatStatus(status)}\n\n${formatRouteStatus(routes)}` : formatStatus(status);
      };
      if (!opts.watch) return console.log(await show());
      const seconds = typeof opts.watch === 'string' ? Number(opts.watch) || 2 : 2;
      await watch(show, { seconds });
    });
  });

  const dead = program.command('dead').description('dead letters: rows given up, with their reason');
  dead
    .command('list')
    .option('--limit <n>', 'at most this many', wholeNumber('--limit', 1, 100_000), 100)
    .option('--topic <topic>', 'only this topic')
    .option('--json', 'print JSON')
    .action(async (opts: { limit: number; topic?: string; json?: boolean }, command: Command) => {
      const config = loadConfig(overridesFrom(command, ['databaseUrl', 'logLevel']));
      const rows = await withDatabase(config, (db) =>
        listDeadLetters(db, { limit: opts.limit, ...(opts.topic ? { topic: opts.topic } : {}) }),
      );
      if (opts.json) return console.log(JSON.stringify(rows, null, 2));
      if (rows.length === 0) return console.log('no dead letters');
      for (const r of rows)
        console.log(`${r.id}\t${r.eventId}\t${r.topic}\tattempts=${r.attempts}\t${r.lastError ?? ''}`);
    });
  const deadSelection = (verb: string, opts: { id?: string[]; topic?: string; all?: boolean }) => {
    if (!opts.id && !opts.topic && !opts.all) {
      throw new ConfigError(
        `dead ${verb}`,
        'nothing selected',
        'pass --id <id...>, --topic <topic> or --all',
      );
    }
    if (opts.id?.some((id) => !/^\d+$/.test(id))) {
      throw new ConfigError(
        '--id',
        `${opts.id.join(' ')} (ids are whole numbers)`,
        'pass outbox ids as printed by `dead list`',
      );
    }
    const selection: DeadLetterSelection = {
      ...(opts.id ? { ids: opts.id } : {}),
      ...(opts.topic ? { topic: opts.topic } : {}),
      ...(opts.all ? { all: true } : {}),
    };
    return selection;
  };
  dead
    .command('replay')
    .description('make dead rows pending again (fresh attempts, same event id)')
    .option('--id <id...>', 'outbox ids to replay')
    .option('--topic <topic>', 'every dead row of this topic')
    .option('--all', 'every dead row')
    .action(async (opts: { id?: string[]; topic?: string; all?: boolean }, command: Command) => {
      const config = loadConfig(overridesFrom(command, ['databaseUrl', 'logLevel']));
      const selection = deadSelection('replay', opts);
      const n = await withDatabase(config, (db) => replayDeadLetters(db, selection));
      console.log(`replayed ${n} dead letters`);
    });
  dead
    .command('discard')
    .description('delete dead rows for good (they are never sent); same selectors as replay')
    .option('--id <id...>', 'outbox ids to discard')
    .option('--topic <topic>', 'every dead row of this topic')
    .option('--all', 'every dead row')
    .action(async (opts: { id?: string[]; topic?: string; all?: boolean }, command: Command) => {
      const config = loadConfig(overridesFrom(command, ['databaseUrl', 'logLevel']));
      const selection = deadSelection('discard', opts);
      const n = await withDatabase(config, (db) => discardDeadLetters(db, selection));
      console.log(`discarded ${n} dead letters`);
    });

  program
    .command('event')
    .description('was this event sent, when, by which replica, to which sink? (within the retention window)')
    .argument('<event-id>', 'the event id (uuid)')
    .option('--json', 'print JSON')
    .action(async (eventId: string, opts: { json?: boolean }, command: Command) => {
      const config = loadConfig(overridesFrom(command, ['databaseUrl', 'logLevel']));
      if (!isEventId(eventId)) {
        throw new ConfigError(
          '<event-id>',
          `${eventId} (not a uuid)`,
          'pass an event id such as 0190a5c4-...',
        );
      }
      const event = await withDatabase(config, (db) => findEvent(db, eventId));
      if (!event) {
        console.log(
          `event ${eventId} is not known: never enqueued, sent before the retention window (SHARDRELAY_SENT_RETENTION), or a discarded dead letter`,
        );
        process.exitCode = 1;
        return;
      }
      if (opts.json) return console.log(JSON.stringify(event, null, 2));
      const lines = [
        `event     ${event.eventId}`,
        `status    ${event.status}`,
        `topic     ${event.topic}${event.key ? ` (key ${event.key})` : ''}`,
        `outbox id ${event.id} (shard ${event.shard}, lane ${event.lane})`,
        `created   ${event.createdAt.toISOString()}`,
        `attempts  ${event.attempts}`,
      ];
      if (event.sentAt) {
        lines.push(`sent      ${event.sentAt.toISOString()}`);
        lines.push(
          `by        ${event.replica ?? '(not recorded)'} to sink ${event.sink ?? '(not recorded)'}`,
        );
      }
      if (event.lastError) lines.push(`error     ${event.lastError}`);
      console.log(lines.join('\n'));
    });

  const shards = program.command('shards').description('the shard count');
  shards
    .command('new-migration')
    .description('write a migration that changes the shard count; `shardrelay migrate` applies it')
    .argument('<count>', 'the new shard count (1 to 1024)')
    .option(
      '--dir <dir>',
      'folder of your migrations (env SHARDRELAY_MIGRATIONS_DIR)',
      process.env.SHARDRELAY_MIGRATIONS_DIR || DEFAULT_MIGRATIONS_DIR,
    )
    .action(async (count: string, opts: { dir: string }) => {
      const n = Number(count);
      if (!Number.isInteger(n) || n < 1 || n > 1024) {
        throw new ConfigError(
          'shard count',
          `${count} is not a whole number from 1 to 1024`,
          'give a shard count from 1 to 1024, e.g. `shards new-migration 16`',
        );
      }
      const stamp = new Date().toISOString().replace(/\D/g, '').slice(0, 14);
      const file = path.join(opts.dir, `${stamp}_shard_count_${n}.sql`);
      await mkdir(opts.dir, { recursive: true });
      await writeFile(
        file,
        `-- Changes the shard count to ${n}. Running replicas switch within a tick; no row is lost or\n` +
          `-- sent twice. Waits at most the lock timeout for live replicas, then fails retryably.\n` +
          `SELECT shardrelay.set_shard_count(${n});\n`,
        { flag: 'wx' },
      );
      // `migrate` reads the default folder by itself, and SHARDRELAY_MIGRATIONS_DIR when set.
      const byItself =
        path.resolve(opts.dir) ===
        path.resolve(process.env.SHARDRELAY_MIGRATIONS_DIR || DEFAULT_MIGRATIONS_DIR);
      // The path alone on stdout (scripts take it); what to do next on stderr.
      console.log(file);
      console.error(
        `apply it (running replicas switch within a tick): shardrelay migrate${byItself ? '' : ` --migrations-dir ${opts.dir}`}`,
      );
    });

  program
    .command('demo')
    .description('embedded PostgreSQL (unless DATABASE_URL), synthetic load, relay, summary')
    .option('--count <n>', 'events to enqueue', wholeNumber('--count', 1, 10_000_000), 20_000)
    .option(
      '--payload-bytes <bytes>',
      'approximate payload size',
      wholeNumber('--payload-bytes', 0, 1024 * 1024),
      200,
    )
    .option(
      '--realtime-share <fraction>',
      'share of real-time events',
      (v) => {
        const f = Number(v);
        if (!(f >= 0 && f <= 1)) throw new InvalidArgumentError('--realtime-share must be between 0 and 1');
        return f;
      },
      0.1,
    )
    .addOption(
      new Option('--sink <sink>', 'sink to deliver to').choices(['pgboss', 'null']).default('pgboss'),
    )
    .option('--no-progress', 'no progress bar')
    .action(
      async (
        opts: {
          count: number;
          payloadBytes: number;
          realtimeShare: number;
          sink: 'pgboss' | 'null';
          progress: boolean;
        },
        command: Command,
      ) => {
        const summary = await runDemo({
          count: opts.count,
          payloadBytes: opts.payloadBytes,
          realtimeShare: opts.realtimeShare,
          overrides: { ...overridesFrom(command, ['databaseUrl', 'logLevel']), sink: opts.sink },
          progress: opts.progress && process.stderr.isTTY === true,
          out: (line) => console.log(line),
        });
        console.log(
          [
            '',
            'Summary',
            `  database    ${summary.database}`,
            `  enqueued    ${summary.enqueued}`,
            `  sent        ${summary.sent}`,
            `  dead        ${summary.dead}`,
            `  time        ${summary.seconds} s`,
            `  throughput  ${summary.rowsPerSecond} rows/s`,
            `  latency     p50 ${summary.latencyMs.p50} ms, p99 ${summary.latencyMs.p99} ms (created_at to confirm)`,
          ].join('\n'),
        );
        if (summary.sent !== summary.enqueued) process.exitCode = 1;
      },
    );
  addRoutesCommand(program);
  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (thrown) {
    const error = toError(thrown);
    const code = (error as { code?: string }).code;
    if (code?.startsWith('commander.')) {
      // commander already printed the problem and the help; help and version are not errors.
      return code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help'
        ? 0
        : EXIT_BAD_CONFIG;
    }
    // Whatever failed, the text may quote a URL with its credentials. Only URL forms are masked
    // here: masking each known password wherever it occurs would also garble every word that
    // happens to equal one (a password "shardrelay" would hide the product's name in the fix).
    if (error instanceof ShardRelayError) {
      console.error(redact(`shardrelay: ${error.describe()}`));
      return REFUSED.has(error.code) ? EXIT_BAD_CONFIG : 1;
    }
    if (code === '42501') {
      // PostgreSQL's insufficient_privilege, from a command without its own check (status, dead).
      const fix = argv.includes('migrate')
        ? 'run migrate as the role that owns schema shardrelay (the first migrate creates it and needs CREATE on the database)'
        : `as the owner of schema shardrelay, run: ${grantStatements('<the role of DATABASE_URL>').join(' ')}`;
      console.error(redact(`shardrelay: ${error.message}\n  fix: ${fix}`));
      return EXIT_BAD_CONFIG;
    }
    console.error(redact(`shardrelay: ${error.stack ?? error.message}`));
    return 1;
  }
}
