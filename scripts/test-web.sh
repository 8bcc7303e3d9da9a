#!/usr/bin/env bash
# The Rust browser shell (web/, tilewarm-web): its wasm-bindgen-test suite (web/tests/
# browser.rs) in headless Chromium (Debian's chromium + chromedriver) against
# tilewarm-server on loopback, behind the fault proxy web/tests/fault-proxy.mjs.
# Usage: scripts/test-web.sh [extra args for the test binary, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
scripts/setup.sh wasm chromium >/dev/null

cargo build -j 2 --workspace --all-features --bin tilewarm-server
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
target/debug/tilewarm-server --listen "127.0.0.1:$port" --synthetic-homes 20000 --caller-rate 0 --log-level warn >"$tmp/server.log" 2>&1 &
pids+=($!)
node web/tests/fault-proxy.mjs "http://127.0.0.1:$port/v1/batch" >"$tmp/proxy.log" 2>&1 &
pids+=($!)
# GET URL answers 2xx (node's fetch: no curl needed).
healthy() { node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$1"; }
for _ in $(seq 100); do
  if grep -q '^listening' "$tmp/proxy.log" && healthy "http://127.0.0.1:$port/healthz"; then break; fi
  sleep 0.2
done
proxy_port=$(sed -n 's/^listening //p' "$tmp/proxy.log")
[ -n "$proxy_port" ] || { echo "test-web: the fault proxy did not start:" >&2; cat "$tmp/proxy.log" >&2; exit 1; }
healthy "http://127.0.0.1:$port/healthz" ||
  { echo "test-web: tilewarm-server did not answer /healthz:" >&2; tail -20 "$tmp/server.log" >&2; exit 1; }
echo "test-web: tilewarm-server on :$port, fault proxy on :$proxy_port"

export TILEWARM_WEB_PROXY="http://127.0.0.1:$proxy_port"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver)}
export CHROMEDRIVER_ARGS=${CHROMEDRIVER_ARGS:---silent}
# The browser the other suites use ($CHROMIUM, else /usr/bin/chromium).
node scripts/webdriver-json.mjs "$tmp/webdriver.json"
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$tmp/webdriver.json"
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-120}
if ! scripts/wasm-cargo.sh test -j 2 -p tilewarm-web --test browser -- "$@"; then
  echo "test-web: server log (tail):" >&2
  tail -20 "$tmp/server.log" >&2
  exit 1
fi
