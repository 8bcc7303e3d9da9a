#!/usr/bin/env bash
# The soak test: tw-soak drives tilewarm-server (Redis tier) at a fixed rate for SECONDS
# while the origin stalls and redis-server is killed and restarted; passes with zero
# failed requests, a bounded RSS and recovery from degraded mode (no timing thresholds).
# Writes target/soak/soak.md. Extra arguments go to tw-soak (--rate, --stall-ms, ...).
#
#   server/soak/run.sh [SECONDS]        (default 60; `make test` runs a 12 s variant)
#
# PROFILE picks the cargo profile of both binaries: `server` (the default, optimised as
# `make bench` builds it) or `dev` (the debug build `cargo test` already made; `make
# soak-smoke` uses it with a small city and a low rate).
set -euo pipefail
cd "$(dirname "$0")/../.."
server/tests/setup.sh
seconds=${1:-60}
[ $# -gt 0 ] && shift
profile=${PROFILE:-server}
dir=debug
[ "$profile" = dev ] || dir=$profile
cargo build --quiet --profile "$profile" -p tilewarm-server --bins
exec "target/$dir/tw-soak" --server-bin "target/$dir/tilewarm-server" --seconds "$seconds" "$@"
