import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { EMPTY_BATCH } from '../../src/relay/deliverBatch.js';
import { DEFERRAL_LOG_INTERVAL_MS, DeferralLog, logBatchProblems } from '../../src/relay/problemLog.js';

describe('the deferral log line', () => {
  it('comes at most once per lane and interval; the next says what was left unsaid', () => {
    let now = 0;
    const log = new DeferralLog(() => now);
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      {},
      { write: (chunk: string) => lines.push(JSON.parse(chunk) as Record<string, unknown>) },
    );
    const batch = {
      ...EMPTY_BATCH,
      claimed: 100,
      deferred: 40,
      deferredReason: 'receiver busy',
      deferredDueInMs: 1_000,
    };
    // A saturated receiver: a batch with deferred rows every 250 ms for 20 s.
    for (; now < 2 * DEFERRAL_LOG_INTERVAL_MS; now += 250) logBatchProblems(logger, 3, 'batch', batch, log);
    assert.equal(lines.length, 2, 'one line per interval');
    assert.equal(lines[0]?.sinceLastLine, undefined, 'the first line has nothing left unsaid');
    assert.equal(lines[0]?.reason, 'receiver busy');
    // The 39 batches between the two lines, 40 rows each.
    assert.deepEqual(lines[1]?.sinceLastLine, { batches: 39, rows: 1_560 });
    // A batch without deferred rows neither logs nor counts.
    logBatchProblems(logger, 3, 'batch', { ...EMPTY_BATCH, claimed: 10 }, log);
    now += DEFERRAL_LOG_INTERVAL_MS;
    logBatchProblems(logger, 3, 'batch', batch, log);
    assert.equal(lines.length, 3);
    assert.deepEqual(lines[2]?.sinceLastLine, { batches: 39, rows: 1_560 });
  });
});
