#!/usr/bin/env bash
# Runs the benchmarks (docs/benchmarks.md): builds tokenvault-bench in
# release mode and runs it against PostgreSQL on 127.0.0.1:5432 (started by
# scripts/test.sh if needed). JSON on stdout (and in target/bench.json),
# a readable summary on stderr.
#   scripts/bench.sh --size full      # the documented run (several minutes)
#   scripts/bench.sh --size smoke     # a few seconds, what CI runs
#   scripts/bench.sh --size full --only b1,b3
set -euo pipefail
cd "$(dirname "$0")/.."

export TOKENVAULT_TEST_DATABASE_URL="${TOKENVAULT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
cargo build --release --quiet -p tokenvault-bench
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/tokenvault-bench" --out "$target_dir/bench.json" "$@"
