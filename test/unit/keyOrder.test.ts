import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compareIds, keyChains, sendInWaves, type OrderedRow } from '../../src/relay/keyOrder.js';

const row = (id: string, key: string | null): OrderedRow => ({ id, key });

describe('per-key ordering inside a batch', () => {
  it('ids compare as numbers', () => {
    assert.ok(compareIds('9', '10') < 0);
    assert.ok(compareIds('100', '99') > 0);
    assert.equal(compareIds('42', '42'), 0);
  });

  it('groups a key’s rows into one chain in id order; rows without a key go alone', () => {
    const { chains, held } = keyChains(
      [row('10', 'a'), row('3', 'a'), row('4', null), row('7', 'b'), row('5', 'a')],
      new Map(),
    );
    assert.deepEqual(
      chains.map((c) => c.map((r) => r.id)),
      [['3', '5', '10'], ['4'], ['7']],
    );
    assert.deepEqual(held, []);
  });

  it('holds the rows of a key above a blocker outside the batch, keeps those below', () => {
    const { chains, held } = keyChains(
      [row('3', 'a'), row('5', 'a'), row('10', 'a'), row('6', 'b')],
      new Map([
        ['a', '4'],
        ['b', '2'],
      ]),
    );
    assert.deepEqual(
      chains.map((c) => c.map((r) => r.id)),
      [['3']],
    );
    assert.deepEqual(
      held.map((r) => r.id),
      ['5', '6', '10'],
    );
  });

  it('sends a chain one row per wave, and stops a chain at its first unconfirmed row', async () => {
    const { chains } = keyChains(
      [row('1', 'a'), row('2', 'a'), row('3', 'a'), row('4', 'b'), row('5', 'b'), row('6', null)],
      new Map(),
    );
    const waves: string[][] = [];
    const result = await sendInWaves(
      chains,
      async (wave) => {
        waves.push(wave.map((r) => r.id));
        return wave.map((r) => r.id !== '2'); // row 2 fails
      },
      (ok) => ok,
      () => true,
    );
    assert.deepEqual(waves, [
      ['1', '4', '6'],
      ['2', '5'],
    ]);
    assert.deepEqual(
      result.sent.map((r) => r.id),
      ['1', '4', '6', '2', '5'],
    );
    assert.deepEqual(result.results, [true, true, true, false, true]);
    assert.deepEqual(
      result.notSent.map((r) => r.id),
      ['3'],
    );
    assert.equal(result.waves, 2);
  });

  it('out of time: the rest of every chain is not sent', async () => {
    const { chains } = keyChains([row('1', 'a'), row('2', 'a'), row('3', 'b'), row('4', 'b')], new Map());
    let asked = 0;
    const result = await sendInWaves(
      chains,
      async (wave) => wave.map(() => true),
      (ok) => ok,
      () => asked++ < 0,
    );
    assert.deepEqual(
      result.sent.map((r) => r.id),
      ['1', '3'],
    );
    assert.deepEqual(
      result.notSent.map((r) => r.id),
      ['2', '4'],
    );
  });
});
