import type { RelayConfig } from '../config.js';
import type { Logger } from '../logger.js';
import type { Sink } from './sink.js';

/**
 * The sink named by the configuration, not yet started (each lane thread creates its own). Each
 * sink module is imported only when chosen: broker clients are large, and every CLI command and
 * worker thread would otherwise load all of them at start.
 */
export async function createSink(config: RelayConfig, logger: Logger): Promise<Sink> {
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
        log: logger,
      });
    case 'http':
      // loadConfig refuses the http sink without a webhook URL.
      return (await import('./httpSink.js')).createHttpSink({
        url: config.webhookUrl as string,
        timeoutMs: config.sendTimeoutMs,
      });
  }
}
