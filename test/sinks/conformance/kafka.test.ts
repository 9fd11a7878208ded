import { runConformance } from './suite.js';
import { kafkaTarget } from './targets/kafka.js';

await runConformance(kafkaTarget);
