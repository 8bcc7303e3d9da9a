#!/usr/bin/env bash
# The npm package's size: every shipped .wasm and .js raw, gzipped (level 9) and brotli'd
# (quality 11), each file on its own as a server sends it, with the browser page's files
# (index.js's import graph and the .wasm it fetches) marked and summed, and the page against
# the size ratchet recorded in bench/page-size.txt (scripts/page-size.mjs says how it works).
# Writes the table to target/bench/pkg-size.md too.
# Usage: scripts/pkg-size.sh [--check] [PKG_DIR]   (default pkg/; build it first with make pkg)
#   --check  fail when the page is more than 1 KB above or below the recorded figure
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench
node scripts/page-size.mjs "$@" | tee target/bench/pkg-size.md
echo "pkg-size: wrote target/bench/pkg-size.md" >&2
