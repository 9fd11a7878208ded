/**
 * Every sink the conformance suite runs, one entry per line (one test file per entry:
 * `../<name>.test.ts`; registry.test.ts checks both lists agree).
 */
import type { ConformanceTarget } from '../target.js';
import { amqp10Target } from './amqp10.js';
import { httpTarget } from './http.js';
import { kafkaTarget } from './kafka.js';
import { kinesisTarget } from './kinesis.js';
import { jetstreamTarget } from './jetstream.js';
import { pgbossTarget } from './pgboss.js';
import { rabbitmqTarget } from './rabbitmq.js';
import { stompTarget } from './stomp.js';

export const targets: readonly ConformanceTarget[] = [
  httpTarget,
  jetstreamTarget,
  pgbossTarget,
  rabbitmqTarget,
  stompTarget,
  amqp10Target,
  kafkaTarget,
  kinesisTarget,
];
