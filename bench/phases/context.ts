/** What every phase is given by the driver. */
import type { AmqpBench } from '../harness/amqp.js';
import type { BenchDatabase } from '../harness/database.js';
import type { BenchOptions } from '../harness/options.js';

export interface PhaseContext {
  readonly options: BenchOptions;
  readonly database: BenchDatabase;
  /** Set when RabbitMQ is reachable. */
  readonly amqp: AmqpBench | undefined;
  /** A progress line for the person watching (stderr). */
  readonly log: (line: string) => void;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
