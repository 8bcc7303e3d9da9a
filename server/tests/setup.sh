#!/usr/bin/env bash
# Installs what the server's suites need and a fresh machine lacks: redis-server, and
# redis-benchmark (Debian's redis-tools, which redis-server depends on). Idempotent.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
command -v redis-server >/dev/null
