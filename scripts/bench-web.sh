#!/usr/bin/env bash
# The Rust browser shell's figures for docs/BENCHMARKS.md (`scripts/bench.sh web`):
#   - the example page's wasm (examples/web-canvas, scripts/build-web-example.sh), gzipped,
#     next to the npm package's browser page (scripts/pkg-size.sh);
#   - set_viewport with 10k+ items cached, the Rust shell and the npm package's TileCache
#     in the same headless Chromium page against the same tilewarm-server
#     (web/tests/bench.rs, release build), ms per call, median of 3 alternating runs.
# Writes target/bench/web.md. Needs pkg/ (make pkg).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
out=target/bench
mkdir -p "$out"
[ -f pkg/index.js ] || { echo "bench-web: pkg/ is not built: run make pkg" >&2; exit 1; }
scripts/setup.sh wasm chromium >/dev/null

example=$(scripts/build-web-example.sh | tail -1)
wasm_gz=$(gzip -9c target/web-canvas/tilewarm_web_canvas_bg.wasm | wc -c)
glue_gz=$(gzip -9c target/web-canvas/tilewarm_web_canvas.js | wc -c)
scripts/pkg-size.sh >/dev/null
page_gz=$(sed -n 's/^| \*\*browser page[^|]*\*\* | [0-9]* | \([0-9]*\) .*/\1/p' "$out/pkg-size.md")
npm_wasm_gz=$(gzip -9c pkg/tilewarm_bg.wasm | wc -c)

cargo build -j 2 --workspace --all-features --bin tilewarm-server
www=$(mktemp -d)
cp -R pkg "$www/pkg"
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
target/debug/tilewarm-server --listen "127.0.0.1:$port" --www "$www" --log-level warn >"$www/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$www"' EXIT
# GET URL answers 2xx (node's fetch: no curl needed).
healthy() { node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$1"; }
for _ in $(seq 100); do healthy "http://127.0.0.1:$port/healthz" && break; sleep 0.2; done

export TILEWARM_WEB_BENCH_SERVER="http://127.0.0.1:$port"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver)}
export CHROMEDRIVER_ARGS=${CHROMEDRIVER_ARGS:---silent}
# The browser the other suites use ($CHROMIUM, else /usr/bin/chromium).
node scripts/webdriver-json.mjs "$www/webdriver.json"
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$www/webdriver.json"
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300}
line=$(scripts/wasm-cargo.sh test -j 2 --release -p tilewarm-web --test bench -- --nocapture 2>&1 | tee "$out/web-bench.log" | grep -o 'BENCH .*' | head -1)
[ -n "$line" ] || { echo "bench-web: no BENCH line; see $out/web-bench.log" >&2; exit 1; }
val() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
rust=$(val rust_ms) npm=$(val npm_ms)
{
  echo "| | Rust shell (tilewarm-web) | npm package (tilewarm) | Rust / npm |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| wasm, gzipped (bytes) | $wasm_gz (example page) | $npm_wasm_gz | $(python3 -c "print(f'{$wasm_gz/$npm_wasm_gz:.2f}x')") |"
  echo "| page: wasm + JS it loads, gzipped (bytes) | $((wasm_gz + glue_gz)) | $page_gz | $(python3 -c "print(f'{($wasm_gz+$glue_gz)/$page_gz:.2f}x')") |"
  echo "| set_viewport, $(val items_in_view) items in view, $(val rust_entries) / $(val npm_entries) cached (ms per call) | $rust | $npm | $(python3 -c "print(f'{$rust/$npm:.2f}x')") |"
  echo
  echo "Same headless Chromium page, same tilewarm-server, same views (bench/js/micro.mjs's);"
  echo "median of three alternating runs of 400 calls each (web/tests/bench.rs, release build)."
  echo "The example page's wasm holds tilewarm-web, the core, serde_json, gloo-net and the"
  echo "canvas code; the npm package's wasm keeps items as JS objects and parses no JSON."
} > "$out/web.md"
cat "$out/web.md"
echo "bench-web: $example" >&2
