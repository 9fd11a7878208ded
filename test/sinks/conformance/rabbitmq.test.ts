import { runConformance } from './suite.js';
import { rabbitmqTarget } from './targets/rabbitmq.js';

await runConformance(rabbitmqTarget);
