import { SingleBar, Presets } from 'cli-progress';
import { sql } from 'kysely';
import { loadConfig, type ConfigOverrides } from './config.js';
import { createDatabase, createPool } from './db/connection.js';
import { startEmbeddedPostgres, type EmbeddedPostgresHandle } from './db/embeddedPostgres.js';
import { migrateToLatest } from './db/migrate.js';
import { enqueue } from './enqueue.js';
import { createLogger } from './logger.js';
import { limitHeapGrowth } from './wiring/heapGrowth.js';
import { startReplica } from './wiring/replica.js';
import { syntheticEvents } from './synthetic.js';

export interface DemoOptions {
  readonly count: number;
  readonly payloadBytes: number;
  readonly realtimeShare: number;
  readonly overrides: ConfigOverrides;
  readonly progress: boolean;
  readonly out: (line: string) => void;
}

export interface DemoSummary {
  readonly database: 'embedded' | 'DATABASE_URL';
  readonly enqueued: number;
  readonly sent: number;
  readonly dead: number;
  readonly seconds: number;
  readonly rowsPerSecond: number;
  readonly latencyMs: { readonly p50: number; readonly p99: number };
}

/**
 * `shardrelay demo`: a PostgreSQL (embedded unless DATABASE_URL is set), the schema, a synthetic
 * workload, the relay draining it with a progress bar, and a summary. Shuts everything down after.
 */
export async function runDemo(options: DemoOptions): Promise<DemoSummary> {
  const givenUrl =
    (options.overrides.databaseUrl as string | undefined) || process.env.DATABASE_URL || undefined;
  let embedded: EmbeddedPostgresHandle | undefined;
  if (!givenUrl) {
    options.out('Starting an embedded PostgreSQL (set DATABASE_URL to use your own)...');
    embedded = await startEmbeddedPostgres();
  }
  try {
    const config = loadConfig({
      logLevel: 'warn',
      ...options.overrides,
      databaseUrl: givenUrl ?? embedded?.url,
    });
    const pool = createPool({
      connectionString: config.databaseUrl,
      max: 2,
      applicationName: 'shardrelay-demo',
    });
    const db = createDatabase(pool);
    try {
      await migrateToLatest(db);
      const realtime = Math.round(options.count * options.realtimeShare);
      options.out(`Enqueuing ${options.count} events (${realtime} real-time) into shardrelay.outbox...`);
      const before = await db
        .selectFrom('shardrelay.events')
        .select(sql<string>`coalesce(max(id), 0)`.as('max'))
        .executeTakeFirstOrThrow();
      await enqueue(db, [
        ...syntheticEvents(options.count - realtime, {
          payloadBytes: options.payloadBytes,
          topic: 'demo.batch',
        }),
        ...syntheticEvents(realtime, {
          payloadBytes: options.payloadBytes,
          topic: 'demo.realtime',
          lane: 'realtime',
        }),
      ]);

      options.out(`Relaying with sink "${config.sink}" over the shards in shardrelay.shard_config...`);
      const started = performance.now();
      limitHeapGrowth();
      const relay = await startReplica({ config, logger: createLogger(config.logLevel) });
      const bar = options.progress
        ? new SingleBar(
            { format: '  {bar} {percentage}% | {value}/{total} sent | {rate} rows/s' },
            Presets.shades_classic,
          )
        : undefined;
      let sentSoFar = 0;
      bar?.start(options.count, 0, { rate: 0 });
      const progressTimer = setInterval(() => {
        void db
          .selectFrom('shardrelay.outbox')
          .select(sql<string>`count(*)`.as('n'))
          .where('id', '>', before.max)
          .where('status', '=', 'pending')
          .where('canary', '=', false)
          .executeTakeFirstOrThrow()
          .then((r) => {
            // Sent rows leave the outbox: what is done is what is no longer pending.
            sentSoFar = options.count - Number(r.n);
            const seconds = (performance.now() - started) / 1000;
            bar?.update(sentSoFar, { rate: Math.round(sentSoFar / Math.max(seconds, 0.001)) });
          })
          .catch(() => {});
      }, 250);
      await relay.whenDrained();
      const seconds = (performance.now() - started) / 1000;
      clearInterval(progressTimer);
      bar?.update(options.count, { rate: Math.round(options.count / seconds) });
      bar?.stop();
      await relay.stop();

      // Sent rows leave the outbox; the sent record (kept for the retention window) has them.
      const summary = await db
        .selectFrom('shardrelay.events')
        .select([
          sql<string>`count(*) FILTER (WHERE status = 'sent')`.as('sent'),
          sql<string>`count(*) FILTER (WHERE status = 'dead')`.as('dead'),
          sql<number[]>`percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
            ORDER BY extract(epoch FROM sent_at - created_at) * 1000)`.as('p'),
        ])
        .where('id', '>', before.max)
        .executeTakeFirstOrThrow();
      const sent = Number(summary.sent);
      return {
        database: embedded ? 'embedded' : 'DATABASE_URL',
        enqueued: options.count,
        sent,
        dead: Number(summary.dead),
        seconds: Math.round(seconds * 100) / 100,
        rowsPerSecond: Math.round(sent / seconds),
        latencyMs: {
          p50: Math.round(Number(summary.p?.[0] ?? 0)),
          p99: Math.round(Number(summary.p?.[1] ?? 0)),
        },
      };
    } finally {
      await db.destroy();
    }
  } finally {
    await embedded?.stop();
  }
}
