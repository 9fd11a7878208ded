import type { RelayConfig } from '../config.js';
import type { Logger } from '../logger.js';
import type { RelaySink } from './sink.js';

/**
 * Sinks whose client can be loaded by one thread of a process only. Kafka: the native addon of
 * @confluentinc/kafka-javascript is not context-aware, so a second thread's load fails ("Module
 * did not self-register"). For these, the real-time worker thread forwards its sends to the main
 * thread's sink (forwardingSink.ts) instead of creating its own. Such a sink must be a broker
 * `Sink`: an in-database one writes through the claim transaction, which cannot cross threads.
 */
const LOADS_IN_ONE_THREAD_ONLY: Readonly<Record<RelayConfig['sink'], boolean>> = {
  null: false,
  pgboss: false,
  rabbitmq: false,
  jetstream: false,
  stomp: false,
  http: false,
  amqp10: false,
  kafka: true,
  kinesis: false,
};

/** Whether the client of a sink type loads in one thread of a process only (see above). */
export function loadsInOneThreadOnly(sink: RelayConfig['sink']): boolean {
  return LOADS_IN_ONE_THREAD_ONLY[sink];
}

/**
 * The one sink named by `config.sink`, not yet started (each lane thread creates its own); routes
 * are not read here (routing/buildRoutingSink.ts builds the routing sink from sinks made by this).
 * Each sink module is imported only when chosen: broker clients are large, and every CLI command
 * and worker thread would otherwise load all of them at start.
 */
export async function createSink(config: RelayConfig, logger: Logger): Promise<RelaySink> {
  switch (config.sink) {
    case 'null':
      return (await import('./nullSink.js')).createNullSink();
    case 'pgboss':
      return (await import('./pgBossSink.js')).createPgBossSink({
        connectionString: config.databaseUrl,
        schema: config.pgBossSchema,
        onError: (error) => logger.error({ err: error }, 'pg-boss error'),
      });
    case 'rabbitmq':
      return (await import('./rabbitmqSink.js')).createRabbitMqSink({
        url: config.amqpUrl,
        exchange: config.amqpExchange,
        log: logger,
      });
    case 'jetstream':
      return (await import('./jetStreamSink.js')).createJetStreamSink({
        url: config.natsUrl,
        stream: config.natsStream,
        subjectPrefix: config.natsSubjectPrefix,
        log: logger,
      });
    case 'stomp':
      return (await import('./stompSink.js')).createStompSink({
        url: config.stompUrl,
        destination: config.stompDestination,
        connections: config.stompConnections,
        connectionsPerBatch: config.stompBatchSpread,
        transactions: config.stompTransactions === 'on',
        log: logger,
      });
    case 'http':
      // loadConfig refuses the http sink without a webhook URL.
      return (await import('./httpSink.js')).createHttpSink({
        url: config.webhookUrl as string,
        timeoutMs: config.sendTimeoutMs,
      });
    case 'amqp10':
      return (await import('./amqp10Sink.js')).createAmqp10Sink({
        url: config.amqp10Url,
        address: config.amqp10Address,
        log: logger,
      });
    case 'kafka':
      return (await import('./kafkaSink.js')).createKafkaSink({
        brokers: config.kafkaBrokers,
        topic: config.kafkaTopic,
        compression: config.kafkaCompression,
        // A record's delivery report then comes before its batch's deadline.
        deliveryTimeoutMs: config.sendTimeoutMs,
        ...(config.kafkaSaslMechanism && config.kafkaSaslUsername && config.kafkaSaslPassword
          ? {
              sasl: {
                mechanism: config.kafkaSaslMechanism,
                username: config.kafkaSaslUsername,
                password: config.kafkaSaslPassword,
              },
            }
          : {}),
        log: logger,
      });
    case 'kinesis':
      return (await import('./kinesisSink.js')).createKinesisSink({
        stream: config.kinesisStream,
        ...(config.kinesisRegion ? { region: config.kinesisRegion } : {}),
        ...(config.kinesisEndpoint ? { endpoint: config.kinesisEndpoint } : {}),
        log: logger,
      });
  }
}
