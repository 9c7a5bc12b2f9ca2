#!/usr/bin/env bash
# The standing fault suite on its own (crates/tokenvault-server/tests/it/chaos.rs,
# docs/reliability.md). `scripts/test.sh` runs it at CI size with everything
# else; this script runs it alone, at CI size or as a longer soak:
#
#   scripts/chaos.sh                 # CI size (all scenarios, a few minutes)
#   scripts/chaos.sh --size soak     # more connections, kills and time
#   scripts/chaos.sh --size soak --iterations 3
#
# Each scenario's counts are appended to target/chaos-report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

size=ci
iterations=1
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --iterations) iterations=$2; shift 2 ;;
    *) echo "usage: scripts/chaos.sh [--size ci|soak] [--iterations N]" >&2; exit 2 ;;
  esac
done

# The same services and packages as the full suite (PostgreSQL binaries for
# the suite's own cluster, Redis, the peer's Node packages).
SKIP_CARGO_TEST=1 scripts/test.sh

export TOKENVAULT_TEST_DATABASE_URL="${TOKENVAULT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export TOKENVAULT_TEST_REDIS_URL="${TOKENVAULT_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TOKENVAULT_CHAOS_SIZE="$size"
report="${CARGO_TARGET_DIR:-target}/chaos-report.txt"
export TOKENVAULT_CHAOS_REPORT="$PWD/$report"
mkdir -p "$(dirname "$report")"
: >"$report"
for i in $(seq 1 "$iterations"); do
  echo "==> chaos iteration $i of $iterations ($size)" >&2
  echo "iteration $i ($size)" >>"$report"
  cargo test --workspace --test it -- chaos:: --test-threads 1
  TOKENVAULT_MODEL_SEEDS=$([ "$size" = soak ] && echo 2000 || echo 150) \
    cargo test -p tokenvault --test it -- refresh_model:: --nocapture 2>&1 | grep -E '^model:|test result' | tee -a "$report"
done
echo "==> report: $report" >&2
cat "$report"
