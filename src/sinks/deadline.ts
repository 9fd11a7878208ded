import { unknown, type SendOutcome } from './sink.js';

/**
 * Waits for every pending outcome, but no later than `deadline` (epoch ms). An outcome still
 * pending then becomes `unknown`: the relay must not hold row locks waiting on a hung broker, and
 * a confirm that never came must lead to a re-send, never to `sent`.
 */
export async function settleByDeadline(
  pending: readonly Promise<SendOutcome>[],
  deadline: number,
): Promise<SendOutcome[]> {
  const results: (SendOutcome | undefined)[] = new Array(pending.length).fill(undefined);
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
  });
  const all = Promise.all(
    pending.map((p, i) =>
      p.then(
        (outcome) => {
          results[i] = outcome;
        },
        (error: unknown) => {
          results[i] = unknown(error instanceof Error ? error.message : String(error));
        },
      ),
    ),
  );
  try {
    await Promise.race([all, expired]);
  } finally {
    clearTimeout(timer);
  }
  return results.map((r) => r ?? unknown('no confirm before the batch deadline'));
}
