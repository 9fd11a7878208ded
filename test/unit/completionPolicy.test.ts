import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffDelayMs } from '../../src/backoff.js';
import type { ClaimedMessage } from '../../src/relay/claims.js';
import { decideCompletions } from '../../src/relay/completionPolicy.js';
import { confirmed, permanent, retryable, unknown } from '../../src/sinks/sink.js';
import { outboxMessage } from '../support/brokers.js';

const message = (id: string, attempts: number, maxAttempts: number | null = null): ClaimedMessage => ({
  ...outboxMessage({ id, attempts }),
  maxAttempts,
});

const policy = { maxAttempts: 3, baseMs: 100, capMs: 1000 };

describe('completion policy', () => {
  it('only a confirm makes a row sent; unknown is retried; permanent and exhausted rows die', () => {
    const decided = decideCompletions(
      [message('1', 0), message('2', 0), message('3', 0), message('4', 2), message('5', 0, 1)],
      [
        confirmed,
        unknown('no confirm'),
        permanent('404 no such route'),
        retryable('nack'),
        retryable('nack'),
      ],
      policy,
      () => 0.5,
    );
    assert.deepEqual(
      decided.map((d) => d.status),
      ['sent', 'pending', 'dead', 'dead', 'dead'],
    );
    assert.match((decided[1] as { error: string }).error, /^unknown: no confirm/);
    assert.match((decided[2] as { error: string }).error, /^permanent: 404/);
    assert.match((decided[3] as { error: string }).error, /gave up after 3 attempts: nack/);
    assert.match(
      (decided[4] as { error: string }).error,
      /gave up after 1 attempts/,
      "a row's own max_attempts wins",
    );
  });

  it('refuses a sink that returns the wrong number of outcomes', () => {
    assert.throws(
      () => decideCompletions([message('1', 0)], [], policy),
      /sink returned 0 outcomes for 1 messages/,
    );
  });

  it('backoff grows exponentially with jitter inside [ceiling/2, ceiling] and stops at the cap', () => {
    for (const r of [0, 0.5, 0.999]) {
      const delays = [1, 2, 3, 4, 5, 6].map((a) => backoffDelayMs(policy, a, () => r));
      delays.forEach((d, i) => {
        const ceiling = Math.min(1000, 100 * 2 ** i);
        assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${i + 1}: ${d} in [${ceiling / 2}, ${ceiling}]`);
      });
      for (let i = 1; i < delays.length; i++) assert.ok((delays[i] as number) >= (delays[i - 1] as number));
    }
  });
});
