import { spawn, type ChildProcess } from 'node:child_process';

/** The CLI the tests start, compiled by the test command (test/run.ts, which says why). */
function cliEntry(): string {
  const entry = process.env.SHARDRELAY_TEST_CLI;
  if (!entry) throw new Error('SHARDRELAY_TEST_CLI is not set; run tests with `npm test`');
  return entry;
}

/**
 * Starts the real CLI as an OS process, with the given environment additions, in the test's
 * working directory or in `cwd` (as an operator runs it in a project folder).
 */
export function spawnCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  options: { readonly cwd?: string } = {},
): ChildProcess {
  return spawn(process.execPath, [cliEntry(), ...args], {
    cwd: options.cwd,
    // No synthetic canary rows unless a test asks for them: tests count rows exactly.
    env: { ...process.env, SHARDRELAY_LOG_LEVEL: 'warn', SHARDRELAY_CANARY_INTERVAL_SECONDS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI to completion and collects its output. */
export function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const child = spawnCli(args, env);
  return collect(child);
}

export function collect(child: ChildProcess): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
}

/** Polls `check` until it returns true or `timeoutMs` passes (then throws with `what`). */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 30_000,
  everyMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
