import { toError } from '../errors.js';
import { untilDeadline } from '../raceDeadline.js';
import { unknown, type SendOutcome } from './sink.js';

/**
 * Waits for every pending outcome, but no later than `deadline` (epoch ms). An outcome still
 * pending then becomes `unknown` (or what `late` says of it, for a sink that knows a message was
 * never written): the relay must not hold row locks waiting on a hung broker, and a confirm that
 * never came must lead to a re-send, never to `sent`.
 */
export async function settleByDeadline(
  pending: readonly Promise<SendOutcome>[],
  deadline: number,
  late: (index: number) => SendOutcome = () => NO_CONFIRM,
): Promise<SendOutcome[]> {
  const results: (SendOutcome | undefined)[] = new Array(pending.length).fill(undefined);
  const all = Promise.all(
    pending.map((p, i) =>
      p.then(
        (outcome) => {
          results[i] = outcome;
        },
        (error: unknown) => {
          results[i] = unknown(toError(error).message);
        },
      ),
    ),
  );
  await untilDeadline(all, deadline);
  return results.map((r, i) => r ?? late(i));
}

const NO_CONFIRM = unknown('no confirm before the batch deadline');
