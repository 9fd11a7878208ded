/**
 * Compiles src/ and bench/ to plain JavaScript for the measured processes.
 *
 * Why: under tsx an idle child process already has about 115 MB of RSS and spends about 1.5 s of
 * CPU compiling at start (measured on the 2-core machine; plain Node starts at about 40 MB). The
 * relay's peak RSS is a target (≤ 200 MB), and in production the relay runs compiled, so the
 * measured processes run compiled JavaScript too. Transpiling file by file (no type check: the
 * typecheck script does that) takes about a second, where a full `tsc` build takes tens of seconds
 * on this machine.
 *
 * The output keeps the repository's layout under bench/results/build/ (ignored by git), so the
 * relative imports (`../src/...js`) and the package's node_modules resolve as from the sources.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BUILD_DIR = path.join(ROOT, 'bench', 'results', 'build');
const SOURCE_DIRS = ['src', 'bench'];

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const files = await Promise.all(
    entries.map(async (entry) => {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) return entry.name === 'results' ? [] : sourceFiles(full);
      return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [full] : [];
    }),
  );
  return files.flat();
}

/** Transpiles the .ts files of src/ and bench/ changed since the last run into BUILD_DIR; returns
 * where the compiled file of a source is. */
export async function compileForChildren(): Promise<(relativeTs: string) => string> {
  const files = (await Promise.all(SOURCE_DIRS.map((d) => sourceFiles(path.join(ROOT, d))))).flat();
  const targetOf = (file: string) => path.join(BUILD_DIR, path.relative(ROOT, file)).replace(/\.ts$/, '.js');
  // Up to date from an earlier run: skipped, so a second run starts in a fraction of a second.
  const stale = (
    await Promise.all(
      files.map(async (file) => {
        const built = await stat(targetOf(file)).catch(() => undefined);
        return built && built.mtimeMs >= (await stat(file)).mtimeMs ? undefined : file;
      }),
    )
  ).filter((file): file is string => file !== undefined);
  if (stale.length > 0) {
    // Loaded only when needed: importing the compiler alone takes a second or two on this machine.
    const { default: ts } = await import('typescript');
    await Promise.all(
      stale.map(async (file) => {
        const output = ts.transpileModule(await readFile(file, 'utf8'), {
          fileName: file,
          compilerOptions: {
            module: ts.ModuleKind.ESNext,
            target: ts.ScriptTarget.ES2022,
            esModuleInterop: true,
          },
        });
        await mkdir(path.dirname(targetOf(file)), { recursive: true });
        await writeFile(targetOf(file), output.outputText);
      }),
    );
  }
  return (relativeTs) => path.join(BUILD_DIR, relativeTs.replace(/\.ts$/, '.js'));
}
