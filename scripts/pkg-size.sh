#!/usr/bin/env bash
# The npm package's size: each shipped .wasm and .js file raw and gzipped (gzip -9, each
# file on its own, as a server would send it), the total, and what a page that imports
# 'tilewarm' in a browser loads (index.js, api.js, cache.js, tilewarm.js and the .wasm).
# Prints a markdown table and writes it to target/bench/pkg-size.md. Budget: 40 KB gzipped.
# Usage: scripts/pkg-size.sh [PKG_DIR]   (default pkg/; build it first with make pkg)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-pkg}
[ -f "$dir/package.json" ] || { echo "pkg-size: $dir/ is not built: run make pkg" >&2; exit 1; }
budget=40960
out=target/bench/pkg-size.md
mkdir -p target/bench
browser=(tilewarm_bg.wasm tilewarm.js cache.js api.js index.js)
{
  echo "| file | raw bytes | gzipped bytes | loaded by a browser page |"
  echo "| --- | ---: | ---: | :---: |"
  total_raw=0 total_gz=0 page_raw=0 page_gz=0
  for f in "$dir"/*.wasm "$dir"/*.js; do
    name=$(basename "$f")
    raw=$(wc -c <"$f")
    gz=$(gzip -9c "$f" | wc -c)
    total_raw=$((total_raw + raw)) total_gz=$((total_gz + gz))
    mark=""
    if printf '%s\n' "${browser[@]}" | grep -qx "$name"; then
      mark=yes page_raw=$((page_raw + raw)) page_gz=$((page_gz + gz))
    fi
    echo "| \`$name\` | $raw | $gz | $mark |"
  done
  echo "| **all .wasm + .js** | $total_raw | $total_gz | |"
  echo "| **browser page (wasm + JS glue)** | $page_raw | $page_gz | |"
  echo
  if [ "$page_gz" -le "$budget" ]; then verdict="within"; else verdict="over"; fi
  echo "Budget: $budget bytes gzipped for the browser page; $verdict by $(( page_gz > budget ? page_gz - budget : budget - page_gz )) bytes."
} | tee "$out"
echo "pkg-size: wrote $out" >&2
