/**
 * The CloudEvents `time` attribute of a row: its enqueue time as `Date.prototype.toISOString`
 * writes it (`2026-12-02T22:15:03.042Z`), which is what the CloudEvents SDK put there and what the
 * conformance test compares against.
 *
 * Why not `toISOString` itself: every message of every sink formats its time, and consecutive rows
 * of a batch were enqueued within the same minute. `toISOString` builds the whole string each time;
 * this keeps the minute's prefix (`2026-12-02T22:15:`) and appends seconds and milliseconds from
 * tables. Measured in process, 1,000,000 times of a batch's spread (rows 1 ms apart), warm:
 * 0.76-0.90 µs a time with `toISOString`, 0.23-0.30 µs with this (each written into a buffer, as
 * sinks do).
 *
 * Outside the years 0000-9999 (`toISOString`'s extended, signed years) and for an invalid date
 * (RangeError) it is `toISOString` itself.
 */

const MINUTE_MS = 60_000;

const TWO_DIGITS = Array.from({ length: 60 }, (_, i) => String(i).padStart(2, '0'));
const THREE_DIGITS = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'));

/** Start of the minute whose prefix is cached (epoch ms), and the prefix: `YYYY-MM-DDTHH:MM:`. */
let cachedMinute = Number.NaN;
let cachedPrefix = '';

/** `date.toISOString()`, the same text, cheaper for dates in a recently seen minute. */
export function isoTime(date: Date): string {
  const ms = date.getTime();
  const offset = ms - cachedMinute;
  // NaN (an invalid date, or nothing cached yet) fails both comparisons.
  if (offset >= 0 && offset < MINUTE_MS) {
    const seconds = Math.floor(offset / 1000);
    return `${cachedPrefix}${TWO_DIGITS[seconds] as string}.${THREE_DIGITS[offset - seconds * 1000] as string}Z`;
  }
  const text = date.toISOString(); // RangeError for an invalid date, as before
  if (text.length === 24) {
    // A four-digit year: the first 17 characters are the minute's. (ms % MINUTE_MS is negative
    // before 1970, hence the double modulo.)
    cachedMinute = ms - (((ms % MINUTE_MS) + MINUTE_MS) % MINUTE_MS);
    cachedPrefix = text.slice(0, 17);
  }
  return text;
}
