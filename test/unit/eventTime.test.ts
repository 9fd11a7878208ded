import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isoTime } from '../../src/sinks/eventTime.js';

/** Every date: the same text as toISOString, whatever the cached minute was before it. */
function assertSame(dates: readonly Date[]): void {
  for (const date of dates) assert.equal(isoTime(date), date.toISOString(), `for ${date.getTime()}`);
}

describe('event time', () => {
  it('writes what toISOString writes across seconds, minutes, hours, days and years', () => {
    const start = Date.UTC(2026, 11, 31, 23, 58, 59, 997);
    const dates: Date[] = [];
    // Every millisecond across two minute boundaries and a year's end, in order, as rows arrive.
    for (let ms = start; ms < start + 62_010; ms += 1) dates.push(new Date(ms));
    assertSame(dates);
  });

  it('writes what toISOString writes for dates in random order, before 1970 and at the edges of four-digit years', () => {
    const dates: Date[] = [];
    let seed = 7;
    const next = (): number => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      return seed / 2_147_483_648;
    };
    const edges = [
      Date.UTC(1970, 0, 1),
      -1,
      -60_000,
      -60_001,
      Date.UTC(1969, 11, 31, 23, 59, 59, 999),
      Date.UTC(0, 0, 1) - 0, // year 1900 (Date.UTC maps 0 to 1900)
      new Date('0000-01-01T00:00:00.000Z').getTime(),
      new Date('0000-01-01T00:00:00.000Z').getTime() - 1, // year -1: an extended year
      new Date('9999-12-31T23:59:59.999Z').getTime(),
      new Date('9999-12-31T23:59:59.999Z').getTime() + 1, // year 10000: an extended year
      8.64e15 - 1, // the last and first valid dates
      -8.64e15 + 1,
    ];
    for (const ms of edges) {
      dates.push(new Date(ms), new Date(ms + 1), new Date(ms - 1));
    }
    for (let i = 0; i < 20_000; i += 1) {
      const base = Math.round((next() - 0.5) * 2 * 4e14);
      dates.push(new Date(base));
      // A neighbour, often within the cached minute.
      dates.push(new Date(base + Math.round((next() - 0.3) * 120_000)));
    }
    assertSame(dates);
  });

  it('throws a RangeError for an invalid date, after any cached minute', () => {
    isoTime(new Date(Date.UTC(2026, 0, 1)));
    assert.throws(() => isoTime(new Date(Number.NaN)), RangeError);
  });
});
