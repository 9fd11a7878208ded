import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ShardLoop } from '../../src/relay/shardLoop.js';

/** A controllable runBatch: each call waits until the test releases it with a result. */
function controlledBatches() {
  const calls: ((full: boolean) => void)[] = [];
  let waiter: (() => void) | undefined;
  return {
    runBatch: () =>
      new Promise<{ full: boolean }>((resolve) => {
        calls.push((full) => resolve({ full }));
        waiter?.();
      }),
    calls,
    async nextCall(n: number) {
      while (calls.length < n) await new Promise<void>((r) => (waiter = r));
    },
  };
}

const tick = () => new Promise((r) => setImmediate(r));

/** A loop that gathers for `gatherMs`, recording when each batch started (performance.now()). */
function gatheringLoop(gatherMs: number) {
  const batches = controlledBatches();
  const started: number[] = [];
  const loop = new ShardLoop({
    runBatch: () => {
      started.push(performance.now());
      return batches.runBatch();
    },
    onError: () => {},
    errorBackoffMs: () => 10,
    gatherMs,
  });
  return { batches, started, loop };
}

describe('ShardLoop', () => {
  it('never runs two batches at once and folds triggers during a batch into one re-run', async () => {
    const batches = controlledBatches();
    const loop = new ShardLoop({ runBatch: batches.runBatch, onError: () => {}, errorBackoffMs: () => 10 });
    loop.trigger();
    loop.trigger();
    loop.trigger();
    await batches.nextCall(1);
    assert.equal(batches.calls.length, 1);
    assert.equal(loop.state, 'running');
    batches.calls[0]?.(false);
    await batches.nextCall(2); // one re-run for the three triggers
    batches.calls[1]?.(false);
    await tick();
    await tick();
    assert.equal(loop.state, 'idle');
    assert.equal(batches.calls.length, 2);
  });

  it('runs again at once while batches come back full', async () => {
    const batches = controlledBatches();
    const loop = new ShardLoop({ runBatch: batches.runBatch, onError: () => {}, errorBackoffMs: () => 10 });
    loop.trigger();
    for (let i = 0; i < 3; i++) {
      await batches.nextCall(i + 1);
      batches.calls[i]?.(true);
    }
    await batches.nextCall(4);
    batches.calls[3]?.(false);
    await tick();
    await tick();
    assert.equal(loop.state, 'idle');
    assert.equal(batches.calls.length, 4);
  });

  it('backs off after a failed batch and reports consecutive failures', async () => {
    const failures: number[] = [];
    let calls = 0;
    const loop = new ShardLoop({
      runBatch: async () => {
        calls++;
        throw new Error('connection terminated');
      },
      onError: (_error, n) => failures.push(n),
      errorBackoffMs: () => 30,
    });
    loop.trigger();
    await tick();
    await tick();
    assert.equal(loop.state, 'backingOff');
    loop.trigger(); // ignored while backing off
    await tick();
    assert.equal(calls, 1);
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(loop.state, 'idle');
    loop.trigger();
    await tick();
    await tick();
    assert.deepEqual(failures, [1, 2]);
    await loop.stop();
    assert.equal(loop.state, 'stopped');
  });

  it('stop() waits for the batch in flight', async () => {
    const batches = controlledBatches();
    const loop = new ShardLoop({ runBatch: batches.runBatch, onError: () => {}, errorBackoffMs: () => 10 });
    loop.trigger();
    await batches.nextCall(1);
    let stopped = false;
    const stopping = loop.stop().then(() => (stopped = true));
    await tick();
    assert.equal(stopped, false, 'still waiting for the in-flight batch');
    batches.calls[0]?.(true); // full, but stopping: no further batch
    await stopping;
    assert.equal(batches.calls.length, 1);
    assert.equal(loop.state, 'stopped');
  });
  it('tells the batch in flight that the loop was stopped, so a batch that has not claimed yet claims nothing', async () => {
    const batches = controlledBatches();
    let running: (() => boolean) | undefined;
    const loop = new ShardLoop({
      runBatch: (isRunning) => {
        running = isRunning;
        return batches.runBatch();
      },
      onError: () => {},
      errorBackoffMs: () => 10,
    });
    loop.trigger();
    await batches.nextCall(1);
    assert.equal(running?.(), true, 'running while not stopped');
    const stopping = loop.stop();
    assert.equal(running?.(), false, 'false from the moment stop() is called');
    batches.calls[0]?.(false);
    await stopping;
  });
  it('gathering never starts a batch early, though timers fire up to ~1.6 ms before performance.now() says', async () => {
    // A timer's clock is the event loop's, in whole milliseconds, read at the turn's start: a
    // 78.6 ms gap of 80 was seen in CI. 100 partial batches with a fractional gatherMs.
    const { batches, started, loop } = gatheringLoop(5.5);
    loop.trigger();
    for (let n = 1; n <= 100; n++) {
      await batches.nextCall(n);
      loop.trigger(); // a NOTIFY during the batch
      batches.calls[n - 1]?.(false);
    }
    await batches.nextCall(101);
    batches.calls[100]?.(false);
    await loop.stop();
    const gaps = started.slice(1).map((at, i) => at - (started[i] ?? 0));
    // 0.1 ms of slack: the loop reads its clock just before calling runBatch, which reads this one.
    assert.ok(Math.min(...gaps) >= 5.4, `shortest gap ${Math.min(...gaps).toFixed(3)} ms`);
  });
  it('gathering: after a partial batch the next starts gatherMs after it began; full batches go at once', async () => {
    const { batches, started, loop } = gatheringLoop(80);
    loop.trigger();
    await batches.nextCall(1);
    loop.trigger(); // a NOTIFY during the batch
    batches.calls[0]?.(false); // partial: the re-run waits
    await batches.nextCall(2);
    assert.ok(
      (started[1] ?? 0) - (started[0] ?? 0) >= 79,
      `re-run after ${(started[1] ?? 0) - (started[0] ?? 0)} ms`,
    );
    batches.calls[1]?.(true); // full: the next goes at once
    await batches.nextCall(3);
    assert.ok((started[2] ?? 0) - (started[1] ?? 0) < 60, 'a full batch re-runs without gathering');
    batches.calls[2]?.(false);
    await tick();
    await tick();
    assert.equal(loop.state, 'idle');
    // A wake-up long after the last batch starts at once.
    await new Promise((r) => setTimeout(r, 100));
    const woken = performance.now();
    loop.trigger();
    await batches.nextCall(4);
    assert.ok((started[3] ?? 0) - woken < 60, 'an idle loop woken late is not delayed');
    batches.calls[3]?.(false);
    // stop() ends a gathering wait at once, without running the batch.
    loop.trigger();
    const stopping = performance.now();
    await tick();
    await loop.stop();
    assert.ok(performance.now() - stopping < 60, 'stop() cut the wait short');
    assert.equal(batches.calls.length, 4);
    assert.equal(loop.state, 'stopped');
  });
});
