import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { roundsDoNotFit } from '../../bench/harness/budget.js';
import { parseOptions } from '../../bench/harness/options.js';
import { EXTERNAL_SCENARIOS } from '../../bench/phases/external.js';

/** What bench/main.ts checks before anything starts, for these command-line arguments. */
function check(args: readonly string[]): string | undefined {
  const options = parseOptions(args, {});
  const scenarios = EXTERNAL_SCENARIOS.filter((s) => options.phases.has(s.phase));
  const reserved = scenarios.reduce((sum, s) => sum + s.estimateMs(options.quick), 0);
  return roundsDoNotFit(options, scenarios, reserved);
}

describe('bench time budget', () => {
  it('the default run has time for its rounds after the scenarios', () => {
    assert.equal(check([]), undefined);
  });

  it('--quick and a run of chosen phases fit their budgets', () => {
    assert.equal(check(['--quick']), undefined);
    assert.equal(check(['--only', 'relay-null', '--budget-minutes', '1']), undefined);
  });

  it('a budget the scenarios fill says what to change instead of skipping every phase', () => {
    const problem = check(['--budget-minutes', '10']);
    assert.ok(problem, 'a 10-minute budget with every scenario cannot hold a round');
    assert.match(problem, /cannot hold one round of the phases \(about \d+ s\)/);
    assert.match(problem, /Give --budget-minutes \d+, or leave scenarios out with --skip lanes,/);
    const minutes = Number(/--budget-minutes (\d+)/.exec(problem)?.[1]);
    assert.equal(check(['--budget-minutes', String(minutes)]), undefined, 'the budget it names is enough');
  });
});
