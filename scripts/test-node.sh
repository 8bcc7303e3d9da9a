#!/usr/bin/env bash
# Runs the Node test suite (js/test/) against the built package in pkg/, imported by name
# through its package.json exports: js/node_modules/tilewarm links to pkg/, as a `file:`
# dependency would. Build first: scripts/build-pkg.sh (or make pkg).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f pkg/package.json ] || { echo "test-node: pkg/ is not built: run make pkg" >&2; exit 1; }
# live.test.mjs runs a real tilewarm-server (the same build scripts/test-edge.sh uses).
cargo build --quiet --workspace --all-features --bin tilewarm-server
export TILEWARM_SERVER=${TILEWARM_SERVER:-target/debug/tilewarm-server}
mkdir -p js/node_modules
ln -sfn ../../pkg js/node_modules/tilewarm
# A test that hangs fails after 10 minutes, by name, instead of holding CI to its limit.
exec node --test --test-timeout=600000 --test-reporter=spec js/test/*.test.mjs
