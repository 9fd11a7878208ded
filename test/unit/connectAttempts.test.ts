import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConnectAttempts } from '../../src/sinks/connectAttempts.js';

function attemptsWithLog() {
  const failures: [number, string][] = [];
  const attempts = new ConnectAttempts<string>({
    backoff: { initialMs: 60_000, maxMs: 60_000 },
    describe: (error) => (error instanceof Error ? error.message : String(error)),
    onFailure: (attempt, error) => failures.push([attempt, error]),
  });
  return { attempts, failures };
}

describe('connect attempts', () => {
  it('runs one attempt at a time: concurrent callers share it', async () => {
    const { attempts } = attemptsWithLog();
    let opened = 0;
    let finish: (link: string) => void = () => {};
    const open = () => {
      opened++;
      return new Promise<string>((resolve) => (finish = resolve));
    };
    const first = attempts.connect(Date.now() + 5_000, open, (l) => l);
    const second = attempts.connect(Date.now() + 5_000, open, (l) => l);
    assert.ok(attempts.inFlight);
    finish('link-1');
    assert.deepEqual(await Promise.all([first, second]), ['link-1', 'link-1']);
    assert.equal(opened, 1);
    await Promise.resolve();
    assert.equal(attempts.inFlight, null);
  });

  it('after a failure, refuses at once with the reason until the back-off has passed', async () => {
    const { attempts, failures } = attemptsWithLog();
    await assert.rejects(
      attempts.connect(
        Date.now() + 5_000,
        () => Promise.reject(new Error('refused')),
        (l) => l,
      ),
      /refused/,
    );
    assert.deepEqual(failures, [[1, 'refused']]);
    assert.ok(attempts.backingOff());
    let opened = 0;
    assert.throws(
      () =>
        attempts.connect(
          Date.now() + 5_000,
          () => {
            opened++;
            return Promise.resolve('x');
          },
          (l) => l,
        ),
      /reconnecting in \d+ ms after 1 failed attempt\(s\): refused/,
    );
    assert.equal(opened, 0, 'nothing dialled during the back-off');
  });

  it('a connection refused by adopt (the sink closed) is not a failed attempt', async () => {
    const { attempts, failures } = attemptsWithLog();
    await assert.rejects(
      attempts.connect(
        Date.now() + 5_000,
        () => Promise.resolve('link'),
        () => {
          throw new Error('the sink is closed');
        },
      ),
      /the sink is closed/,
    );
    assert.deepEqual(failures, []);
    assert.equal(attempts.backingOff(), false);
  });

  it('a caller waits no longer than its deadline; the attempt goes on for the next caller', async () => {
    const { attempts } = attemptsWithLog();
    let finish: (link: string) => void = () => {};
    const open = () => new Promise<string>((resolve) => (finish = resolve));
    await assert.rejects(
      attempts.connect(Date.now() + 20, open, (l) => l),
      /the batch deadline passed while connecting/,
    );
    const next = attempts.connect(Date.now() + 5_000, open, (l) => l);
    finish('late link');
    assert.equal(await next, 'late link');
  });
});
