/**
 * Kafka sink, over `@confluentinc/kafka-javascript` (Confluent's binding of librdkafka; its
 * node-rdkafka-style `Producer`, not its KafkaJS-compatible layer, whose `send()` reports one
 * offset per partition rather than one result per record).
 *
 * Delivery: an idempotent producer (`enable.idempotence`, hence `acks=all` and per-partition
 * ordering across librdkafka's own retries). Every record carries, as its opaque, a callback that
 * records its outcome among its batch's; the delivery report librdkafka builds from the broker's
 * produce response calls it, so each row gets the confirm of its own record. Delivery reports are polled on librdkafka's
 * background thread, not on a JavaScript timer, so a confirm is not delayed by a poll interval.
 *
 * Partitioning: the row's key is the Kafka record key, and librdkafka's `murmur2_random`
 * partitioner puts it on the partition the Java client's default partitioner (murmur2) would, so
 * records of one key keep their order for every consumer, and producers in other languages agree
 * on where a key lives. A row without a key is sent with a null key (it has no order to keep):
 * `murmur2_random` then spreads such records over the partitions at random.
 *
 * Wire format: CloudEvents' Kafka binding, binary mode: the value is the payload's JSON; the
 * attributes travel as `ce_*` headers, `content-type` as a header; the row's own headers and
 * `traceparent` as further headers.
 *
 * Outcomes (delivery report error codes, librdkafka's and Kafka's):
 * - no error                                      → confirmed
 * - record too large (10, 18), invalid record (2, → failed permanent: the broker will never take it
 *   87), unsupported format (43), policy (44)       as it is; larger than `message.max.bytes` is
 *                                                   refused by produce() before it leaves
 * - timed out locally (-192), request timed out   → unknown: the broker may have appended it
 *   (7), fatal idempotence error, in-flight purge
 * - any other broker error, queue full, unknown   → failed retryable: the broker did not append it
 *   topic/partition
 * - no report by the batch deadline               → unknown
 * - all brokers down, no producer                 → deferred: nothing sent, no attempt counted
 *
 * While librdkafka says all brokers are down, batches end at once as deferred (a metadata request
 * probes whether one is back) instead of queueing records that would only time out.
 */
import type {
  DeliveryReport,
  LibrdKafkaError,
  MessageHeader,
  Producer,
  ProducerGlobalConfig,
} from '@confluentinc/kafka-javascript';
import { maskSecrets } from '../redact.js';
import { backoffDelayMs } from '../backoff.js';
import { ConfigError, ShardRelayError, toError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { eventSource } from './cloudEvent.js';
import { BatchOutcomes } from './deadline.js';
import { KafkaHeaders } from './kafkaHeaders.js';
import { fromTopicTemplate } from './topicTemplate.js';
import {
  confirmed,
  deferred,
  permanent,
  retryable,
  unknown,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
  type Sink,
} from './sink.js';

export const KAFKA_COMPRESSIONS = ['none', 'gzip', 'snappy', 'lz4', 'zstd'] as const;
export type KafkaCompression = (typeof KAFKA_COMPRESSIONS)[number];
export const KAFKA_SASL_MECHANISMS = ['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512'] as const;

export interface KafkaSinkOptions {
  /** Bootstrap brokers, `host:port[,host:port...]`. */
  readonly brokers: string;
  /** Kafka topic of a message; `{topic}` is replaced by its outbox topic. Default `{topic}`. */
  readonly topic?: string;
  /** Compression of record batches. Default `none`. */
  readonly compression?: KafkaCompression;
  /**
   * librdkafka's `message.timeout.ms`: how long it retries a record before reporting it timed out
   * (unknown). Give it the relay's send timeout so a report comes before the batch deadline.
   * Default 10 000 ms.
   */
  readonly deliveryTimeoutMs?: number;
  /** `linger.ms`: how long records wait to fill a batch. Default 5 ms (librdkafka's). */
  readonly lingerMs?: number;
  /** Upper bound of `start()` (connect and first metadata). Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  /** SASL over TLS (`SASL_SSL`) when set; plain TCP otherwise. */
  readonly sasl?: {
    readonly mechanism: (typeof KAFKA_SASL_MECHANISMS)[number];
    readonly username: string;
    readonly password: string;
  };
  /** TLS without SASL (`SSL`). Ignored with `sasl`, which always uses TLS. */
  readonly tls?: boolean;
  /** CloudEvents `source` attribute. Default `shardrelay`. */
  readonly source?: string;
  /** librdkafka settings to add or override (e.g. `batch.size`); use with care. */
  readonly librdkafka?: Readonly<Record<string, string | number | boolean>>;
  /** Pass the relay's logger; default silent. */
  readonly log?: Logger;
}

export const DEFAULT_KAFKA_TOPIC = '{topic}';

const DEFAULTS = {
  deliveryTimeoutMs: 10_000,
  lingerMs: 5,
  connectTimeoutMs: 10_000,
  /** A metadata probe while all brokers are down: short, since it holds a batch. */
  probeTimeoutMs: 1_000,
} as const;

/** Kafka and librdkafka error codes the outcome mapping names (librdkafka's rdkafka.h). */
const CODES = {
  INVALID_MSG: 2,
  REQUEST_TIMED_OUT: 7,
  MSG_SIZE_TOO_LARGE: 10,
  RECORD_LIST_TOO_LARGE: 18,
  NOT_ENOUGH_REPLICAS_AFTER_APPEND: 20,
  UNSUPPORTED_FOR_MESSAGE_FORMAT: 43,
  POLICY_VIOLATION: 44,
  INVALID_RECORD: 87,
  MSG_TIMED_OUT: -192,
  ALL_BROKERS_DOWN: -187,
  INVALID_ARG: -186,
  TIMED_OUT: -185,
  QUEUE_FULL: -184,
  PURGE_INFLIGHT: -151,
  FATAL: -150,
} as const;

const PERMANENT_CODES = new Set<number>([
  CODES.INVALID_MSG,
  CODES.MSG_SIZE_TOO_LARGE,
  CODES.RECORD_LIST_TOO_LARGE,
  CODES.UNSUPPORTED_FOR_MESSAGE_FORMAT,
  CODES.POLICY_VIOLATION,
  CODES.INVALID_RECORD,
  CODES.INVALID_ARG,
]);

/** The broker may have appended the record: only a re-send with the same id is safe. */
const MAYBE_APPENDED_CODES = new Set<number>([
  CODES.REQUEST_TIMED_OUT,
  CODES.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
  CODES.MSG_TIMED_OUT,
  CODES.TIMED_OUT,
  CODES.PURGE_INFLIGHT,
  CODES.FATAL,
]);

/** The outcome of a delivery report error (or of a produce() that threw). */
export function kafkaOutcome(
  error: { code?: number; message?: string; isFatal?: boolean },
  where: string,
): SendOutcome {
  const code = typeof error.code === 'number' ? error.code : Number.NaN;
  const text = `Kafka ${where}: ${error.message ?? 'error'} (code ${code})`;
  if (PERMANENT_CODES.has(code)) return permanent(text);
  if (error.isFatal === true || MAYBE_APPENDED_CODES.has(code)) return unknown(text);
  return retryable(text);
}

type KafkaModule = typeof import('@confluentinc/kafka-javascript');

type Settle = (outcome: SendOutcome) => void;

export function createKafkaSink(options: KafkaSinkOptions): Sink {
  const topicTemplate = options.topic ?? DEFAULT_KAFKA_TOPIC;
  const topicOf = fromTopicTemplate(topicTemplate);
  const compression = options.compression ?? 'none';
  const deliveryTimeoutMs = options.deliveryTimeoutMs ?? DEFAULTS.deliveryTimeoutMs;
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  const log = (options.log ?? silentLogger).child({ sink: 'kafka' });
  const brokers = validate(options);
  const secret = options.sasl?.password ?? '';
  const scrub = (text: string): string => maskSecrets(text, [secret]);
  const describe = (error: unknown): string => scrub(toError(error).message);
  const recordHeaders = new KafkaHeaders(eventSource(options.source));

  // Topic-level settings (acks, partitioner, message.timeout.ms, compression) are accepted in the
  // global configuration by librdkafka, which applies them to every topic; the typings split them.
  const config = {
    'bootstrap.servers': brokers,
    'client.id': 'shardrelay',
    'enable.idempotence': true,
    'request.required.acks': -1,
    'compression.codec': compression,
    partitioner: 'murmur2_random',
    'message.timeout.ms': deliveryTimeoutMs,
    'linger.ms': options.lingerMs ?? DEFAULTS.lingerMs,
    'socket.keepalive.enable': true,
    dr_cb: true,
    log_level: 3,
    ...(options.sasl
      ? {
          'security.protocol': 'sasl_ssl' as const,
          'sasl.mechanisms': options.sasl.mechanism,
          'sasl.username': options.sasl.username,
          'sasl.password': options.sasl.password,
        }
      : options.tls
        ? { 'security.protocol': 'ssl' as const }
        : {}),
    ...options.librdkafka,
  } as unknown as ProducerGlobalConfig;

  let producer: Producer | null = null;
  let starting: Promise<Producer> | null = null;
  let closing = false;
  /** Set by librdkafka's ALL_BROKERS_DOWN, cleared by a delivery or a successful probe. */
  let allBrokersDown = false;
  let probing: Promise<boolean> | null = null;
  /** After a failed start, batches fail fast until this time instead of each waiting for a connect. */
  let failedAttempts = 0;
  let nextAttemptAt = 0;
  let lastConnectError = '';

  async function loadClient(): Promise<KafkaModule> {
    try {
      const module = (await import('@confluentinc/kafka-javascript')) as KafkaModule & {
        default?: KafkaModule;
      };
      return module.default ?? module;
    } catch (error) {
      if (/did not self-register/.test(toError(error).message)) {
        // The addon is not context-aware: Node loads it in one thread of a process only.
        throw new ShardRelayError(
          'SINK_UNAVAILABLE',
          'the Kafka client is already loaded by another thread of this process (its native addon loads in one thread only)',
          {
            context: { sink: 'kafka' },
            fix: "create one Kafka sink per process: `shardrelay run` forwards the real-time thread's sends to the main thread's producer, and an embedding application must do the same; see the README (Kafka)",
          },
        );
      }
      throw new ShardRelayError(
        'SINK_UNAVAILABLE',
        `the Kafka client is not installed: ${toError(error).message}`,
        {
          context: { sink: 'kafka' },
          fix: 'install it: CKJS_LINKING=dynamic npm install @confluentinc/kafka-javascript (an optional dependency built from source against the system OpenSSL and zlib)',
        },
      );
    }
  }

  async function open(): Promise<Producer> {
    const kafka = await loadClient();
    const created = new kafka.Producer({ ...config });
    created.on('delivery-report', (error: LibrdKafkaError | null | undefined, report: DeliveryReport) => {
      const settle = report.opaque as Settle | undefined;
      if (!settle) return;
      if (error) settle(kafkaOutcome(error, `refused the record for ${report.topic}`));
      else {
        allBrokersDown = false;
        settle(confirmed);
      }
    });
    created.on('event.error', (error: LibrdKafkaError) => {
      if (error.code === CODES.ALL_BROKERS_DOWN) allBrokersDown = true;
      if (error.isFatal) {
        // A fatal idempotence error: this producer can send nothing more. Its records in flight get
        // reports with the fatal code (unknown); the next batch starts a new producer.
        log.error(
          { error: describe(error), code: error.code },
          'Kafka producer failed fatally; starting a new one',
        );
        if (producer === created) producer = null;
        created.disconnect(() => undefined);
      } else {
        log.warn({ error: describe(error), code: error.code }, 'Kafka client error');
      }
    });
    try {
      await new Promise<void>((resolve, reject) => {
        created.connect({ timeout: connectTimeoutMs }, (error: LibrdKafkaError | null | undefined) => {
          if (error) reject(new Error(describe(error)));
          else resolve();
        });
      });
    } catch (error) {
      // Release librdkafka's threads now: a client left behind crashes the process at exit
      // (V8 "Cannot create a handle without a HandleScope" from its callbacks during teardown).
      await new Promise<void>((resolve) => created.disconnect(2_000, () => resolve()));
      throw error;
    }
    created.setPollInBackground(true);
    log.info({ brokers, compression }, 'Kafka producer connected');
    return created;
  }

  async function ensureProducer(): Promise<Producer> {
    if (closing) throw new Error('the sink is closed');
    if (producer) return producer;
    const wait = nextAttemptAt - Date.now();
    if (!starting && wait > 0) {
      throw new Error(
        `reconnecting in ${wait} ms after ${failedAttempts} failed attempt(s): ${lastConnectError}`,
      );
    }
    starting ??= open()
      .then(
        (fresh) => {
          failedAttempts = 0;
          return fresh;
        },
        (error: unknown) => {
          failedAttempts += 1;
          lastConnectError = describe(error);
          nextAttemptAt = Date.now() + backoffDelayMs({ baseMs: 250, capMs: 30_000 }, failedAttempts);
          log.warn({ brokers, attempt: failedAttempts, error: lastConnectError }, 'Kafka connect failed');
          throw error;
        },
      )
      .finally(() => {
        starting = null;
      });
    const fresh = await starting;
    if (closing) {
      fresh.disconnect(() => undefined);
      throw new Error('the sink is closed');
    }
    producer = fresh;
    return fresh;
  }

  /** While all brokers are down: true when a metadata request answers again. */
  function probe(target: Producer): Promise<boolean> {
    probing ??= new Promise<boolean>((resolve) => {
      target.getMetadata({ timeout: DEFAULTS.probeTimeoutMs, allTopics: false }, (error) => {
        if (!error) allBrokersDown = false;
        resolve(!error);
      });
    }).finally(() => {
      probing = null;
    });
    return probing;
  }

  function produce(target: Producer, message: OutboxMessage, outcomes: BatchOutcomes, index: number): void {
    let value: Buffer;
    let headers: MessageHeader[];
    try {
      // CloudEvents' Kafka binding, binary mode: `ce_<attribute>` headers and `content-type`; the
      // value is the payload's JSON text as claimed.
      headers = recordHeaders.of(message);
      value = Buffer.from(message.payloadJson, 'utf8');
    } catch (error) {
      outcomes.settle(index, permanent(`cannot encode the event: ${describe(error)}`));
      return;
    }
    const topic = topicOf(message.topic);
    const settle: Settle = (outcome) => outcomes.settle(index, outcome);
    try {
      target.produce(topic, null, value, message.key, message.createdAt.getTime(), settle, headers);
    } catch (error) {
      // Refused before leaving the process (queue full, too large, bad topic name).
      settle(kafkaOutcome(error as LibrdKafkaError, `did not queue the record for ${topic}`));
    }
  }

  return {
    name: 'kafka',

    async start() {
      try {
        await ensureProducer();
      } catch (error) {
        if (error instanceof ShardRelayError) throw error;
        throw new ShardRelayError(
          'SINK_UNAVAILABLE',
          `cannot connect to Kafka at ${brokers}: ${describe(error)}`,
          {
            context: { sink: 'kafka', brokers },
            fix: /auth|sasl/i.test(describe(error))
              ? 'check the SASL mechanism, user name and password'
              : 'check that the brokers are running and reachable at those addresses',
          },
        );
      }
    },

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (messages.length === 0) return [];
      let target: Producer;
      try {
        target = await ensureProducer();
      } catch (error) {
        const outcome = deferred(`Kafka unavailable at ${brokers}: ${describe(error)}`);
        return messages.map(() => outcome);
      }
      if (allBrokersDown && !(await probe(target))) {
        const outcome = deferred(`Kafka: all brokers are down (${brokers}); nothing was sent`);
        return messages.map(() => outcome);
      }
      const outcomes = new BatchOutcomes(messages.length);
      messages.forEach((message, index) => produce(target, message, outcomes, index));
      return outcomes.byDeadline(context.deadline);
    },

    async close() {
      closing = true;
      await starting?.catch(() => undefined);
      const current = producer;
      producer = null;
      if (!current) return;
      // Flush what is queued (its reports still settle batches in flight), then disconnect.
      await new Promise<void>((resolve) => current.flush(2_000, () => resolve()));
      await new Promise<void>((resolve) => current.disconnect(2_000, () => resolve()));
    },
  };
}

function validate(options: KafkaSinkOptions): string {
  const brokers = options.brokers
    .split(',')
    .map((b) => b.trim())
    .filter((b) => b.length > 0);
  const bad = brokers.find((b) => !/^[A-Za-z0-9.[\]:_-]+:\d{1,5}$/.test(b));
  if (brokers.length === 0 || bad !== undefined) {
    throw new ConfigError(
      'kafka brokers',
      bad === undefined ? 'no broker given' : `'${bad}' is not host:port`,
      'give host:port pairs separated by commas, e.g. 127.0.0.1:9092,127.0.0.1:9093',
    );
  }
  if (!KAFKA_COMPRESSIONS.includes(options.compression ?? 'none')) {
    throw new ConfigError(
      'kafka compression',
      `'${String(options.compression)}' is not supported`,
      `use one of: ${KAFKA_COMPRESSIONS.join(', ')}`,
    );
  }
  if ((options.topic ?? DEFAULT_KAFKA_TOPIC).length === 0) {
    throw new ConfigError('kafka topic', 'is empty', 'give a topic name or a template such as {topic}');
  }
  return brokers.join(',');
}
