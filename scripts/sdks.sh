#!/usr/bin/env bash
# Builds and tests the client SDKs (clients/typescript, clients/python):
#   - their versions match the service's (the Cargo workspace version);
#   - each one's generated types match a live instance's /openapi.json;
#   - unit tests and strict type checks (tsc --strict; mypy --strict for 3.9);
#   - each live suite against `tokenvault serve` on SQLite and the OIDC test
#     peer (tests/peer): a connection's whole life through a browser flow
#     driven over HTTP, needs_reauth after the peer revokes the grant, a
#     delivered webhook verified, bulk action progress;
#   - the `npm pack` and `python -m build` artefacts install into a clean
#     directory / virtual environment, import and answer a ping.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
VENV="$TARGET/sdk-venv"
API_KEY=tvk_sdk_live
WEBHOOK_SECRET=whsec_sdk_live
# mypy 1.18 is the last that checks code for Python 3.9, the oldest we
# support; anyio 4.11 the last of httpx's dependencies that parses as 3.9.
PY_DEV_DEPS=("httpx==0.28.1" "anyio==4.11.0" "mypy==1.18.2" "build==1.3.0")

source scripts/lib/local-instance.sh

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
for found in \
  "clients/typescript/package.json:$(node -p 'require("./clients/typescript/package.json").version')" \
  "clients/typescript/src/version.ts:$(sed -n 's/.*VERSION = "\(.*\)".*/\1/p' clients/typescript/src/version.ts)" \
  "clients/python/pyproject.toml:$(sed -n 's/^version = "\(.*\)"/\1/p' clients/python/pyproject.toml)" \
  "clients/python/src/tokenvault/_version.py:$(sed -n 's/^__version__ = "\(.*\)"/\1/p' clients/python/src/tokenvault/_version.py)"; do
  if [ "${found#*:}" != "$version" ]; then
    log "${found%%:*} says version ${found#*:}; the service is $version (the SDKs are versioned with it)"
    exit 1
  fi
done

ensure_venv "$VENV" "${PY_DEV_DEPS[@]}"
ensure_npm_packages clients/typescript

log "building tokenvault"
find_tokenvault_binary

# The OIDC peer as the provider: an integration `peer` whose API (for the
# proxy and bulk actions) is the peer itself, e.g. its userinfo at /me.
start_peer
base="http://127.0.0.1:$(free_port)"
python3 scripts/lib/sdk_live_setup.py register-client "$PEER_ISSUER" "$base/oauth/callback"

# Webhooks land in files, one per delivery (headers and raw body), for the
# live suites to verify with their SDK's own verify function.
mkdir -p "$work/hooks"
python3 scripts/lib/sdk_live_setup.py receive-webhooks "$work/hooks" >"$work/hooks.port" &
pids+=($!)
hooks_url="http://127.0.0.1:$(first_line_of "$work/hooks.port" "$!")/hooks"

printf '[providers.peer-api]\nalias = "oidc"\napi_base_url = "%s"\n' "$PEER_ISSUER" >"$work/providers.toml"
cat >"$work/tokenvault.toml" <<TOML
providers_file = "$work/providers.toml"
webhook_url = "$hooks_url"
webhook_secret = "$WEBHOOK_SECRET"

[integrations.peer]
provider = "peer-api"
client_id = "sdk-app"
client_secret = "sdk-secret"
issuer = "$PEER_ISSUER"
scopes = ["openid", "offline_access", "email"]
TOML
log "starting tokenvault on $base, the OIDC peer at $PEER_ISSUER"
start_tokenvault "$BINARY" "$base" "$work/tokenvault.toml" TOKENVAULT_API_KEYS="$API_KEY"
curl -fs "$base/openapi.json" -o "$work/openapi.json"

export TOKENVAULT_URL="$base" TOKENVAULT_API_KEY="$API_KEY" PEER_ISSUER WEBHOOK_SECRET \
  WEBHOOK_DIR="$work/hooks"

log "TypeScript SDK: generated types up to date, unit tests, the live suite"
(
  cd clients/typescript
  npx --no-install openapi-typescript "$work/openapi.json" -o "$work/sdk-api.ts" >/dev/null
  if ! diff -u src/generated/api.ts "$work/sdk-api.ts" >"$work/sdk-api.diff"; then
    head -40 "$work/sdk-api.diff"
    log "clients/typescript/src/generated/api.ts is stale: run OPENAPI_JSON=<served /openapi.json> npm run generate there"
    exit 1
  fi
  npm test --silent
  node --test test-dist/live/
)

log "Python SDK: mypy --strict (3.9), unit tests, generated models up to date, the live suite"
(
  cd clients/python
  "$VENV/bin/mypy" src/tokenvault tests scripts
  "$VENV/bin/python" scripts/generate_models.py "$work/openapi.json" --check
  PYTHONPATH=src "$VENV/bin/python" -m unittest discover -s tests -t . -q
  PYTHONPATH=src "$VENV/bin/python" tests/live.py
)

log "TypeScript SDK: npm pack, installed into a clean directory"
(
  cd clients/typescript
  npm run --silent build
  tarball=$(npm pack --silent --pack-destination "$work")
  mkdir "$work/ts-install"
  cd "$work/ts-install"
  printf '{"name":"sdk-install-check","private":true,"type":"module"}\n' >package.json
  npm install --no-audit --no-fund --loglevel=error "$work/$tarball"
  test -f node_modules/tokenvault/dist/index.d.ts || { log "the npm package has no type declarations"; exit 1; }
  node --input-type=module -e '
    import { Tokenvault, verifyWebhook, VERSION } from "tokenvault";
    const tv = new Tokenvault({ baseUrl: process.env.TOKENVAULT_URL, apiKey: process.env.TOKENVAULT_API_KEY });
    const pong = await tv.ping();
    if (typeof verifyWebhook !== "function") throw new Error("verifyWebhook is missing");
    console.log(`installed tokenvault ${VERSION} from npm pack: ping ${JSON.stringify(pong)}`);
  '
)

log "Python SDK: python -m build, installed into a clean virtual environment"
(
  cd clients/python
  "$VENV/bin/python" -m build --outdir "$work/py-dist" . >"$work/py-build.log" 2>&1 ||
    { cat "$work/py-build.log" >&2; exit 1; }
  ls "$work"/py-dist/tokenvault-"$version".tar.gz >/dev/null
  python3 -m venv "$work/py-install"
  "$work/py-install/bin/pip" install --quiet --disable-pip-version-check "$work"/py-dist/tokenvault-"$version"-*.whl
  cd "$work"
  "$work/py-install/bin/python" -c '
import os, tokenvault
from tokenvault import Tokenvault
with Tokenvault(os.environ["TOKENVAULT_URL"], os.environ["TOKENVAULT_API_KEY"]) as tv:
    pong = tv.ping()
assert os.path.exists(os.path.join(os.path.dirname(tokenvault.__file__), "py.typed")), "no py.typed"
print(f"installed tokenvault {tokenvault.__version__} from the wheel: ping {pong}")
'
)
log "SDKs: ok"
