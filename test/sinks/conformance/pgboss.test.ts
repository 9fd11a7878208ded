import { runConformance } from './suite.js';
import { pgbossTarget } from './targets/pgboss.js';

await runConformance(pgbossTarget);
