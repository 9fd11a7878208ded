/**
 * `status --watch`: redraws a text picture every few seconds until interrupted.
 *
 * On a terminal the picture is redrawn in place: the cursor goes home, every line overwrites the
 * previous frame's line and erases what is left of it, and whatever the previous frame had below is
 * erased at the end. Unlike clearing the screen first, nothing flickers. Lines are cut to the
 * terminal's width, since a wrapped line would push the next frame down. Anywhere else (a pipe, a
 * file) frames are written one after the other, separated by a blank line, without escape codes.
 * A failed refresh (the database is restarting, say) shows its error in place of the picture and
 * the watch goes on.
 *
 * Paced by the read's cost: the picture counts every pending row (shardrelay.health; 1.2-1.3 s with
 * 1,000,000 pending on 2 cores), so at a 2 s interval a watch would keep a PostgreSQL core ~40 %
 * busy (1.2 s of every 3.2) through a backlog, exactly while it drains. The next read waits at
 * least WATCH_READS_APART times the last read's time (at most a fifth of the time spent reading),
 * and the header says so.
 */
import { toError } from '../errors.js';

const HOME = '\x1b[H';
const CLEAR_SCREEN = '\x1b[2J';
const ERASE_LINE_END = '\x1b[K';
const ERASE_BELOW = '\x1b[J';

/** The wait after a read is at least this many times the read. */
export const WATCH_READS_APART = 4;

export interface WatchOptions {
  readonly seconds: number;
  readonly out?: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  /** Stops the watch (tests); otherwise it runs until the process is interrupted. */
  readonly signal?: AbortSignal;
}

export async function watch(render: () => Promise<string>, options: WatchOptions): Promise<void> {
  const out = options.out ?? process.stdout;
  const seconds = Math.max(0.5, options.seconds);
  let first = true;
  while (!options.signal?.aborted) {
    let text: string;
    const started = performance.now();
    let readMs = 0;
    try {
      text = await render();
      readMs = performance.now() - started;
    } catch (error) {
      text = `refresh failed: ${toError(error).message} (retrying every ${seconds}s)`;
    }
    const waitMs = Math.max(seconds * 1000, WATCH_READS_APART * readMs);
    const every =
      waitMs > seconds * 1000
        ? `every ${(waitMs / 1000).toFixed(1)}s (the read took ${(readMs / 1000).toFixed(1)}s; asked ${seconds}s)`
        : `every ${seconds}s`;
    const header = `${new Date().toISOString()}  ${every}, Ctrl-C to stop`;
    const lines = [header, '', ...text.split('\n')];
    if (out.isTTY) {
      const width = out.columns ?? 0;
      const fit = (line: string) => (width > 0 ? [...line].slice(0, width).join('') : line);
      out.write(
        `${first ? CLEAR_SCREEN : ''}${HOME}${lines.map((l) => fit(l) + ERASE_LINE_END).join('\n')}\n${ERASE_BELOW}`,
      );
    } else {
      out.write(`${first ? '' : '\n'}${lines.join('\n')}\n`);
    }
    first = false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      options.signal?.addEventListener('abort', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
