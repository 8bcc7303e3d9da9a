#!/usr/bin/env bash
# The map adapters' browser tests (js/test/browser/): installs their npm packages (pinned in
# js/test/browser/package-lock.json: maplibre-gl, leaflet, vite, playwright-core) when the
# lock changed and Debian's chromium, builds the test pages with Vite over the built package
# (node_modules/tilewarm links to pkg/, as a `file:` dependency would) into
# target/browser-test, and runs them in headless Chromium. Screenshots land beside the pages.
# Build the package first: scripts/build-pkg.sh (or make pkg). BUILD_ONLY=1 stops after the
# build (scripts/bench.sh maplibre).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f pkg/package.json ] || { echo "test-browser: pkg/ is not built: run make pkg" >&2; exit 1; }
scripts/setup.sh node chromium
dir=js/test/browser
stamp=$dir/node_modules/.tilewarm-setup
# shellcheck source=scripts/setup.sh
. scripts/setup.sh   # files_hash
want=$(files_hash $dir/package.json $dir/package-lock.json)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "test-browser: npm ci in $dir"
  (cd $dir && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
ln -sfn ../../../../pkg $dir/node_modules/tilewarm
echo "test-browser: vite build"
(cd $dir && node_modules/.bin/vite build)
[ -z "${BUILD_ONLY:-}" ] || exit 0
exec node --test --test-reporter=spec --test-concurrency=1 $dir/*.test.mjs
