#!/usr/bin/env bash
# A throwaway Redis Cluster of 3 masters + 3 replicas on loopback ports, in a directory of
# its own: for the server's cluster tests (server/tests/it/cluster.rs) and the cluster rows
# of the server benchmark. Nothing outside DIR is touched; no system service is used.
#
#   scripts/redis-cluster.sh start DIR     start 6 nodes, create the cluster, wait until
#                                          every slot is served, every replica is in sync
#                                          and every node's CLUSTER SLOTS lists a replica
#                                          for every slot range; print the URL
#                                          (redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...)
#   scripts/redis-cluster.sh masters DIR   the master nodes now, one `PORT PID` a line
#   scripts/redis-cluster.sh healthy DIR   exit 0 when 3 masters answer and every node that
#                                          answers reports cluster_state:ok (after a
#                                          failover: the replica took over)
#   scripts/redis-cluster.sh stop DIR      kill the nodes (by their pid files), remove DIR
#
# Ports: each node gets a client port and a cluster bus port (--cluster-port), both free,
# from 10000 up to the kernel's ephemeral range (net.ipv4.ip_local_port_range), so that no
# outgoing connection of a test running beside it can take one between the check and
# redis-server's bind; a node that still fails to bind is started again on new ports
# (up to 5 tries). Where the ephemeral range starts below 11000 (containers often have
# `1024 65535`) the ports are taken from 10000-10999, inside it: `start` says so on stderr
# (one line) and the retries are what covers a port taken meanwhile. Client ports are kept
# in DIR/ports.
# No persistence (--save '' --appendonly no); --cluster-node-timeout 1000 ms so a killed
# master is replaced by its replica within a few seconds (REDIS_CLUSTER_NODE_TIMEOUT_MS in
# the environment of `start` sets another: a long one keeps a killed master from being
# flagged failed, so a test can hold the cluster in that window).
#
# Ready means more than cluster_state:ok and master_link_status:up. Redis 7 leaves a replica
# out of CLUSTER SLOTS while its replication offset, as the other nodes last heard it by
# gossip, is 0, and a fresh master's offset stays 0 until it replicates something: its
# first write, or its ping to the replicas every --repl-ping-replica-period (10 s by
# default, 1 s here). A client that read the topology in that window (up to ~10 s after
# `create`, longer on a loaded machine) saw no replica at all; `start` waits until every
# node lists one for every range. Debian's redis-server and
# redis-cli (scripts/setup.sh redis, or server/tests/setup.sh) are needed.
set -euo pipefail

die() { printf 'redis-cluster: %s\n' "$*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 start|masters|healthy|stop DIR"
cmd=$1
dir=$2
NODES=6

# N pairs "PORT BUSPORT" of free loopback ports below the ephemeral range, one a line
# (from 10000-10999 when it starts lower; with a second argument `warn`, one line on stderr
# says so).
free_ports() {
  python3 - "$@" <<'EOF'
import random, socket, sys
want = int(sys.argv[1])
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
if low < 11000 and sys.argv[2:] == ["warn"]:
    print(f"redis-cluster: the ephemeral port range (net.ipv4.ip_local_port_range) starts at {low}, "
          "so the ports taken here (10000-10999) may be inside it and collide with an outgoing "
          "connection (a node whose port was taken is started again on new ones)", file=sys.stderr)
low = max(low, 11000)
out, held = [], []
while len(out) < want * 2:
    p = random.randrange(10000, low)
    if p in out:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    held.append(s)
    out.append(p)
for i in range(0, len(out), 2):
    print(out[i], out[i + 1])
EOF
}

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

# Waits until `cond` (a shell command) succeeds, at most $1 seconds.
wait_for() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}

bind_failed() { grep -q 'Address already in use' "$dir/$1/log" 2>/dev/null; }

# The node on port $1 answers PING, or its log says the port was taken.
node_settled() {
  bind_failed "$1" || cli "$1" ping
}

cluster_ok() {
  local p
  for p in $(cat "$dir/ports"); do
    cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

replicas_in_sync() {
  local p role n=0
  for p in $(cat "$dir/ports"); do
    role=$(cli "$p" info replication 2>/dev/null) || return 1
    if grep -q '^role:slave' <<<"$role"; then
      grep -q '^master_link_status:up' <<<"$role" || return 1
      grep -q '^master_sync_in_progress:0' <<<"$role" || return 1
      n=$((n + 1))
    fi
  done
  [ "$n" -eq 3 ]
}

# The ports CLUSTER SLOTS on the node on port $1 lists, one slot range a line: the master's
# port first, then its replicas'.
slot_ports() {
  redis-cli -h 127.0.0.1 -p "$1" --json cluster slots 2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    print(" ".join(str(n[1]) for n in r[2:]))
'
}

# Every node lists 3 slot ranges, each with a master and a replica.
replicas_listed() {
  local p ranges
  for p in $(cat "$dir/ports"); do
    ranges=$(slot_ports "$p") || return 1
    [ "$(wc -l <<<"$ranges")" -eq 3 ] || return 1
    ! grep -qvE '^[0-9]+ [0-9]+' <<<"$ranges" || return 1
  done
}

case $cmd in
  start)
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
      die "redis-server and redis-cli are needed (scripts/setup.sh redis)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ ! -f "$dir/ports" ] || die "$dir already holds a cluster (stop it first)"
    : > "$dir/ports"
    while read -r -u 3 p bus; do
      for try in 1 2 3 4 5; do
        mkdir -p "$dir/$p"
        redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/$p" \
          --cluster-enabled yes --cluster-port "$bus" \
          --cluster-config-file "$dir/$p/nodes.conf" \
          --cluster-node-timeout "${REDIS_CLUSTER_NODE_TIMEOUT_MS:-1000}" \
          --repl-ping-replica-period 1 \
          --save '' --appendonly no \
          --daemonize yes --pidfile "$dir/$p/pid" --logfile "$dir/$p/log" ||
          die "redis-server on port $p did not start"
        wait_for 10 node_settled "$p" || true
        if ! bind_failed "$p" && cli "$p" ping >/dev/null 2>&1; then
          echo "$p" >> "$dir/ports"
          break
        fi
        bind_failed "$p" && [ "$try" -lt 5 ] ||
          { tail -5 "$dir/$p/log" >&2; die "node $p does not answer PING"; }
        # Taken between the check and the bind: the same node again on new ports.
        [ ! -f "$dir/$p/pid" ] || kill -9 "$(cat "$dir/$p/pid")" 2>/dev/null || true
        rm -rf "${dir:?}/$p"
        read -r p bus < <(free_ports 1)
      done
    done 3< <(free_ports $NODES warn)
    ports=$(tr '\n' ' ' < "$dir/ports")
    echo "${ports% }" > "$dir/ports"
    # shellcheck disable=SC2046
    redis-cli --cluster create $(sed 's/[0-9]\+/127.0.0.1:&/g' "$dir/ports") \
      --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
      { cat "$dir/create.log" >&2; die "redis-cli --cluster create failed"; }
    wait_for 60 cluster_ok || die "cluster_state did not become ok on every node within 60 s"
    wait_for 60 replicas_in_sync || die "the replicas did not sync within 60 s"
    wait_for 60 replicas_listed ||
      die "not every node's CLUSTER SLOTS listed a replica for every slot range within 60 s"
    echo "redis+cluster://$(sed 's/[0-9]\+/127.0.0.1:&/g; s/ /,/g' "$dir/ports")"
    ;;
  masters)
    for p in $(cat "$dir/ports"); do
      if cli "$p" role 2>/dev/null | head -1 | grep -qx master; then
        echo "$p $(cat "$dir/$p/pid")"
      fi
    done
    ;;
  healthy)
    live=0 masters=0
    for p in $(cat "$dir/ports"); do
      role=$(cli "$p" role 2>/dev/null | head -1) || continue
      [ -n "$role" ] || continue
      live=$((live + 1))
      [ "$role" != master ] || masters=$((masters + 1))
      cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || exit 1
    done
    [ "$masters" -eq 3 ] && [ "$live" -ge 3 ]
    ;;
  stop)
    [ -d "$dir" ] || exit 0
    for pidfile in "$dir"/*/pid; do
      [ -f "$pidfile" ] || continue
      kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -rf "$dir"
    ;;
  *) die "unknown command $cmd (start|masters|healthy|stop)" ;;
esac
