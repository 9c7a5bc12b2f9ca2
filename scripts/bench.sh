#!/usr/bin/env bash
# Runs the benchmarks (docs/benchmarks.md): builds tokenvault-bench (release;
# debug for the smoke size) and runs it against PostgreSQL on 127.0.0.1:5432 (started by
# scripts/test.sh if needed). JSON on stdout (and in target/bench.json),
# a readable summary on stderr.
#   scripts/bench.sh --size full      # the documented run (several minutes)
#   scripts/bench.sh --size smoke     # a few seconds, what CI runs
#   scripts/bench.sh --size full --only b1,b3
set -euo pipefail
cd "$(dirname "$0")/.."

export TOKENVAULT_TEST_DATABASE_URL="${TOKENVAULT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
target_dir="${CARGO_TARGET_DIR:-target}"
# Figures come from release builds. The smoke run only proves the harness
# works, so it reuses the debug artifacts the test suite just built instead
# of compiling the whole tree again in release mode.
profile=release
for arg in "$@"; do
  if [ "$arg" = smoke ] || [ "$arg" = --size=smoke ]; then profile=debug; fi
done
if [ "$profile" = release ]; then
  cargo build --release --quiet -p tokenvault-bench
else
  cargo build --quiet -p tokenvault-bench
fi
exec "$target_dir/$profile/tokenvault-bench" --out "$target_dir/bench.json" "$@"
