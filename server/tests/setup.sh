#!/usr/bin/env bash
# Installs what the server's suites need and a fresh machine lacks: redis-server and
# redis-tools (redis-cli, redis-benchmark), PostgreSQL 15 and PostGIS 3 (the PostGIS
# origin's tests), at the versions scripts/versions.sh names. Idempotent.
set -euo pipefail
exec "$(dirname "$0")/../../scripts/setup.sh" redis postgis
