#!/usr/bin/env bash
# Assembles the demo page into a directory that tilewarm-server serves with --www:
# the sources in www/, MapLibre GL JS from npm (www/package.json) and the npm package pkg/.
# Nothing vendored is committed.
#
#   scripts/demo-build.sh [--out DIR] [--pkg DIR]
#
#   --out DIR   where to write (default target/www); emptied first
#   --pkg DIR   the built npm package (default pkg/; build it with `make pkg`)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/www pkg=pkg
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --pkg) pkg=$2; shift 2 ;;
    *) echo "demo-build: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

[ -f "$pkg/package.json" ] && [ -f "$pkg/index.js" ] ||
  { echo "demo-build: $pkg/ is not a built package: run make pkg" >&2; exit 1; }

scripts/demo-deps.sh

rm -rf "$out"
mkdir -p "$out/vendor/maplibre-gl" "$out/pkg"
cp www/index.html www/*.js www/*.css www/*.jsonl "$out/"
ml=www/node_modules/maplibre-gl
cp "$ml/dist/maplibre-gl.mjs" "$ml/dist/maplibre-gl-worker.mjs" "$ml/dist/maplibre-gl.css" "$ml/LICENSE.txt" \
  "$out/vendor/maplibre-gl/"
cp -R "$pkg/." "$out/pkg/"
echo "demo-build: $out ($(du -sh "$out" | cut -f1)): www/ + maplibre-gl $(node -p "require('./$ml/package.json').version") + $pkg/"
