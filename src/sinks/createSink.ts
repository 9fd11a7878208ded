import type { RelayConfig } from '../config.js';
import type { Logger } from '../logger.js';
import { createHttpSink } from './httpSink.js';
import { createJetStreamSink } from './jetStreamSink.js';
import { createNullSink } from './nullSink.js';
import { createPgBossSink } from './pgBossSink.js';
import { createRabbitMqSink } from './rabbitmqSink.js';
import type { Sink } from './sink.js';

/** The sink named by the configuration, not yet started (each lane thread creates its own). */
export async function createSink(config: RelayConfig, logger: Logger): Promise<Sink> {
  switch (config.sink) {
    case 'null':
      return createNullSink();
    case 'pgboss':
      return createPgBossSink({
        connectionString: config.databaseUrl,
        schema: config.pgBossSchema,
        onError: (error) => logger.error({ err: error }, 'pg-boss error'),
      });
    case 'rabbitmq':
      return createRabbitMqSink({ url: config.amqpUrl, exchange: config.amqpExchange, log: logger });
    case 'jetstream':
      return createJetStreamSink({ url: config.natsUrl, stream: config.natsStream, log: logger });
    case 'http':
      // loadConfig refuses the http sink without a webhook URL.
      return createHttpSink({ url: config.webhookUrl as string, timeoutMs: config.sendTimeoutMs });
  }
}
