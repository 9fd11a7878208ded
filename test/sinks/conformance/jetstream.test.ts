import { runConformance } from './suite.js';
import { jetstreamTarget } from './targets/jetstream.js';

await runConformance(jetstreamTarget);
