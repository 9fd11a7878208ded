/**
 * Text PostgreSQL can store in a `text` column: without NUL (PostgreSQL refuses it: 22P05 /
 * "invalid byte sequence") and without lone UTF-16 surrogates (they have no UTF-8 form). Each is
 * replaced by U+FFFD, so a reader sees that something was there. Error texts come from outside
 * (a receiver's response body, a broker's message): one NUL in them used to make the completion
 * fail, and the batch was claimed and published again forever.
 */
export function storableText(text: string): string {
  return text.replace(/\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

/** The first `max` UTF-16 units of `text`, storable (a cut through a surrogate pair is mended). */
export function storableExcerpt(text: string, max: number): string {
  return storableText(text.slice(0, max));
}
