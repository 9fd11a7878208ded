import os from 'node:os';
import { toError } from '../errors.js';
import type { Logger } from '../logger.js';

/**
 * Real-time first on the CPU, when asked: `shardrelay run --batch-lane-nice N` lowers the scheduling
 * priority of its main thread, which runs the batch lane, by N once the real-time lane's worker
 * thread has started. On Linux a nice value belongs to a thread, not to the process, so the
 * real-time thread keeps its priority; a thread the main thread starts later inherits the lower
 * one.
 *
 * Why: on a machine whose cores the batch lane saturates (its thread and PostgreSQL's backends),
 * a real-time row waits for CPU at every step of its way. Measured on 2 cores with this
 * repository's lane study (`bench/studies/laneLatency.ts --rounds 3 --compare`, three runs, nice 10
 * and 0 alternated, 200,000-row backlog, real-time rows by plain SQL at 50/s, null sink), medians of
 * nine drains each: real-time p99 while the backlog drained 33.4 ms against 50.7; idle p99
 * 11.5-13.5 against 14.2-16.8 ms; the batch lane under the real-time load at 0.925 of its rate
 * alone against 0.906, and its drain alone about 6% slower (32,510 against 34,722 rows/s, ranges
 * overlapping: the thread also yields to PostgreSQL's backends). bench/RESULTS.md, eighth session.
 * PostgreSQL's backends are not the relay's to renice: only the relay's own share moves.
 *
 * Why it is off by default: the main thread also runs the leases, the peer checks and the
 * takeovers. In a clean-clone CI run at load average 9.6 with 10 as the default, a replica killed
 * with SIGKILL had its shards taken 1.67 s after the kill (0.71 s after PostgreSQL ended its
 * session; the test's bounds are 1 s and 0.6 s): one survivor took its share 2.0 s after the kill
 * and never ran the eviction the other ran at 0.98 s. A faster takeover of a dead replica's shards
 * matters to real-time rows too, and a busy host costs it more with the setting; so it is an
 * operator's choice for a host whose batch backlogs, not other processes, fill the cores.
 *
 * Not done (and said) where it would slow the real-time lane instead: off Linux, where the value is
 * the whole process's; and where the real-time lane's sends run on the main thread (a Kafka
 * producer loads in one thread only, so the worker forwards its sends there).
 */
export function lowerBatchLanePriority(
  nice: number,
  options: { readonly realtimeSendsOnMainThread: boolean; readonly logger: Logger },
): void {
  const { logger } = options;
  if (nice <= 0) return;
  if (process.platform !== 'linux') {
    logger.info(
      { nice, platform: process.platform },
      'batch lane priority left as it is: off Linux a nice value applies to the whole process, the real-time thread too',
    );
    return;
  }
  if (options.realtimeSendsOnMainThread) {
    logger.info(
      { nice },
      "batch lane priority left as it is: the real-time lane's sends run on the main thread (the sink's client loads in one thread only)",
    );
    return;
  }
  try {
    // Relative to what the process was started with (`nice -n 5 shardrelay run` gives 15); raising
    // a nice value needs no privilege.
    const current = os.getPriority(0);
    if (current >= 19) {
      // Started at the lowest priority already (`nice -n 19 shardrelay run`): nothing is lower.
      logger.info(
        { nice, was: current },
        "batch lane priority left as it is: the process already runs at the lowest priority (19), the real-time lane's too",
      );
      return;
    }
    os.setPriority(0, Math.min(19, current + nice));
    logger.info(
      { nice: os.getPriority(0), was: current },
      "batch lane's thread runs at a lower priority than the real-time lane's",
    );
  } catch (error) {
    logger.warn(
      { nice, err: toError(error).message },
      'could not lower the batch lane thread priority; both lanes run at the same',
    );
  }
}
