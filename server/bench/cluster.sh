#!/usr/bin/env bash
# The Redis Cluster benchmark: 16-tile batches against tilewarm-server on a single Redis,
# on a 3+3 Redis Cluster (scripts/redis-cluster.sh), and with two instances on the
# cluster; then raw MGET of an average batch's key count on the single Redis, on the
# cluster split by slot, and hash-tagged into one slot; all on loopback in one run (about
# 45 s). Prints a markdown table and writes it to target/bench/cluster.md.
# Extra arguments go to tw-cluster-load (--seconds, --concurrency, --batches, --homes).
set -euo pipefail
cd "$(dirname "$0")/../.."
server/tests/setup.sh
cargo build --quiet --profile server -p tilewarm-server --bins
exec target/server/tw-cluster-load --server-bin target/server/tilewarm-server \
  --cluster-script scripts/redis-cluster.sh --out target/bench/cluster.md "$@"
