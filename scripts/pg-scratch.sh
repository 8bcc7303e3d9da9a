#!/usr/bin/env bash
# A throwaway PostgreSQL 15 with PostGIS in a directory of its own, on a loopback port:
# for the PostGIS origin's tests (server/tests/it/postgis.rs), its benchmark and
# `make demo-postgis`. Nothing outside DIR is touched; no system service is used.
#
#   scripts/pg-scratch.sh start DIR [PORT]   initdb (first time), start, print the URL
#                                            (postgres://postgres@127.0.0.1:PORT/postgres)
#   scripts/pg-scratch.sh stop DIR           stop (fast shutdown); DIR is kept
#   scripts/pg-scratch.sh destroy DIR        stop (immediate) and remove DIR
#
# PORT defaults to a free one (kept in DIR/port, so start after stop reuses it).
# PostgreSQL refuses to run as root: as root (CI), DIR is given to the `postgres` system
# user (created by Debian's package) and initdb/pg_ctl run as it through runuser.
# Binaries: PG_BINDIR, else /usr/lib/postgresql/15/bin (Debian), else PATH.
# scripts/setup.sh postgis installs the packages.
set -euo pipefail

die() { printf 'pg-scratch: %s\n' "$*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: $0 start|stop|destroy DIR [PORT]"
cmd=$1
dir=$2
bindir=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
[ -x "$bindir/pg_ctl" ] || bindir=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")
[ -x "$bindir/pg_ctl" ] ||
  die "pg_ctl not found (looked in ${PG_BINDIR:-/usr/lib/postgresql/15/bin} and PATH): run scripts/setup.sh postgis"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case $cmd in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || die "running as root needs the postgres system user (scripts/setup.sh postgis)"
      chown postgres: "$dir"
    fi
    port=${3:-$(cat "$dir/port" 2>/dev/null || free_port)}
    echo "$port" > "$dir/port"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$bindir/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    # Loopback only; durability off (a scratch database); the socket in DIR.
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
      start >/dev/null ||
      { tail -20 "$dir/postgres.log" >&2; die "pg_ctl start failed"; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -f "$dir/data/PG_VERSION" ] || exit 0
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  destroy)
    if [ -f "$dir/data/PG_VERSION" ]; then
      as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *) die "unknown command '$cmd' (start, stop, destroy)" ;;
esac
