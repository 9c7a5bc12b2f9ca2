#!/usr/bin/env bash
# Generates clients from a live instance's /openapi.json with the tools
# people use (npm openapi-typescript + openapi-fetch; PyPI
# openapi-python-client), type-checks them strictly (tsc --strict,
# mypy --strict) and runs a short script with each against that instance:
# a connect session, a token read, the listing, the summary, the history, a
# proxy GET and POST. The instance runs on SQLite with one integration
# (`demo`) whose provider is a stub on loopback. It also checks that the
# TypeScript SDK's checked-in types (clients/typescript/src/generated) match
# the served document, and runs that SDK's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_CLIENT_VERSION=0.29.1
MYPY_VERSION=2.4.1
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
VENV="$TARGET/generated-clients-venv"
API_KEY=tvk_generated_clients
HERE=tests/generated-clients

log() { printf '==> %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/openapi-python-client" ] ||
  [ "$("$VENV/bin/openapi-python-client" --version 2>/dev/null)" != "openapi-python-client version: $PYTHON_CLIENT_VERSION" ]; then
  log "installing openapi-python-client $PYTHON_CLIENT_VERSION and mypy $MYPY_VERSION into $VENV"
  if ! python3 -m venv --clear "$VENV" >/dev/null 2>&1; then
    command -v apt-get >/dev/null || { log "install python3 with venv support"; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python3 -m venv --clear "$VENV"
  fi
  # The generated client's own dependencies, for mypy and the live run.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "openapi-python-client==$PYTHON_CLIENT_VERSION" "mypy==$MYPY_VERSION" \
    httpx attrs python-dateutil types-python-dateutil
fi
if [ ! -d "$HERE/node_modules" ] || [ "$HERE/package-lock.json" -nt "$HERE/node_modules" ]; then
  log "installing openapi-typescript, openapi-fetch and typescript (npm ci)"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$HERE/node_modules"
fi

log "building tokenvault"
# The binary as the test suite builds it (same features: no rebuild).
BINARY=$(cargo test --workspace --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "tokenvault" \
            and "bin" in msg["target"]["kind"] and not msg["profile"]["test"] \
            and msg.get("executable"):
        print(msg["executable"])
')
[ -x "$BINARY" ] || { log "building the tokenvault binary failed"; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The demo provider: tokens for every token request, a device code, and
# an API (/api/...) that echoes the method, path and body it got.
"$VENV/bin/python" - >"$work/provider.port" <<'PY' &
import http.server, json, secrets

class Provider(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/api/"):
            self.answer({"method": "GET", "path": self.path})
        else:
            self.send_error(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.startswith("/api/"):
            self.answer({"method": "POST", "path": self.path, "body": body.decode()})
        elif self.path == "/token":
            self.answer({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                         "expires_in": 3600, "refresh_token": secrets.token_urlsafe(16)})
        elif self.path == "/device":
            self.answer({"device_code": secrets.token_urlsafe(16), "user_code": "WDJB-MJHT",
                         "verification_uri": "http://127.0.0.1/device", "expires_in": 600,
                         "interval": 1})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Provider)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/provider.port" ] && break; sleep 0.1; done
provider="http://127.0.0.1:$(head -n 1 "$work/provider.port")"
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

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
mkdir -p "$work/data"
TOKENVAULT_DATA_DIR="$work/data" \
  TOKENVAULT_MASTER_KEYS="k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" \
  TOKENVAULT_API_KEYS="$API_KEY" \
  TOKENVAULT_SCHEDULER_ENABLED=false \
  TOKENVAULT_METRICS_BIND=off \
  TOKENVAULT_LOG_FORMAT=text \
  RUST_LOG=warn \
  "$BINARY" --config "$work/tokenvault.toml" serve --bind "127.0.0.1:$port" \
  2>"$work/tokenvault.log" &
pids+=($!)
for _ in $(seq 1 100); do
  if curl -fs "$base/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[-1]}" 2>/dev/null; then
    log "tokenvault exited:"
    cat "$work/tokenvault.log" >&2
    exit 1
  fi
  sleep 0.2
done

# alice connects to demo through a device session (the stub approves at
# once), so the scripts have a connection to read.
BASE="$base" API_KEY="$API_KEY" "$VENV/bin/python" - <<'PY'
import json, os, time, urllib.request

base, key = os.environ["BASE"], os.environ["API_KEY"]

def call(method, path, body=None):
    request = urllib.request.Request(
        base + path, method=method, data=body and json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)

session = call("POST", "/v1/device-sessions", {"user_id": "alice", "integration": "demo"})
for _ in range(100):
    status = call("GET", f"/v1/device-sessions/{session['id']}")["status"]
    if status != "pending":
        break
    time.sleep(0.2)
if status != "connected":
    raise SystemExit(f"the setup device session ended {status}, not connected")
PY

curl -fs "$base/openapi.json" -o "$work/openapi.json"

log "TypeScript: openapi-typescript, tsc --strict, the live script"
(
  cd "$HERE"
  rm -rf generated dist
  npx --no-install openapi-typescript "$work/openapi.json" -o generated/api.d.ts >/dev/null
  npx --no-install tsc -p tsconfig.json
  BASE="$base" API_KEY="$API_KEY" node dist/live.js
)

log "TypeScript SDK (clients/typescript): generated types up to date, unit tests"
(
  cd clients/typescript
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules
  fi
  npx --no-install openapi-typescript "$work/openapi.json" -o "$work/sdk-api.ts" >/dev/null
  if ! diff -q "$work/sdk-api.ts" src/generated/api.ts >/dev/null; then
    log "clients/typescript/src/generated/api.ts is stale: run OPENAPI_JSON=<served /openapi.json> npm run generate there"
    exit 1
  fi
  npm test --silent
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
