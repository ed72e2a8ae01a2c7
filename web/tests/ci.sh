#!/usr/bin/env bash
# The web app's browser tests, as CI runs them on a bare machine: Debian's chromium (never
# a downloaded browser) and playwright-core from npm, each install bounded in time, then
# the tests against the parley binary that `cargo test --workspace` built.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
  echo "== installing node (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq nodejs npm >/dev/null
fi
chromium --version 2>/dev/null || true
node --version

echo "== npm ci (playwright-core, no browser download)"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
timeout 300 npm ci --no-audit --no-fund

# The binary the tests start (built by cargo test; built here if it is not).
bin="../../target/debug/parley"
[ -x "$bin" ] || (cd ../.. && timeout 1200 cargo build -p parley)
export PARLEY_BIN="$(cd "$(dirname "$bin")" && pwd)/parley"

echo "== browser tests"
timeout 900 npm test
