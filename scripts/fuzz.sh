#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (libFuzzer, rustup's nightly), each for SECONDS.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (SECONDS: default $FUZZ_SECONDS, else 60;
#                                            TARGET: default every target)
#
# One build for all targets (target/fuzz, no sanitizer: the code under test is safe Rust,
# and the properties are assertions, built with debug assertions and overflow checks).
# Each target starts from its checked-in seeds (fuzz/seeds/<target>, which also hold past
# crashers as regression inputs) plus the protocol fixtures (tests/fixtures/protocol) for
# the decoders; the corpus it grows is kept in target/fuzz/corpus/<target> for the next
# run. A crash or a failed property stops the run with the input in
# target/fuzz/artifacts/<target>/ and fails the script. The figures (executions, exec/s,
# corpus, build time) go to stdout and target/fuzz/summary.md (docs/RELIABILITY.md quotes
# them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh fuzz
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

seconds=${1:-${FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
all=(response_decoder server_request tile_parse viewport_cover)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

root=$PWD
out=target/fuzz
mkdir -p "$out"
fuzz=(cargo +nightly fuzz)
opts=(--sanitizer none --target-dir "$PWD/$out")

start=$(date +%s)
echo "fuzz: building ${#all[@]} targets (nightly, release + debug assertions)"
(cd fuzz && "${fuzz[@]}" build "${opts[@]}")
build_s=$(( $(date +%s) - start ))
echo "fuzz: build took ${build_s} s"

summary=$out/summary.md
{
  echo "| target | seconds | executions | exec/s | corpus files | new units |"
  echo "|---|---:|---:|---:|---:|---:|"
} > "$summary"
failed=()
for t in "${targets[@]}"; do
  corpus=$out/corpus/$t
  artifacts=$out/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  dirs=("$PWD/$corpus" "$PWD/fuzz/seeds/$t")
  [ "$t" = response_decoder ] && dirs+=("$PWD/tests/fixtures/protocol")
  log=$out/$t.log
  echo "fuzz: $t for ${seconds} s"
  if (cd fuzz && "${fuzz[@]}" run "${opts[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=8192 \
        -artifact_prefix="$root/$artifacts/") > "$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    tail -40 "$log" >&2
  fi
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  new=$(stat new_units_added)
  files=$(find "$corpus" -type f | wc -l)
  echo "fuzz: $t: $status, ${execs:-?} executions, ${rate:-?} exec/s, corpus $files files (log $log)"
  echo "| $t | $seconds | ${execs:-?} | ${rate:-?} | $files | ${new:-?} |" >> "$summary"
done
echo "Build: ${build_s} s (nightly, 2-core machine, dependencies cached in target/fuzz after the first run)." >> "$summary"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $out/artifacts/; reproduce with: cd fuzz && cargo +nightly fuzz run --sanitizer none --target-dir ../target/fuzz TARGET ../target/fuzz/artifacts/TARGET/FILE)" >&2
  exit 1
fi
cat "$summary"
