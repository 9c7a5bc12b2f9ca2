#!/usr/bin/env bash
# Generates clients from a live instance's /openapi.json with the tools
# people use (npm openapi-typescript + openapi-fetch; PyPI
# openapi-python-client), type-checks them strictly (tsc --strict,
# mypy --strict) and runs a short script with each against that instance:
# a connect session, a token read, the listing, the summary, the history, a
# proxy GET and POST. The instance runs on SQLite with one integration
# (`demo`) whose provider is a stub on loopback. Our own SDKs are tested by
# scripts/sdks.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_CLIENT_VERSION=0.29.1
MYPY_VERSION=2.4.1
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
VENV="$TARGET/generated-clients-venv"
API_KEY=tvk_generated_clients
HERE=tests/generated-clients

source scripts/lib/local-instance.sh

# openapi-python-client, mypy, and the generated client's own dependencies.
ensure_venv "$VENV" "openapi-python-client==$PYTHON_CLIENT_VERSION" "mypy==$MYPY_VERSION" \
  httpx attrs python-dateutil types-python-dateutil
ensure_npm_packages "$HERE"

log "building tokenvault"
find_tokenvault_binary
start_stub_provider
provider=$STUB_URL
base="http://127.0.0.1:$(free_port)"

cat >"$work/providers.toml" <<EOF
[providers.demo-provider]
display_name = "Demo"
authorization_url = "$provider/authorize"
token_url = "$provider/token"
device_authorization_url = "$provider/device"
api_base_url = "$provider/api"
EOF
cat >"$work/tokenvault.toml" <<EOF
providers_file = "$work/providers.toml"

[integrations.demo]
provider = "demo-provider"
client_id = "demo-client"
client_secret = "demo-secret"
EOF

log "starting tokenvault on $base"
start_tokenvault "$BINARY" "$base" "$work/tokenvault.toml" TOKENVAULT_API_KEYS="$API_KEY"
# alice's connection, for the scripts to read.
connect_alice "$base" "$API_KEY" demo

curl -fs "$base/openapi.json" -o "$work/openapi.json"

log "TypeScript: openapi-typescript, tsc --strict, the live script"
(
  cd "$HERE"
  rm -rf generated dist
  npx --no-install openapi-typescript "$work/openapi.json" -o generated/api.d.ts >/dev/null
  npx --no-install tsc -p tsconfig.json
  BASE="$base" API_KEY="$API_KEY" node dist/live.js
)

log "Python: openapi-python-client, mypy --strict, the live script"
printf 'package_name_override: tokenvault_client\nproject_name_override: tokenvault-client\npost_hooks: []\n' \
  >"$work/python-client.yaml"
"$VENV/bin/openapi-python-client" generate --path "$work/openapi.json" \
  --output-path "$work/python/tokenvault_client" --meta none --config "$work/python-client.yaml" \
  >"$work/python-client.log" 2>&1 || { cat "$work/python-client.log" >&2; exit 1; }
# Any warning means a piece of the API was left out of the client.
if grep -q "Warning" "$work/python-client.log"; then
  cat "$work/python-client.log" >&2
  log "openapi-python-client skipped part of the document"
  exit 1
fi
cp "$HERE/live.py" "$work/python/"
(cd "$work/python" && "$VENV/bin/mypy" --strict -p tokenvault_client && "$VENV/bin/mypy" --strict live.py)
(cd "$work/python" && BASE="$base" API_KEY="$API_KEY" "$VENV/bin/python" live.py)
log "generated clients: ok"
