/**
 * The RabbitMQ side of the bench: an exchange and a durable queue of its own, so the relay's
 * mandatory publishes are routed (an unbound routing key would come back as basic.return and the
 * rows would go to dead letters) and confirmed only once the broker has stored them, as in
 * production. The queue is purged before each run and deleted at the end.
 */
import { Socket } from 'node:net';
import amqplib, { type Channel, type ChannelModel } from 'amqplib';
import { assertLoopback } from './database.js';
import { processesNamed, processTreeCpuMs } from './processCpu.js';

export const BENCH_EXCHANGE = 'shardrelay_bench';
const BENCH_QUEUE = 'shardrelay_bench';

export class AmqpBench {
  /** RabbitMQ's Erlang VM on this machine, for its CPU time; empty when not found. */
  readonly #brokerPids = processesNamed('beam.smp');

  private constructor(
    readonly url: string,
    readonly exchange: string,
    readonly brokerVersion: string,
    readonly model: ChannelModel,
    readonly channel: Channel,
  ) {}

  /** CPU of the broker so far, ms; NaN when its process is not found. */
  brokerCpuMs(): number {
    return this.#brokerPids.length === 0 ? Number.NaN : processTreeCpuMs(...this.#brokerPids);
  }

  /** Connects and declares; undefined (with the reason) when the broker does not answer. */
  static async open(url: string): Promise<AmqpBench | string> {
    assertLoopback(url, 'AMQP_URL');
    const parsed = new URL(url);
    const problem = await canConnect(parsed.hostname, Number(parsed.port || 5672), 2_000);
    if (problem) return `RabbitMQ is not reachable at ${parsed.host} (${problem})`;
    const model = await amqplib.connect(url);
    model.on('error', () => {}); // a lost connection shows as a failed purge, with its reason
    const channel = await model.createChannel();
    await channel.assertExchange(BENCH_EXCHANGE, 'topic', { durable: true });
    await channel.assertQueue(BENCH_QUEUE, { durable: true });
    await channel.bindQueue(BENCH_QUEUE, BENCH_EXCHANGE, '#');
    const version = model.connection.serverProperties.version ?? 'unknown';
    return new AmqpBench(url, BENCH_EXCHANGE, String(version), model, channel);
  }

  async purge(): Promise<void> {
    await this.channel.purgeQueue(BENCH_QUEUE);
  }

  async close(): Promise<void> {
    await this.channel.deleteQueue(BENCH_QUEUE).catch(() => {});
    await this.channel.deleteExchange(BENCH_EXCHANGE).catch(() => {});
    await this.model.close().catch(() => {});
  }
}

function canConnect(host: string, port: number, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const finish = (problem: string | null) => {
      socket.destroy();
      resolve(problem);
    };
    socket.setTimeout(timeoutMs, () => finish(`no answer within ${timeoutMs} ms`));
    socket.once('error', (error) => finish(error.message));
    socket.connect(port, host, () => finish(null));
  });
}
