/**
 * The interleaved schedule: every phase once per round, rounds repeated, so slow drift of a shared
 * machine (other jobs starting, a checkpoint, autovacuum) spreads over all phases instead of
 * landing on one. Within a round the drains run floor → relays, and relays → floor in the next
 * (ABBA), so neither side always runs right after the other. The load phases follow the drains:
 * they size their offered load from the drain rates already measured.
 *
 * The time budget is kept by estimate: a run that would end past `deadline` is skipped and
 * reported as skipped, so the bench always ends with a table.
 */
import { runFloor } from '../phases/floor.js';
import type { BenchOptions } from './options.js';
import type { PhaseContext } from '../phases/context.js';
import { runRecovery } from '../phases/recovery.js';
import { runRelayDrain } from '../phases/relayDrain.js';
import { runSustainable } from '../phases/sustainable.js';
import type { Progress } from './progress.js';
import {
  DRAIN_PHASES,
  LOAD_PHASES,
  type EXTERNAL_PHASES,
  type PhaseName,
  type RunResult,
} from './results.js';
import { median } from './stats.js';

export interface ScheduleOutcome {
  readonly results: RunResult[];
  readonly skipped: { phase: string; round: number; reason: string }[];
  readonly failures: { phase: string; round: number; error: string }[];
}

type RoundPhase = Exclude<PhaseName, (typeof EXTERNAL_PHASES)[number]>;

export function plannedRuns(options: BenchOptions): number {
  const count = (phases: readonly string[]) =>
    phases.filter((p) => options.phases.has(p as PhaseName)).length;
  return count(DRAIN_PHASES) * options.runs + count(LOAD_PHASES) * options.loadPhaseRuns;
}

/** A phase's first run, before any has been timed: guesses from a slow 2-core machine. */
function firstRunEstimateMs(phase: RoundPhase, options: BenchOptions): number {
  const drain = (rowsPerSec: number) => 8_000 + (options.rows / rowsPerSec) * 1000 + options.latencyWindowMs;
  switch (phase) {
    case 'sql-floor':
    case 'sql-floor-narrow':
    case 'pgboss-insert':
      return 5_000 + (options.rows / 20_000) * 1000;
    case 'relay-null':
      return drain(15_000);
    case 'relay-pgboss':
    case 'relay-rabbitmq':
      return drain(5_000);
    case 'max-sustainable':
      return 10_000 + options.sustainStepMs * 5;
    case 'recovery':
      return 15_000 + options.recoveryBaselineMs + (options.recoverySpikeRows / 7_000) * 1000;
  }
}

/** What the first round of the selected phases is expected to take (0 when none is selected). */
export function firstRoundEstimateMs(options: BenchOptions): number {
  const phases: readonly RoundPhase[] = [...DRAIN_PHASES, ...LOAD_PHASES];
  return phases
    .filter((phase) => options.phases.has(phase))
    .reduce((sum, phase) => sum + firstRunEstimateMs(phase, options), 0);
}

export async function runSchedule(
  context: PhaseContext,
  progress: Progress,
  deadline: number,
  rabbitMqProblem: string | undefined,
): Promise<ScheduleOutcome> {
  const { options } = context;
  const outcome: ScheduleOutcome = { results: [], skipped: [], failures: [] };
  const durations = new Map<string, number>();
  const ratesOf = (phase: string) =>
    outcome.results.filter((r) => r.phase === phase).map((r) => r.rowsPerSec);
  const inRound = (phase: string, round: number) =>
    outcome.results.find((r) => r.phase === phase && r.round === round)?.rowsPerSec;

  /** Later runs of a phase are expected to take as long as its slowest run so far. */
  const estimateMs = (phase: RoundPhase): number =>
    durations.get(phase) ?? firstRunEstimateMs(phase, options);

  const run = async (phase: RoundPhase, round: number): Promise<RunResult> => {
    switch (phase) {
      case 'sql-floor':
        return runFloor(context, round, options.rows, 'outbox');
      case 'sql-floor-narrow':
        return runFloor(context, round, options.rows, 'narrow');
      case 'pgboss-insert':
        return runFloor(context, round, options.rows, 'pgboss-insert');
      case 'relay-null':
      case 'relay-pgboss':
      case 'relay-rabbitmq':
        return runRelayDrain(context, round, phase.slice('relay-'.length) as 'null' | 'pgboss' | 'rabbitmq', {
          rows: options.rows,
          latencyWindow: true,
        });
      case 'max-sustainable': {
        const relayRate = median(ratesOf('relay-null'));
        const start = Number.isFinite(relayRate) ? Math.round((relayRate * 0.35) / 100) * 100 : 3_000;
        return runSustainable(context, round, Math.max(1_000, start));
      }
      case 'recovery': {
        const sustained = median(ratesOf('max-sustainable'));
        const relayRate = inRound('relay-null', round) ?? median(ratesOf('relay-null'));
        const load = Number.isFinite(sustained)
          ? sustained * 0.5
          : Number.isFinite(relayRate)
            ? relayRate * 0.25
            : 2_000;
        return runRecovery(
          context,
          round,
          Math.max(500, Math.round(load / 100) * 100),
          Number.isFinite(relayRate) ? relayRate : undefined,
        );
      }
    }
  };

  let done = 0;
  for (let round = 1; round <= options.runs; round++) {
    const drains = round % 2 === 1 ? [...DRAIN_PHASES] : [...DRAIN_PHASES].reverse();
    // With fewer load-phase runs than rounds (--quick), they run in the first rounds: on a busy
    // machine the budget then cuts a late drain run (reported as skipped), not a whole phase.
    const withLoad = round <= options.loadPhaseRuns;
    const phases: RoundPhase[] = withLoad ? [...drains, ...LOAD_PHASES] : drains;
    for (const phase of phases) {
      if (!options.phases.has(phase)) continue;
      progress.phase(`${phase} (round ${round})`, done);
      done++;
      if (phase === 'relay-rabbitmq' && rabbitMqProblem) {
        if (options.requireRabbitMq) outcome.failures.push({ phase, round, error: rabbitMqProblem });
        else outcome.skipped.push({ phase, round, reason: rabbitMqProblem });
        continue;
      }
      if (Date.now() + estimateMs(phase) > deadline) {
        outcome.skipped.push({ phase, round, reason: 'would end past the time budget' });
        continue;
      }
      const started = Date.now();
      try {
        const result = await run(phase, round);
        outcome.results.push(result);
        progress.log(
          `${phase} round ${round}: ${Math.round(result.rowsPerSec).toLocaleString('en-US')} rows/s` +
            (result.problems.length > 0 ? ` — ${result.problems.join('; ')}` : ''),
        );
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        outcome.failures.push({ phase, round, error: message });
        progress.log(`${phase} round ${round} failed: ${message}`);
      }
      const took = Date.now() - started;
      durations.set(phase, Math.max(took, durations.get(phase) ?? 0));
    }
  }
  return outcome;
}
