#!/usr/bin/env bash
# The npm package's size: every shipped .wasm and .js raw, gzipped (level 9) and brotli'd
# (quality 11), each file on its own as a server sends it, with the browser page's files
# (index.js's import graph and the .wasm it fetches) marked and summed, and the page against
# the size ratchet recorded in bench/page-size.txt (scripts/page-size.mjs says how it works).
# Writes the table to target/bench/pkg-size.md too.
# Usage: scripts/pkg-size.sh [--check] [PKG_DIR]   (default pkg/; build it first with make pkg)
#   --check  fail when the page is more than 1 KB above or below the recorded figure
# The recorded figure is the build-std build's (std compiled to abort without panic
# messages, scripts/wasm-cargo.sh): a package built on rustup's prebuilt wasm32 std (a
# laptop) is some KB larger, so --check is skipped there, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for a in "$@"; do
  if [ "$a" = --check ] && [ "$(scripts/wasm-cargo.sh --std)" != build-std ]; then
    echo "pkg-size: not checking the page against bench/page-size.txt: the figure there is for std built with -Zbuild-std (Debian's rustc-web, scripts/wasm-cargo.sh), and this machine builds on rustup's prebuilt wasm32 std, whose page is larger" >&2
    continue
  fi
  args+=("$a")
done
mkdir -p target/bench
node scripts/page-size.mjs ${args[@]+"${args[@]}"} | tee target/bench/pkg-size.md
echo "pkg-size: wrote target/bench/pkg-size.md" >&2
