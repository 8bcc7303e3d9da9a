#!/usr/bin/env bash
# The edge worker's tests (what `make edge-test` runs after `make pkg`): edge/test/ under
# Node's test runner, each suite starting tilewarm-server, a recording relay and real
# workerd (edge/config.capnp over the built pkg/) on free loopback ports. Installs workerd
# (edge/package.json, pinned) when missing and builds the server (debug, the same build
# `cargo test --workspace --all-features` made, so usually nothing to do).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f pkg/edge.js ] || { echo "test-edge: pkg/ is not built (or lacks the edge worker): run make pkg" >&2; exit 1; }
scripts/setup.sh edge rust
cargo build --workspace --all-features --bin tilewarm-server
export TILEWARM_SERVER=target/debug/tilewarm-server WORKERD=edge/node_modules/.bin/workerd
exec node --test --test-reporter=spec edge/test/*.test.mjs
