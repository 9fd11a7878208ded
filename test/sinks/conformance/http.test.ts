import { runConformance } from './suite.js';
import { httpTarget } from './targets/http.js';

await runConformance(httpTarget);
