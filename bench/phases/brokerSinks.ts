/**
 * Phase 7 scenario `broker-sinks`: the relay (its own process, as in the drain phases) drains the
 * same backlog into each broker sink: AMQP 1.0 (a RabbitMQ node with the AMQP 1.0 plugin), Kafka
 * (librdkafka's mock cluster, not an Apache Kafka) and Kinesis (kinesalite), each broker started
 * here on loopback and stopped after its rounds, each of its drains right after a null-sink drain
 * of the same rows. Reports rows/s with confirms, latency p50/p99 under a steady load after the
 * first drain, and CPU per 1,000 rows of the relay and of the broker; the target is the relay's
 * CPU per 1,000 rows with each sink at most twice its CPU with the null sink (issue #19), taken
 * round by round. The brokers share the machine's cores with the relay and PostgreSQL, so their
 * CPU is reported apart.
 */
import rhea, { type EventContext } from 'rhea';
import { startAmqp10Broker } from '../../test/brokers/amqp10Broker.js';
import { startKafkaMock } from '../../test/brokers/kafkaMock.js';
import { startKinesalite } from '../../test/brokers/kinesalite.js';
import type { MeasuredBroker } from '../harness/cpuWindow.js';
import type { SinkKind } from '../harness/ipc.js';
import type { PhaseContext } from './context.js';
import { runRelayDrain } from './relayDrain.js';
import { processTreeCpuMs } from '../harness/processCpu.js';
import { median } from '../harness/stats.js';
import type { RunResult } from '../harness/results.js';

/** Rows per run: enough for a steady rate, few enough to keep the scenario near a minute a sink. */
const MAX_ROWS = 50_000;
const TARGET = 'shardrelay_bench';

export interface BrokerSinkRun {
  readonly sink: SinkKind;
  readonly round: number;
  readonly broker: string;
  readonly result?: RunResult;
  /** The null sink's drain of the same round, just before this one. */
  readonly nullResult?: RunResult;
  readonly error?: string;
}

interface RunningBroker extends MeasuredBroker {
  readonly description: string;
  readonly settings: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

function cpuOf(pid: number): () => number {
  return () => (pid > 0 ? processTreeCpuMs(pid) : Number.NaN);
}

async function startBroker(sink: SinkKind): Promise<RunningBroker | undefined> {
  switch (sink) {
    case 'amqp10': {
      const broker = await startAmqp10Broker();
      // A consumer that accepts everything, so the queue does not grow into the node's memory alarm.
      const container = rhea.create_container();
      // A node stopping ends the session with an error; rhea throws such errors unless handled.
      container.on('error', () => undefined);
      const connection = container.connect({
        host: broker.host,
        port: broker.port,
        username: broker.user,
        password: broker.password,
        reconnect: false,
      });
      connection.on('disconnected', () => undefined);
      connection.on('connection_error', () => undefined);
      connection.open_receiver({ source: { address: `/queue/${TARGET}`, durable: 2 }, credit_window: 1000 });
      await new Promise<void>((resolve) =>
        connection.once('receiver_open', (_context: EventContext) => resolve()),
      );
      return {
        description: 'RabbitMQ 3.10 node with rabbitmq_amqp1_0, durable queue',
        settings: { sink: 'amqp10', amqp10Url: broker.url, amqp10Address: `/queue/${TARGET}` },
        brokerCpuMs: cpuOf(broker.pid),
        async stop() {
          connection.close();
          await broker.stop();
        },
      };
    }
    case 'kafka': {
      const mock = await startKafkaMock(3, [`${TARGET}:4`]);
      return {
        description: "librdkafka 2.0.2's mock cluster, 3 brokers, 4 partitions (not an Apache Kafka)",
        settings: { sink: 'kafka', kafkaBrokers: mock.bootstrap, kafkaTopic: TARGET },
        brokerCpuMs: cpuOf(mock.pid),
        stop: () => mock.stop(),
      };
    }
    case 'kinesis': {
      const kinesis = await startKinesalite();
      await kinesis.createStream(TARGET, 4);
      // The relay takes its AWS credentials from the environment (kinesalite checks none).
      process.env.AWS_ACCESS_KEY_ID ??= 'bench';
      process.env.AWS_SECRET_ACCESS_KEY ??= 'bench';
      return {
        description: 'kinesalite 3.3.3 (in-memory emulator), 4 shards',
        settings: {
          sink: 'kinesis',
          kinesisEndpoint: kinesis.endpoint,
          kinesisRegion: 'us-east-1',
          kinesisStream: TARGET,
        },
        brokerCpuMs: cpuOf(kinesis.pid),
        stop: () => kinesis.stop(),
      };
    }
    default:
      return undefined;
  }
}

/**
 * Rounds of each broker sink: each round drains the same backlog first into the null sink, then
 * into the broker sink, each in a fresh relay, and the ratio is taken within the round. Why pairs:
 * one drain of each sink (the scenario before) moved by ±20 % from run to run on the 2-core
 * machine (the null drain's relay CPU alone 9.4-14.5 ms per 1,000 rows in five runs of one
 * evening; a sink's 21.6-33.2), which is more than any change to a sink's cost, and the
 * ratio's numerator and denominator came from drains minutes apart.
 */
export async function runBrokerSinksBench(options: { context: PhaseContext }): Promise<BrokerSinkRun[]> {
  const { context } = options;
  const rows = Math.min(context.options.rows, MAX_ROWS);
  const rounds = context.options.quick ? 1 : Math.max(1, context.options.runs);
  const runs: BrokerSinkRun[] = [];
  for (const sink of ['amqp10', 'kafka', 'kinesis'] as const) {
    let broker: RunningBroker | undefined;
    try {
      broker = await startBroker(sink);
    } catch (error) {
      runs.push({
        sink,
        round: 1,
        broker: 'none',
        error: error instanceof Error ? error.message : String(error),
      });
      continue;
    }
    try {
      for (let round = 1; round <= rounds; round += 1) {
        context.log(
          `broker-sinks: ${sink} (${broker?.description ?? ''}), round ${round}: null, then ${sink}, ${rows} rows each`,
        );
        const drain = async (kind: SinkKind, measured?: RunningBroker): Promise<BrokerSinkRun> => {
          try {
            const result = await runRelayDrain(context, round, kind, {
              rows,
              // The latency window once per sink; it adds seconds, not information, to later rounds.
              latencyWindow: round === 1,
              phase: `broker-sinks-${kind}`,
              ...(measured ? { broker: measured, relaySettings: measured.settings } : {}),
            });
            return { sink: kind, round, broker: measured?.description ?? 'none', result };
          } catch (error) {
            return {
              sink: kind,
              round,
              broker: measured?.description ?? 'none',
              error: error instanceof Error ? error.message : String(error),
            };
          }
        };
        const floor = await drain('null');
        const measured = await drain(sink, broker);
        runs.push({ ...measured, nullResult: floor.result });
      }
    } finally {
      await broker?.stop().catch(() => undefined);
    }
  }
  return runs;
}

/** Median GC pauses per 1,000 rows of these drains (relayDrain.ts's detail), '-' when not measured. */
function gcCell(runs: readonly RunResult[]): string {
  const pauses = runs.flatMap((run) => {
    const value = run.detail?.gcPauseMsPer1kRows;
    return typeof value === 'number' ? [value] : [];
  });
  return pauses.length > 0 ? median(pauses).toFixed(1) : '-';
}

export function formatBrokerSinks(runs: readonly BrokerSinkRun[]): string {
  const lines = [
    "Broker sinks (relay CPU target: <= 2x the null sink), rounds of a null drain then the sink's drain; medians over the rounds:",
    '| sink | rounds | rows/s | latency p50 / p99 ms (round 1) | relay CPU ms/1k rows: sink | null, same rounds | x null, by round | x null, median | relay GC pauses ms/1k rows: sink / null | broker CPU ms/1k rows | problems |',
    '| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |',
  ];
  for (const sink of [...new Set(runs.map((r) => r.sink))]) {
    const mine = runs.filter((r) => r.sink === sink);
    const paired = mine.flatMap((r) => {
      const sinkCpu = r.result?.cpuMsPer1kRows.client ?? null;
      const nullCpu = r.nullResult?.cpuMsPer1kRows.client ?? null;
      return r.result && r.nullResult && sinkCpu !== null && nullCpu !== null
        ? [{ run: r.result, nullRun: r.nullResult, sinkCpu, nullCpu }]
        : [];
    });
    const errors = mine
      .filter((r) => !r.result || !r.nullResult)
      .map((r) => `round ${r.round} failed: ${r.error ?? 'its null drain failed'}`);
    if (paired.length === 0) {
      lines.push(`| ${sink} | 0 | ${errors.join('; ')} | | | | | | | | |`);
      continue;
    }
    const ratios = paired.map((p) => p.sinkCpu / p.nullCpu);
    const first = mine.find((r) => r.round === 1)?.result?.latencyMs;
    const brokerCpu = paired.flatMap((p) =>
      p.run.cpuMsPer1kRows.broker === null ? [] : [p.run.cpuMsPer1kRows.broker],
    );
    const cells = [
      sink,
      String(paired.length),
      String(Math.round(median(paired.map((p) => p.run.rowsPerSec)))),
      first ? `${first.p50.toFixed(1)} / ${first.p99.toFixed(1)}` : '-',
      median(paired.map((p) => p.sinkCpu)).toFixed(1),
      median(paired.map((p) => p.nullCpu)).toFixed(1),
      ratios.map((r) => r.toFixed(2)).join(', '),
      median(ratios).toFixed(2),
      `${gcCell(paired.map((p) => p.run))} / ${gcCell(paired.map((p) => p.nullRun))}`,
      brokerCpu.length > 0 ? median(brokerCpu).toFixed(0) : '-',
      [...new Set(paired.flatMap((p) => p.run.problems)), ...errors].join('; ') || 'none',
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}
