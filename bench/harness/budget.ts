/**
 * The bench's time budget, checked before anything starts: the rounds of the phases and the
 * scenarios (bench/phases/external.ts) share it, the scenarios' estimates kept first.
 */
import { firstRoundEstimateMs } from './driver.js';
import type { BenchOptions } from './options.js';

/**
 * Says what to change when the budget cannot hold even one round of the selected phases after the
 * time kept for the scenarios: without this check every phase would be skipped and the report
 * would have no table (the default run did, with a 10-minute budget, once the scenarios' estimates
 * passed it).
 */
export function roundsDoNotFit(
  options: BenchOptions,
  scenarios: readonly { phase: string; estimateMs: (quick: boolean) => number }[],
  reserved: number,
): string | undefined {
  const round = firstRoundEstimateMs(options);
  if (round === 0 || options.budgetMs - reserved >= round) return undefined;
  const seconds = (ms: number) => `${Math.round(ms / 1000)} s`;
  const kept = scenarios.map((s) => `${s.phase} ${seconds(s.estimateMs(options.quick))}`).join(', ');
  const minutes = Math.ceil((reserved + round * options.runs + 60_000) / 60_000);
  return (
    `npm run bench: a time budget of ${options.budgetMs / 60_000} minutes cannot hold one round of the phases ` +
    `(about ${seconds(round)}) after the time kept for the scenarios (${kept}: ${seconds(reserved)}). ` +
    `Give --budget-minutes ${minutes}, or leave scenarios out with --skip ${scenarios.map((s) => s.phase).join(',')} ` +
    `(or choose phases with --only).`
  );
}
