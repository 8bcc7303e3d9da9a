#!/usr/bin/env bash
# The server's test suite: installs redis-server and PostgreSQL + PostGIS if needed, then runs
# the unit and loopback integration tests with both required (missing fails, not skips).
# Each Redis test starts its own redis-server on a free 127.0.0.1 port and stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
server/tests/setup.sh
export TILEWARM_REQUIRE_REDIS=1 TILEWARM_REQUIRE_POSTGRES=1
exec cargo test -p tilewarm-server "$@"
