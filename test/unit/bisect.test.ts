import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { bisect, PASSED, type PartOutcome } from '../../src/relay/bisect.js';

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);
const log2Ceil = (n: number): number => (n <= 1 ? 0 : Math.ceil(Math.log2(n)));

/** An operation that fails on any part holding one of `bad`, recording the parts it was given. */
function failsOn(bad: ReadonlySet<number>) {
  const parts: (readonly number[])[] = [];
  const attempt = async (part: readonly number[]): Promise<PartOutcome> => {
    parts.push(part);
    const culprit = part.find((i) => bad.has(i));
    return culprit === undefined ? PASSED : { ok: false, error: new Error(`item ${culprit}`) };
  };
  return { attempt, parts };
}

/** A batch size and a set of bad items in it. */
const batchWithBad = fc
  .integer({ min: 0, max: 300 })
  .chain((n) =>
    fc.tuple(fc.constant(n), fc.uniqueArray(fc.nat({ max: Math.max(0, n - 1) }), { maxLength: n })),
  );

describe('bisect: finding the items that make a batch fail', () => {
  it('finds exactly the failing items, alone and in order, within the bound on attempts', async () => {
    await fc.assert(
      fc.asyncProperty(batchWithBad, async ([n, badList]) => {
        const bad = new Set(badList);
        const { attempt, parts } = failsOn(bad);
        const { failed, attempts } = await bisect(range(n), attempt);
        assert.deepEqual(
          failed.map((f) => f.items),
          [...bad].sort((a, b) => a - b).map((i) => [i]),
        );
        for (const f of failed) assert.equal((f.error as Error).message, `item ${f.items[0]}`);
        assert.equal(attempts, parts.length);
        assert.ok(attempts <= Math.max(0, 2 * n - 1), `${attempts} attempts for ${n} items`);
        if (n > 0) assert.ok(attempts <= 1 + 2 * bad.size * log2Ceil(n), `${attempts} attempts`);
        // Never an empty part, and each part a run of consecutive items (a slice of the batch).
        for (const p of parts) {
          assert.ok(p.length > 0);
          p.forEach((item, k) => assert.equal(item, (p[0] as number) + k));
        }
      }),
    );
  });

  it('one attempt when the batch passes; none for an empty batch', async () => {
    const passing = failsOn(new Set());
    assert.deepEqual(await bisect(range(1000), passing.attempt), { failed: [], attempts: 1 });
    const empty = failsOn(new Set([0]));
    assert.deepEqual(await bisect([], empty.attempt), { failed: [], attempts: 0 });
  });

  it('whatever the outcomes, every item ends in exactly one part that passed or was reported', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 200 }),
        fc.infiniteStream(fc.boolean()),
        fc.boolean(),
        async (n, coin, stopWhenBothHalvesFail) => {
          const passed: (readonly number[])[] = [];
          const { failed } = await bisect(
            range(n),
            async (part) => {
              if (coin.next().value as boolean) {
                passed.push(part);
                return PASSED;
              }
              return { ok: false, error: 'no' };
            },
            { stopWhenBothHalvesFail },
          );
          const ends = [...passed, ...failed.map((f) => f.items)].flat().sort((a, b) => a - b);
          assert.deepEqual(ends, range(n));
        },
      ),
    );
  });

  it('stopWhenBothHalvesFail: an operation failing for every part costs 1 + 2·⌈log2 n⌉ attempts', async () => {
    for (const n of [1, 2, 3, 7, 8, 9, 1000]) {
      const { failed, attempts } = await bisect(range(n), async () => ({ ok: false, error: 'down' }), {
        stopWhenBothHalvesFail: true,
      });
      assert.equal(attempts, 1 + 2 * log2Ceil(n), `n = ${n}`);
      assert.deepEqual(
        failed.flatMap((f) => f.items),
        range(n),
      );
    }
    // Without it, every part is split down to single items: 2n − 1 attempts.
    const all = await bisect(range(1000), async () => ({ ok: false, error: 'down' }));
    assert.equal(all.attempts, 1999);
    assert.equal(all.failed.length, 1000);
  });

  it('stopWhenBothHalvesFail: a second half that fails after its first half failed is reported whole', async () => {
    const { attempt, parts } = failsOn(new Set([0, 3]));
    const { failed } = await bisect(range(4), attempt, { stopWhenBothHalvesFail: true });
    assert.deepEqual(parts, [[0, 1, 2, 3], [0, 1], [0], [1], [2, 3]]);
    assert.deepEqual(
      failed.map((f) => f.items),
      [[0], [2, 3]],
    );
    // A first half that passes leaves the second half splittable.
    const second = failsOn(new Set([3]));
    const found = await bisect(range(4), second.attempt, { stopWhenBothHalvesFail: true });
    assert.deepEqual(
      found.failed.map((f) => f.items),
      [[3]],
    );
  });

  it('maySplit false reports a failed part whole, without splitting it', async () => {
    const { attempt, parts } = failsOn(new Set([5]));
    const { failed, attempts } = await bisect(range(10), attempt, { maySplit: () => false });
    assert.equal(attempts, 1);
    assert.deepEqual(parts, [range(10)]);
    assert.deepEqual(
      failed.map((f) => f.items),
      [range(10)],
    );
    // Asked before each split: allowing two splits stops at a part of three.
    let splits = 2;
    const limited = await bisect(range(10), failsOn(new Set([5])).attempt, { maySplit: () => splits-- > 0 });
    assert.deepEqual(
      limited.failed.map((f) => f.items),
      [[5, 6, 7]],
    );
  });

  it('an attempt that throws ends the bisection with its error', async () => {
    const gone = new Error('connection lost');
    let calls = 0;
    await assert.rejects(
      bisect(range(8), async (part) => {
        calls++;
        if (part.length < 8) throw gone;
        return { ok: false, error: 'bad row' };
      }),
      gone,
    );
    assert.equal(calls, 2);
  });
});
