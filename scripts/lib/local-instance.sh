# Sourced by the scripts that run a local `tokenvault serve` for a test
# (schemathesis.sh, generated-clients.sh, sdks.sh): locating the binary the
# test suite built, a stub provider, the OIDC test peer, starting the service
# and waiting for it, and cleaning up every process on exit.
#
# After sourcing: `work` is a fresh temporary directory, removed on exit with
# every process started through these functions.

log() { printf '==> %s\n' "$*" >&2; }

work=$(mktemp -d)
pids=()
cleanup_local_instance() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup_local_instance EXIT

# Sets BINARY to the tokenvault binary as the test suite builds it (same features:
# after scripts/test.sh's `cargo test --workspace` this is a no-op, where a
# plain `cargo build` would compile the workspace again with other features).
find_tokenvault_binary() {
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
}

# Makes VENV a virtual environment with exactly these pip requirements
# (recreated when the list changes).
ensure_venv() { # venv, requirement...
  local venv=$1
  shift
  [ "$(cat "$venv/.requirements" 2>/dev/null)" = "$*" ] && return 0
  log "installing $* into $venv"
  if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
    # Debian ships venv separately.
    command -v apt-get >/dev/null || { log "install python3 with venv support"; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python3 -m venv --clear "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
  printf '%s' "$*" >"$venv/.requirements"
}

# `npm ci` in DIR unless its node_modules is newer than its lock file.
ensure_npm_packages() { # dir
  if [ ! -d "$1/node_modules" ] || [ "$1/package-lock.json" -nt "$1/node_modules" ]; then
    log "npm ci in $1"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$1/node_modules"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits for a first line in a file written by a starting process; prints it.
first_line_of() { # file, pid
  for _ in $(seq 1 150); do
    if [ -s "$1" ]; then head -n 1 "$1"; return 0; fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  log "no ready line in $1"
  exit 1
}

# Starts the stub provider and sets STUB_URL to its base URL: a fresh token for every
# token request (client credentials, device code, refresh), a device code,
# and an API under /api/ that echoes the method, path and body it got.
start_stub_provider() {
  python3 - >"$work/provider.port" <<'PY' &
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
  STUB_URL="http://127.0.0.1:$(first_line_of "$work/provider.port" "$!")"
}

# Starts the OIDC test peer (tests/peer) and sets PEER_ISSUER to its issuer URL.
start_peer() {
  ensure_npm_packages tests/peer
  PEER_PORT=0 node tests/peer/server.mjs >"$work/peer.out" 2>"$work/peer.log" </dev/null &
  pids+=($!)
  PEER_ISSUER=$(first_line_of "$work/peer.out" "$!" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["issuer"])')
}

# Starts `tokenvault serve` on BASE's port with the config file and the
# environment given as NAME=value arguments, and waits until it answers.
# The service's log is "$work/tokenvault.log".
start_tokenvault() { # binary, base URL, config file, NAME=value...
  local binary=$1 base=$2 config=$3
  shift 3
  mkdir -p "$work/data"
  env TOKENVAULT_DATA_DIR="$work/data" \
    TOKENVAULT_MASTER_KEYS="k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" \
    TOKENVAULT_PUBLIC_URL="$base" \
    TOKENVAULT_SCHEDULER_ENABLED=false \
    TOKENVAULT_METRICS_BIND=off \
    TOKENVAULT_LOG_FORMAT=text \
    RUST_LOG=warn \
    "$@" \
    "$binary" --config "$config" serve --bind "${base#http://}" \
    2>"$work/tokenvault.log" &
  pids+=($!)
  local pid=$!
  for _ in $(seq 1 150); do
    if python3 -c "import urllib.request; urllib.request.urlopen('$base/healthz')" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "tokenvault exited:"
      cat "$work/tokenvault.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  log "tokenvault did not answer on $base"
  exit 1
}

# Connects alice to the integration through a device session (the stub
# provider approves at once; tokenvault's poller fetches the grant).
connect_alice() { # base URL, API key, integration
  BASE="$1" API_KEY="$2" INTEGRATION="$3" python3 - <<'PY'
import json, os, time, urllib.request

base, key = os.environ["BASE"], os.environ["API_KEY"]

def call(method, path, body=None):
    request = urllib.request.Request(
        base + path, method=method, data=body and json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)

session = call("POST", "/v1/device-sessions",
               {"user_id": "alice", "integration": os.environ["INTEGRATION"]})
for _ in range(100):
    status = call("GET", f"/v1/device-sessions/{session['id']}")["status"]
    if status != "pending":
        break
    time.sleep(0.2)
if status != "connected":
    raise SystemExit(f"the setup device session ended {status}, not connected")
PY
}
