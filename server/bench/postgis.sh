#!/usr/bin/env bash
# The PostGIS origin's benchmark (scripts/bench.sh postgis): tw-pgbench starts a scratch
# PostgreSQL + PostGIS (scripts/pg-scratch.sh), loads the 50 000-home synthetic city, and
# measures origin latency for 16-tile batches (PostGIS vs memory), server throughput with a
# cold and a warm tier over each, and the time from an UPDATE's commit to the new value
# being served. Writes target/bench/postgis.md. Extra arguments go to tw-pgbench.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup.sh postgis
cargo build --quiet --profile server -p tilewarm-server --bins
exec target/server/tw-pgbench --server-bin target/server/tilewarm-server --out target/bench/postgis.md "$@"
