#!/usr/bin/env bash
# Builds the npm package into pkg/: the crate for wasm32 with the `wasm` feature (profile wasm),
# wasm-bindgen --target web, wasm-opt (binaryen from npm), the same again with the `edge`
# feature (profile wasm-edge) into tilewarm_edge_bg.wasm (the edge worker, `tilewarm/edge`),
# the hand-written entry
# points and types from js/ with what is generated from the Rust (js/gen/, see
# src/wasm/codegen.rs), every shipped .js minified by esbuild (npm), and pkg/package.json.
# Needs `scripts/setup.sh wasm node`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

name=tilewarm
out=pkg
wasm=target/wasm32-unknown-unknown/wasm/$name.wasm

want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/^version = "|"$/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "build-pkg: need wasm-bindgen $want (Cargo.lock), found '${have:-none}': run scripts/setup.sh wasm" >&2
  exit 1
fi
wasm_opt=node_modules/.bin/wasm-opt
[ -x "$wasm_opt" ] || { echo "build-pkg: $wasm_opt missing: run scripts/setup.sh node" >&2; exit 1; }

echo "build-pkg: cargo build (wasm32, profile wasm, --features wasm)"
scripts/wasm-cargo.sh build --lib --profile wasm --features wasm

rm -rf "$out"
echo "build-pkg: wasm-bindgen $want --target web"
# Only index.js names the .wasm by URL, so bundlers of the node/workerd entries see no fetch.
# --encode-into always: no TextEncoder.encodeInto polyfill in the glue; every runtime that
# runs the package has it (Node >= 18, workerd, and any browser with top-level await).
wasm-bindgen --target web --omit-default-module-path --encode-into always \
  --out-dir "$out" --out-name "$name" "$wasm"

# --flatten --rereloop first (binaryen rebuilds the control flow) and --converge (repeat -Oz
# until nothing shrinks): about 0.6 KB less gzipped than a plain -Oz.
# Not --low-memory-unused (yet): 0.37 KB less gzipped (2026-12-02), and rustc links wasm32
# stack-first, so the first 1 KB should be unused; but the one full node run with it failed
# the ForeCache request bound (js/test/hostile.test.mjs, under a load average of 16; a
# re-run of that test with it passed). To be checked on a quiet machine before it is taken.
echo "build-pkg: wasm-opt --flatten --rereloop -Oz --converge"
"$wasm_opt" --flatten --rereloop -Oz --converge --strip-debug --strip-producers \
  --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$out/${name}_bg.wasm" -o "$out/${name}_bg.wasm"

# The edge worker's wasm (feature `edge`, src/edge.rs) and glue, built on their own so the
# browser's .wasm does not grow; js/edge.js wraps them as `tilewarm/edge`. Optimised for
# speed (opt-level 3, wasm-opt -O3), not size: a worker's CPU time per request is what is
# limited, and 130 KB gzipped is far below the upload limits (docs/edge.md).
# Its own profile (wasm-edge, opt-level 3), so both builds stay cached side by side.
echo "build-pkg: cargo build (wasm32, profile wasm-edge, --features edge)"
scripts/wasm-cargo.sh build --lib --profile wasm-edge --features edge
wasm-bindgen --target web --omit-default-module-path --out-dir "$out" --out-name "${name}_edge" \
  "target/wasm32-unknown-unknown/wasm-edge/$name.wasm"
"$wasm_opt" -O3 --strip-debug --strip-producers \
  --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$out/${name}_edge_bg.wasm" -o "$out/${name}_edge_bg.wasm"

cp js/*.js js/*.d.ts js/README.md "$out/"
# The types generated from the Rust, which index.d.ts re-exports. (js/gen/boundary.js is
# bundled into cache.js below.)
mkdir -p "$out/gen"
cp js/gen/*.d.ts "$out/gen/"

# The shipped JS minified in place (readable sources stay in js/): whitespace, comments and
# local names only, ES module syntax kept, no bundling, so every file keeps its own imports
# and exports and the wasm-bindgen glue its export names. Two exceptions: edge.js (below),
# and cache.js, which gets the generated js/gen/boundary.js (tags, codes, names) bundled in,
# which costs the page neither a module of its own nor an export list (about 0.4 KB gzipped).
esbuild=node_modules/.bin/esbuild
[ -x "$esbuild" ] || { echo "build-pkg: $esbuild missing: run scripts/setup.sh node" >&2; exit 1; }
echo "build-pkg: esbuild --minify"
for f in "$out"/*.js; do
  "$esbuild" "$f" --minify --format=esm --log-level=warning --outfile="$f" --allow-overwrite
done
"$esbuild" js/cache.js --bundle --external:./tilewarm.js --minify --format=esm \
  --log-level=warning --outfile="$out/cache.js" --allow-overwrite
# The edge worker gets its token verification (js/edge-auth.js and the parts of `jose` it
# uses, a pinned devDependency) and the generated header name (js/gen/boundary.js) bundled in, so a worker needs no dependency at run time and a
# workerd config lists one module for it; the browser page never loads edge.js.
"$esbuild" js/edge.js --bundle --external:./tilewarm_edge.js --external:./tilewarm_edge_bg.wasm \
  --minify --format=esm --log-level=warning --outfile="$out/edge.js" --allow-overwrite
rm "$out/edge-auth.js" "$out/edge-body.js"
# inline.js (tilewarm/inline): the browser wasm as base64 in place of its marker.
node -e '
const fs = require("fs");
const [js, wasm] = process.argv.slice(1);
const src = fs.readFileSync(js, "utf8");
if (!src.includes("__TILEWARM_WASM_BASE64__")) throw new Error(`${js}: no wasm marker`);
fs.writeFileSync(js, src.replace("__TILEWARM_WASM_BASE64__", fs.readFileSync(wasm).toString("base64")));
' "$out/inline.js" "$out/${name}_bg.wasm"
# node.cjs: the CommonJS entry for Node without require(esm) (js/node-cjs.js, the glue,
# api.js and cache.js in one CommonJS module); its ESM source is not shipped.
"$esbuild" "$out/node-cjs.js" --bundle --platform=node --format=cjs --minify --log-level=warning \
  --outfile="$out/node.cjs"
rm "$out/node-cjs.js"

# package.json, with version, description, licence and repository from Cargo.toml.
cargo metadata --no-deps --format-version 1 | node --input-type=module -e '
import { readFileSync, writeFileSync, readdirSync } from "node:fs";
const meta = JSON.parse(readFileSync(0, "utf8")).packages.find((p) => p.name === process.argv[1]);
const out = process.argv[2];
const pkg = {
  name: meta.name,
  version: meta.version,
  description: meta.description,
  license: meta.license,
  repository: { type: "git", url: `git+${meta.repository}.git` },
  keywords: meta.keywords,
  type: "module",
  // One API for every runtime; the entry point decides how the .wasm is loaded.
  exports: {
    ".": {
      types: "./index.d.ts",
      // Cloudflare Workers / workerd: the .wasm is imported as a WebAssembly.Module.
      workerd: "./workerd.js",
      // Node >= 18 (also Bun, Deno npm:, Vitest, SSR): reads the .wasm with fs, sync init.
      // require() takes node.js too where Node can require ES modules ("module-sync":
      // 20.19+, 22.12+), else the CommonJS build node.cjs (18, older 20 and 22).
      node: { "module-sync": "./node.js", require: "./node.cjs", default: "./node.js" },
      // Browsers without a bundler, Vite, webpack, ...: fetches the .wasm by URL.
      browser: "./index.js",
      default: "./index.js",
    },
    // The browser entry with the .wasm inlined (base64), for bundlers that do not emit it
    // as an asset (esbuild).
    "./inline": { types: "./inline.d.ts", default: "./inline.js" },
    // The plain wasm-bindgen glue and the tile functions, for callers that load the .wasm
    // themselves.
    "./raw": { types: "./raw.d.ts", default: "./raw.js" },
    // The edge worker (Cloudflare Workers / workerd): createWorker, EdgeProxy; own .wasm.
    "./edge": { types: "./edge.d.ts", default: "./edge.js" },
    // Map library adapters: no wasm of their own, they take a TileCache.
    "./maplibre": { types: "./maplibre.d.ts", default: "./maplibre.js" },
    "./leaflet": { types: "./leaflet.d.ts", default: "./leaflet.js" },
    "./deckgl": { types: "./deckgl.d.ts", default: "./deckgl.js" },
    "./openlayers": { types: "./openlayers.d.ts", default: "./openlayers.js" },
    // The change feed follower (GET /v1/changes): no wasm of its own, it takes a TileCache.
    "./live": { types: "./live.d.ts", default: "./live.js" },
    "./tilewarm_bg.wasm": "./tilewarm_bg.wasm",
    "./package.json": "./package.json",
  },
  main: "./node.js",
  module: "./index.js",
  types: "./index.d.ts",
  // The entry points instantiate the module when imported; everything else is pure. (A
  // plain `false` would let bundlers skip an entry whose exports are all re-exports.)
  sideEffects: ["./index.js", "./inline.js", "./node.js", "./node.cjs", "./workerd.js"],
  files: readdirSync(out).filter((f) => f !== "package.json").sort(),
  engines: { node: ">=18" },
};
for (const k of Object.keys(pkg)) if (pkg[k] === undefined || pkg[k] === null) delete pkg[k];
// JSON has no comments; the ones above are for this script only.
writeFileSync(`${out}/package.json`, JSON.stringify(pkg, null, 2) + "\n");
' "$name" "$out"

echo "build-pkg: $out/ ($(node -p "require('./$out/package.json').version"))"
for f in "$out"/*.wasm "$out"/*.js; do
  printf '  %-28s %7d bytes  %6d gzipped\n' "$f" "$(wc -c <"$f")" "$(gzip -9c "$f" | wc -c)"
done
total_raw=$(cat "$out"/*.wasm "$out"/*.js | wc -c)
total_gz=$(for f in "$out"/*.wasm "$out"/*.js; do gzip -9c "$f" | wc -c; done | awk '{s+=$1} END {print s}')
echo "  total .wasm + .js: $total_raw bytes, $total_gz gzipped (each file gzipped on its own)"
