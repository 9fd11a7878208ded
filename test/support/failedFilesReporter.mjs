/**
 * A `node --test` reporter that only records which test files had a failure (one absolute path a
 * line, in the file named by SHARDRELAY_TEST_FAILED_FILES), so the test command keeps their
 * databases for inspection. The spec reporter still prints the results. Plain JavaScript: node
 * loads reporters before the TypeScript loader is registered.
 */
import { appendFileSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';

export default async function* failedFilesReporter(source) {
  const out = process.env.SHARDRELAY_TEST_FAILED_FILES;
  for await (const event of source) {
    if (event.type === 'test:fail' && out)
      appendFileSync(out, `${path.resolve(event.data?.file ?? 'unknown')}\n`);
  }
  yield '';
}
