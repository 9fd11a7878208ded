import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { limitHeapGrowth, RELAY_HEAP_GROWING_PERCENT } from '../../src/wiring/heapGrowth.js';

describe('relay heap growth', () => {
  it('sets the relay’s growth when the operator chose none', () => {
    assert.equal(
      limitHeapGrowth('--max-old-space-size=512', ['--enable-source-maps']),
      `--heap-growing-percent=${RELAY_HEAP_GROWING_PERCENT}`,
    );
    assert.equal(limitHeapGrowth(undefined, []), `--heap-growing-percent=${RELAY_HEAP_GROWING_PERCENT}`);
  });

  it('leaves an operator’s own setting alone, in NODE_OPTIONS or on the command line, either spelling', () => {
    assert.equal(limitHeapGrowth('--max-old-space-size=512 --heap-growing-percent=50', []), null);
    assert.equal(limitHeapGrowth(undefined, ['--heap_growing_percent=300']), null);
  });
});
