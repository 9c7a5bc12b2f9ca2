#!/usr/bin/env bash
# Fuzzes a local `tokenvault serve` against its own /openapi.json with
# schemathesis: any 5xx, or any response whose status, content type,
# headers or body the document does not describe, fails the run.
#
# The instance runs on a free loopback port with a fresh SQLite database, the
# scheduler off, and one integration (`demo`) whose provider is a stub on
# loopback (below), so every operation can succeed without the network.
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 100 per operation),
# SCHEMATHESIS_SEED (default fixed, so a failure reproduces), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
VENV="$TARGET/schemathesis-venv"
API_KEY=tvk_schemathesis
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-20240601}

source scripts/lib/local-instance.sh

ensure_venv "$VENV" "schemathesis==$SCHEMATHESIS_VERSION"

log "building tokenvault"
find_tokenvault_binary
start_stub_provider
provider=$STUB_URL
port=$(free_port)
base="http://127.0.0.1:$port"

cat >"$work/providers.toml" <<EOF
[providers.demo-provider]
display_name = "Demo"
authorization_url = "$provider/authorize"
token_url = "$provider/token"
device_authorization_url = "$provider/device"
EOF
cat >"$work/tokenvault.toml" <<EOF
providers_file = "$work/providers.toml"

[integrations.demo]
provider = "demo-provider"
client_id = "demo-client"
client_secret = "demo-secret"
redirect_uri = "$base/oauth/callback"
EOF

# SCHEMATHESIS_DATABASE=postgres runs against a fresh PostgreSQL database
# on TOKENVAULT_TEST_DATABASE_URL's server instead of SQLite.
database_url="sqlite://$work/data/tokenvault.db"
if [ "${SCHEMATHESIS_DATABASE:-sqlite}" = postgres ]; then
  admin=${TOKENVAULT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
  name="tv_schemathesis_$$_$RANDOM"
  psql -q "$admin" -c "CREATE DATABASE $name" >/dev/null
  database_url="${admin%/*}/$name"
fi

log "starting tokenvault on $base (${database_url%%:*})"
start_tokenvault "$BINARY" "$base" "$work/tokenvault.toml" \
  TOKENVAULT_DATABASE_URL="$database_url" TOKENVAULT_API_KEYS="$API_KEY"

# alice's connection exists before the run starts.
connect_alice "$base" "$API_KEY" demo

# Half the generated integration keys and user ids are that integration and
# user, so the happy paths run too (token, refresh, status, revocation).
# No cache: every run starts from the seed alone.
cat >"$work/schemathesis.toml" <<'EOF'
[cache]
enabled = false

[dictionaries.integrations]
values = ["demo"]

[dictionaries.users]
values = ["alice"]

[parameters]
"path.key" = { dictionary = "integrations", probability = 0.5 }
"path.integration" = { dictionary = "integrations", probability = 0.5 }
"body.integration" = { dictionary = "integrations", probability = 0.5 }
"path.user_id" = { dictionary = "users", probability = 0.5 }
"body.user_id" = { dictionary = "users", probability = 0.5 }
EOF

log "schemathesis $SCHEMATHESIS_VERSION: $MAX_EXAMPLES examples per operation, seed $SEED"
status=0
"$VENV/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$base/openapi.json" \
  --header "Authorization: Bearer $API_KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --request-timeout 10 \
  --no-color || status=$?
if [ "$status" != 0 ]; then
  log "schemathesis failed; the service log:"
  tail -n 50 "$work/tokenvault.log" >&2
fi
exit "$status"
