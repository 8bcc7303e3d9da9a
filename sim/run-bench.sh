#!/usr/bin/env bash
# Runs the tilewarm-sim benchmark: synthetic traces (always) and the real ForeCache user
# study traces (when ../shared/data is present), then draws the chart.
#
# Writes target/bench/sim.md, target/bench/sim-{synthetic,real}.json and
# docs/bench/sim.svg (+ docs/bench/sim.md, the tables that go into docs/BENCHMARKS.md).
# Usage: sim/run-bench.sh            (from the repository root or anywhere)
#        DATA=/path/to/shared/data sim/run-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
OUT=target/bench
mkdir -p "$OUT" docs/bench
cargo build --release -q -p tilewarm-sim
SIM=target/release/tilewarm-sim
POLICIES=none,lru,ring1,tilewarm,oracle

$SIM synth --seed 1 --sessions 20 --events 300 --out "$OUT/synth.jsonl"
$SIM run --trace "$OUT/synth.jsonl" --data synthetic:20000 --seed 1 --policies "$POLICIES" \
  --label "Synthetic sessions (seed 1, 20 x 300 viewports) over the synthetic city" \
  --hit-goal 0.95 --write-json "$OUT/sim-synthetic.json" --write-md "$OUT/sim-synthetic.md" >/dev/null

REAL=0
if [ -d "$DATA/forecache-ndsi2d" ] && [ -f "$DATA/kc_house_data.csv" ]; then
  $SIM convert-forecache --out "$OUT/real.jsonl" "$DATA"/forecache-ndsi2d/U_*.csv 2>/dev/null
  $SIM run --trace "$OUT/real.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" \
    --label "Real sessions (ForeCache NDSI-2D user study, 10 users) over the King County homes" \
    --hit-goal 0.90 --write-json "$OUT/sim-real.json" --write-md "$OUT/sim-real.md" >/dev/null
  REAL=1
else
  echo "run-bench: $DATA/forecache-ndsi2d or $DATA/kc_house_data.csv is absent: skipping the real traces" >&2
  rm -f "$OUT/sim-real.json" "$OUT/sim-real.md"
fi

{
  echo "## Prefetch policies in simulation (tilewarm-sim)"
  echo
  echo "Reproduce: \`sim/run-bench.sh\` (needs ../shared/data for the real traces). Policies, metrics and"
  echo "trace mapping: sim/README.md."
  echo
  echo "### Synthetic traces"
  echo
  cat "$OUT/sim-synthetic.md"
  echo
  echo "### Real traces"
  echo
  if [ "$REAL" = 1 ]; then cat "$OUT/sim-real.md"; else echo "_Skipped: the shared data folder is absent._"; fi
  echo
  echo "![viewport hit rate and foreground requests per policy](bench/sim.svg)"
} > "$OUT/sim.md"

python3 sim/chart.py "$OUT" docs/bench/sim.svg
cp "$OUT/sim.md" docs/bench/sim.md
echo "run-bench: wrote $OUT/sim.md, docs/bench/sim.md and docs/bench/sim.svg"
