#!/usr/bin/env bash
# make demo-postgis: the demo page (as `make demo`) over the King County homes loaded into
# PostGIS: a scratch PostgreSQL 15 + PostGIS in target/demo-pg on a free loopback port
# (scripts/pg-scratch.sh), the CSV written into its table by `tilewarm-server
# --postgis-load`, and the server reading from it (`--origin postgres://…`), with the change
# trigger installed: an UPDATE in psql shows on the map after the next pan or refresh.
#
#   scripts/demo-postgis.sh [SERVER FLAGS...]
#
# Needs the King County CSV at ../shared/data/kc_house_data.csv next to the repository
# (skips with a message when it is absent; `make demo` works without it). Environment as
# scripts/demo.sh (PORT, HOST, ORIGIN_LATENCY_MS, which defaults to 0 here: the database is
# the slow part). The database is stopped on exit; its directory stays for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
csv=../shared/data/kc_house_data.csv
if [ ! -f "$csv" ]; then
  echo "demo-postgis: $csv not found (the King County data lives in ../shared/data next to the repository); skipping. 'make demo' runs without it." >&2
  exit 0
fi
scripts/setup.sh postgis
dir=$PWD/target/demo-pg
url=$(scripts/pg-scratch.sh start "$dir")
trap 'scripts/pg-scratch.sh stop "$dir"' EXIT
echo "demo-postgis: PostgreSQL at $url (psql \"$url\"; table tilewarm_items)"
ORIGIN_LATENCY_MS=${ORIGIN_LATENCY_MS:-0} scripts/demo.sh --origin "$url" --postgis-load --data "$csv" "$@"
