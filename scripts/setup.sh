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
#   node          Node >= NODE_MIN (not in NODE_GAP) and the root package.json's
#                 devDependencies (npm ci): wasm-opt from the npm package binaryen,
#                 esbuild, typescript
#   edge          workerd for the edge worker's tests: edge/package.json's devDependencies
#                 (npm install in edge/, after the node step)
#   redis         redis-server and redis-cli >= REDIS_MIN (Debian's redis-server and
#                 redis-tools), python3 (scripts/redis-cluster.sh picks ports with it) and
#                 the kill executable (procps: tw-soak and the cluster tests signal Redis)
#   chromium      chromium and chromedriver of the same major version, >= CHROMIUM_MIN
#                 (Debian's chromium and chromium-driver) for the browser suites; the
#                 browser is $CHROMIUM, else /usr/bin/chromium, as the tests take it
#   postgis       PostgreSQL >= POSTGRES_MIN with PostGIS (Debian's postgresql-15 and
#                 postgresql-15-postgis-3) where scripts/pg-scratch.sh looks ($PG_BINDIR,
#                 /usr/lib/postgresql/15/bin, PATH), and python3 (its port picker)
#   fuzz          rustup's nightly toolchain and cargo-fuzz (pinned) for fuzz/ (scripts/fuzz.sh)
#   schemathesis  a Python venv in target/schemathesis-venv with schemathesis (pinned)
#   all           every step above
#
# Each tool is checked as the scripts run it, whatever installed it: one at its version is
# left alone. With apt-get (Debian), a missing or short tool is installed or upgraded from
# its Debian packages; without it (macOS, other systems) setup stops and says what to
# install. cargo needs a C compiler as linker (cc, Debian's gcc); the fuzz targets a C++
# one (c++, g++).
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

# A new machine's first minutes are when apt-daily and unattended-upgrades hold dpkg's
# lock: wait for it (up to 5 minutes) rather than fail at once.
apt_get() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"
}

apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] && return 0
  say "apt-get update"
  apt_get update -qq
  apt_updated=1
}

deb_installed() {
  dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
    awk '$3 == "installed" { print $4 }' || true
}

deb_candidate() {
  apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }' || true
}

# need_deb PKG [MIN [HINT]]: PKG installed, at least MIN (default: any version). Refreshes
# the lists and upgrades when the installed version or apt's candidate falls short; stops
# with the package, the version found, the version needed and HINT (default: which Debian
# 12 sources to add) when the registry cannot give it.
need_deb() {
  local pkg=$1 min=${2:-0} installed candidate tried=""
  local hint=${3:-"Add a source that has it (for Debian 12: bookworm-security or bookworm-backports) and run scripts/setup.sh again"}
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
        if ! apt_get install -y -qq "$pkg=$candidate" >"$log" 2>&1; then
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
        die "$pkg: found ${installed:-none}, need >= $min; apt offers ${candidate:-nothing} even after apt-get update: $hint" ;;
    esac
  done
}

# need_tool TOOL MIN HAVE_FN HINT DEB...: TOOL, as the scripts run it (HAVE_FN prints its
# version, empty when absent), at least MIN. Enough already, whatever installed it: nothing
# to do. Else with apt-get the Debian packages DEB... are installed or upgraded to MIN
# (need_deb) and TOOL is checked again; without apt-get, setup stops with HINT (what to
# install by hand).
need_tool() {
  local tool=$1 min=$2 have_fn=$3 hint=$4 have pkg
  shift 4
  have=$("$have_fn")
  version_ge "$have" "$min" && return 0
  command -v apt-get >/dev/null ||
    die "$tool: found ${have:-none}, need >= $min, and there is no apt-get to install it: $hint"
  for pkg in "$@"; do need_deb "$pkg" "$min" "$hint"; done
  have=$("$have_fn")
  version_ge "$have" "$min" ||
    die "$tool: found ${have:-none} although Debian's $* is >= $min: the one the scripts run is another (earlier on PATH, or named by an environment variable); $hint"
}

# need_cmd CMD HINT DEB...: an executable CMD on PATH (a shell builtin of that name does not
# count), with no version to check: else Debian's DEB... with apt-get, or a stop with HINT.
need_cmd() {
  local cmd=$1 hint=$2 pkg
  shift 2
  type -P "$cmd" >/dev/null && return 0
  command -v apt-get >/dev/null || die "$cmd not found, and there is no apt-get to install it: $hint"
  for pkg in "$@"; do need_deb "$pkg"; done
  type -P "$cmd" >/dev/null || die "$cmd not found although Debian's $* is installed: $hint"
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
have_python() { first_word_version python3 --version; }
have_cc() { cc -dumpversion 2>/dev/null | head -1 || true; }
have_cxx() { c++ -dumpversion 2>/dev/null | head -1 || true; }
have_wasm_bindgen_test_runner() {
  PATH="$(cargo_bin):$PATH" first_word_version wasm-bindgen-test-runner --version
}
have_wasm_opt() { "$setup_root/node_modules/.bin/wasm-opt" --version 2>/dev/null | grep -oE '[0-9]+' | head -1 || true; }
have_workerd() {
  node -p 'require(process.argv[1]).version' "$setup_root/edge/node_modules/workerd/package.json" 2>/dev/null || true
}
have_redis() { redis-server --version 2>/dev/null | grep -oE 'v=[0-9.]+' | cut -c3- || true; }
have_redis_cli() { first_word_version redis-cli --version; }
# PostgreSQL where scripts/pg-scratch.sh takes it: $PG_BINDIR, else Debian's
# /usr/lib/postgresql/15/bin, else the pg_ctl on PATH.
pg_bindir() {
  local d=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
  [ -x "$d/pg_ctl" ] || d=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")
  echo "$d"
}
have_postgres() { first_word_version "$(pg_bindir)/postgres" --version; }
# The PostGIS installed for that PostgreSQL: the version of its extension script.
have_postgis() {
  local share
  share=$("$(pg_bindir)/pg_config" --sharedir 2>/dev/null || echo /usr/share/postgresql/15)
  ls "$share"/extension/postgis--*.sql 2>/dev/null |
    grep -oE 'postgis--[0-9]+(\.[0-9]+)+\.sql' | grep -oE '[0-9]+(\.[0-9]+)+' | sort -V | tail -1 || true
}
# The browser and the driver the tests use: $CHROMIUM (else /usr/bin/chromium, as
# js/test/browser/support.mjs, www/test/e2e.mjs and scripts/test-web.sh take it) and
# $CHROMEDRIVER (else the chromedriver on PATH).
chromium_bin() { echo "${CHROMIUM:-/usr/bin/chromium}"; }
have_chromium() { first_word_version "$(chromium_bin)" --version; }
have_chromedriver() { first_word_version "${CHROMEDRIVER:-chromedriver}" --version; }
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

# files_hash FILE...: one hash of the files' contents, for the stamps that say when to run
# npm ci again (sha256sum, else macOS's shasum).
files_hash() {
  if command -v sha256sum >/dev/null; then cat "$@" | sha256sum; else cat "$@" | shasum -a 256; fi |
    cut -d' ' -f1
}

# ---- steps ----

step_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first (https://rustup.rs)"
  need_tool "cc (C compiler, cargo's linker)" 0 have_cc \
    "install a C compiler (Debian: gcc; macOS: xcode-select --install)" gcc
  local have
  have=$(have_cargo)
  version_ge "$have" "$RUST_MIN" ||
    die "cargo: found ${have:-none}, need >= $RUST_MIN: run rustup update stable"
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null ||
      die "cargo fmt or cargo clippy missing, and no rustup to add them: install rustfmt and clippy for $(command -v cargo)"
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
      command -v rustup >/dev/null ||
        die "no wasm32 std: the build needs rustup's wasm32-unknown-unknown target (install Rust with rustup, https://rustup.rs), or on Debian run setup as root for rustc-web"
      say "rustup target add wasm32-unknown-unknown"
      rustup target add wasm32-unknown-unknown ||
        die "rustup target add wasm32-unknown-unknown failed (above); on Debian, TILEWARM_WASM_STD=debian (as root) takes Debian's rustc-web instead" ;;
    debian)
      command -v rustup >/dev/null || die "rustup not found: it is needed to select Debian's rustc-web"
      need_deb rustc-web "$RUSTC_WEB_MIN"
      need_deb cargo-web "$RUSTC_WEB_MIN"
      need_deb rust-web-src "$RUSTC_WEB_MIN"
      need_deb lld-19 "$LLD_MIN"
      if ! rustup toolchain list | grep -q '^debian-web'; then
        say "rustup toolchain link debian-web /usr"
        rustup toolchain link debian-web /usr
      fi
      local have
      have=$(have_rustc_web)
      version_ge "$have" "$RUSTC_WEB_MIN" ||
        die "toolchain debian-web (/usr/bin/rustc): found ${have:-none}, need >= $RUSTC_WEB_MIN"
      # -Zbuild-std compiles std from the sysroot's library sources (rust-web-src's).
      local src
      src=$(rustup run debian-web rustc --print sysroot)/lib/rustlib/src/rust/library
      [ -f "$src/std/Cargo.toml" ] ||
        die "rust-web-src is installed but $src/std is missing: -Zbuild-std needs it (apt-get install --reinstall rust-web-src)" ;;
    *) die "TILEWARM_WASM_STD must be rustup or debian, got '$how'" ;;
  esac
}

# wasm-bindgen (the package build) and wasm-bindgen-test-runner (scripts/test-web.sh), both
# from wasm-bindgen-cli, at the crate's version.
step_wasm_bindgen() {
  local want have runner
  want=$(locked_wasm_bindgen)
  [ -n "$want" ] || die "Cargo.lock has no wasm-bindgen entry"
  have=$(have_wasm_bindgen)
  runner=$(have_wasm_bindgen_test_runner)
  [ "$have" = "$want" ] && [ "$runner" = "$want" ] && return 0
  say "cargo install wasm-bindgen-cli --version $want${have:+ (found $have)}; takes about 5 minutes"
  # No --locked: the CLI's own lock file pins a crate version the registry may not serve.
  # --force: replaces a wasm-bindgen-test-runner left at another version.
  cargo install --force wasm-bindgen-cli --version "$want" ||
    die "cargo install wasm-bindgen-cli --version $want failed (above): it builds from crates.io"
}

# node_ok V: V at least NODE_MIN and not in NODE_GAP.
node_ok() {
  local from to
  read -r from to <<<"$NODE_GAP"
  version_ge "$1" "$NODE_MIN" && { ! version_ge "$1" "$from" || version_ge "$1" "$to"; }
}
node_hint="install Node >= $NODE_MIN, not in [${NODE_GAP/ /, }) (NodeSource's node_22.x packages, nvm, or nodejs.org; Debian 12's own nodejs is 18)"

step_node() {
  need_tool node "$NODE_MIN" have_node "$node_hint" nodejs
  local have
  have=$(have_node)
  node_ok "$have" || die "node: found $have, which vite (the browser tests) does not run on: $node_hint"
  if ! command -v npm >/dev/null; then
    command -v apt-get >/dev/null || die "npm not found beside node $have: install the npm of that Node"
    need_deb npm
  fi
  local stamp=$setup_root/node_modules/.tilewarm-setup want
  want=$(files_hash "$setup_root/package.json" "$setup_root/package-lock.json")
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    say "npm ci (binaryen for wasm-opt, esbuild, typescript)"
    (cd "$setup_root" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}

step_edge() {
  step_node
  local stamp=$setup_root/edge/node_modules/.tilewarm-setup want
  want=$(files_hash "$setup_root/edge/package.json")
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x "$setup_root/edge/node_modules/.bin/workerd" ]; then
    # No lock file: workerd is pinned exactly and pins its per-platform binary package
    # exactly, and a lock written on one platform lacks the other platforms' entries.
    say "npm install in edge/ (workerd, pinned)"
    (cd "$setup_root/edge" && npm install --no-package-lock --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}

step_python() {
  need_tool python3 "$PYTHON_MIN" have_python "install Python >= $PYTHON_MIN as python3" python3
}

step_redis() {
  local hint="install Redis >= $REDIS_MIN (server and redis-cli; macOS: brew install redis)"
  need_tool redis-server "$REDIS_MIN" have_redis "$hint" redis-server
  need_tool redis-cli "$REDIS_MIN" have_redis_cli "$hint" redis-tools
  # The soak test and the cluster tests signal redis-server with the kill executable
  # (Debian's procps, which minimal images leave out).
  need_cmd kill "install a kill executable (procps)" procps
  step_python
}

step_postgis() {
  local hint="install PostgreSQL >= $POSTGRES_MIN and PostGIS >= $POSTGIS_MIN and set PG_BINDIR to the directory holding their pg_ctl and postgres"
  need_tool postgres "$POSTGRES_MIN" have_postgres "$hint" postgresql-15
  need_tool postgis "$POSTGIS_MIN" have_postgis "$hint" postgresql-15-postgis-3
  step_python
}

step_chromium() {
  local hint="install Chromium or Chrome >= $CHROMIUM_MIN and the chromedriver of the same version, and set CHROMIUM=/path/to/the/browser (and CHROMEDRIVER= if it is not on PATH)"
  need_tool "chromium ($(chromium_bin))" "$CHROMIUM_MIN" have_chromium "$hint" chromium
  need_tool chromedriver "$CHROMIUM_MIN" have_chromedriver "$hint" chromium-driver
  local browser driver
  browser=$(have_chromium)
  driver=$(have_chromedriver)
  [ "${browser%%.*}" = "${driver%%.*}" ] ||
    die "chromium $browser and chromedriver $driver: a chromedriver drives only its own major version; $hint"
}

step_fuzz() {
  command -v rustup >/dev/null || die "rustup not found: the fuzz targets need its nightly toolchain"
  need_tool "c++ (C++ compiler, for libFuzzer)" 0 have_cxx \
    "install a C++ compiler (Debian: g++; macOS: xcode-select --install)" g++
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
  step_python
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then need_deb python3-venv; fi
  say "pip install schemathesis==$SCHEMATHESIS_VERSION into $venv"
  # --clear: a venv left by a python3 that is gone (or another version) is made anew.
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
}

# ---- --check ----

check_failed=0
# check_row TOOL FOUND REQUIRED OK: one line of the table; OK is "ok" or a reason.
check_row() {
  local mark=ok
  [ "$4" = ok ] || { mark="SHORT: $4"; check_failed=1; }
  printf 'setup: %-24s %-16s %-30s %s\n' "$1" "${2:-none}" "$3" "$mark"
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
      check_min "cc" "$(have_cc)" 0
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
    wasm-bindgen)
      check_exact wasm-bindgen "$(have_wasm_bindgen)" "$(locked_wasm_bindgen)"
      check_exact wasm-bindgen-test-runner "$(have_wasm_bindgen_test_runner)" "$(locked_wasm_bindgen)" ;;
    wasm) check_step wasm-target; check_step wasm-bindgen ;;
    node)
      local node
      node=$(have_node)
      if node_ok "$node"; then check_row node "$node" ">= $NODE_MIN, not [${NODE_GAP/ /, })" ok
      else check_row node "$node" ">= $NODE_MIN, not [${NODE_GAP/ /, })" "outside the range"; fi
      check_exact "wasm-opt" "$(have_wasm_opt)" "$(want_binaryen)" ;;
    edge) check_exact workerd "$(have_workerd)" "$(want_workerd)" ;;
    redis)
      check_min redis-server "$(have_redis)" "$REDIS_MIN"
      check_min redis-cli "$(have_redis_cli)" "$REDIS_MIN"
      if type -P kill >/dev/null; then check_row kill "$(type -P kill)" present ok
      else check_row kill "" present missing; fi
      check_min python3 "$(have_python)" "$PYTHON_MIN" ;;
    postgis)
      check_min postgres "$(have_postgres)" "$POSTGRES_MIN"
      check_min postgis "$(have_postgis)" "$POSTGIS_MIN" ;;
    chromium)
      local browser driver
      browser=$(have_chromium)
      driver=$(have_chromedriver)
      check_min chromium "$browser" "$CHROMIUM_MIN"
      if [ -n "$driver" ] && [ "${browser%%.*}" = "${driver%%.*}" ]; then
        check_row chromedriver "$driver" "chromium's major version" ok
      else check_row chromedriver "$driver" "chromium's major version" "not chromium's major version"; fi ;;
    fuzz)
      check_min "c++" "$(have_cxx)" 0
      check_min "rust nightly" "$(have_nightly)" "$NIGHTLY_MIN"
      check_exact cargo-fuzz "$(have_cargo_fuzz)" "$CARGO_FUZZ_VERSION" ;;
    schemathesis)
      check_exact schemathesis "$(have_schemathesis)" "$SCHEMATHESIS_VERSION" ;;
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
    printf 'setup: %-24s %-16s %-30s %s\n' tool found required status
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
