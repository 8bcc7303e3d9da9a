#!/usr/bin/env bash
# The server's test suite: installs redis-server if needed, then runs the unit and loopback
# integration tests with Redis required (a missing redis-server fails instead of skipping).
# Each Redis test starts its own redis-server on a free 127.0.0.1 port and stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
server/tests/setup.sh
export TILEWARM_REQUIRE_REDIS=1
exec cargo test -p tilewarm-server "$@"
