#!/usr/bin/env bash
# Installs what the build and the test suites need. Idempotent, and quick when everything
# is already there; it says what it installs.
#
#   scripts/setup.sh [STEP...]      (no step: wasm node)
#
# Steps:
#   rust          cargo, rustfmt and clippy are present
#   wasm-target   a std for wasm32-unknown-unknown: rustup's target when installed; else
#                 Debian's rustc-web + rust-web-src + lld-19, linked as the rustup
#                 toolchain `debian-web` (std is then built with -Zbuild-std, see
#                 scripts/wasm-cargo.sh)
#   wasm-bindgen  wasm-bindgen-cli at exactly the version of wasm-bindgen in Cargo.lock
#   wasm          wasm-target + wasm-bindgen
#   node          Node >= 18 and the root package.json's devDependencies (npm ci):
#                 wasm-opt from the npm package binaryen, typescript
#   edge          workerd for the edge worker's tests: edge/package.json's devDependencies
#                 (npm install in edge/, after the node step)
#   redis         Debian's redis-server (for suites that need it)
#   chromium      Debian's chromium (for browser suites)
#   fuzz          rustup's nightly toolchain and cargo-fuzz (pinned) for fuzz/ (scripts/fuzz.sh)
#   schemathesis  a Python venv in target/schemathesis-venv with schemathesis (pinned)
#   all           every step above
#
# TILEWARM_WASM_STD=rustup|debian forces how wasm-target gets a wasm32 std. By default a
# machine without rustup's wasm32 target uses Debian's packages when apt-get is there and
# we are root (or CI is set), and `rustup target add` otherwise (a laptop).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

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

# Installs those of the given Debian packages that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and there is no apt-get: install them by hand"
  # Refresh the package lists only when apt does not know a package yet (a fresh machine);
  # if the lists are merely stale, the install fails and is retried after an update.
  for p in "${missing[@]}"; do
    apt-cache show "$p" >/dev/null 2>&1 || { apt_update; break; }
  done
  say "apt-get install ${missing[*]}"
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}")
  if ! as_root "${install[@]}"; then
    [ -n "$apt_updated" ] && die "apt-get install ${missing[*]} failed"
    apt_update
    as_root "${install[@]}"
  fi
}

step_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
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
      apt_install rustc-web cargo-web rust-web-src lld-19
      ls -d /usr/src/rustc-*/library >/dev/null 2>&1 ||
        die "rust-web-src is installed but /usr/src/rustc-*/library is missing"
      if ! rustup toolchain list | grep -q '^debian-web'; then
        say "rustup toolchain link debian-web /usr"
        rustup toolchain link debian-web /usr
      fi ;;
    *) die "TILEWARM_WASM_STD must be rustup or debian, got '$how'" ;;
  esac
}

# The version of the wasm-bindgen crate that Cargo.lock pins.
locked_wasm_bindgen() {
  awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/^version = "|"$/, ""); print; exit }' Cargo.lock
}

step_wasm_bindgen() {
  local want have
  want=$(locked_wasm_bindgen)
  [ -n "$want" ] || die "Cargo.lock has no wasm-bindgen entry"
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
  [ "$have" = "$want" ] && return 0
  say "cargo install wasm-bindgen-cli --version $want${have:+ (found $have)}; takes about 5 minutes"
  # No --locked: the CLI's own lock file pins a crate version the registry may not serve.
  cargo install wasm-bindgen-cli --version "$want"
}

step_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 18 ] || die "Node >= 18 is needed, found $(node --version)"
  local stamp=node_modules/.tilewarm-setup want
  want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    say "npm ci (binaryen for wasm-opt, typescript)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
  fi
}

step_edge() {
  step_node
  local stamp=edge/node_modules/.tilewarm-setup want
  want=$(sha256sum < edge/package.json | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x edge/node_modules/.bin/workerd ]; then
    # No lock file: workerd is pinned exactly and pins its per-platform binary package
    # exactly, and a lock written on one platform lacks the other platforms' entries.
    say "npm install in edge/ (workerd, pinned)"
    (cd edge && npm install --no-package-lock --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}

step_redis() { apt_install redis-server; }

CARGO_FUZZ_VERSION=0.13.2
step_fuzz() {
  command -v rustup >/dev/null || die "rustup not found: the fuzz targets need its nightly toolchain"
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    say "rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal
  fi
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  local have
  have=$(cargo fuzz --version 2>/dev/null | awk '{print $2}' || true)
  [ "$have" = "$CARGO_FUZZ_VERSION" ] && return 0
  say "cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked${have:+ (found $have)}; takes about 3 minutes"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
}

SCHEMATHESIS_VERSION=4.32.5
step_schemathesis() {
  local venv=target/schemathesis-venv
  if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" = "$SCHEMATHESIS_VERSION" ]; then
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
  say "pip install schemathesis==$SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
}
step_chromium() { apt_install chromium; }

[ $# -gt 0 ] || set -- wasm node
for step in "$@"; do
  case $step in
    rust) step_rust ;;
    wasm-target) step_wasm_target ;;
    wasm-bindgen) step_wasm_bindgen ;;
    wasm) step_wasm_target; step_wasm_bindgen ;;
    node) step_node ;;
    edge) step_edge ;;
    redis) step_redis ;;
    chromium) step_chromium ;;
    fuzz) step_fuzz ;;
    schemathesis) step_schemathesis ;;
    all) step_rust; step_wasm_target; step_wasm_bindgen; step_node; step_edge; step_redis; step_chromium; step_fuzz; step_schemathesis ;;
    *) die "unknown step '$step' (steps: rust wasm-target wasm-bindgen wasm node edge redis chromium fuzz schemathesis all)" ;;
  esac
done
