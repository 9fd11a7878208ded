/**
 * Phase 7 scenario `broker-sinks`: the relay (its own process, as in the drain phases) drains the
 * same backlog into the null sink and into each broker sink: AMQP 1.0 (a RabbitMQ node with the
 * AMQP 1.0 plugin), Kafka (librdkafka's mock cluster, not an Apache Kafka) and Kinesis
 * (kinesalite), each broker started here on loopback and stopped after its run. Reports rows/s with
 * confirms, latency p50/p99 under a steady load after the drain, and CPU per 1,000 rows of the
 * relay and of the broker; the target is the relay's CPU per 1,000 rows with each sink at most
 * twice its CPU with the null sink (issue #19). The brokers share the machine's cores with the
 * relay and PostgreSQL, so their CPU is reported apart.
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
import type { RunResult } from '../harness/results.js';

/** Rows per run: enough for a steady rate, few enough to keep the scenario near a minute a sink. */
const MAX_ROWS = 50_000;
const TARGET = 'shardrelay_bench';

export interface BrokerSinkRun {
  readonly sink: SinkKind;
  readonly broker: string;
  readonly result?: RunResult;
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

export async function runBrokerSinksBench(options: { context: PhaseContext }): Promise<BrokerSinkRun[]> {
  const { context } = options;
  const rows = Math.min(context.options.rows, MAX_ROWS);
  const runs: BrokerSinkRun[] = [];
  for (const sink of ['null', 'amqp10', 'kafka', 'kinesis'] as const) {
    let broker: RunningBroker | undefined;
    try {
      broker = await startBroker(sink);
      context.log(`broker-sinks: ${sink}${broker ? ` (${broker.description})` : ''}, ${rows} rows`);
      const result = await runRelayDrain(context, 1, sink, {
        rows,
        latencyWindow: true,
        phase: `broker-sinks-${sink}`,
        ...(broker ? { broker, relaySettings: broker.settings } : {}),
      });
      runs.push({ sink, broker: broker?.description ?? 'none', result });
    } catch (error) {
      runs.push({
        sink,
        broker: broker?.description ?? 'none',
        error: error instanceof Error ? error.message : String(error),
      });
    } finally {
      await broker?.stop().catch(() => undefined);
    }
  }
  return runs;
}

export function formatBrokerSinks(runs: readonly BrokerSinkRun[]): string {
  const nullCpu = runs.find((r) => r.sink === 'null')?.result?.cpuMsPer1kRows.client ?? null;
  const lines = [
    'Broker sinks (relay CPU target: <= 2x the null sink):',
    '| sink | rows/s | latency p50 / p99 ms | relay CPU ms/1k rows | x null | broker CPU ms/1k rows | problems |',
    '| --- | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const run of runs) {
    const r = run.result;
    if (!r) {
      lines.push(`| ${run.sink} | failed: ${run.error ?? ''} | | | | | |`);
      continue;
    }
    const relay = r.cpuMsPer1kRows.client;
    const ratio = relay !== null && nullCpu ? (relay / nullCpu).toFixed(2) : '-';
    const latency = r.latencyMs ? `${r.latencyMs.p50.toFixed(1)} / ${r.latencyMs.p99.toFixed(1)}` : '-';
    lines.push(
      `| ${run.sink} | ${Math.round(r.rowsPerSec)} | ${latency} | ${relay ?? '-'} | ${ratio} | ${
        r.cpuMsPer1kRows.broker ?? '-'
      } | ${r.problems.join('; ') || 'none'} |`,
    );
  }
  return lines.join('\n');
}
