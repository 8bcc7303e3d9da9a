#!/usr/bin/env bash
# The overload benchmark (issue 15): tw-overload measures tilewarm-server's capacity (Redis
# tier, closed loop), then offers it 0.25x, 1x, 2x and 4x that in open loops of SECONDS each
# and reports accepted and refused requests, their p99s and the peak RSS. Writes
# target/bench/overload.md. Extra arguments go to tw-overload (e.g.
# --server-arg=--max-queue=16).
#
#   server/soak/overload.sh [SECONDS]       (default 15 per phase)
#
# PROFILE picks the cargo profile of both binaries: `server` (the default, optimised as
# `make bench` builds it) or `dev` (the debug build `cargo test` already made).
set -euo pipefail
cd "$(dirname "$0")/../.."
server/tests/setup.sh
seconds=${1:-15}
[ $# -gt 0 ] && shift
profile=${PROFILE:-server}
dir=debug
[ "$profile" = dev ] || dir=$profile
cargo build --quiet --profile "$profile" -p tilewarm-server --bins
exec "target/$dir/tw-overload" --server-bin "target/$dir/tilewarm-server" --seconds "$seconds" "$@"
