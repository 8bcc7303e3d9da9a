#!/usr/bin/env bash
# Installs what the demo page and its browser test need: Node (scripts/setup.sh node) and
# www/package.json's devDependencies (maplibre-gl, playwright-core) with `npm ci`, only
# when www/package.json or its lock file changed. With `chromium`, also Debian's chromium.
#
#   scripts/demo-deps.sh [chromium]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = chromium ]; then scripts/setup.sh node chromium; else scripts/setup.sh node; fi
stamp=www/node_modules/.tilewarm-setup
# shellcheck source=scripts/setup.sh
. scripts/setup.sh   # files_hash
want=$(files_hash www/package.json www/package-lock.json)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "demo-deps: npm ci in www/ (maplibre-gl, playwright-core)"
  (cd www && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
