import { runConformance } from './suite.js';
import { stompTarget } from './targets/stomp.js';

await runConformance(stompTarget);
