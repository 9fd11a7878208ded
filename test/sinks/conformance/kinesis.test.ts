import { runConformance } from './suite.js';
import { kinesisTarget } from './targets/kinesis.js';

await runConformance(kinesisTarget);
