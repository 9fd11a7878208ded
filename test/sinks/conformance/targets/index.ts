/** Every sink the conformance suite runs (one test file per entry: `../<name>.test.ts`). */
import type { ConformanceTarget } from '../target.js';
import { amqp10Target } from './amqp10.js';
import { httpTarget } from './http.js';
import { kafkaTarget } from './kafka.js';
import { kinesisTarget } from './kinesis.js';
import { jetstreamTarget } from './jetstream.js';
import { pgbossTarget } from './pgboss.js';
import { rabbitmqTarget } from './rabbitmq.js';

export const targets: readonly ConformanceTarget[] = [
  rabbitmqTarget,
  jetstreamTarget,
  httpTarget,
  pgbossTarget,
  amqp10Target,
  kafkaTarget,
  kinesisTarget,
];
