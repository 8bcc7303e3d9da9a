#!/usr/bin/env bash
# Installs what the build and the test suites need, at the versions they need
# (scripts/versions.sh). Idempotent, and quick when everything is there; it says what it
# installs.
#
#   scripts/setup.sh [STEP...]      (no step: wasm node)
#   scripts/setup.sh --check [STEP...]
#                                   prints every tool of the steps (default: all), the
#                                   version found and the version required; exits 1 when
#                                   one falls short. Installs nothing.
#
# Steps:
#   rust          cargo, rustfmt and clippy, cargo at least RUST_MIN
#   wasm-target   a std for wasm32-unknown-unknown: rustup's target when installed; else
#                 Debian's rustc-web + cargo-web + rust-web-src (at least RUSTC_WEB_MIN)
#                 and lld-19, linked as the rustup toolchain `debian-web` (std is then
#                 built with -Zbuild-std, see scripts/wasm-cargo.sh)
#   wasm-bindgen  wasm-bindgen-cli at exactly the version of wasm-bindgen in Cargo.lock
#   wasm          wasm-target + wasm-bindgen
#   node          Node >= NODE_MIN and the root package.json's devDependencies (npm ci):
#                 wasm-opt from the npm package binaryen, esbuild, typescript
#   edge          workerd for the edge worker's tests: edge/package.json's devDependencies
#                 (npm install in edge/, after the node step)
#   redis         Debian's redis-server and redis-tools (for suites that need them)
#   chromium      Debian's chromium and chromium-driver (for browser suites)
#   postgis       Debian's postgresql-15 and postgresql-15-postgis-3 (the server's PostGIS
#                 origin: server/tests/postgis.sh, the postgis bench, make demo-postgis)
#   fuzz          rustup's nightly toolchain and cargo-fuzz (pinned) for fuzz/ (scripts/fuzz.sh)
#   schemathesis  a Python venv in target/schemathesis-venv with schemathesis (pinned)
#   all           every step above
#
# Debian packages below their minimum are upgraded: setup refreshes apt's lists (a new
# machine's lists can be old, and an old list offers old versions) and installs the
# candidate; if the registry still cannot give the version, setup stops and names the
# tool, the version found and the version needed. An install from lists not refreshed in
# this run that fails (old lists name .debs the mirror has since dropped) refreshes them
# and tries once more.
#
# TILEWARM_WASM_STD=rustup|debian forces how wasm-target gets a wasm32 std. By default a
# machine without rustup's wasm32 target uses Debian's packages when apt-get is there and
# we are root (or CI is set), and `rustup target add` otherwise (a laptop).
set -euo pipefail

setup_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/versions.sh
. "$setup_root/scripts/versions.sh"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# ---- versions (pure functions; scripts/test-setup.sh tests them) ----

# upstream_version V: the numeric upstream part of a version string, without Debian's
# epoch and revision or a tool's words: "5:7.0.15-1~deb12u7" -> 7.0.15,
# "1.85.0+dfsg3-1~deb12u3" -> 1.85.0, "v20.20.2" -> 20.20.2, "132" -> 132. Empty when
# there is no number.
upstream_version() {
  local v=$1
  [[ $v =~ ^[0-9]+: ]] && v=${v#*:}
  v=${v#v}
  if [[ $v =~ ^([0-9]+(\.[0-9]+)*) ]]; then printf '%s\n' "${BASH_REMATCH[1]}"; fi
}

# version_ge HAVE WANT: true when HAVE's upstream version is at least WANT's, part by
# part as numbers (1.96.0 > 1.85.0, 10.0 > 9.9, 1.96 == 1.96.0). An empty or
# number-less HAVE is never enough.
version_ge() {
  local have want i a b
  have=$(upstream_version "$1")
  want=$(upstream_version "$2")
  [ -n "$have" ] || return 1
  [ -n "$want" ] || return 0
  local -a h w
  IFS=. read -ra h <<<"$have"
  IFS=. read -ra w <<<"$want"
  local n=${#h[@]}
  [ ${#w[@]} -gt "$n" ] && n=${#w[@]}
  for ((i = 0; i < n; i++)); do
    a=$((10#${h[i]:-0}))
    b=$((10#${w[i]:-0}))
    [ "$a" -gt "$b" ] && return 0
    [ "$a" -lt "$b" ] && return 1
  done
  return 0
}

# apt_decide INSTALLED CANDIDATE MIN UPDATED: what to do about a Debian package that must
# be at least MIN, given the installed version (empty: none), apt's candidate (empty:
# apt does not know the package) and whether the lists were refreshed in this run (empty:
# no). Prints one of:
#   ok       the installed version is enough
#   install  install or upgrade to the candidate, which is enough
#   update   the lists may be old: refresh them, then decide again
#   fail     the lists are fresh and the registry has no version that is enough
apt_decide() {
  local installed=$1 candidate=$2 min=$3 updated=$4
  if [ -n "$installed" ] && version_ge "$installed" "$min"; then echo ok
  elif [ -n "$candidate" ] && version_ge "$candidate" "$min"; then echo install
  elif [ -z "$updated" ]; then echo update
  else echo fail
  fi
}

# ---- apt ----

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "needs root: $*"; fi
}

apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] && return 0
  say "apt-get update"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  apt_updated=1
}

deb_installed() {
  dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
    awk '$3 == "installed" { print $4 }' || true
}

deb_candidate() {
  apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }' || true
}

# need_deb PKG [MIN]: PKG installed, at least MIN (default: any version). Refreshes the
# lists and upgrades when the installed version or apt's candidate falls short; stops with
# the package, the version found and the version needed when the registry cannot give it.
need_deb() {
  local pkg=$1 min=${2:-0} installed candidate tried=""
  while :; do
    installed=$(deb_installed "$pkg")
    if [ -z "$installed" ] || ! version_ge "$installed" "$min"; then
      command -v apt-get >/dev/null ||
        die "$pkg: found ${installed:-none}, need >= $min, and there is no apt-get: install it by hand"
    fi
    candidate=$(deb_candidate "$pkg")
    case $(apt_decide "$installed" "$candidate" "$min" "$apt_updated") in
      ok) return 0 ;;
      update)
        [ -n "$installed$candidate" ] &&
          say "$pkg: apt offers ${candidate:-nothing} (installed ${installed:-none}), need >= $min: refreshing apt's lists"
        apt_update ;;
      install)
        [ -z "$tried" ] ||
          die "$pkg: apt-get install left ${installed:-none}, need >= $min"
        tried=1
        say "apt-get install $pkg=$candidate${installed:+ (was $installed)}"
        local log
        log=$(mktemp)
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg=$candidate" >"$log" 2>&1; then
          if [ -z "$apt_updated" ]; then
            # Old lists name .debs the mirror no longer has (404 after a security
            # update): refresh them and decide again.
            rm -f "$log"
            say "apt-get install $pkg=$candidate failed with apt's lists as they were: refreshing them"
            apt_update
            tried=""
            continue
          fi
          tail -20 "$log" >&2
          rm -f "$log"
          die "apt-get install $pkg=$candidate failed"
        fi
        rm -f "$log" ;;
      fail)
        die "$pkg: found ${installed:-none}, need >= $min; apt offers ${candidate:-nothing} even after apt-get update. Add a source that has it (for Debian 12: bookworm-security or bookworm-backports) and run scripts/setup.sh again" ;;
    esac
  done
}

# ---- the versions tools report (empty when absent) ----

cargo_bin() { printf '%s/bin' "${CARGO_HOME:-$HOME/.cargo}"; }
first_word_version() { "$@" 2>/dev/null | head -1 | grep -oE '[0-9]+(\.[0-9]+)+' | head -1 || true; }

have_cargo() { first_word_version cargo --version; }
have_rustc_web() { first_word_version rustup run debian-web rustc --version; }
have_nightly() { first_word_version rustup run nightly rustc --version; }
have_wasm_bindgen() { PATH="$(cargo_bin):$PATH" first_word_version wasm-bindgen --version; }
have_cargo_fuzz() { PATH="$(cargo_bin):$PATH" first_word_version cargo fuzz --version; }
have_node() { first_word_version node --version; }
have_wasm_opt() { "$setup_root/node_modules/.bin/wasm-opt" --version 2>/dev/null | grep -oE '[0-9]+' | head -1 || true; }
have_workerd() {
  node -p 'require(process.argv[1]).version' "$setup_root/edge/node_modules/workerd/package.json" 2>/dev/null || true
}
have_redis() { redis-server --version 2>/dev/null | grep -oE 'v=[0-9.]+' | cut -c3- || true; }
have_postgres() { first_word_version /usr/lib/postgresql/15/bin/postgres --version; }
have_postgis() {
  ls /usr/share/postgresql/15/extension/postgis--*.sql 2>/dev/null |
    grep -oE 'postgis--[0-9]+(\.[0-9]+)+\.sql' | grep -oE '[0-9]+(\.[0-9]+)+' | sort -V | tail -1 || true
}
have_chromium() { first_word_version chromium --version; }
have_chromedriver() { first_word_version chromedriver --version; }
have_lld() { first_word_version wasm-ld-19 --version; }
have_schemathesis() {
  "$setup_root/target/schemathesis-venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}' || true
}

# ---- what is pinned elsewhere ----

# The version of the wasm-bindgen crate that Cargo.lock pins.
locked_wasm_bindgen() {
  awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/^version = "|"$/, ""); print; exit }' \
    "$setup_root/Cargo.lock"
}
pinned_npm() { # FILE PACKAGE
  node -p 'require(process.argv[1]).devDependencies[process.argv[2]]' "$1" "$2" 2>/dev/null ||
    sed -n "s/.*\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" "$1"
}
want_binaryen() { pinned_npm "$setup_root/package.json" binaryen | cut -d. -f1; }
want_workerd() { pinned_npm "$setup_root/edge/package.json" workerd; }

# ---- steps ----

step_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first (https://rustup.rs)"
  local have
  have=$(have_cargo)
  version_ge "$have" "$RUST_MIN" ||
    die "cargo: found ${have:-none}, need >= $RUST_MIN: run rustup update stable"
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    say "rustup component add rustfmt clippy"
    rustup component add rustfmt clippy
  fi
}

has_rustup_wasm_target() {
  command -v rustup >/dev/null &&
    rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}

step_wasm_target() {
  if has_rustup_wasm_target; then return 0; fi
  local how=${TILEWARM_WASM_STD:-}
  if [ -z "$how" ]; then
    if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "${CI:-}" ]; }; then
      how=debian
    else
      how=rustup
    fi
  fi
  case $how in
    rustup)
      say "rustup target add wasm32-unknown-unknown"
      rustup target add wasm32-unknown-unknown ;;
    debian)
      command -v rustup >/dev/null || die "rustup not found: it is needed to select Debian's rustc-web"
      need_deb rustc-web "$RUSTC_WEB_MIN"
      need_deb cargo-web "$RUSTC_WEB_MIN"
      need_deb rust-web-src "$RUSTC_WEB_MIN"
      need_deb lld-19 "$LLD_MIN"
      ls -d /usr/src/rustc-*/library >/dev/null 2>&1 ||
        die "rust-web-src is installed but /usr/src/rustc-*/library is missing"
      if ! rustup toolchain list | grep -q '^debian-web'; then
        say "rustup toolchain link debian-web /usr"
        rustup toolchain link debian-web /usr
      fi
      local have
      have=$(have_rustc_web)
      version_ge "$have" "$RUSTC_WEB_MIN" ||
        die "toolchain debian-web (/usr/bin/rustc): found ${have:-none}, need >= $RUSTC_WEB_MIN" ;;
    *) die "TILEWARM_WASM_STD must be rustup or debian, got '$how'" ;;
  esac
}

step_wasm_bindgen() {
  local want have
  want=$(locked_wasm_bindgen)
  [ -n "$want" ] || die "Cargo.lock has no wasm-bindgen entry"
  have=$(have_wasm_bindgen)
  [ "$have" = "$want" ] && return 0
  say "cargo install wasm-bindgen-cli --version $want${have:+ (found $have)}; takes about 5 minutes"
  # No --locked: the CLI's own lock file pins a crate version the registry may not serve.
  cargo install wasm-bindgen-cli --version "$want"
}

step_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    need_deb nodejs "$NODE_MIN"
    command -v npm >/dev/null || need_deb npm
  fi
  local have
  have=$(have_node)
  version_ge "$have" "$NODE_MIN" || die "node: found $have, need >= $NODE_MIN"
  local stamp=$setup_root/node_modules/.tilewarm-setup want
  want=$(cat "$setup_root/package.json" "$setup_root/package-lock.json" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    say "npm ci (binaryen for wasm-opt, esbuild, typescript)"
    (cd "$setup_root" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}

step_edge() {
  step_node
  local stamp=$setup_root/edge/node_modules/.tilewarm-setup want
  want=$(sha256sum < "$setup_root/edge/package.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x "$setup_root/edge/node_modules/.bin/workerd" ]; then
    # No lock file: workerd is pinned exactly and pins its per-platform binary package
    # exactly, and a lock written on one platform lacks the other platforms' entries.
    say "npm install in edge/ (workerd, pinned)"
    (cd "$setup_root/edge" && npm install --no-package-lock --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}

step_redis() {
  need_deb redis-server "$REDIS_MIN"
  need_deb redis-tools "$REDIS_MIN"
}

step_postgis() {
  need_deb postgresql-15 "$POSTGRES_MIN"
  need_deb postgresql-15-postgis-3 "$POSTGIS_MIN"
}

step_chromium() {
  need_deb chromium "$CHROMIUM_MIN"
  need_deb chromium-driver "$CHROMIUM_MIN"
}

step_fuzz() {
  command -v rustup >/dev/null || die "rustup not found: the fuzz targets need its nightly toolchain"
  local have
  have=$(have_nightly)
  if ! version_ge "$have" "$NIGHTLY_MIN"; then
    say "rustup toolchain install nightly --profile minimal${have:+ (found $have, need >= $NIGHTLY_MIN)}"
    rustup toolchain install nightly --profile minimal ||
      die "nightly: found ${have:-none}, need >= $NIGHTLY_MIN, and rustup could not install it"
    have=$(have_nightly)
    version_ge "$have" "$NIGHTLY_MIN" || die "nightly: found ${have:-none} after rustup, need >= $NIGHTLY_MIN"
  fi
  have=$(have_cargo_fuzz)
  [ "$have" = "$CARGO_FUZZ_VERSION" ] && return 0
  say "cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked${have:+ (found $have)}; takes about 3 minutes"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
}

step_schemathesis() {
  local venv=$setup_root/target/schemathesis-venv
  [ "$(have_schemathesis)" = "$SCHEMATHESIS_VERSION" ] && return 0
  command -v python3 >/dev/null || need_deb python3
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then need_deb python3-venv; fi
  say "pip install schemathesis==$SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
}

# ---- --check ----

check_failed=0
# check_row TOOL FOUND REQUIRED OK: one line of the table; OK is "ok" or a reason.
check_row() {
  local mark=ok
  [ "$4" = ok ] || { mark="SHORT: $4"; check_failed=1; }
  printf 'setup: %-16s %-16s %-30s %s\n' "$1" "${2:-none}" "$3" "$mark"
}
check_min() { # TOOL FOUND MIN
  if version_ge "$2" "$3"; then check_row "$1" "$2" ">= $3" ok
  else check_row "$1" "$2" ">= $3" "below the minimum"; fi
}
check_exact() { # TOOL FOUND WANT
  if [ -n "$2" ] && [ "$2" = "$3" ]; then check_row "$1" "$2" "= $3" ok
  else check_row "$1" "$2" "= $3" "not the pinned version"; fi
}

check_step() {
  case $1 in
    rust)
      check_min cargo "$(have_cargo)" "$RUST_MIN"
      if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
        check_row "rustfmt, clippy" present present ok
      else check_row "rustfmt, clippy" missing present missing; fi ;;
    wasm-target)
      if has_rustup_wasm_target; then
        check_row "wasm32 std" "rustup target" "rustup target or rustc-web" ok
      else
        check_min rustc-web "$(have_rustc_web)" "$RUSTC_WEB_MIN"
        check_min wasm-ld-19 "$(have_lld)" "$LLD_MIN"
      fi ;;
    wasm-bindgen) check_exact wasm-bindgen "$(have_wasm_bindgen)" "$(locked_wasm_bindgen)" ;;
    wasm) check_step wasm-target; check_step wasm-bindgen ;;
    node)
      check_min node "$(have_node)" "$NODE_MIN"
      check_exact "wasm-opt" "$(have_wasm_opt)" "$(want_binaryen)" ;;
    edge) check_exact workerd "$(have_workerd)" "$(want_workerd)" ;;
    redis) check_min redis-server "$(have_redis)" "$REDIS_MIN" ;;
    postgis)
      check_min postgres "$(have_postgres)" "$POSTGRES_MIN"
      check_min postgis "$(have_postgis)" "$POSTGIS_MIN" ;;
    chromium)
      check_min chromium "$(have_chromium)" "$CHROMIUM_MIN"
      check_min chromedriver "$(have_chromedriver)" "$CHROMIUM_MIN" ;;
    fuzz)
      check_min "rust nightly" "$(have_nightly)" "$NIGHTLY_MIN"
      check_exact cargo-fuzz "$(have_cargo_fuzz)" "$CARGO_FUZZ_VERSION" ;;
    schemathesis) check_exact schemathesis "$(have_schemathesis)" "$SCHEMATHESIS_VERSION" ;;
    all) for s in $ALL_STEPS; do check_step "$s"; done ;;
    *) die "unknown step '$1' (steps: $ALL_STEPS all)" ;;
  esac
}

ALL_STEPS="rust wasm-target wasm-bindgen node edge redis postgis chromium fuzz schemathesis"

run_step() {
  case $1 in
    rust) step_rust ;;
    wasm-target) step_wasm_target ;;
    wasm-bindgen) step_wasm_bindgen ;;
    wasm) step_wasm_target; step_wasm_bindgen ;;
    node) step_node ;;
    edge) step_edge ;;
    redis) step_redis ;;
    postgis) step_postgis ;;
    chromium) step_chromium ;;
    fuzz) step_fuzz ;;
    schemathesis) step_schemathesis ;;
    all) for s in $ALL_STEPS; do run_step "$s"; done ;;
    *) die "unknown step '$1' (steps: $ALL_STEPS wasm all)" ;;
  esac
}

setup_main() {
  if [ "${1:-}" = --check ]; then
    shift
    [ $# -gt 0 ] || set -- all
    printf 'setup: %-16s %-16s %-30s %s\n' tool found required status
    for step in "$@"; do check_step "$step"; done
    [ "$check_failed" = 0 ] || { echo "setup: some tools fall short: run scripts/setup.sh $*" >&2; exit 1; }
    return 0
  fi
  [ $# -gt 0 ] || set -- wasm node
  for step in "$@"; do run_step "$step"; done
}

# Sourced (scripts/test-setup.sh): define the functions only.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  export PATH="$(cargo_bin):$PATH"
  setup_main "$@"
fi
