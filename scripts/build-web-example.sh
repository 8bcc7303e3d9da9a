#!/usr/bin/env bash
# The Rust example page (examples/web-canvas, on tilewarm-web) into target/web-canvas/:
# wasm32 build (profile wasm), wasm-bindgen --target web, wasm-opt -Oz (binaryen from npm, see
# /work/shared/notes/wasm-toolchain.md), and the page. Prints the wasm's size raw and
# gzipped (gzip -9). Serve with: target/debug/tilewarm-server --www target/web-canvas
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
out=target/web-canvas
# The npm package's profile (size first, panics abort), so the two sizes compare.
scripts/wasm-cargo.sh build -j 2 -p tilewarm-web-canvas --lib --profile wasm
rm -rf "$out"
mkdir -p "$out"
wasm-bindgen --target web --out-dir "$out" target/wasm32-unknown-unknown/wasm/tilewarm_web_canvas.wasm
wasm=$out/tilewarm_web_canvas_bg.wasm
opt=node_modules/.bin/wasm-opt
[ -x "$opt" ] || { echo "build-web-example: $opt missing: npm ci" >&2; exit 1; }
"$opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue "$wasm" -o "$wasm"
cp examples/web-canvas/index.html "$out/"
raw=$(wc -c <"$wasm")
gz=$(gzip -9c "$wasm" | wc -c)
js=$(gzip -9c "$out/tilewarm_web_canvas.js" | wc -c)
echo "build-web-example: $out: wasm $raw bytes, $gz gzipped; JS glue $js gzipped"
