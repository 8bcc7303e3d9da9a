#!/usr/bin/env bash
# Where the wasm memory per cached item goes: builds the package's wasm with the feature
# `alloc-stats` (talc counting its live allocations by size, src/wasm/alloc_stats.rs) into
# target/pkg-alloc-stats (pkg/ with that wasm and its glue; not optimised by wasm-opt, which
# changes no allocation), then runs `bench/js/memory.mjs --alloc-stats` on it: the live
# allocations at 50k items cached, by size, per item. Needs pkg/ (scripts/build-pkg.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f pkg/cache.js ] || { echo "memory-alloc: build pkg/ first (scripts/build-pkg.sh)" >&2; exit 1; }
out=target/pkg-alloc-stats
scripts/wasm-cargo.sh build --lib --profile wasm --features wasm,alloc-stats >&2
rm -rf "$out" && cp -r pkg "$out"
wasm-bindgen --target web --omit-default-module-path --encode-into always \
  --out-dir "$out" --out-name tilewarm target/wasm32-unknown-unknown/wasm/tilewarm.wasm
# The next scripts/build-pkg.sh must not reuse this build: it has the feature.
touch src/wasm/mod.rs
node --expose-gc bench/js/memory.mjs --alloc-stats --pkg "$out" "$@"
