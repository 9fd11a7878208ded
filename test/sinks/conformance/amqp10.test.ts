import { runConformance } from './suite.js';
import { amqp10Target } from './targets/amqp10.js';

await runConformance(amqp10Target);
