#!/usr/bin/env bash
# Installs what the server's suites need and a fresh machine lacks: redis-server and
# redis-tools (redis-cli, redis-benchmark) at the versions scripts/versions.sh names.
# Idempotent.
set -euo pipefail
exec "$(dirname "$0")/../../scripts/setup.sh" redis
