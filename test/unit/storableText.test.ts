import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { storableExcerpt, storableText } from '../../src/relay/storableText.js';

describe('storableText', () => {
  it('replaces NUL and lone surrogates, keeps everything else', () => {
    assert.equal(storableText('a\u0000b'), 'a\uFFFDb');
    assert.equal(storableText('x\uD800y'), 'x\uFFFDy');
    assert.equal(storableText('x\uDC00'), 'x\uFFFD');
    assert.equal(storableText('ok 😀 é'), 'ok 😀 é');
  });

  it('mends a cut through a surrogate pair', () => {
    assert.equal(storableExcerpt('ab😀', 3), 'ab\uFFFD');
  });
});
