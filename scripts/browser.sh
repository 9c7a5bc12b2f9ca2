#!/usr/bin/env bash
# The Connect UI in a real browser: Debian's chromium driven by npm
# playwright-core (never a browser download), pages scanned by axe-core,
# against `tokenvault serve` on SQLite and the OIDC test peer.
# Screenshots land in target/ui-screenshots/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/local-instance.sh

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  if command -v apt-get >/dev/null; then
    log "installing Debian's chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  [ -x "$CHROMIUM" ] || { log "no chromium at $CHROMIUM: the browser suite cannot run"; exit 1; }
fi
ensure_npm_packages tests/browser

log "building tokenvault"
find_tokenvault_binary
start_peer
base="http://127.0.0.1:$(free_port)"
python3 scripts/lib/sdk_live_setup.py register-client "$PEER_ISSUER" "$base/oauth/callback"
app_port=$(free_port)
API_KEY="tvk_browser_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"

# Two integrations on the peer (a picker needs two), shown as Music and Video.
cat >"$work/providers.toml" <<TOML
[providers.music-peer]
alias = "oidc"
display_name = "Music"
# Bulk actions (the console cancels one) need an API to call.
api_base_url = "$PEER_ISSUER/"

[providers.video-peer]
alias = "oidc"
display_name = "Video"
TOML
cat >"$work/tokenvault.toml" <<TOML
providers_file = "$work/providers.toml"
ui_app_name = "Fan Club"
ui_accent_color = "#7b2cbf"
ui_support_url = "https://help.example.com/"
allowed_redirect_origins = ["http://localhost:$app_port"]

[integrations.music]
provider = "music-peer"
client_id = "sdk-app"
client_secret = "sdk-secret"
issuer = "$PEER_ISSUER"
scopes = ["openid", "offline_access", "email"]

[integrations.video]
provider = "video-peer"
client_id = "sdk-app"
client_secret = "sdk-secret"
issuer = "$PEER_ISSUER"
scopes = ["openid", "offline_access", "profile"]
TOML
log "starting tokenvault on $base, the OIDC peer at $PEER_ISSUER"
start_tokenvault "$BINARY" "$base" "$work/tokenvault.toml" TOKENVAULT_API_KEYS="$API_KEY"

mkdir -p target/ui-screenshots
log "browser suite (chromium $("$CHROMIUM" --version 2>/dev/null | awk '{print $2}'))"
(
  cd tests/browser
  TOKENVAULT_URL="$base" TOKENVAULT_API_KEY="$API_KEY" PEER_ISSUER="$PEER_ISSUER" \
    APP_PORT="$app_port" CHROMIUM="$CHROMIUM" \
    SCREENSHOTS="$(cd ../.. && pwd)/target/ui-screenshots" \
    node --test --test-concurrency=1 suite.test.mjs
)
log "browser suite: ok (screenshots in target/ui-screenshots/)"
