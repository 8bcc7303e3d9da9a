#!/usr/bin/env bash
# The server benchmark: 16-tile batches against tilewarm-server with the in-process tier and
# with the Redis tier, and raw redis-benchmark MGET of the same key count, all on loopback in
# one run (about 30 s). Prints a markdown table and writes it to target/bench/server.md.
# Extra arguments go to tw-load (--seconds, --concurrency, --batches, --homes).
set -euo pipefail
cd "$(dirname "$0")/../.."
server/tests/setup.sh
cargo build --quiet --profile server -p tilewarm-server --bins
exec target/server/tw-load --server-bin target/server/tilewarm-server --out target/bench/server.md "$@"
