import type { RelayConfig } from '../config.js';
import type { Logger } from '../logger.js';
import { createNullSink } from './nullSink.js';
import { createPgBossSink } from './pgBossSink.js';
import type { Sink } from './sink.js';

/** The sink named by the configuration, not yet started. */
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
    default:
      throw new Error(`sink ${config.sink} is not available in this build`);
  }
}
