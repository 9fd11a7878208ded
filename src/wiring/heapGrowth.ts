import v8 from 'node:v8';

/**
 * How far V8 lets the old generation grow past what survived the last full collection before it
 * collects again: 100 % (the next full collection at twice the live heap). V8's own heuristic,
 * tuned for throughput, grows it up to 4× the live heap.
 *
 * Why: a relay's live heap is small (about 17 MB after a full collection while draining), but its
 * rows live for a batch (claim → send → completion, tens to hundreds of milliseconds), longer than
 * a young-generation collection, so every batch's rows are promoted and die in the old generation.
 * With V8's default growth the heap filled to 73–75 MB of such garbage before each full
 * collection. Measured draining 200,000 rows with the null sink (both lanes, default settings,
 * three interleaved rounds, 2 cores, load average 15–29): peak RSS 170–174 MB → 136–139 MB, V8 heap
 * used 81–83 → 47–50 MB, and CPU per 1,000 rows 8.4–11.8 → 9.2–11.9 ms, the same within the load's
 * noise (a full collection of a 17 MB live heap costs 17–56 ms, now every few seconds). Capping the
 * young generation's growth as well (`--semi-space-growth-factor=1`) went down to 102 MB, but at
 * about 10 % more CPU per row, so it is left to the operator.
 *
 * The flag is read at every full collection, so setting it after start-up works (the young
 * generation's size limits are read once at start-up and cannot be changed here). It is set only
 * by the relay's own process (`shardrelay run`, the demo), never by the library: an application
 * that embeds `startRelay` keeps its own heap policy.
 */
export const RELAY_HEAP_GROWING_PERCENT = 100;

/**
 * Sets the relay's heap growth unless the operator chose one (`--heap-growing-percent` in
 * NODE_OPTIONS or on the node command line). Returns the flag set, or null when left alone.
 */
export function limitHeapGrowth(
  nodeOptions: string | undefined = process.env.NODE_OPTIONS,
  execArgv: readonly string[] = process.execArgv,
): string | null {
  const chosen = [...execArgv, ...(nodeOptions ?? '').split(/\s+/)].some((arg) =>
    /^--heap[-_]growing[-_]percent\b/.test(arg),
  );
  if (chosen) return null;
  const flag = `--heap-growing-percent=${RELAY_HEAP_GROWING_PERCENT}`;
  v8.setFlagsFromString(flag);
  return flag;
}
