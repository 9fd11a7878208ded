/**
 * Confirm pipelining, measured against RabbitMQ on 127.0.0.1: what it costs to wait for each
 * confirm before sending the next event (the scheduled job shardrelay replaces) against sending a
 * batch and awaiting all its confirms at once (createRabbitMqSink).
 *
 * Two comparisons of `events` events each:
 * 1. raw: one-by-one on an amqplib confirm channel vs pipelined through the sink, on this broker's
 *    own confirm latency (a durable queue, so each confirm waits for the broker to store it);
 * 2. delayed: the sink wrapped so every confirm arrives `confirmDelayMs` (20 ms) later, the latency
 *    of a remote broker. One by one that costs events × 20 ms (about 20 s for 1,000), so by default
 *    only `delayedSample` events are measured and the time is extrapolated linearly (the output
 *    says so); `--full` measures all of them. Pipelined, a batch pays the 20 ms once.
 *
 * Usage: npx tsx bench/studies/confirmPipelining.ts [--json PATH] [--full]
 * Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672); loopback addresses only.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import amqplib, { type Channel, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { redact } from '../../src/redact.js';
import { encodeBinary } from '../../src/sinks/cloudEvent.js';
import { createRabbitMqSink } from '../../src/sinks/rabbitmqSink.js';
import type { OutboxMessage, SendContext, SendOutcome, Sink } from '../../src/sinks/sink.js';

export interface ConfirmPipeliningOptions {
  readonly amqpUrl?: string;
  /** Events per comparison. Default 1,000. */
  readonly events?: number;
  /** Events per sendBatch call when pipelining. Default 500, the relay's default batch. */
  readonly batchSize?: number;
  /** Injected confirm delay of the second comparison. Default 20 ms. */
  readonly confirmDelayMs?: number;
  /** Events actually sent one by one with the delay (the rest is extrapolated). Default 100. */
  readonly delayedSample?: number;
  /** Whole-run limit; the bench throws past it. Default 120 s. */
  readonly timeLimitMs?: number;
}

export interface OneByOneFigure {
  /** Events actually sent one by one. */
  readonly measuredEvents: number;
  readonly measuredMs: number;
  /** Time for all `events`; equals measuredMs unless extrapolated. */
  readonly totalMs: number;
  readonly extrapolated: boolean;
}

export interface ConfirmPipeliningResult {
  readonly broker: string;
  readonly events: number;
  readonly batchSize: number;
  readonly raw: { readonly oneByOne: OneByOneFigure; readonly pipelinedMs: number; readonly speedup: number };
  readonly delayed: {
    readonly confirmDelayMs: number;
    readonly oneByOne: OneByOneFigure;
    readonly pipelinedMs: number;
    readonly speedup: number;
    readonly targetMs: number;
    readonly metTarget: boolean;
  };
}

const DEFAULTS = {
  amqpUrl: 'amqp://guest:guest@127.0.0.1:5672',
  events: 1_000,
  batchSize: 500,
  confirmDelayMs: 20,
  delayedSample: 100,
  timeLimitMs: 120_000,
  /** The pipelined run with the injected delay should stay within this. */
  delayedTargetMs: 500,
} as const;

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

export async function runConfirmPipeliningBench(
  options: ConfirmPipeliningOptions = {},
): Promise<ConfirmPipeliningResult> {
  const url = options.amqpUrl ?? process.env.AMQP_URL ?? DEFAULTS.amqpUrl;
  if (!LOOPBACK.has(new URL(url).hostname)) {
    throw new Error(`the bench talks to 127.0.0.1 only; AMQP_URL points at ${redact(url)}`);
  }
  const events = options.events ?? DEFAULTS.events;
  const batchSize = options.batchSize ?? DEFAULTS.batchSize;
  const confirmDelayMs = options.confirmDelayMs ?? DEFAULTS.confirmDelayMs;
  const delayedSample = Math.min(events, options.delayedSample ?? DEFAULTS.delayedSample);
  const timeLimitMs = options.timeLimitMs ?? DEFAULTS.timeLimitMs;

  const exchange = `bench_confirm_${randomBytes(4).toString('hex')}`;
  const admin = await amqplib.connect(url);
  admin.on('error', () => {}); // a lost admin connection shows as a failed cleanup below
  const channel = await admin.createChannel();
  // A durable queue bound to everything: mandatory publishes are routed, and a persistent
  // message is confirmed only once the broker has stored it, as in production.
  await channel.assertExchange(exchange, 'topic', { durable: true });
  await channel.assertQueue(exchange, { durable: true });
  await channel.bindQueue(exchange, exchange, '#');
  const sink = createRabbitMqSink({ url, exchange });

  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the confirm pipelining bench exceeded ${timeLimitMs} ms`)),
      timeLimitMs,
    );
  });
  const run = (async (): Promise<ConfirmPipeliningResult> => {
    await sink.start();
    const confirmChannel = await admin.createConfirmChannel();
    // Warm-up, not measured: JIT and the broker's first queue writes would otherwise be billed to
    // whichever variant runs first.
    await publishOneByOne(confirmChannel, exchange, messages(50));
    await sendPipelined(sink, messages(50), batchSize);
    const rawOneByOneMs = await timed(() => publishOneByOne(confirmChannel, exchange, messages(events)));
    await confirmChannel.close();
    const rawPipelinedMs = await timed(() => sendPipelined(sink, messages(events), batchSize));

    const delayedSink = withConfirmDelay(sink, confirmDelayMs);
    const delayedOneByOneMs = await timed(() => sendPipelined(delayedSink, messages(delayedSample), 1));
    const delayedPipelinedMs = await timed(() => sendPipelined(delayedSink, messages(events), batchSize));

    const rawOneByOne = figure(events, events, rawOneByOneMs);
    const delayedOneByOne = figure(events, delayedSample, delayedOneByOneMs);
    return {
      broker: redact(url),
      events,
      batchSize,
      raw: {
        oneByOne: rawOneByOne,
        pipelinedMs: round(rawPipelinedMs),
        speedup: round(rawOneByOne.totalMs / rawPipelinedMs),
      },
      delayed: {
        confirmDelayMs,
        oneByOne: delayedOneByOne,
        pipelinedMs: round(delayedPipelinedMs),
        speedup: round(delayedOneByOne.totalMs / delayedPipelinedMs),
        targetMs: DEFAULTS.delayedTargetMs,
        metTarget: delayedPipelinedMs <= DEFAULTS.delayedTargetMs,
      },
    };
  })();
  // Past the time limit the run is abandoned; its later failure (the sink is closed under it) is moot.
  run.catch(() => undefined);
  try {
    return await Promise.race([expired, run]);
  } finally {
    clearTimeout(timer);
    await sink.close();
    await cleanup(admin, channel, exchange);
  }
}

/**
 * A sink whose confirms come `delayMs` later, as from a broker one network hop away: each
 * sendBatch call waits that long once after its inner batch, whatever its size.
 */
export function withConfirmDelay(inner: Sink, delayMs: number): Sink {
  return {
    name: `${inner.name}+${delayMs}ms`,
    start: () => inner.start(),
    close: () => inner.close(),
    async sendBatch(batch, context) {
      const outcomes = await inner.sendBatch(batch, context);
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      return outcomes;
    },
  };
}

/** The legacy loop: publish, wait for the confirm, then the next one. */
async function publishOneByOne(channel: ConfirmChannel, exchange: string, batch: readonly OutboxMessage[]) {
  for (const message of batch) {
    const { headers, body } = encodeBinary(message);
    await new Promise<void>((resolve, reject) => {
      channel.publish(
        exchange,
        message.topic,
        body,
        { persistent: true, mandatory: true, messageId: message.eventId, headers },
        (error: unknown) =>
          error ? reject(new Error(`event ${message.eventId} was not confirmed`)) : resolve(),
      );
    });
  }
}

async function sendPipelined(sink: Sink, batch: readonly OutboxMessage[], batchSize: number): Promise<void> {
  const context = (): SendContext => ({ deadline: Date.now() + 30_000 });
  for (let i = 0; i < batch.length; i += batchSize) {
    const outcomes: SendOutcome[] = await sink.sendBatch(batch.slice(i, i + batchSize), context());
    const failed = outcomes.find((o) => o.status !== 'confirmed');
    if (failed) throw new Error(`a bench event was not confirmed: ${JSON.stringify(failed)}`);
  }
}

function messages(count: number): OutboxMessage[] {
  const createdAt = new Date();
  return Array.from({ length: count }, (_, index) => ({
    id: String(index + 1),
    eventId: randomUUID(),
    topic: 'bench.confirm',
    key: null,
    payloadJson: JSON.stringify({ index, amount: 42, currency: 'EUR' }),
    headers: {},
    correlationId: null,
    traceparent: null,
    lane: 'batch' as const,
    createdAt,
    attempts: 0,
  }));
}

async function timed(run: () => Promise<void>): Promise<number> {
  const started = performance.now();
  await run();
  return performance.now() - started;
}

function figure(events: number, measuredEvents: number, measuredMs: number): OneByOneFigure {
  return {
    measuredEvents,
    measuredMs: round(measuredMs),
    totalMs: round((measuredMs * events) / measuredEvents),
    extrapolated: measuredEvents < events,
  };
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}

async function cleanup(admin: ChannelModel, channel: Channel, exchange: string): Promise<void> {
  try {
    await channel.deleteQueue(exchange);
    await channel.deleteExchange(exchange);
  } finally {
    await admin.close().catch(() => undefined);
  }
}

export function formatConfirmPipelining(result: ConfirmPipeliningResult): string {
  const { raw, delayed } = result;
  const oneByOne = (f: OneByOneFigure): string =>
    f.extrapolated
      ? `${f.totalMs.toFixed(0)} ms (extrapolated from ${f.measuredEvents} events in ${f.measuredMs.toFixed(0)} ms)`
      : `${f.totalMs.toFixed(0)} ms`;
  const rows = [
    ['confirm latency', 'one by one', 'pipelined', 'speed-up'],
    [
      "broker's own",
      oneByOne(raw.oneByOne),
      `${raw.pipelinedMs.toFixed(0)} ms`,
      `${raw.speedup.toFixed(1)}×`,
    ],
    [
      `+${delayed.confirmDelayMs} ms injected`,
      oneByOne(delayed.oneByOne),
      `${delayed.pipelinedMs.toFixed(0)} ms`,
      `${delayed.speedup.toFixed(1)}×`,
    ],
  ];
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  const line = (row: string[]): string => row.map((cell, column) => cell.padEnd(widths[column]!)).join(' | ');
  return [
    `confirm pipelining: ${result.events} events, RabbitMQ ${result.broker}, batches of ${result.batchSize}`,
    '',
    line(rows[0]!),
    widths.map((w) => '-'.repeat(w)).join('-|-'),
    ...rows.slice(1).map(line),
    '',
    `pipelined with +${delayed.confirmDelayMs} ms confirms: ${delayed.pipelinedMs.toFixed(0)} ms ` +
      `(target ≤ ${delayed.targetMs} ms: ${delayed.metTarget ? 'met' : 'MISSED'})`,
  ].join('\n');
}

function argValue(name: string): string | undefined {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : undefined;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const full = process.argv.includes('--full');
  const jsonPath = argValue('--json');
  runConfirmPipeliningBench(full ? { delayedSample: Number.MAX_SAFE_INTEGER } : {})
    .then((result) => {
      console.log(formatConfirmPipelining(result));
      const json = JSON.stringify(result, null, 2);
      console.log(`\n${json}`);
      if (jsonPath) writeFileSync(jsonPath, `${json}\n`);
    })
    .catch((error: unknown) => {
      console.error(error instanceof Error ? error.message : String(error));
      process.exitCode = 1;
    });
}
