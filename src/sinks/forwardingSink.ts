import { toError } from '../errors.js';
import { settleByDeadline } from './deadline.js';
import {
  unknown,
  type OutboxMessage,
  type RelaySink,
  type SendContext,
  type SendOutcome,
  type Sink,
} from './sink.js';

/** A send handed to the thread that holds the sink: plain data (structured clone). */
export interface ForwardedSend {
  readonly id: number;
  /** The route whose sink sends it, when the relay routes (undefined: the relay's only sink). */
  readonly route?: string;
  readonly messages: readonly OutboxMessage[];
  readonly deadline: number;
}

/** The outcomes of a forwarded send, in the messages' order. */
export interface ForwardedOutcomes {
  readonly id: number;
  readonly route?: string;
  readonly outcomes: readonly SendOutcome[];
}

export interface ForwardingLink {
  /** Posts a send to the thread that holds the sink. */
  post(send: ForwardedSend): void;
  /** Registers the handler of outcomes coming back. */
  onOutcomes(handler: (answer: ForwardedOutcomes) => void): void;
  /** Registers the handler of the link's end (the other thread is gone). */
  onClose(handler: () => void): void;
}

/**
 * A sink that hands each batch to the same sink in another thread of this process, for a sink
 * whose client loads in one thread only (createSink.ts, `loadsInOneThreadOnly`): the
 * real-time lane's worker thread forwards its sends to the main thread's single producer.
 *
 * Cost to real-time latency: one structured clone and one message each way between threads.
 * Measured (a worker echoing plain outcomes, 2,000 round trips of rows with a 200-byte payload, on
 * a 2-core machine at load average 14): p50 0.03 ms for 1 row, 0.05 ms for 10, 0.16 ms for 100
 * (the default real-time batch size); p99 0.3-1.7 ms, the load's scheduling noise. Small beside a
 * broker round trip. The send is then started by the main thread's event loop, so it also waits for the
 * task that loop is running (one batch's step, not the whole batch: a batch awaits its database
 * and broker between steps); the worker's own claims, LISTEN wake-ups and completions stay on its
 * own loop.
 *
 * Outcomes not back by the batch deadline are `unknown`, as are all pending ones when the other
 * thread is gone: the rows are sent again with the same event id. The claim transaction cannot
 * cross threads, so only a broker `Sink` is forwarded, never an in-database one (pg-boss).
 */
export function createForwardingSink(name: string, link: ForwardingLink, route?: string): Sink {
  const pending = new Map<number, (outcomes: readonly SendOutcome[]) => void>();
  let nextId = 1;
  let gone: string | null = null;
  link.onOutcomes(({ id, outcomes, route: answeredRoute }) => {
    // Several routes may forward over one link, each counting its own ids.
    if (answeredRoute !== route) return;
    const settle = pending.get(id);
    pending.delete(id);
    settle?.(outcomes);
  });
  const endAll = (reason: string) => {
    gone = reason;
    const settles = [...pending.values()];
    pending.clear();
    // A send whose answer can no longer come: its outcomes are unknown (settled by the caller).
    for (const settle of settles) settle([]);
  };
  link.onClose(() => endAll('the thread holding the sink is gone'));

  return {
    name,
    async start() {},
    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (gone) return messages.map(() => unknown(gone as string));
      if (context.mayContinue && !context.mayContinue())
        return messages.map(() => unknown('the shard may no longer be held; not sent'));
      const id = nextId++;
      const answer = new Promise<readonly SendOutcome[]>((resolve) => pending.set(id, resolve));
      link.post({ id, messages, deadline: context.deadline, ...(route === undefined ? {} : { route }) });
      // One promise per message, so that settleByDeadline turns each late one into `unknown`.
      const outcomes = await settleByDeadline(
        messages.map((_, i) =>
          answer.then((all) => all[i] ?? unknown(gone ?? 'no outcome came back from the sink thread')),
        ),
        context.deadline,
      );
      pending.delete(id);
      return outcomes;
    },
    async close() {
      endAll('the sink is closed');
    },
  };
}

/**
 * The holding thread's side: sends a forwarded batch through its own sink (null while that sink
 * is not started) and answers with plain outcomes. Never rejects: a throw makes every outcome
 * `unknown`, as it does for a batch sent in the thread itself.
 */
export async function answerForwardedSend(
  sink: RelaySink | null,
  send: ForwardedSend,
): Promise<ForwardedOutcomes> {
  const { id, messages, deadline, route } = send;
  const answer = (outcomes: readonly SendOutcome[]): ForwardedOutcomes =>
    route === undefined ? { id, outcomes } : { id, route, outcomes };
  if (!sink) return answer(messages.map(() => unknown('the sink is not started in the main thread')));
  // Not reached while only one-thread-only broker clients are forwarded (createSink.ts); said
  // plainly should that change, as the claim transaction stays in the sending thread.
  if (sink.kind === 'in-database')
    return answer(
      messages.map(() => unknown(`sink ${sink.name} writes in the claim transaction; not forwarded`)),
    );
  try {
    const all = sink.sendBatch(messages, { deadline });
    const outcomes = await settleByDeadline(
      messages.map((_, i) => all.then((list) => list[i] ?? unknown('the sink gave no outcome'))),
      deadline,
    );
    return answer(outcomes);
  } catch (error) {
    const text = toError(error).message;
    return answer(messages.map(() => unknown(text)));
  }
}
