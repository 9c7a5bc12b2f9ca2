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

log() { printf '==> %s\n' "$*" >&2; }

if [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  if ! python3 -m venv --clear "$VENV" >/dev/null 2>&1; then
    # Debian ships venv separately.
    command -v apt-get >/dev/null || { log "install python3 with venv support"; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python3 -m venv --clear "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

log "building tokenvault"
# The binary as the test suite builds it (same features): after
# scripts/test.sh's `cargo test --workspace` this is a no-op, where a plain
# `cargo build` would compile the workspace again with other features.
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

# The demo provider: every token request (client credentials, device code,
# refresh) gets a fresh token; the device authorization request gets a code.
"$VENV/bin/python" - >"$work/provider.port" <<'PY' &
import http.server, json, secrets

class Provider(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/token":
            body = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                    "expires_in": 3600, "refresh_token": secrets.token_urlsafe(16)}
        elif self.path == "/device":
            body = {"device_code": secrets.token_urlsafe(16), "user_code": "WDJB-MJHT",
                    "verification_uri": "http://127.0.0.1/device", "expires_in": 600, "interval": 1}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Provider)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
pids+=($!)

port_of() { # file: waits for a port number in it
  for _ in $(seq 1 100); do
    if [ -s "$1" ]; then head -n 1 "$1"; return 0; fi
    sleep 0.1
  done
  log "no port in $1"
  exit 1
}
provider="http://127.0.0.1:$(port_of "$work/provider.port")"
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
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
mkdir -p "$work/data"
TOKENVAULT_DATA_DIR="$work/data" \
  TOKENVAULT_DATABASE_URL="$database_url" \
  TOKENVAULT_MASTER_KEYS="k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" \
  TOKENVAULT_API_KEYS="$API_KEY" \
  TOKENVAULT_PUBLIC_URL="$base" \
  TOKENVAULT_SCHEDULER_ENABLED=false \
  TOKENVAULT_LOG_FORMAT=text \
  RUST_LOG=warn \
  "$BINARY" --config "$work/tokenvault.toml" serve --bind "127.0.0.1:$port" \
  2>"$work/tokenvault.log" &
pids+=($!)
for _ in $(seq 1 100); do
  if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('$base/healthz')" 2>/dev/null; then
    break
  fi
  if ! kill -0 "${pids[-1]}" 2>/dev/null; then
    log "tokenvault exited:"
    cat "$work/tokenvault.log" >&2
    exit 1
  fi
  sleep 0.2
done

# Connect alice to demo through a device session (the stub approves at
# once; tokenvault's poller fetches the grant), so her connection exists
# before the run starts.
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
