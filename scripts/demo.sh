#!/usr/bin/env bash
# make demo: builds what the demo needs (the npm package, tilewarm-server in release, the
# page in target/www), starts tilewarm-server with the synthetic city and the page, prints
# the URL and stays in the foreground until Ctrl-C.
#
#   scripts/demo.sh [SERVER FLAGS...]     e.g. --data ../shared/data/kc_house_data.csv
#
# Environment: PORT (8080), HOST (127.0.0.1), ORIGIN_LATENCY_MS (80: the origin stands in
# for a slow valuation API, so what the cache saves is visible).
#
# Sign-in: the server gets a throwaway random HS256 secret (TILEWARM_JWT_SECRET, new on
# every run) and --dev-tokens, so the page's tier selector fetches a short-lived token for
# the chosen tier from POST /dev/token (answered to loopback callers only) and sends it.
set -euo pipefail
cd "$(dirname "$0")/.."
host=${HOST:-127.0.0.1} port=${PORT:-8080}

make pkg
scripts/setup.sh rust
cargo build --release -p tilewarm-server
scripts/demo-build.sh --out target/www

TILEWARM_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export TILEWARM_JWT_SECRET
target/release/tilewarm-server --listen "$host:$port" --www target/www --dev-tokens \
  --origin-latency-ms "${ORIGIN_LATENCY_MS:-80}" "$@" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' INT TERM EXIT
for _ in $(seq 1 300); do
  kill -0 "$server" 2>/dev/null || { wait "$server" || true; echo "demo: tilewarm-server exited (is port $port in use? try PORT=8081 make demo)" >&2; exit 1; }
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && break
  sleep 0.1
done
url="http://$host:$port/"
printf '\n  tilewarm demo: %s\n  (arrow keys pan when the map has focus; Ctrl-C stops the server)\n\n' "$url"
wait "$server"
