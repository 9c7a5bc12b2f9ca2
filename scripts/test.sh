#!/usr/bin/env bash
# Runs the whole test suite. On a fresh machine it first installs and starts
# what the suite needs (PostgreSQL, Redis, Node packages for the OAuth test
# peer); services already listening on 127.0.0.1:5432 / :6379 are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
apt_updated=0

# Each step with the seconds since the start, so a slow CI run shows where
# the time went.
log() { printf '==> [%4ss] %s\n' "$SECONDS" "$*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "apt-get is not available; install $* by hand"
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # description, command...
  local what=$1
  shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$what did not come up"
  exit 1
}

ensure_postgres() {
  command -v pg_isready >/dev/null || apt_install postgresql-client
  if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
    log "PostgreSQL is not listening on $PG_HOST:$PG_PORT; installing/starting it"
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    # The suite connects as postgres over TCP without a password.
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    wait_for PostgreSQL pg_isready -h "$PG_HOST" -p "$PG_PORT" -q
  fi
  command -v pg_dump >/dev/null || apt_install postgresql-client
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -Atqc 'SELECT 1' >/dev/null 2>&1; then
    createdb -h "$PG_HOST" -p "$PG_PORT" -U postgres test
  fi
  # Databases left behind by earlier runs (each test makes its own).
  psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -Atqc \
    "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ';' FROM pg_database WHERE datname LIKE 'tv_test_%'" |
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -q >/dev/null
}

ensure_redis() {
  command -v redis-cli >/dev/null || apt_install redis-tools
  if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "Redis is not listening on 127.0.0.1:$REDIS_PORT; installing/starting it"
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/tokenvault-test.log
    wait_for Redis redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
  fi
}

ensure_peer() {
  [ -f tests/peer/package.json ] || return 0
  command -v node >/dev/null || apt_install nodejs npm
  if [ ! -d tests/peer/node_modules ] || [ tests/peer/package-lock.json -nt tests/peer/node_modules ]; then
    log "installing the OAuth test peer (npm ci)"
    (cd tests/peer && npm ci --no-audit --no-fund --loglevel=error)
    touch tests/peer/node_modules
  fi
}

ensure_postgres
ensure_redis
ensure_peer

export TOKENVAULT_TEST_DATABASE_URL="${TOKENVAULT_TEST_DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/test}"
export TOKENVAULT_TEST_REDIS_URL="${TOKENVAULT_TEST_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"

# The chaos suite starts PostgreSQL clusters of its own (initdb) as the
# postgres user.
command -v runuser >/dev/null || apt_install util-linux
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_install postgresql
command -v redis-server >/dev/null || apt_install redis-server

if [ -f tests/peer/selftest.mjs ]; then
  log "OAuth test peer self-test"
  node tests/peer/selftest.mjs
fi

if [ "${SKIP_CARGO_TEST:-0}" = 1 ]; then
  exit 0
fi

log "cargo test"
cargo test --workspace "$@" -- --skip chaos:: --skip bench_smoke
# The fault suite runs alone: it starts clusters of its own and measures
# recovery times that other tests competing for the 2 cores would skew.
log "cargo test: the fault suite (chaos)"
# --workspace, like the run above: the same features, so nothing is rebuilt.
cargo test --workspace --test it "$@" -- chaos:: --test-threads 1

log "schemathesis against a local instance on SQLite"
scripts/schemathesis.sh
log "schemathesis against a local instance on PostgreSQL"
SCHEMATHESIS_DATABASE=postgres SCHEMATHESIS_MAX_EXAMPLES=${SCHEMATHESIS_PG_MAX_EXAMPLES:-50} scripts/schemathesis.sh

log "generated clients (TypeScript, Python) against a local instance"
scripts/generated-clients.sh
log "the SDKs (clients/typescript, clients/python): unit, live, packaging"
scripts/sdks.sh
log "the Connect UI in chromium (playwright-core, axe-core)"
scripts/browser.sh

# Benchmarks are not tests: CI only checks that a smoke-size run completes
# and reports every headline figure (docs/benchmarks.md). The binary is the
# one the workspace test build made (same features: nothing is rebuilt).
log "benchmark smoke run"
cargo test --workspace --test it "$@" -- bench_smoke --test-threads 1
log "all tests passed"
