#!/usr/bin/env bash
# `make bench`: runs every benchmark and writes target/bench/BENCHMARKS.md from the parts.
#   core    cargo bench --bench core (divan), ratios against peers in the same run
#   pkg     scripts/pkg-size.sh (gzipped package size), bench/js/micro.mjs (Node, vs JS peers)
#   sim     sim/run-bench.sh (trace replay: none / lru / ring1 / tilewarm / oracle)
#   server  server/bench/run.sh (16-tile batches: in-process vs Redis vs redis-benchmark MGET)
#   cluster server/bench/cluster.sh (a 3+3 Redis Cluster: 1 vs 2 server instances, cluster vs
#           single Redis; MGET split by slot vs hash-tagged)
#   live    js/bench/live.mjs (invalidate-to-visible latency at a page following the change
#           feed: one server; two servers on one Redis, POST to A and the page on B)
#   overload server/soak/overload.sh (tw-overload: 1x, 2x, 4x the measured capacity; issue 15)
#   edge    edge/bench.mjs (16-tile hit path through the edge worker under workerd vs the
#           server directly; the edge wasm's size); builds pkg/ when it lacks the edge worker
#   maplibre js/test/browser/maplibre-bench.mjs (tilewarm/maplibre: source updates per second
#           of pan and time per frame, diffs vs setData, 5,000 items in view, headless Chromium)
#   coldstart bench/js/coldstart.mjs (navigation to the first complete view in Chromium on a
#           throttled network, 1.6 Mbps / 150 ms: a page on the package vs one on tile-cover +
#           lru-cache + fetch; bytes per load)
#   memory  bench/js/memory-browser.mjs (memory per cached item in Chromium, as
#           bench/js/memory.mjs measures it in Node in the pkg part: 25k and 50k items)
#   web     scripts/bench-web.sh (the Rust browser shell: example wasm size, set_viewport
#           with 10k cached, next to the npm package's in the same Chromium page)
# A part whose script is absent, or that fails, is reported as such in the document; the
# run still writes it. Parts: `scripts/bench.sh core sim` runs only those (and assembles the
# document from the outputs of earlier runs in target/bench/ for the others;
# `scripts/bench.sh none` only assembles it).
# The committed docs/BENCHMARKS.md is not written: it is kept by hand from these runs, each
# section dated, with notes and before/after runs no script makes. Writing it whole threw
# away every part not run here (in a fresh clone, all of them but one) and those notes.
# Carry what a run measured over from target/bench/BENCHMARKS.md (or target/bench/PART.md).
# docs/bench/memory.md and docs/bench/size-ratchet.md are the hand-kept parts it copies in.
set -uo pipefail
cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out" docs
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(core pkg sim server overload cluster postgis live edge maplibre coldstart memory web)
want() { local p; for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
status() { echo "bench: $*" >&2; }

if want core; then
  status "core micro-benchmarks (divan)"
  if cargo bench --bench core > "$out/core.txt" 2> "$out/core.err"; then
    python3 scripts/bench_core.py "$out/core.txt" > "$out/core.md"
  else
    { echo "core benchmarks failed:"; echo '```'; tail -20 "$out/core.err"; echo '```'; } > "$out/core.md"
  fi
fi
if want pkg; then
  status "package size and Node micro-benchmarks"
  if scripts/setup.sh wasm node >&2 && scripts/build-pkg.sh >&2; then
    scripts/pkg-size.sh > /dev/null || echo "pkg-size failed" > "$out/pkg-size.md"
  else
    echo "the package did not build; see \`scripts/build-pkg.sh\`" > "$out/pkg-size.md"
  fi
  if (cd bench/js && npm ci --no-audit --no-fund >&2 \
      && node micro.mjs --md "../../$out/js.md" --json "../../$out/js.json" > /dev/null); then :; else
    echo "Node micro-benchmarks failed; see the output of \`scripts/bench.sh pkg\`." > "$out/js.md"
  fi
  (cd bench/js && node --expose-gc memory.mjs --md "../../$out/js-memory.md" > /dev/null) \
    || echo "bench/js/memory.mjs failed; see the output of \`scripts/bench.sh pkg\`." > "$out/js-memory.md"
fi
if want sim; then
  status "trace-replay simulator"
  if [ -x sim/run-bench.sh ]; then sim/run-bench.sh >&2 || echo "sim/run-bench.sh failed" > "$out/sim.md"
  else echo "not run: sim/run-bench.sh is absent" > "$out/sim.md"; fi
fi
if want server; then
  status "server load benchmark"
  if [ -x server/bench/run.sh ]; then server/bench/run.sh >&2 || echo "server/bench/run.sh failed" > "$out/server.md"
  else echo "not run: server/bench/run.sh is absent" > "$out/server.md"; fi
fi
if want cluster; then
  status "server on a Redis Cluster: 1 vs 2 instances, cluster vs single Redis"
  if [ -x server/bench/cluster.sh ]; then server/bench/cluster.sh >&2 || echo "server/bench/cluster.sh failed" > "$out/cluster.md"
  else echo "not run: server/bench/cluster.sh is absent" > "$out/cluster.md"; fi
fi
if want overload; then
  status "server at 1x, 2x and 4x its measured capacity (admission control)"
  if [ -x server/soak/overload.sh ]; then
    server/soak/overload.sh "${OVERLOAD_SECONDS:-15}" --out "$out/overload.md" >&2 \
      || [ -s "$out/overload.md" ] || echo "server/soak/overload.sh failed" > "$out/overload.md"
    # The peer of the adaptive default: the best fixed bounds measured by hand for CPU-bound
    # answers (docs/RELIABILITY.md): 2 batches per core at once, 4 per core waiting.
    cores=$(nproc)
    server/soak/overload.sh "${OVERLOAD_SECONDS:-15}" --out "$out/overload-sized.md" \
      --server-arg=--in-flight-limit=fixed \
      --server-arg=--max-in-flight=$((2 * cores)) --server-arg=--max-queue=$((4 * cores)) >&2 \
      || [ -s "$out/overload-sized.md" ] || echo "server/soak/overload.sh (sized) failed" > "$out/overload-sized.md"
  else echo "not run: server/soak/overload.sh is absent" > "$out/overload.md"; fi
fi
if want postgis; then
  status "PostGIS origin: latency, throughput cold and warm, change to served"
  if [ -x server/bench/postgis.sh ]; then server/bench/postgis.sh >&2 || echo "server/bench/postgis.sh failed" > "$out/postgis.md"
  else echo "not run: server/bench/postgis.sh is absent" > "$out/postgis.md"; fi
fi
if want live; then
  status "invalidate-to-visible latency through the change feed"
  if { [ -f pkg/live.js ] || { scripts/setup.sh wasm node >&2 && scripts/build-pkg.sh >&2; }; } \
      && cargo build --quiet --workspace --all-features --bin tilewarm-server >&2 \
      && mkdir -p js/node_modules && ln -sfn ../../pkg js/node_modules/tilewarm \
      && node js/bench/live.mjs --md "$out/live.md" > /dev/null; then :; else
    echo "js/bench/live.mjs failed; see the output of \`scripts/bench.sh live\`." > "$out/live.md"
  fi
fi
if want edge; then
  status "edge worker hit path (workerd) vs the server"
  if { [ -f pkg/edge.js ] || { scripts/setup.sh wasm node >&2 && scripts/build-pkg.sh >&2; }; } \
      && scripts/setup.sh edge >&2 \
      && cargo build --quiet --profile server -p tilewarm-server --bin tilewarm-server >&2 \
      && node edge/bench.mjs --server-bin target/server/tilewarm-server \
           --workerd edge/node_modules/.bin/workerd --md "$out/edge.md" > /dev/null; then :; else
    echo "edge/bench.mjs failed; see the output of \`scripts/bench.sh edge\`." > "$out/edge.md"
  fi
fi
if want maplibre; then
  status "tilewarm/maplibre: diffs vs setData during a pan (headless Chromium)"
  if { [ -f pkg/index.js ] || { scripts/setup.sh wasm node >&2 && scripts/build-pkg.sh >&2; }; } \
      && BUILD_ONLY=1 scripts/test-browser.sh >&2 \
      && node js/test/browser/maplibre-bench.mjs --md "$out/maplibre.md" > /dev/null; then :; else
    echo "js/test/browser/maplibre-bench.mjs failed; see the output of \`scripts/bench.sh maplibre\`." > "$out/maplibre.md"
  fi
fi
if want coldstart; then
  status "cold start on a throttled network: the package vs tile-cover + lru-cache + fetch (Chromium)"
  if { [ -f pkg/index.js ] || { scripts/setup.sh wasm node >&2 && scripts/build-pkg.sh >&2; }; } \
      && scripts/setup.sh node chromium >&2 \
      && { [ -d bench/js/node_modules/lru-cache ] || (cd bench/js && npm ci --no-audit --no-fund >&2); } \
      && { [ -d js/test/browser/node_modules/playwright-core ] || (cd js/test/browser && npm ci --no-audit --no-fund >&2); } \
      && (cd bench/js && node coldstart.mjs --md "../../$out/coldstart.md" > /dev/null); then :; else
    echo "bench/js/coldstart.mjs failed; see the output of \`scripts/bench.sh coldstart\`." > "$out/coldstart.md"
  fi
fi
if want memory; then
  status "memory per cached item in Chromium (25k and 50k items)"
  if { [ -f pkg/index.js ] || { scripts/setup.sh wasm node >&2 && scripts/build-pkg.sh >&2; }; } \
      && scripts/setup.sh node chromium >&2 \
      && { [ -d js/test/browser/node_modules/playwright-core ] || (cd js/test/browser && npm ci --no-audit --no-fund >&2); } \
      && node bench/js/memory-browser.mjs --md "$out/js-memory-chromium.md" > /dev/null; then :; else
    echo "bench/js/memory-browser.mjs failed; see the output of \`scripts/bench.sh memory\`." > "$out/js-memory-chromium.md"
  fi
fi
if want web; then
  status "Rust browser shell (tilewarm-web) vs the npm package"
  if { [ -f pkg/index.js ] || { scripts/setup.sh wasm node >&2 && scripts/build-pkg.sh >&2; }; } \
      && scripts/bench-web.sh > /dev/null; then :; else
    echo "scripts/bench-web.sh failed; see the output of \`scripts/bench.sh web\`." > "$out/web.md"
  fi
fi

section() { # file, fallback
  if [ -s "$1" ]; then cat "$1"; else echo "$2"; fi
}
{
  cat <<HEAD
# Benchmarks

Written by \`make bench\` (\`scripts/bench.sh\`) on $(date -u +%Y-%m-%d); machine: $(nproc) cores,
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(rustc --version), Node $(node --version 2>/dev/null || echo absent).
These machines are shared and noisy: compare figures **within one run** (the ratio
columns), not across runs. Reproduce any part with \`scripts/bench.sh PART\`
(\`core\`, \`pkg\`, \`sim\`, \`server\`, \`overload\`, \`cluster\`, \`postgis\`, \`live\`, \`edge\`,
\`maplibre\`, \`coldstart\`, \`memory\`, \`web\`); raw outputs are in \`target/bench/\`.

## Core (Rust, divan): \`cargo bench --bench core\`

Medians per call. Each job is paired with a peer in the same run: the tile cover against a
brute-force scan of the bbox's block; a cache hit (LRU recency, freshness, tier check)
against a plain \`HashMap\` lookup; a full planning round (cover, read 10k-item cache,
plan foreground/prefetch, queue work) against only reading the same view.

HEAD
  section "$out/core.md" "(not run in this invocation)"
  echo
  echo "## npm package: size and Node micro-benchmarks: \`scripts/bench.sh pkg\`"
  echo
  echo "Size: a ratchet on the browser page (wasm + the JS it loads, gzipped), recorded in"
  echo "\`bench/page-size.txt\`; \`make test\` fails when the page moves more than 1 KB from it"
  echo "(see \"Size ratchet\" below)."
  echo
  section "$out/pkg-size.md" "(package size not measured in this invocation)"
  echo
  cat docs/bench/size-ratchet.md
  echo
  echo "Node micro-benchmarks (\`bench/js/micro.mjs\`): each job against the same job composed from"
  echo "the JS libraries a page would otherwise use. Read \`setViewport\` with care: tilewarm's call"
  echo "also checks freshness and tiers, plans the prefetch round and queues requests; the peer"
  echo "composition only reads the cache. The single \`setViewport\` job alternates three views"
  echo "a quarter tile apart, so its calls plan and read; a map's per-frame calls are the"
  echo "\"per frame\" table."
  echo
  section "$out/js.md" "(Node micro-benchmarks not run in this invocation)"
  echo
  echo "Memory per cached item (\`node --expose-gc bench/js/memory.mjs\`): 50k items cached, the"
  echo "JS heap and wasm memory the cache holds, per item, against the item's JSON; and what each"
  echo "item from 25k to 50k adds (each size in a process of its own), which leaves out what"
  echo "does not grow with the items (the compiled code and fetch machinery, about 2 MB of heap)."
  echo
  section "$out/js-memory.md" "(memory not measured in this invocation)"
  echo
  echo "The same in Chromium (\`scripts/bench.sh memory\`: \`bench/js/memory-browser.mjs\`, the same"
  echo "items, cache and views; the JS heap from the DevTools protocol after two full GCs, a fresh"
  echo "browser per size). Chromium's V8 compresses pointers (4-byte fields), Node 20's does not."
  echo
  section "$out/js-memory-chromium.md" "(memory in Chromium not measured in this invocation)"
  echo
  cat docs/bench/memory.md
  echo
  section "$out/sim.md" "## Prefetch policies in simulation (tilewarm-sim)

(not run in this invocation)"
  echo
  echo "## Server: \`scripts/bench.sh server\`"
  echo
  section "$out/server.md" "(not run in this invocation)"
  echo
  echo "## Server on a Redis Cluster: \`scripts/bench.sh cluster\`"
  echo
  section "$out/cluster.md" "(not run in this invocation)"
  echo "## Server under overload: \`scripts/bench.sh overload\`"
  echo
  section "$out/overload.md" "(not run in this invocation)"
  echo
  echo "Bounds sized for CPU-bound answers (2 per core in flight, 4 per core queued, 10 ms wait):"
  echo
  section "$out/overload-sized.md" "(not run in this invocation)"
  echo
  echo "## Server over PostGIS: \`scripts/bench.sh postgis\`"
  echo
  section "$out/postgis.md" "(not run in this invocation)"
  echo
  echo "## Invalidation through the change feed: \`scripts/bench.sh live\`"
  echo
  section "$out/live.md" "(not run in this invocation)"
  echo
  echo "## Edge worker: \`scripts/bench.sh edge\`"
  echo
  section "$out/edge.md" "(not run in this invocation)"
  echo
  echo "## MapLibre adapter: diffs vs setData: \`scripts/bench.sh maplibre\`"
  echo
  section "$out/maplibre.md" "(not run in this invocation)"
  echo
  echo "## Cold start on a throttled network: \`scripts/bench.sh coldstart\`"
  echo
  section "$out/coldstart.md" "(not run in this invocation)"
  echo
  echo "## Rust browser shell (tilewarm-web): \`scripts/bench.sh web\`"
  echo
  section "$out/web.md" "(not run in this invocation)"
} > "$out/BENCHMARKS.md"
status "wrote $out/BENCHMARKS.md: carry the parts this run measured over to docs/BENCHMARKS.md (kept by hand)"
