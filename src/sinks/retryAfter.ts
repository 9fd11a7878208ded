/**
 * A `Retry-After` value (RFC 9110 §10.2.3) in milliseconds from `now`: either delay-seconds
 * ("30") or an HTTP date ("Wed, 21 Oct 2026 07:28:00 GMT"). Undefined when the header is absent or
 * malformed (then the relay's own backoff applies). A date in the past means "now": 0.
 *
 * Any sink whose broker says when to come back (HTTP 429/503, a broker's throttling reply) puts
 * the hint on its retryable outcome; the completion policy retries no earlier, within the cap.
 */
export function parseRetryAfter(
  value: string | null | undefined,
  now: number = Date.now(),
): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  // IMF-fixdate and the two obsolete forms all start with a day name; Date.parse reads all three.
  if (!/^[A-Za-z]{3}/.test(text)) return undefined;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
