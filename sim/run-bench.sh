#!/usr/bin/env bash
# Runs the tilewarm-sim benchmark: synthetic traces (always) and the real ForeCache user
# study traces (when ../shared/data is present), then draws the chart.
#
# Writes target/bench/sim.md, target/bench/sim-{synthetic,real}.json and docs/bench/pareto.svg,
# docs/bench/pareto-synth.svg, docs/bench/sim.svg and docs/bench/sim.md (the tables recorded
# for docs/BENCHMARKS.md) when the real traces are there (else the charts in target/bench).
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
  --hit-goal 0.99350 --write-json "$OUT/sim-synthetic.json" --write-md "$OUT/sim-synthetic.md" >/dev/null
# Held out: a seed no setting was chosen on.
$SIM synth --seed 2 --sessions 20 --events 300 --out "$OUT/synth2.jsonl"
$SIM run --trace "$OUT/synth2.jsonl" --data synthetic:20000 --seed 2 --policies "$POLICIES" \
  --label "Synthetic sessions, held out (seed 2, 20 x 300 viewports) over the synthetic city" \
  --hit-goal 0.99433 --write-json "$OUT/sim-synthetic2.json" --write-md "$OUT/sim-synthetic2.md" >/dev/null
# The peer of the default batch.coalesceMinShare (50): 100, the default before issue 17.
for seed in 1 2; do
  trace="$OUT/synth.jsonl"; [ "$seed" = 2 ] && trace="$OUT/synth2.jsonl"
  $SIM run --trace "$trace" --data synthetic:20000 --seed $seed --policies "$POLICIES" \
    --coalesce-min-share 100 --label "synthetic seed $seed, share 100" \
    --write-json "$OUT/share100-synth-$seed.json" >/dev/null
done
# The cost/hit-rate curve on the held-out seed: the view neighbourhood's size at the
# defaults (the files in the curve's order).
RINGS="0 0.25 0.5 0.75 1 1.5"
rm -f "$OUT"/pareto-s2-*.json
for v in $RINGS; do
  $SIM run --trace "$OUT/synth2.jsonl" --data synthetic:20000 --seed 2 --policies tilewarm \
    --tw-view-ring $v --label "defaults|view ring $v" --write-json "$OUT/pareto-s2-$v.json" >/dev/null
done
# shellcheck disable=SC2046
python3 sim/pareto.py "$OUT/pareto-synth.svg" "$OUT/sim-synthetic2.json" \
  $(for v in $RINGS; do echo "$OUT/pareto-s2-$v.json"; done)

# The defaults before 2026-12-06 (motion look-ahead 1500 ms, coarse tiles 2 zooms up),
# every policy, and each of the two changes alone: the evidence for today's defaults
# (chosen on synthetic seed 1 and real half A, checked on the rest).
OLD="--tw-lookahead-ms 1500 --coalesce-levels 2"
for seed in 1 2; do
  trace="$OUT/synth.jsonl"; [ "$seed" = 2 ] && trace="$OUT/synth2.jsonl"
  $SIM run --trace "$trace" --data synthetic:20000 --seed $seed --policies "$POLICIES" \
    $OLD --label "synthetic seed $seed, before" --write-json "$OUT/before-synth-$seed.json" >/dev/null
done
$SIM run --trace "$OUT/synth.jsonl" --data synthetic:20000 --seed 1 --policies "$POLICIES" \
  --coalesce-levels 2 --label "synthetic seed 1, look-ahead off alone" \
  --write-json "$OUT/nolook-synth-1.json" >/dev/null
$SIM run --trace "$OUT/synth.jsonl" --data synthetic:20000 --seed 1 --policies "$POLICIES" \
  --tw-lookahead-ms 1500 --label "synthetic seed 1, 3 levels alone" \
  --write-json "$OUT/levels3-synth-1.json" >/dev/null

# Every policy given the data's extent (CacheConfig bounds, the `bounds` option): a page
# that declares it, as a map source declares its bounds; and the backend declaring it with
# its answers (a server's --bounds), which each client adopts with its first.
for seed in 1 2; do
  trace="$OUT/synth.jsonl"; [ "$seed" = 2 ] && trace="$OUT/synth2.jsonl"
  $SIM run --trace "$trace" --data synthetic:20000 --seed $seed --policies "$POLICIES" \
    --bounds data --label "synthetic seed $seed, bounds" \
    --write-json "$OUT/bounds-synth-$seed.json" >/dev/null
  $SIM run --trace "$trace" --data synthetic:20000 --seed $seed --policies "$POLICIES" \
    --bounds server --label "synthetic seed $seed, bounds declared by the server" \
    --write-json "$OUT/server-bounds-synth-$seed.json" >/dev/null
done

# Small caches: every policy's client holding at most 5,000 or 10,000 items (maxItems), on
# the held-out seed; the real half B below.
for m in 5000 10000; do
  $SIM run --trace "$OUT/synth2.jsonl" --data synthetic:20000 --seed 2 --policies ring1,tilewarm,oracle \
    --max-items $m --label "synthetic seed 2, max items $m" --write-json "$OUT/small-synth-2-$m.json" >/dev/null
done

# Prefetch limited to where the other seed's sessions looked (setPopularTiles, opt-in),
# tilewarm alone: ring1 and the oracle are the default runs'.
for seed in 1 2; do
  trace="$OUT/synth.jsonl"; from="$OUT/synth2.jsonl"
  [ "$seed" = 2 ] && { trace="$OUT/synth2.jsonl"; from="$OUT/synth.jsonl"; }
  for share in 0.1 0.4; do
    $SIM run --trace "$trace" --data synthetic:20000 --seed $seed --policies tilewarm \
      --tw-popular-from "$from" --tw-popular-min-share $share \
      --label "synthetic seed $seed, popular $share" --write-json "$OUT/popular-synth-$seed-$share.json" >/dev/null
  done
done

REAL=0
if [ -d "$DATA/forecache-ndsi2d" ] && [ -f "$DATA/kc_house_data.csv" ]; then
  $SIM convert-forecache --out "$OUT/real.jsonl" "$DATA"/forecache-ndsi2d/U_*.csv 2>/dev/null
  $SIM run --trace "$OUT/real.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" \
    --label "Real sessions (ForeCache NDSI-2D user study, 10 users) over the King County homes" \
    --hit-goal 0.98328 --write-json "$OUT/sim-real.json" --write-md "$OUT/sim-real.md" >/dev/null
  # The two halves of the users: settings were chosen on half A (U_1-5), B (U_6-10) is
  # held out. Hit goals, here and above: the hit rate of the default before issue 17's
  # changes on each trace (synthetic 5961/6000 and 5966/6000, all real 1000/1017, A 421/429,
  # B 579/588).
  $SIM convert-forecache --out "$OUT/real-a.jsonl" "$DATA"/forecache-ndsi2d/U_{1,2,3,4,5}.csv 2>/dev/null
  $SIM convert-forecache --out "$OUT/real-b.jsonl" "$DATA"/forecache-ndsi2d/U_{6,7,8,9,10}.csv 2>/dev/null
  $SIM run --trace "$OUT/real-a.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --label "Real sessions, half A (users 1-5; settings chosen here)" \
    --hit-goal 0.98135 --write-json "$OUT/sim-real-a.json" --write-md "$OUT/sim-real-a.md" >/dev/null
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --label "Real sessions, half B (users 6-10; held out)" \
    --hit-goal 0.98469 --write-json "$OUT/sim-real-b.json" --write-md "$OUT/sim-real-b.md" >/dev/null
  # The held-out half again with a flaky backend: breaker, retries and backoff included.
  # Hit goal: the rate of the default before issue 17's changes there (574/588).
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --fail-share 0.1 --slow-share 0.05 \
    --label "Real sessions, half B, flaky backend (10% of requests 503, 5% answered 5 s late)" \
    --hit-goal 0.97619 --write-json "$OUT/sim-real-b-flaky.json" --write-md "$OUT/sim-real-b-flaky.md" >/dev/null
  # The cost/hit-rate curve on the held-out half: the neighbourhood's size (view ring) at
  # the default coarse tiles (3 zooms up) and at 2 zooms up (the default before 2026-12-06),
  # prefetch areas aligned as by default (4x4 blocks); and at the defaults with the list of
  # where half A's users looked (setPopularTiles, share 0.4). The files in the curves' order.
  rm -f "$OUT"/pareto-[0-9p]-*.json
  for v in $RINGS; do
    for c in 3 2; do
      $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
        --policies tilewarm --coalesce-levels $c --tw-view-ring $v \
        --label "coalesce $c|view ring $v" --write-json "$OUT/pareto-$c-$v.json" >/dev/null
    done
    $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
      --policies tilewarm --tw-popular-from "$OUT/real-a.jsonl" --tw-view-ring $v \
      --label "coalesce 3, half A's popular list|view ring $v" --write-json "$OUT/pareto-p-$v.json" >/dev/null
  done
  # shellcheck disable=SC2046
  python3 sim/pareto.py docs/bench/pareto.svg "$OUT/sim-real-b.json" \
    $(for c in 3 2 p; do for v in $RINGS; do echo "$OUT/pareto-$c-$v.json"; done; done)
  # The peer of the default batch.coalesceMinShare (50, chosen on half A and synthetic
  # seed 1): 100, the default before issue 17, every policy but the oracle batching so.
  for h in a b; do
    $SIM run --trace "$OUT/real-$h.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
      --policies "$POLICIES" --coalesce-min-share 100 --label "real half $h, share 100" \
      --write-json "$OUT/share100-real-$h.json" >/dev/null
  done
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --fail-share 0.1 --slow-share 0.05 --coalesce-min-share 100 \
    --label "real half B, flaky, share 100" --write-json "$OUT/share100-real-b-flaky.json" >/dev/null
  # The opt-in setting on the held-out half, tilewarm alone (ring1 and the oracle are the
  # default run's): prefetch.warmBelowMinZoom 1.
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies tilewarm --tw-warm-below 1 --label "real half B, warm below 1" \
    --write-json "$OUT/optin-warm1-real-b.json" >/dev/null
  # The defaults before 2026-12-06 on the halves and the flaky run, and each change alone on
  # the tuning half (see the synthetic runs above).
  for h in a b; do
    $SIM run --trace "$OUT/real-$h.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
      --policies "$POLICIES" $OLD --label "real half $h, before" \
      --write-json "$OUT/before-real-$h.json" >/dev/null
  done
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --fail-share 0.1 --slow-share 0.05 $OLD \
    --label "real half B, flaky, before" --write-json "$OUT/before-real-b-flaky.json" >/dev/null
  $SIM run --trace "$OUT/real-a.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --coalesce-levels 2 --label "real half A, look-ahead off alone" \
    --write-json "$OUT/nolook-real-a.json" >/dev/null
  $SIM run --trace "$OUT/real-a.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --tw-lookahead-ms 1500 --label "real half A, 3 levels alone" \
    --write-json "$OUT/levels3-real-a.json" >/dev/null
  # The halves and the flaky run with the data's extent declared, every policy.
  for h in a b; do
    $SIM run --trace "$OUT/real-$h.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
      --policies "$POLICIES" --bounds data --label "real half $h, bounds" \
      --write-json "$OUT/bounds-real-$h.json" >/dev/null
    $SIM run --trace "$OUT/real-$h.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
      --policies "$POLICIES" --bounds server --label "real half $h, bounds declared by the server" \
      --write-json "$OUT/server-bounds-real-$h.json" >/dev/null
  done
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --fail-share 0.1 --slow-share 0.05 --bounds data \
    --label "real half B, flaky, bounds" --write-json "$OUT/bounds-real-b-flaky.json" >/dev/null
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies "$POLICIES" --fail-share 0.1 --slow-share 0.05 --bounds server \
    --label "real half B, flaky, bounds declared by the server" \
    --write-json "$OUT/server-bounds-real-b-flaky.json" >/dev/null
  for m in 5000 10000; do
    $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
      --policies ring1,tilewarm,oracle --max-items $m --label "real half B, max items $m" \
      --write-json "$OUT/small-real-b-$m.json" >/dev/null
  done
  # Prefetch limited to where the other half's users looked (setPopularTiles, opt-in),
  # across the share of them that must have viewed a tile; tilewarm alone.
  for h in a b; do
    o=b; [ "$h" = b ] && o=a
    for share in 0.2 0.4 0.6 0.8 1; do
      $SIM run --trace "$OUT/real-$h.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
        --policies tilewarm --tw-popular-from "$OUT/real-$o.jsonl" --tw-popular-min-share $share \
        --label "real half $h, popular $share" --write-json "$OUT/popular-real-$h-$share.json" >/dev/null
    done
  done
  $SIM run --trace "$OUT/real-b.jsonl" --data "$DATA/kc_house_data.csv" --min-zoom 11 \
    --policies tilewarm --fail-share 0.1 --slow-share 0.05 --tw-popular-from "$OUT/real-a.jsonl" \
    --label "real half B, flaky, popular 0.4" --write-json "$OUT/popular-real-b-flaky-0.4.json" >/dev/null
  REAL=1
else
  echo "run-bench: $DATA/forecache-ndsi2d or $DATA/kc_house_data.csv is absent: skipping the real traces" >&2
  rm -f "$OUT"/sim-real*.json "$OUT"/sim-real*.md
fi

{
  echo "## Prefetch policies in simulation (tilewarm-sim)"
  echo
  echo "Reproduce: \`sim/run-bench.sh\` (needs ../shared/data for the real traces). Policies, metrics and"
  echo "trace mapping: sim/README.md."
  echo
  echo 'Re-run 2026-12-06 after two defaults changed (the motion look-ahead off, coarse tiles up'
  echo 'to 3 zooms up: "The defaults of 2026-12-06 against those before" below, with the runs at'
  echo 'the earlier defaults beside them). A figure in the prose below that names an earlier date'
  echo 'was measured at the defaults of that date.'
  echo
  echo '2026-12-07: `none`'"'"'s time to complete and abandoned views, and every policy'"'"'s prefetched'
  echo 'tiles and prefetch waste, are counted anew: an answer in coarse tiles (the batcher'
  echo 'coalesces) now completes the data tiles inside it for `none`, whose views were counted'
  echo 'abandoned until they were left, and a prefetched coarse tile counts as its data tiles,'
  echo 'each wasted only if never in view. Every other figure is as before.'
  echo
  echo 'Re-run 2026-12-05, after a view at rest began to wake at its items'"'"' expiry and fetch them'
  echo 'again (`Client::next_wakeup`) and an item to be read only in the data tile it lies in:'
  echo 'every number below is as before except the opt-in row on half B (see there). The 10'
  echo 'minutes each session is run on after its last viewport now see that view'"'"'s items expire'
  echo 'and be fetched again, once or twice (3 to 13 requests a session on average): a page left'
  echo 'open, whose amount those 10 minutes set, not the trace or the policy, so it is counted'
  echo 'apart, in a line under each table (`idle_*`, sim/README.md). Counted in, it added 14 to'
  echo '261 foreground requests to each policy but `none` on each trace (an expired item'
  echo 'cannot be shown by default, so each refresh is foreground), gave the oracle foreground'
  echo 'requests it never waits for, and took the foreground ratio on half B from 3.41x to 2.59x.'
  echo
  echo "### Synthetic traces"
  echo
  cat "$OUT/sim-synthetic.md"
  echo
  echo "#### Held out: synthetic seed 2"
  echo
  cat "$OUT/sim-synthetic2.md"
  echo
  echo 'Why the synthetic foreground goal is out of reach of any prefetch that does not know the'
  echo 'future (2026-12-05, from the two tables above; 2026-12-06: the same, with 16 and 13 jumps'
  echo 'missed): tilewarm'"'"'s foreground requests are exactly'
  echo 'its misses (the refreshes of the page left open after each session are counted apart), and'
  echo 'its misses are only the sessions'"'"' starts (20, which the oracle misses too) and jumps (19'
  echo 'of 63 on seed 1, 14 of 39 on seed 2); it misses no pan and no zoom. A jump is'
  echo 'a search or a link to a place drawn uniformly over the city (`sim/src/synth.rs`). 3x fewer'
  echo 'than ring1 is at most 23 foreground requests on seed 1 (ring1 71) and 30 on seed 2 (92):'
  echo 'after the 20 starts, at most 3 of 63 and 10 of 39 jumps may miss, so the cache would have'
  echo 'to hold about 95% and 75% of the city'"'"'s tiles at the jumps'"'"' zooms, which is the items goal'
  echo 'given up. The oracle meets it only by knowing where each jump lands. On the real traces,'
  echo 'which have no jumps, the foreground goal is met (4.42x and 6.20x on the halves since'
  echo '2026-12-06; 3.11x and 3.41x before).'
  echo
  echo "### Real traces"
  echo
  if [ "$REAL" = 1 ]; then
    cat "$OUT/sim-real.md"
    echo
    echo "#### Half A (users 1-5): where settings were chosen"
    echo
    cat "$OUT/sim-real-a.md"
    echo
    echo "#### Half B (users 6-10): held out"
    echo
    cat "$OUT/sim-real-b.md"
    echo
    echo "#### Half B with a flaky backend"
    echo
    cat "$OUT/sim-real-b-flaky.md"
    echo
    echo '#### The defaults of 2026-12-06 against those before (issue 17)'
    echo
    echo 'Two defaults changed on 2026-12-06: the motion look-ahead is off (`prefetch.lookaheadMs`'
    echo '1500 before, now 0) and coarse tiles go up to 3 zooms up (`batch.coalesceLevels` 2 before,'
    echo 'now 3: one zoom-11 tile for up to 64 data tiles; the server'"'"'s `--split-levels` and'
    echo '`--max-data-tiles` defaults moved with it, to 3 and 1,024). Chosen on synthetic seed 1 and'
    echo 'real half A: on both, turning the look-ahead off completed as many views or more with'
    echo 'fewer requests, and 3 levels with it were the only setting tried (view ring 0.75 to'
    echo '1.25, alignment 1 to 3, budget 16 to 64, ring 0 or 1, look-ahead 0 to 1500 ms, coarse'
    echo 'levels 2 to 4, share 25 to 75) that met the requests goal on half A without losing'
    echo 'views there; with the look-ahead on, 3 levels lost views on half A (97.9%). Half B, the'
    echo 'flaky run and seed 2 were run after. Every policy batches as the row says (so ring1 and'
    echo 'the oracle coalesce 3 levels in the new rows too); ratios are within each run.'
    echo
    echo "| trace | defaults | viewport hit | fg requests | requests | items fetched | fg ring1 / tilewarm | requests / ring1 | items / oracle |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for spec in "synthetic seed 1 (tuning)|before-synth-1|nolook-synth-1|levels3-synth-1|sim-synthetic" \
                "synthetic seed 2 (held out)|before-synth-2|||sim-synthetic2" \
                "real half A (tuning)|before-real-a|nolook-real-a|levels3-real-a|sim-real-a" \
                "real half B (held out)|before-real-b|||sim-real-b" \
                "real half B, flaky backend|before-real-b-flaky|||sim-real-b-flaky"; do
      IFS='|' read -r name before nolook levels3 now <<< "$spec"
      for row in "before|$before" "look-ahead off alone|$nolook" "3 levels alone|$levels3" "now|$now"; do
        IFS='|' read -r label f <<< "$row"
        [ -n "$f" ] || continue
        python3 -c 'import json,sys
P={p["policy"]:p for p in json.load(open(sys.argv[1]))["policies"]}
t,r,o=P["tilewarm"],P["ring1"],P["oracle"]
print("| %s | %s | %.1f%% | %d | %d | %d | %.2fx | %.2fx | %.2fx |" % (sys.argv[2], sys.argv[3], 100*t["viewport_hit_rate"], t["foreground_requests"], t["requests"], t["items_fetched"], r["foreground_requests"]/max(t["foreground_requests"],1), t["requests"]/r["requests"], t["items_fetched"]/o["items_fetched"]))' \
          "$OUT/$f.json" "$name" "$label"
      done
    done
    echo
    echo 'The look-ahead extrapolates a pan up to two views ahead (`max_lead_viewports`) and the'
    echo 'zoom it is heading to; the view neighbourhood (`viewRing` 1) already holds the views one'
    echo 'pan or zoom-out away, so on these traces the look-ahead only sent the same tiles earlier,'
    echo 'in more, smaller requests, and tiles past the neighbourhood that the gesture never'
    echo 'reached. It stays an option for maps whose users move further than a view between pauses.'
    echo
    echo "Cost against hit rate on half B (held out), across the view neighbourhood's size, with"
    echo 'prefetch coalesced 3 zooms up (the default) and 2 (`batch.coalesceLevels: 2`, the default'
    echo 'before 2026-12-06), prefetch areas aligned to 4x4 blocks as by default; and at the'
    echo 'defaults with prefetch limited to where half A'"'"'s users looked (`setPopularTiles`, share'
    echo '0.4: "Where earlier sessions looked" below). lru, ring1 and oracle are at the default'
    echo 'batching.'
    echo
    echo "| setting | view ring | viewport hit | fg requests | requests | items fetched |"
    echo "|---|---:|---:|---:|---:|---:|"
    for c in 3 2 p; do for v in $RINGS; do
      case $c in p) name="3 zooms up, half A's popular list" ;; *) name="$c zooms up" ;; esac
      python3 -c 'import json,sys; p=[p for p in json.load(open(sys.argv[1]))["policies"] if p["policy"]=="tilewarm"][0]; print("| %s | %s | %.1f%% | %d | %d | %d |" % (sys.argv[2], sys.argv[3], 100*p["viewport_hit_rate"], p["foreground_requests"], p["requests"], p["items_fetched"]))' "$OUT/pareto-$c-$v.json" "$name" $v
    done; done
    echo
    echo "![hit rate against requests and items fetched on half B, tilewarm across the view ring (with and without a popular list), lru, ring1 and oracle marked](bench/pareto.svg)"
    echo
    echo 'The same on synthetic seed 2 (held out), at the defaults. There a smaller view ring'
    echo 'than the default 1 meets the hit goal (99.43%) with fewer items: at 0.75, 99.45% of'
    echo 'viewports for 1.24x the oracle'"'"'s items (2.79x fewer foreground requests than ring1,'
    echo 'as at 1). It is not the default: on seed 1, where settings are chosen, 0.75 completes'
    echo '99.32% (under its goal, 99.35%) for 1.38x, and on half B 96.9% (the table above).'
    echo
    echo "| view ring | viewport hit | fg requests | requests | items fetched |"
    echo "|---:|---:|---:|---:|---:|"
    for v in $RINGS; do
      python3 -c 'import json,sys; p=[p for p in json.load(open(sys.argv[1]))["policies"] if p["policy"]=="tilewarm"][0]; print("| %s | %.1f%% | %d | %d | %d |" % (sys.argv[2], 100*p["viewport_hit_rate"], p["foreground_requests"], p["requests"], p["items_fetched"]))' "$OUT/pareto-s2-$v.json" $v
    done
    echo
    echo "![hit rate against requests and items fetched on synthetic seed 2, tilewarm across the view ring, lru, ring1 and oracle marked](bench/pareto-synth.svg)"
    echo
    echo '#### `batch.coalesceMinShare`: 50 (the default) against 100'
    echo
    echo 'At 50 a coarse tile is asked for when half its data tiles are queued and none of the'
    echo 'others is cached, in flight or backing off; its answer brings those others too. At 100'
    echo '(the default before issue 17) it waits for all of them. 50 was chosen on half A and'
    echo 'synthetic seed 1 and became the default after checking it on half B, seed 2 and the'
    echo 'flaky run (2026-12-03, at the defaults of then); the other way round, half B led to the'
    echo 'same plateau (25 to 50 gave 204 to 235 requests there at the same hit rate, 67 gave'
    echo '291). Every policy but the oracle batches so too, and ring1 gains more from it than'
    echo 'tilewarm (on half B its requests fall from 174 to 116 in the rows below; from 271 to 146'
    echo 'at the defaults before 2026-12-06), so each row gives requests against ring1 at the same setting and, in'
    echo 'brackets, against ring1 at 100 (the default run of before issue 17). The goal lines'
    echo 'under the tables above compare against ring1 in the same run, so at the same setting.'
    echo
    echo "| trace | coalesceMinShare | viewport hit | fg requests | requests | items fetched | requests / ring1 | items / oracle |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for spec in "synthetic seed 1 (tuning)|sim-synthetic|share100-synth-1" "synthetic seed 2 (held out)|sim-synthetic2|share100-synth-2" \
                "real half A (tuning)|sim-real-a|share100-real-a" "real half B (held out)|sim-real-b|share100-real-b" \
                "real half B, flaky backend|sim-real-b-flaky|share100-real-b-flaky"; do
      IFS='|' read -r name f base <<< "$spec"
      python3 -c 'import json,sys
D={p["policy"]:p for p in json.load(open(sys.argv[1]))["policies"]}
B={p["policy"]:p for p in json.load(open(sys.argv[2]))["policies"]}
for share,P in (("50", D), ("100", B)):
    t,r,o=P["tilewarm"],P["ring1"],P["oracle"]
    print("| %s | %s | %.1f%% | %d | %d | %d | %.2fx (%.2fx) | %.2fx |" % (sys.argv[3], share, 100*t["viewport_hit_rate"], t["foreground_requests"], t["requests"], t["items_fetched"], t["requests"]/r["requests"], t["requests"]/B["ring1"]["requests"], t["items_fetched"]/o["items_fetched"]))' \
        "$OUT/$f.json" "$OUT/$base.json" "$name"
    done
    echo
    echo '#### `bounds`: the data'"'"'s extent declared'
    echo
    echo 'Every policy'"'"'s client given the data set'"'"'s extent: declared by the page (`--bounds data`:'
    echo 'the `bounds` option, as a page declares its source'"'"'s bounds), or by the server with every'
    echo 'answer (`--bounds server`: a server started with `--bounds` sends it in the'
    echo '`x-tilewarm-bounds` header, and a client that declares none adopts it with its first'
    echo 'answer). A data tile outside it holds no items, so it is never asked for and a view over'
    echo 'it is complete; a coarse tile'"'"'s share is of the tiles that may hold items. Nothing here'
    echo 'was tuned: the extent is the data'"'"'s. Each three rows are one trace without it, with the'
    echo 'page'"'"'s and with the server'"'"'s; ratios are against ring1 and the oracle in the same run (so'
    echo 'with the same bounds). Items do not change: the tiles left out hold none.'
    echo
    echo "| trace | bounds | viewport hit | fg requests | requests | items fetched | fg ring1 / tilewarm | requests / ring1 | items / oracle |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for spec in "synthetic seed 1|sim-synthetic|bounds-synth-1|server-bounds-synth-1" \
                "synthetic seed 2 (held out)|sim-synthetic2|bounds-synth-2|server-bounds-synth-2" \
                "real half A|sim-real-a|bounds-real-a|server-bounds-real-a" \
                "real half B (held out)|sim-real-b|bounds-real-b|server-bounds-real-b" \
                "real half B, flaky backend|sim-real-b-flaky|bounds-real-b-flaky|server-bounds-real-b-flaky"; do
      IFS='|' read -r name f with declared <<< "$spec"
      python3 -c 'import json,sys
for bounds,f in (("none", sys.argv[1]), ("page", sys.argv[2]), ("server", sys.argv[4])):
    P={p["policy"]:p for p in json.load(open(f))["policies"]}
    t,r,o=P["tilewarm"],P["ring1"],P["oracle"]
    print("| %s | %s | %.1f%% | %d | %d | %d | %.2fx | %.2fx | %.2fx |" % (sys.argv[3], bounds, 100*t["viewport_hit_rate"], t["foreground_requests"], t["requests"], t["items_fetched"], r["foreground_requests"]/max(t["foreground_requests"],1), t["requests"]/r["requests"], t["items_fetched"]/o["items_fetched"]))' \
        "$OUT/$f.json" "$OUT/$with.json" "$name" "$OUT/$declared.json"
    done
    echo
    echo 'With the extent, on half A, 3 views fewer were complete at the defaults of 2026-12-06'
    echo '(97.9% against 98.6% before them, for 28 requests instead of 74): not looked into.'
    echo 'With the flaky backend the failures are drawn per request in send order, so fewer,'
    echo 'larger requests meet other failures: over five failure seeds (2026-12-05, at the defaults of then; `--seed 1` to `5`) the'
    echo 'hit rate there was 97.3% to 99.0% with the extent (the page'"'"'s or the server'"'"'s alike) and'
    echo '97.6% to 98.6% without, 97.9% on average both ways, with 72 to 111 requests against 255'
    echo 'to 293.'
    echo
    echo '#### Small caches: prefetch within what the cache can hold'
    echo
    echo 'Every policy'"'"'s client holding at most `maxItems` items, on the held-out traces. A'
    echo 'planning round asks for no more prefetch than the cache can hold beside the view and the'
    echo 'candidates it already holds, at the items per data tile the answers have shown'
    echo '(`ItemCache::tiles_that_fit`, `src/client/density.rs`); nothing was tuned. Before it, in'
    echo 'the same run (2026-12-04, the same build with the limit taken out), tilewarm at 5,000 and'
    echo '10,000 items fetched 12.2x and 8.2x the oracle'"'"'s items on seed 2 (77.2% and 91.1% of'
    echo 'viewports), 7.1x and 8.4x on half B (56.8% and 70.4%): each answer pushed an earlier one'
    echo 'out, to be fetched again next round. At 20,000 items it changed little (2026-12-04, half B: 98.8%'
    echo 'to 98.6% of viewports, 235 to 237 requests) and at the default, 50,000, the rows above'
    echo 'moved by a few requests. On the synthetic traces, in caches this small, tilewarm'"'"'s wide'
    echo 'neighbourhood completes fewer viewports than ring1'"'"'s single ring (80.3% against 91.0% at'
    echo '5,000), on half B more. (2026-12-04, after'
    echo '10f3681, an answer to a tile'"'"'s id refresh that leaves it unshowable backs it off: these rows'
    echo 'moved by under 1 point of viewports and 4% of requests.)'
    echo
    echo 'Tried on the tuning traces and not taken (2026-12-06, experiments outside the code,'
    echo '`--max-items` 5,000 / 10,000 / 20,000 / 50,000): the neighbourhood sized to the cache (its'
    echo 'side cut so that it holds at most a share of the data tiles that fit, `viewRing` 1 at'
    echo 'most). At a share of 0.25, on seed 1, tilewarm completed 90.9% and 96.8% of viewports at'
    echo '5,000 and 10,000 items (84.1% and 92.2% without; ring1 93.3% and 97.5%) for 1.0x and'
    echo '0.81x the items it fetched without; on half A 63.4% and 75.1% (61.8% and 74.1% without,'
    echo 'ring1 the same as with it). But at the default 50,000 items it also cut the neighbourhood'
    echo 'of the county-wide views on half A, 79 to 90 requests at the same viewports; and at a'
    echo 'share of 0.1, 20,000 items on seed 1 lost viewports (99.4% to 99.1%). Refusing every'
    echo 'prefetch insert that would evict anything was worse at every size under 50,000 (seed 1'
    echo 'at 10,000 items: 75.3% of viewports, 5,791 requests): what it refused was asked again.'
    echo
    echo 'The same neighbourhood sizing applied only once the cache has evicted an item (so never at'
    echo '20,000 and 50,000 items here: those rows did not change on any trace), share 0.25, chosen'
    echo 'on seed 1 and half A as above; then on the held-out traces: seed 2, 80.4% to 88.5% of'
    echo 'viewports at 5,000 items and 91.0% to 96.8% at 10,000 (ring1 91.0% and 96.5%), with 1,393'
    echo 'to 1,180 requests at 10,000; half B, 62.4% to 61.1% at 5,000 (619 to 739 requests) and'
    echo '76.9% to 77.6% at 10,000 (469 to 507). Not taken yet: the held-out real half loses'
    echo 'viewports at 5,000 items.'
    echo
    echo 'Then (2026-12-06, late; an experiment: a planner field and a simulator flag, not kept)'
    echo 'the share swept over 0 to 0.5 on the tuning traces at 5,000, 7,500, 10,000 and 15,000 items, choosing the'
    echo 'share with the highest viewport hit rate summed over those eight runs: 0.2 (0.15 within a'
    echo 'point of it). Held out, at 5,000 / 7,500 / 10,000 / 15,000 items: seed 2, 80.4% / 87.1% /'
    echo '91.0% / 96.1% of viewports to 89.5% / 94.5% / 96.9% / 98.2%, with fewer items at each; half'
    echo 'B, 62.4% / 69.4% / 76.9% / 95.2% to 59.7% / 68.5% / 77.9% / 93.9% (at 15,000: 13 + 15 to'
    echo '16 + 20 misses by pan + zoom). At 20,000 and 50,000 items no row moved. So the synthetic'
    echo 'navigation gains at every size and the real navigation loses at three sizes of four. Not'
    echo 'taken: a neighbourhood cut alike on every side does not carry over to the real users.'
    echo 'To reproduce: in `Planner::plan_observed`, once the cache has evicted for room'
    echo '(`CacheStats::evictions > 0`, passed in `Room`), use as the round'"'"'s view ring'
    echo '`clamp((sqrt(share x Room::tiles / (w x h)) - 1) / 2, 0, viewRing)`, `w x h` the view'"'"'s'
    echo 'size in data tiles; then `tilewarm-sim run --policies tilewarm --max-items N` on each'
    echo 'trace of `sim/run-bench.sh`, the share given by a flag added for it (`--tw-room-share`).'
    echo
    echo "| trace | maxItems | policy | viewport hit | requests | items fetched | items / oracle |"
    echo "|---|---:|---|---:|---:|---:|---:|"
    for spec in "synthetic seed 2 (held out)|small-synth-2" "real half B (held out)|small-real-b"; do
      IFS='|' read -r name f <<< "$spec"
      for m in 5000 10000; do
        python3 -c 'import json,sys
P={p["policy"]:p for p in json.load(open(sys.argv[1]))["policies"]}
for name in ("ring1", "tilewarm", "oracle"):
    t=P[name]
    print("| %s | %s | %s | %.1f%% | %d | %d | %.2fx |" % (sys.argv[2], "{:,}".format(int(sys.argv[3])), name, 100*t["viewport_hit_rate"], t["requests"], t["items_fetched"], t["items_fetched"]/P["oracle"]["items_fetched"]))' \
          "$OUT/$f-$m.json" "$name" $m
      done
    done
    echo
    echo '#### Opt-in settings on half B (held out)'
    echo
    echo 'tilewarm on half B at the defaults and with the option issue 17 added turned on; both'
    echo 'ratios are against the default run'"'"'s ring1 and oracle. `prefetch.warmBelowMinZoom` is'
    echo 'off by default (see the notes). With it, user 10'"'"'s view at rest 300 s into the session,'
    echo 'when the homes fetched under the overview expire, now fetches them again while on'
    echo 'screen: one foreground request and 41 items more than before the wake-ups (2026-12-05),'
    echo 'no viewport more or fewer complete.'
    echo
    echo "| setting | viewport hit | fg requests | requests | items fetched | requests / ring1 | items / oracle |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for spec in "defaults|sim-real-b" "\`prefetch.warmBelowMinZoom: 1\`|optin-warm1-real-b"; do
      IFS='|' read -r name f <<< "$spec"
      python3 -c 'import json,sys
P={p["policy"]:p for p in json.load(open(sys.argv[1]))["policies"]}
B={p["policy"]:p for p in json.load(open(sys.argv[2]))["policies"]}
t=P["tilewarm"]
print("| %s | %.1f%% | %d | %d | %d | %.2fx | %.2fx |" % (sys.argv[3], 100*t["viewport_hit_rate"], t["foreground_requests"], t["requests"], t["items_fetched"], t["requests"]/B["ring1"]["requests"], t["items_fetched"]/B["oracle"]["items_fetched"]))' \
        "$OUT/$f.json" "$OUT/sim-real-b.json" "$name"
    done
    echo
    echo '#### Where earlier sessions looked: `setPopularTiles` (opt-in)'
    echo
    echo 'Prefetch limited to the data tiles that at least a share of *other* users'"'"' sessions had'
    echo 'in view (`setPopularTiles`, `Client::set_popular_tiles`; the list as `tilewarm-sim popular`'
    echo 'writes it); the view is fetched wherever it is. Each real half is scored with the list'
    echo 'from the other half'"'"'s five users, each synthetic seed with the list from the other'
    echo 'seed'"'"'s twenty sessions, so no trace is scored with a list made from it. tilewarm alone:'
    echo 'ratios are against ring1 and the oracle of the default run of the same trace. Hit goals:'
    echo 'half A 98.1% (421 of 429), half B 98.5% (579 of 588), synthetic 99.35% and 99.43%.'
    echo
    echo "| trace | popular from | min share | viewport hit | fg requests | requests | items fetched | fg ring1 / tilewarm | requests / ring1 | items / oracle |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for spec in "real half A|half B|sim-real-a|popular-real-a|0.2 0.4 0.6 0.8 1" \
                "real half B|half A|sim-real-b|popular-real-b|0.2 0.4 0.6 0.8 1" \
                "real half B, flaky backend|half A|sim-real-b-flaky|popular-real-b-flaky|0.4" \
                "synthetic seed 1|seed 2|sim-synthetic|popular-synth-1|0.1 0.4" \
                "synthetic seed 2|seed 1|sim-synthetic2|popular-synth-2|0.1 0.4"; do
      IFS='|' read -r name from base f shares <<< "$spec"
      for share in none $shares; do
        file="$OUT/$f-$share.json"; [ "$share" = none ] && file="$OUT/$base.json"
        python3 -c 'import json,sys
P={p["policy"]:p for p in json.load(open(sys.argv[1]))["policies"]}
B={p["policy"]:p for p in json.load(open(sys.argv[2]))["policies"]}
t,r,o=P["tilewarm"],B["ring1"],B["oracle"]
frm = "" if sys.argv[4] == "none" else sys.argv[5]
share = "(no limit)" if sys.argv[4] == "none" else sys.argv[4]
print("| %s | %s | %s | %.1f%% | %d | %d | %d | %.2fx | %.2fx | %.2fx |" % (sys.argv[3], frm, share, 100*t["viewport_hit_rate"], t["foreground_requests"], t["requests"], t["items_fetched"], r["foreground_requests"]/max(t["foreground_requests"],1), t["requests"]/r["requests"], t["items_fetched"]/o["items_fetched"]))' \
          "$file" "$OUT/$base.json" "$name" "$share" "$from"
      done
    done
    echo
    echo 'Notes (issue 17):'
    echo
    echo '- Every real session opens on the county overview, 0.78 zooms below `--min-zoom 11`, and'
    echo '  zooms in from there. `prefetch.warmBelowMinZoom` 1 fetches the homes under the overview'
    echo '  while the user looks at it, so nearly every later view is ready (the table above). It'
    echo '  is off by default: the gain is tuned to how these traces start, it costs requests, and'
    echo '  in a dense deployment a user resting just below min zoom would prefetch every data tile'
    echo '  under the view, up to thousands of them. The synthetic sessions never go below min'
    echo '  zoom and are unchanged by it. (User 10'"'"'s session outlives the 300 s item TTL, so with'
    echo '  it some homes fetched at the start are fetched again: the few hundred items above'
    echo '  18,165 a session on half B.)'
    echo '- Items: at the defaults tilewarm fetches every home the sessions can reach (18,165 a'
    echo '  session), as before issue 17; the oracle needs 60-100% of them (users 1-5). A view ring'
    echo '  around a quarter-county view (study level 1) is the whole county, so reaching 1.25x'
    echo '  the oracle means not prefetching parts of the county some users never view; no setting'
    echo '  tried (view ring, look-ahead, alignment, coarse-tile share, prefetch delays) did so'
    echo '  without losing viewports on half A.'
    echo '- Items, where earlier sessions looked (2026-12-07, the table above): the users of both'
    echo '  halves view nearly the same parts of the county (each tile in half B'"'"'s list was'
    echo '  viewed by 4 or 5 of its 5 users) and never the rest, so a list of the tiles the other'
    echo '  half viewed tells the planner where not to prefetch. It is the best case for a list:'
    echo '  at 0.4 half A'"'"'s list is exactly the 1,863 data tiles half B'"'"'s users viewed at all,'
    echo '  so it leaves out only tiles they never view; the synthetic rows are the other end.'
    echo '  Given half A'"'"'s list, half B meets every goal: 98.8% of'
    echo '  viewports (as without it), 1.13x the oracle'"'"'s items, 0.26x ring1'"'"'s requests, 6.20x'
    echo '  fewer foreground requests. Given half B'"'"'s, half A fetches 1.16x and sends 0.36x but'
    echo '  completes 97.9%, one view short of its goal: a user of half A zoomed in, within a'
    echo '  second, on a part of the county no user of half B had viewed (two views), and one pan'
    echo '  reached a quarter of the county parts of which none of them had. The share of the other half'"'"'s'
    echo '  users that must have viewed a tile: on half A every share up to 0.8 gives the same'
    echo '  list; on half B 0.2 (one user of half A)'
    echo '  saves no items and 0.4 to 0.6 is the plateau, so `tilewarm-sim popular` and'
    echo '  `--tw-popular-min-share` default to 0.4. That share was read off half B: the list'
    echo '  half B is scored with is made from half A alone, but the share is not held out (at'
    echo '  0.2, the other end of what half A cannot tell apart, half B saves nothing; at 0.8,'
    echo '  97.8% of its viewports). On the synthetic traces, whose sessions go'
    echo '  everywhere and jump to places drawn uniformly over the city, the other seed'"'"'s list'
    echo '  saves no items and costs views and foreground requests (94.7% to 99.1% of viewports'
    echo '  against 99.4% and 99.5% without; 57 to 316 foreground requests against 36 and 33): what a list'
    echo '  saves is the share of the map nobody looks at. Hence off by default, and a list a'
    echo '  page makes from its own users'"'"' viewports (a log of `moveend` boxes, as the traces are).'
    echo '- Predicting the next move (the issue'"'"'s first idea, an n-gram / Markov model as in'
    echo '  ForeCache) does not get there either, by a model of the moves alone (`sim/moves.py`,'
    echo '  2026-12-05: each view a cell of its study level, a session'"'"'s cache the fine cells it'
    echo '  fetched, no latency or expiry; items against no prefetch, which here fetches what the'
    echo '  oracle does). Knowing only *whether* the next move is a zoom-out or a pan (`move'
    echo '  type`, an oracle no predictor beats) already fetches every home the sessions can reach, as the view ring'
    echo '  does: a pan'"'"'s direction is what would have to be predicted, and neither the session'"'"'s'
    echo '  own moves so far (too few: under 5 after a given move, the model falls back to every'
    echo '  neighbour) nor a first-order model trained on the other half'"'"'s users predicts it well'
    echo '  enough. Where the trained model fetches under 1.25x it misses 16 and 17 views (cut-off'
    echo '  0.1), and at 0.02 it misses 7 on half A for 1.29x and 16 on half B for no saving,'
    echo '  against 5 for the parent and 8 neighbours and the 8 (A) and 9 (B) the hit goals allow.'
    echo '  Reproduce: `python3 sim/moves.py [DATA]` after `cargo build --release -p tilewarm-sim`.'
    echo
    python3 sim/moves.py "$DATA" | sed 's/^/  /'
    echo '- Foreground requests on the synthetic traces (the 2026-12-05 run): each session'"'"'s first view is a miss for every'
    echo '  policy, the oracle'"'"'s too (20 foreground requests there). 3x fewer than ring1'"'"'s leaves 3'
    echo '  (seed 1: 71 / 3 - 20) and 10 (seed 2: 92 / 3 - 20) for the 63 and 39 jumps to a random'
    echo '  place in the city, which a prefetch around the view reaches only when they land near it;'
    echo '  tilewarm misses 19 and 14 of them. So the goal is out of reach there for a policy that is'
    echo '  not told the next view, unless it prefetches the whole city (against the items goal).'
    echo '- Tried and not taken (2026-12-07, evening; experiments outside the code, on the tuning'
    echo '  traces, seed 1 and half A):'
    echo '  - A budget of prefetch items a minute (the issue'"'"'s second idea: a bucket of items in the'
    echo '    batcher, refilled at that rate, holding prefetch back while the last minute'"'"'s prefetch'
    echo '    answers emptied it; the view'"'"'s requests never held). At 250, 2,000, 8,000 and 16,000'
    echo '    items a minute: seed 1 completed 84.3%, 87.3%, 97.7% and 99.4% of viewports for'
    echo '    1.15x, 1.24x, 1.39x and 1.39x the oracle'"'"'s items; half A 94.9% (1.25x) up to 2,000,'
    echo '    95.1% (1.33x) at 4,000, 98.6% (1.34x) from 8,000. A rate only delays prefetch: over'
    echo '    sessions of minutes the neighbourhood is fetched anyway, and the views it was for come'
    echo '    first. At the same items the view ring does better (ring1, the view ring at 0: 98.4%'
    echo '    at 1.19x on seed 1), so no such option was added.'
    echo '  - The view ring (0.5 to 1.25) x alignment (1 to 4) x `budget_per_visible` (4 to 16), and'
    echo '    `coalesceLevels` (0 to 3) x `coalesceMinShare` (50, 100): on seed 1 the fewest items'
    echo '    at 99.4% of viewports or more were 1.38x (view ring 1, alignment 1), the fewest at all'
    echo '    1.32x (view ring 0.5, 99.2%); on half A 1.32x at best (98.1%, alignment 4).'
    echo '  - With a popular list, the ring of tiles around the view prefetched whatever the list'
    echo '    says: half A (half B'"'"'s list) completed one view fewer (97.7%) with 56 requests'
    echo '    against 34, half B (half A'"'"'s) as many with 52 against 30.'
    echo '- `coalesceLevels` 3 (the default since 2026-12-06) sends up to 16 zoom-11 tiles (1,024'
    echo '  data tiles) a request. A tilewarm server answers them through its tier at its defaults'
    echo '  (`--split-levels 3`, `--max-data-tiles 1024`; before 2026-12-06 they were 2 and 256,'
    echo '  and such a server answers zoom-11 tiles straight from the origin, uncached, and refuses'
    echo '  a request of more than 4 of them: set `batch.coalesceLevels: 2` in front of one).'
  else
    echo "_Skipped: the shared data folder is absent._"
  fi
  echo
  echo "![viewport hit rate and foreground requests per policy](bench/sim.svg)"
} > "$OUT/sim.md"

# The recorded tables and chart (docs/bench/sim.md, sim.svg) hold the real traces' figures:
# a run without the data draws its chart in target/bench and leaves them as they are.
if [ -d "$DATA/forecache-ndsi2d" ] && [ -f "$DATA/kc_house_data.csv" ]; then
  python3 sim/chart.py "$OUT" docs/bench/sim.svg
  cp "$OUT/sim.md" docs/bench/sim.md
  cp "$OUT/pareto-synth.svg" docs/bench/pareto-synth.svg
  echo "run-bench: wrote $OUT/sim.md, docs/bench/sim.md, docs/bench/sim.svg and docs/bench/pareto-synth.svg"
else
  python3 sim/chart.py "$OUT" "$OUT/sim.svg"
  echo "run-bench: wrote $OUT/sim.md and $OUT/sim.svg; docs/bench/sim.md and sim.svg left as they are (no real traces here)"
fi
