/**
 * AMQP-style topic patterns, as RabbitMQ topic exchanges read them: a topic is words separated by
 * dots; in a pattern `*` stands for exactly one word and `#` for zero or more words
 * (`orders.*` matches `orders.created` but not `orders` or `orders.eu.created`; `orders.#` matches
 * all three). Any other word matches itself only.
 */

/** Why a pattern is refused, or undefined when it is valid. */
export function topicPatternProblem(pattern: string): string | undefined {
  if (pattern.length === 0) return 'is empty';
  if (pattern.length > 255) return 'is longer than 255 characters';
  const words = pattern.split('.');
  for (const [i, word] of words.entries()) {
    if (word.length === 0) return `word ${i + 1} is empty (two dots in a row, or a dot at an end)`;
    if (word !== '*' && word !== '#' && /[*#]/.test(word)) {
      return `word ${i + 1} "${word}" mixes a wildcard with other characters; * and # stand alone between dots`;
    }
  }
  return undefined;
}

/** Whether `topic` matches `pattern` (a valid pattern). */
export function topicMatches(pattern: string, topic: string): boolean {
  return matchWords(pattern.split('.'), 0, topic.split('.'), 0);
}

function matchWords(p: readonly string[], i: number, t: readonly string[], j: number): boolean {
  if (i === p.length) return j === t.length;
  const word = p[i];
  if (word === '#') {
    // Zero words, or one more word and stay on the #.
    return matchWords(p, i + 1, t, j) || (j < t.length && matchWords(p, i, t, j + 1));
  }
  if (j === t.length) return false;
  return (word === '*' || word === t[j]) && matchWords(p, i + 1, t, j + 1);
}

/**
 * Whether every topic that `inner` matches is also matched by `outer`: then a rule with `outer`
 * placed before a rule with `inner` (and no narrower other conditions) leaves the second one dead.
 * Exact for these patterns: a `*` in `inner` is "some word" (covered by `*` or `#` only), a `#` in
 * `inner` is "any words" (covered by `#` only), a literal is covered by itself, `*` or `#`.
 */
export function topicPatternCovers(outer: string, inner: string): boolean {
  return coverWords(outer.split('.'), 0, inner.split('.'), 0);
}

function coverWords(o: readonly string[], i: number, n: readonly string[], j: number): boolean {
  if (i === o.length) return j === n.length;
  const word = o[i];
  if (word === '#') return coverWords(o, i + 1, n, j) || (j < n.length && coverWords(o, i, n, j + 1));
  if (j === n.length) return false;
  const other = n[j] as string;
  if (other === '#') return false;
  if (word === '*') return coverWords(o, i + 1, n, j + 1);
  return word === other && coverWords(o, i + 1, n, j + 1);
}
