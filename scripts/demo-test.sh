#!/usr/bin/env bash
# The demo's tests (what `make demo-test` runs after `make pkg`): the page's helpers and the
# recorded session under Node, then the page end to end in headless Chromium against
# tilewarm-server (www/test/e2e.mjs). Installs Chromium and the page's npm packages when
# missing, builds the server (debug, the same build `cargo test --workspace --all-features`
# made, so usually nothing to do) and assembles target/www. Screenshots go to target/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f pkg/package.json ] || { echo "demo-test: pkg/ is not built: run make pkg" >&2; exit 1; }
scripts/demo-deps.sh chromium
scripts/setup.sh rust
cargo build --workspace --all-features --bin tilewarm-server
scripts/demo-build.sh --out target/www
export TILEWARM_SERVER=target/debug/tilewarm-server TILEWARM_WWW=target/www
exec node --test --test-reporter=spec www/test/*.test.mjs www/test/e2e.mjs
