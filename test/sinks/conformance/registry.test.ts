/** Every registered target has its test file, and every test file here a registered target. */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { targets } from './targets/index.js';

it('runs the conformance suite for every registered sink, one test file each', () => {
  const dir = fileURLToPath(new URL('.', import.meta.url));
  const files = readdirSync(dir)
    .filter((name) => name.endsWith('.test.ts') && name !== 'registry.test.ts')
    .map((name) => name.replace(/\.test\.ts$/, ''))
    .sort();
  assert.deepEqual(files, targets.map((t) => t.name).sort());
  assert.equal(new Set(targets.map((t) => t.name)).size, targets.length, 'target names are unique');
});
