/**
 * Canary events: every `canaryIntervalSeconds`, each replica puts one synthetic row per owned shard
 * and lane into the outbox. It is claimed, sent through the real sink and completed like any row,
 * so its round trip (created_at to sent_at) measures the whole path a business event takes now. It
 * travels as CloudEvent type `shardrelay.canary` (its topic), which consumers can ignore; with
 * RabbitMQ, bind a queue to that routing key (a short one: `x-max-length`), or the broker returns
 * it as unroutable and the canary becomes a dead letter, which the canaries view then shows.
 *
 * Rows are `canary = true`: the completer, the rollups, the views, the metrics and `status` leave
 * them out of every business count. The observer (observability/observer.ts) reads their round
 * trip from the `shardrelay.canaries` view and exports it; shardrelay.maintain() deletes them an
 * hour after they complete.
 *
 * Landing in a given shard: the shard is id % shard_count and ids come from the outbox's identity,
 * so the canary draws ids from that same sequence (nextval: never handed out twice, so no clash
 * with application rows) and inserts with the id whose remainder is the shard it wants. One draw of
 * shard_count consecutive ids covers every remainder once; ids drawn but not used are gaps, counted
 * in produced_minute.reserved_ids so the views do not count them as produced.
 *
 * Landing in a given lane: the lane is decided by the relay's lane predicate, so the canary sets
 * the predicate's inputs it controls (lane, priority, key, correlation_id) to values found by
 * evaluating the predicate here (`canaryLaneInputs`). A predicate no canary can satisfy (say,
 * `topic in (...)`) leaves that lane without canaries, logged once at start.
 */
import { sql, type Kysely } from 'kysely';
import type { Database, Lane } from '../db/schema.js';
import { toError } from '../errors.js';
import { evaluateLanePredicate, NUMERIC_LANE_COLUMNS } from '../lanes/evaluateLanePredicate.js';
import type { LaneColumn, LanePredicate } from '../lanes/lanePredicate.js';
import type { Logger } from '../logger.js';

export const CANARY_TOPIC = 'shardrelay.canary';

/** The predicate inputs a canary row can choose; topic and attempts are fixed. */
export interface CanaryLaneInputs {
  readonly lane: string;
  readonly priority: number;
  readonly key: string | null;
  readonly correlation_id: string | null;
}

type Value = string | number | null;

function constantsOf(p: LanePredicate, column: LaneColumn, into: Set<Value>): Set<Value> {
  if ('and' in p) p.and.forEach((q) => constantsOf(q, column, into));
  else if ('or' in p) p.or.forEach((q) => constantsOf(q, column, into));
  else if ('not' in p) constantsOf(p.not, column, into);
  else if (p.column === column && p.value !== undefined) {
    for (const v of Array.isArray(p.value) ? p.value : [p.value]) {
      into.add(v as string | number);
      if (NUMERIC_LANE_COLUMNS.includes(column)) into.add(Number(v) + 1).add(Number(v) - 1);
      else into.add(`${String(v)}~`);
    }
  }
  return into;
}

/**
 * Values of the inputs a canary controls that put it in `lane` under `predicate` (real-time: the
 * predicate is TRUE; batch: it is not), trying the predicate's own constants and their neighbours;
 * undefined when none does. The candidates start with the natural choice (lane column = lane).
 */
export function canaryLaneInputs(predicate: LanePredicate, lane: Lane): CanaryLaneInputs | undefined {
  const candidates = (column: LaneColumn, first: readonly Value[]) => [
    ...new Set<Value>([...first, ...constantsOf(predicate, column, new Set())]),
  ];
  const lanes = candidates('lane', [lane, lane === 'realtime' ? 'batch' : 'realtime']);
  const priorities = candidates('priority', [0]).filter((v): v is number => typeof v === 'number');
  const keys = candidates('key', [null]);
  const correlations = candidates('correlation_id', [null]);
  let tried = 0;
  for (const l of lanes) {
    for (const priority of priorities) {
      for (const key of keys) {
        for (const correlation of correlations) {
          if (++tried > 20_000) return undefined;
          const inputs = {
            lane: String(l),
            priority,
            key: key === null ? null : String(key),
            correlation_id: correlation === null ? null : String(correlation),
          };
          const value = evaluateLanePredicate(predicate, { ...inputs, topic: CANARY_TOPIC, attempts: 0 });
          if ((value === true) === (lane === 'realtime')) return inputs;
        }
      }
    }
  }
  return undefined;
}

export interface CanaryOptions {
  readonly db: Kysely<Database>;
  readonly replicaId: string;
  readonly intervalSeconds: number;
  /** The lanes this relay runs: it injects canaries for these. */
  readonly lanes: readonly Lane[];
  readonly lanePredicate: LanePredicate;
  /** The shard count and the shards this replica owns now; undefined before the first tick. */
  readonly owned: () => { readonly shardCount: number; readonly shards: readonly number[] } | undefined;
  readonly logger: Logger;
}

export interface Canaries {
  /** Injects one canary per owned shard and lane now; resolves with the rows inserted. */
  inject(): Promise<number>;
  stop(): Promise<void>;
}

/** Starts the injection timer (nothing when the interval is 0). */
export function startCanaries(options: CanaryOptions): Canaries {
  const { db, logger } = options;
  const inputs = new Map<Lane, CanaryLaneInputs>();
  for (const lane of options.lanes) {
    const found = canaryLaneInputs(options.lanePredicate, lane);
    if (found) inputs.set(lane, found);
    else
      logger.warn(
        { lane, lanePredicate: options.lanePredicate },
        'no canary row can be in this lane under the lane predicate; this lane runs without canaries',
      );
  }

  async function inject(): Promise<number> {
    const owned = options.owned();
    if (!owned || owned.shards.length === 0 || inputs.size === 0) return 0;
    const wanted = new Map<number, Lane[]>(owned.shards.map((shard) => [shard, [...inputs.keys()]]));
    return db.transaction().execute(async (trx) => {
      const rows: { id: string; shard: number; lane: Lane }[] = [];
      let drawn = 0;
      let maxDrawn = 0n;
      // Concurrent inserts take ids between ours, so a round may miss a remainder; three rounds
      // almost always complete, and a shard missed now gets its canary next interval.
      for (let round = 0; round < 3 && wanted.size > 0; round++) {
        const perShard = Math.max(...[...wanted.values()].map((lanes) => lanes.length));
        const { rows: ids } = await sql<{ id: string }>`
          SELECT nextval(pg_get_serial_sequence('shardrelay.outbox', 'id'))::text AS id
            FROM generate_series(1, ${owned.shardCount * perShard})`.execute(trx);
        drawn += ids.length;
        for (const { id } of ids) {
          const value = BigInt(id);
          if (value > maxDrawn) maxDrawn = value;
          const shard = Number(value % BigInt(owned.shardCount));
          const lanes = wanted.get(shard);
          const lane = lanes?.shift();
          if (!lane) continue;
          rows.push({ id, shard, lane });
          if (lanes?.length === 0) wanted.delete(shard);
        }
      }
      if (rows.length === 0) return 0;
      const lane = (row: (typeof rows)[number]) => inputs.get(row.lane) as CanaryLaneInputs;
      await sql`
        INSERT INTO shardrelay.outbox
          (id, topic, payload, lane, priority, key, correlation_id, canary)
        OVERRIDING SYSTEM VALUE
        SELECT v.id, ${CANARY_TOPIC}, v.payload, v.lane, v.priority, v.key, v.correlation_id, true
          FROM unnest(${rows.map((r) => r.id)}::bigint[], ${rows.map((r) =>
            JSON.stringify({ canary: true, replica: options.replicaId, shard: r.shard, lane: r.lane }),
          )}::jsonb[], ${rows.map((r) => lane(r).lane)}::text[], ${rows.map((r) => lane(r).priority)}::int[],
                      ${rows.map((r) => lane(r).key)}::text[], ${rows.map((r) => lane(r).correlation_id)}::text[])
            AS v(id, payload, lane, priority, key, correlation_id)`.execute(trx);
      // Every drawn id is accounted for as not produced by the application (see produced_minute).
      await sql`
        INSERT INTO shardrelay.produced_minute AS p (minute, max_id, reserved_ids, sampled_at)
        VALUES (date_trunc('minute', shardrelay.now()), ${maxDrawn.toString()}, ${drawn}, shardrelay.now())
        ON CONFLICT (minute) DO UPDATE SET
          max_id = GREATEST(p.max_id, EXCLUDED.max_id),
          reserved_ids = p.reserved_ids + EXCLUDED.reserved_ids`.execute(trx);
      return rows.length;
    });
  }

  let running: Promise<unknown> | undefined;
  const timer =
    options.intervalSeconds > 0
      ? setInterval(() => {
          running ??= inject()
            .catch((error: unknown) =>
              logger.warn(
                { err: toError(error).message },
                'injecting canary events failed; next interval retries',
              ),
            )
            .finally(() => (running = undefined));
        }, options.intervalSeconds * 1000)
      : undefined;
  timer?.unref();

  return {
    inject,
    async stop() {
      if (timer) clearInterval(timer);
      await running;
    },
  };
}
