#!/usr/bin/env bash
# Runs a cargo command for wasm32-unknown-unknown, the way this machine can:
#   - rustup's wasm32 target installed (a usual laptop): plain cargo;
#   - otherwise Debian's rustc-web, linked as the rustup toolchain `debian-web` by
#     `scripts/setup.sh wasm-target`, compiling std from rust-web-src with -Zbuild-std
#     and linking with wasm-ld-19.
# Usage: scripts/wasm-cargo.sh build --lib [--release] [--features wasm]
#        scripts/wasm-cargo.sh --std     prints which of the two this machine uses:
#                                        `rustup` or `build-std`
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 CARGO_SUBCOMMAND [ARGS...] | --std" >&2; exit 2; }
rustup_std=""
if command -v rustup >/dev/null &&
  rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  rustup_std=1
fi
if [ "$1" = --std ]; then
  if [ -n "$rustup_std" ]; then echo rustup; else echo build-std; fi
  exit 0
fi
sub=$1
shift
[ -z "$rustup_std" ] || exec cargo "$sub" --target wasm32-unknown-unknown "$@"
if ! rustup toolchain list 2>/dev/null | grep -q '^debian-web'; then
  echo "wasm-cargo: no wasm32 std found: run scripts/setup.sh wasm-target" >&2
  exit 1
fi
# The flags below (-Zbuild-std-features, -Zpanic-immediate-abort, -Cpanic=immediate-abort)
# are known from RUSTC_WEB_MIN on: never hand them to an older toolchain.
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
have=$(have_rustc_web)
if ! version_ge "$have" "$RUSTC_WEB_MIN"; then
  echo "wasm-cargo: toolchain debian-web is rustc ${have:-unknown}, need >= $RUSTC_WEB_MIN: run scripts/setup.sh wasm-target (it refreshes apt's lists and upgrades rustc-web)" >&2
  exit 1
fi
export RUSTUP_TOOLCHAIN=debian-web RUSTC_BOOTSTRAP=1
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19
extra=()
case " $* " in
  *" --profile wasm "* | *" --profile wasm-edge "*)
    # The npm package's build: since std is compiled here anyway, compile it to abort
    # without formatting a panic message (about 7% smaller gzipped; nothing in the bindings
    # panics on input, and a panic had no message in the browser before either), and
    # without panic locations (file names and lines nothing could print).
    export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none"
    export CARGO_PROFILE_WASM_PANIC=immediate-abort CARGO_PROFILE_WASM_EDGE_PANIC=immediate-abort
    extra=(-Zpanic-immediate-abort)
    # The browser's wasm only: std's size-optimised variants (its sorts, for one), about
    # 0.4 KB less gzipped; the edge wasm is built for speed.
    case " $* " in *" --profile wasm "*) extra+=(-Zbuild-std-features=optimize_for_size) ;; esac ;;
esac
exec cargo "$sub" --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort "${extra[@]}" "$@"
