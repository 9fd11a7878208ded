/**
 * Per-key ordering inside one claimed batch (SHARDRELAY_ORDERING=key): which rows may be sent, and
 * in which waves. Pure logic; the SQL that finds what blocks a key is in claims.ts, the sending in
 * deliverBatch.ts.
 *
 * The rule: a row of key K is sent only once every earlier row of K (lower id) is sent, or dead
 * when dead rows release their key. A batch may hold several rows of K (a chain, ids ascending);
 * they are sent one wave after another, never together: wave 1 holds the first row of every key's
 * chain and every row without a key, wave 2 the second row of every chain whose first row the
 * broker confirmed, and so on. A row that is not confirmed (failed, unknown, or out of time) ends
 * its chain (unless it is given up as dead and dead rows release their key): the rows after it are
 * not sent in this batch, get no completion and stay pending as
 * they were (no attempt counted), and the next claim does not take them while the failed row waits
 * for its retry (claims.ts `claimQuery`).
 *
 * Why waves and not one concurrent send: a sink publishes a batch concurrently (pipelined
 * confirms), so if the first of two rows of a key fails while the second is confirmed, the consumer
 * has the second without the first. Sending the second only after the first's confirm closes that.
 * Its cost is one broker round trip per row of a key's chain (measured in bench/RESULTS.md, "Per-key
 * ordering"); rows of different keys still go together.
 */

/** What the planner needs of a claimed row. */
export interface OrderedRow {
  readonly id: string;
  readonly key: string | null;
}

export interface KeyChains<T extends OrderedRow> {
  /** Rows without a key, plus one chain per key, ids ascending, each a prefix the batch may send. */
  readonly chains: readonly (readonly T[])[];
  /** Rows the batch may not send: an earlier row of their key is pending outside this batch. */
  readonly held: readonly T[];
}

/**
 * Groups a claimed batch into chains. `blockers` maps a key to the lowest id of a row of that key
 * that blocks it and is not in this batch (pending: claimed by someone else, or waiting for a
 * retry; dead too when dead rows hold their key). Rows of the key at or above that id are held.
 */
export function keyChains<T extends OrderedRow>(
  rows: readonly T[],
  blockers: ReadonlyMap<string, string>,
): KeyChains<T> {
  const chains: T[][] = [];
  const byKey = new Map<string, T[]>();
  const held: T[] = [];
  const sorted = [...rows].sort((a, b) => compareIds(a.id, b.id));
  for (const row of sorted) {
    if (row.key === null) {
      chains.push([row]);
      continue;
    }
    const blocker = blockers.get(row.key);
    if (blocker !== undefined && compareIds(row.id, blocker) > 0) {
      held.push(row);
      continue;
    }
    const chain = byKey.get(row.key);
    if (chain) chain.push(row);
    else {
      const fresh = [row];
      byKey.set(row.key, fresh);
      chains.push(fresh);
    }
  }
  return { chains, held };
}

/** Ids are bigint text: compare by length, then text (no leading zeros, never negative). */
export function compareIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/**
 * Sends the chains in waves (see above). `sendWave` sends rows concurrently; `releasesKey` says
 * whether a row's result lets its key's next row go (confirmed, or given up as dead when dead rows
 * release their key); `mayGoOn` is asked before each wave after the first (false =
 * out of time). Returns the rows sent (in the order sent) with their results, and the rows not
 * sent because an earlier row of their chain was not confirmed or time ran out.
 */
export async function sendInWaves<T extends OrderedRow, R>(
  chains: readonly (readonly T[])[],
  sendWave: (rows: readonly T[]) => Promise<readonly R[]>,
  releasesKey: (result: R, row: T) => boolean,
  mayGoOn: () => boolean,
): Promise<{ sent: T[]; results: R[]; notSent: T[]; waves: number }> {
  const sent: T[] = [];
  const results: R[] = [];
  const notSent: T[] = [];
  let live = chains.filter((c) => c.length > 0).map((c) => ({ chain: c, next: 0 }));
  let waves = 0;
  while (live.length > 0) {
    if (waves > 0 && !mayGoOn()) {
      for (const l of live) notSent.push(...l.chain.slice(l.next));
      break;
    }
    const wave = live.map((l) => l.chain[l.next] as T);
    const got = await sendWave(wave);
    waves++;
    const still: typeof live = [];
    live.forEach((l, i) => {
      const result = got[i] as R;
      sent.push(wave[i] as T);
      results.push(result);
      l.next++;
      if (!releasesKey(result, wave[i] as T)) notSent.push(...l.chain.slice(l.next));
      else if (l.next < l.chain.length) still.push(l);
    });
    live = still;
  }
  return { sent, results, notSent, waves };
}
