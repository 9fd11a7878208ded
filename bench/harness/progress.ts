/**
 * Progress for the person watching, on stderr (stdout carries only the table): a bar over the
 * planned phase runs when stderr is a terminal, plain lines otherwise (CI logs, pipes).
 */
import cliProgress from 'cli-progress';

export interface Progress {
  log(line: string): void;
  /** A phase run starts; `done` counts the runs finished so far. */
  phase(name: string, done: number): void;
  stop(): void;
}

export function createProgress(totalRuns: number): Progress {
  const started = Date.now();
  const elapsed = () => `${Math.round((Date.now() - started) / 1000)} s`;
  if (!process.stderr.isTTY) {
    return {
      log: (line) => process.stderr.write(`[bench ${elapsed()}] ${line}\n`),
      phase: (name, done) =>
        process.stderr.write(`[bench ${elapsed()}] ${name} (${done}/${totalRuns} done)\n`),
      stop: () => {},
    };
  }
  const bars = new cliProgress.MultiBar(
    {
      stream: process.stderr,
      format: '{bar} {value}/{total} phase runs | {phase} | {duration_formatted}',
      hideCursor: true,
      clearOnComplete: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const bar = bars.create(totalRuns, 0, { phase: 'starting' });
  return {
    log: (line) => bars.log(`${line}\n`),
    phase: (name, done) => bar.update(done, { phase: name }),
    stop: () => bars.stop(),
  };
}
