#!/usr/bin/env bash
# Tests scripts/setup.sh's version logic without a new machine: the version comparison
# and the decision to refresh apt's lists, fed with real Debian version strings, and the
# whole need_deb flow against a fake apt (apt-get, apt-cache and dpkg-query on PATH) whose
# lists are stale: old candidate before `apt-get update`, new one after.
#
#   scripts/test-setup.sh          (make test runs it; no root, no network)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
set +e

failures=0 passes=0
pass() { passes=$((passes + 1)); }
fail() { failures=$((failures + 1)); printf 'FAIL: %s\n' "$*" >&2; }
expect_eq() { # WHAT GOT WANT
  if [ "$2" = "$3" ]; then pass; else fail "$1: got '$2', want '$3'"; fi
}
ge() { if version_ge "$1" "$2"; then echo yes; else echo no; fi; }

# --- upstream_version
expect_eq "upstream of rustc-web (bookworm/main)" "$(upstream_version 1.85.0+dfsg3-1~deb12u3)" 1.85.0
expect_eq "upstream of rustc-web (bookworm-security)" "$(upstream_version 1.96.0+dfsg1-1~deb12u2)" 1.96.0
expect_eq "upstream with an epoch (redis)" "$(upstream_version 5:7.0.15-1~deb12u7)" 7.0.15
expect_eq "upstream with an epoch (lld)" "$(upstream_version 1:19.1.7-3~deb12u1)" 19.1.7
expect_eq "upstream of node --version" "$(upstream_version v20.20.2)" 20.20.2
expect_eq "upstream of a bare number" "$(upstream_version 132)" 132
expect_eq "upstream of chromium" "$(upstream_version 148.0.7778.167-1~deb12u1)" 148.0.7778.167
expect_eq "upstream of nothing" "$(upstream_version '')" ""
expect_eq "upstream of words" "$(upstream_version 'not found')" ""

# --- version_ge
expect_eq "1.85 Debian < 1.96" "$(ge 1.85.0+dfsg3-1~deb12u3 1.96.0)" no
expect_eq "1.96 Debian >= 1.96" "$(ge 1.96.0+dfsg1-1~deb12u2 1.96.0)" yes
expect_eq "1.97 >= 1.96" "$(ge 1.97.0-nightly 1.96.0)" yes
expect_eq "numbers, not text: 1.100 > 1.96" "$(ge 1.100.0 1.96.0)" yes
expect_eq "numbers, not text: 10.0 > 9.9" "$(ge 10.0 9.9)" yes
expect_eq "numbers, not text: 9.10 < 10.0" "$(ge 9.10 10.0)" no
expect_eq "a missing part is 0: 1.96 == 1.96.0" "$(ge 1.96 1.96.0)" yes
expect_eq "a missing part is 0: 1.96.0 >= 1.96" "$(ge 1.96.0 1.96)" yes
expect_eq "a longer minimum: 1.96 < 1.96.1" "$(ge 1.96 1.96.1)" no
expect_eq "epoch ignored: 5:7.0.15 >= 7.0.0" "$(ge 5:7.0.15-1~deb12u7 7.0.0)" yes
expect_eq "epoch ignored: 1:6.0.16 < 7.0.0" "$(ge 1:6.0.16-1+deb11u2 7.0.0)" no
expect_eq "chromium 148 >= 140" "$(ge 148.0.7778.167-1~deb12u1 140.0)" yes
expect_eq "leading zeros are numbers: 08.09 >= 8.9" "$(ge 08.09 8.9)" yes
expect_eq "nothing is never enough" "$(ge '' 0)" no
expect_eq "words are never enough" "$(ge none 1.0)" no
expect_eq "any version meets no minimum" "$(ge 0.1 0)" yes

# --- node_ok: NODE_MIN and not in NODE_GAP (vite's ^20.19.0 || >=22.12.0)
ok() { if node_ok "$1"; then echo yes; else echo no; fi; }
expect_eq "node 18 (Debian 12)" "$(ok 18.20.4)" no
expect_eq "node 20.18" "$(ok 20.18.3)" no
expect_eq "node 20.19" "$(ok 20.19.0)" yes
expect_eq "node 20.20 (NodeSource)" "$(ok v20.20.2)" yes
expect_eq "node 21" "$(ok 21.7.3)" no
expect_eq "node 22.11" "$(ok 22.11.0)" no
expect_eq "node 22.12" "$(ok 22.12.0)" yes
expect_eq "node 24" "$(ok 24.1.0)" yes
expect_eq "no node" "$(ok '')" no

# --- apt_decide INSTALLED CANDIDATE MIN UPDATED
expect_eq "absent, stale lists offer 1.85" "$(apt_decide '' 1.85.0+dfsg3-1~deb12u3 1.96.0 '')" update
expect_eq "absent, fresh lists offer 1.96" "$(apt_decide '' 1.96.0+dfsg1-1~deb12u2 1.96.0 1)" install
expect_eq "absent, stale lists already offer 1.96" "$(apt_decide '' 1.96.0+dfsg1-1~deb12u2 1.96.0 '')" install
expect_eq "old installed, stale lists offer the same" \
  "$(apt_decide 1.85.0+dfsg3-1~deb12u3 1.85.0+dfsg3-1~deb12u3 1.96.0 '')" update
expect_eq "old installed, fresh lists offer 1.96" \
  "$(apt_decide 1.85.0+dfsg3-1~deb12u3 1.96.0+dfsg1-1~deb12u2 1.96.0 1)" install
expect_eq "new enough installed" "$(apt_decide 1.96.0+dfsg1-1~deb12u2 1.96.0+dfsg1-1~deb12u2 1.96.0 '')" ok
expect_eq "new enough installed, apt knows nothing" "$(apt_decide 1.96.0+dfsg1-1~deb12u2 '' 1.96.0 '')" ok
expect_eq "unknown package, stale lists" "$(apt_decide '' '' 1.0 '')" update
expect_eq "unknown package, fresh lists" "$(apt_decide '' '' 1.0 1)" fail
expect_eq "fresh lists still too old" "$(apt_decide '' 1.85.0+dfsg3-1~deb12u3 1.96.0 1)" fail
expect_eq "no minimum, absent, known" "$(apt_decide '' 7.0.15 0 '')" install

# --- need_deb against a fake apt with stale lists
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
mkdir -p "$fake/bin" "$fake/installed" "$fake/stale" "$fake/fresh" "$fake/mirror"
cat > "$fake/bin/apt-cache" <<'EOF'
#!/usr/bin/env bash
# apt-cache policy PKG
lists=stale; [ -e "$FAKE_APT/updated" ] && lists=fresh
echo "$2:"
echo "  Installed: $(cat "$FAKE_APT/installed/$2" 2>/dev/null || echo '(none)')"
echo "  Candidate: $(cat "$FAKE_APT/$lists/$2" 2>/dev/null || echo '(none)')"
EOF
cat > "$fake/bin/apt-get" <<'EOF'
#!/usr/bin/env bash
# Logs the command without the lock-timeout option setup always passes.
[ "$1 $2" = "-o DPkg::Lock::Timeout=300" ] || { echo "apt-get: no lock timeout: $*" >&2; exit 100; }
shift 2
echo "$*" >> "$FAKE_APT/log"
case " $* " in
  *" update "*) touch "$FAKE_APT/updated" ;;
  *" install "*)
    lists=stale; [ -e "$FAKE_APT/updated" ] && lists=fresh
    for a in "$@"; do
      case $a in
        *=*) p=${a%%=*} v=${a#*=}
             [ "$(cat "$FAKE_APT/$lists/$p" 2>/dev/null)" = "$v" ] || { echo "E: Version '$v' for '$p' was not found" >&2; exit 100; }
             # The mirror serves only the current .deb: old lists name one it dropped.
             if [ -e "$FAKE_APT/mirror/$p" ] && [ "$(cat "$FAKE_APT/mirror/$p")" != "$v" ]; then
               echo "E: Failed to fetch http://deb.debian.org/debian/pool/main/${p}_${v}_amd64.deb  404  Not Found" >&2; exit 100
             fi
             echo "$v" > "$FAKE_APT/installed/$p" ;;
      esac
    done ;;
esac
EOF
cat > "$fake/bin/dpkg-query" <<'EOF'
#!/usr/bin/env bash
# dpkg-query -W -f=FORMAT PKG
p=${*: -1}
[ -e "$FAKE_APT/installed/$p" ] || { echo "dpkg-query: no packages found matching $p" >&2; exit 1; }
echo "install ok installed $(cat "$FAKE_APT/installed/$p")"
EOF
chmod +x "$fake/bin/"*
export FAKE_APT=$fake
as_root() { "$@"; }
say() { :; }

# run_need PKG MIN: need_deb in a subshell on the fake apt; prints its exit status and
# its error message on one line.
run_need() {
  local err rc
  err=$( (PATH="$fake/bin:$PATH" apt_updated="" need_deb "$1" "$2") 2>&1 >/dev/null)
  rc=$?
  echo "$rc $err"
}
reset_fake() { rm -f "$fake/updated" "$fake/log" "$fake/installed/"* "$fake/stale/"* "$fake/fresh/"* "$fake/mirror/"*; }

# A new machine: rustc-web absent, the stale lists offer 1.85, the fresh ones 1.96.
reset_fake
echo 1.85.0+dfsg3-1~deb12u3 > "$fake/stale/rustc-web"
echo 1.96.0+dfsg1-1~deb12u2 > "$fake/fresh/rustc-web"
out=$(run_need rustc-web 1.96.0)
expect_eq "stale lists: need_deb succeeds" "${out%% *}" 0
expect_eq "stale lists: 1.96 installed" "$(cat "$fake/installed/rustc-web" 2>/dev/null)" 1.96.0+dfsg1-1~deb12u2
expect_eq "stale lists: update, then install" "$(tr '\n' ';' < "$fake/log")" \
  "update -qq;install -y -qq rustc-web=1.96.0+dfsg1-1~deb12u2;"

# An old rustc-web already installed is upgraded the same way.
reset_fake
echo 1.85.0+dfsg3-1~deb12u3 > "$fake/installed/rustc-web"
echo 1.85.0+dfsg3-1~deb12u3 > "$fake/stale/rustc-web"
echo 1.96.0+dfsg1-1~deb12u2 > "$fake/fresh/rustc-web"
out=$(run_need rustc-web 1.96.0)
expect_eq "old installed: need_deb succeeds" "${out%% *}" 0
expect_eq "old installed: upgraded" "$(cat "$fake/installed/rustc-web")" 1.96.0+dfsg1-1~deb12u2

# Installed and new enough: apt is not touched.
reset_fake
echo 1.96.0+dfsg1-1~deb12u2 > "$fake/installed/rustc-web"
out=$(run_need rustc-web 1.96.0)
expect_eq "new enough: need_deb succeeds" "${out%% *}" 0
expect_eq "new enough: no apt-get" "$(cat "$fake/log" 2>/dev/null)" ""

# Fresh lists already offer the version: no update.
reset_fake
echo 7.0.15-1~deb12u7 > "$fake/stale/redis-server"
out=$(run_need redis-server 7.0.0)
expect_eq "candidate enough: installed" "$(cat "$fake/installed/redis-server")" 7.0.15-1~deb12u7
expect_eq "candidate enough: no update" "$(grep -c update "$fake/log")" 0

# Old lists whose candidate is enough but whose .deb the mirror has dropped (a security
# update since): the failed install refreshes the lists and installs the current one.
reset_fake
echo 5:7.0.15-1~deb12u1 > "$fake/stale/redis-server"
echo 5:7.0.15-1~deb12u7 > "$fake/fresh/redis-server"
echo 5:7.0.15-1~deb12u7 > "$fake/mirror/redis-server"
out=$(run_need redis-server 7.0.0)
expect_eq "dropped .deb: need_deb succeeds" "${out%% *}" 0
expect_eq "dropped .deb: the current one installed" "$(cat "$fake/installed/redis-server" 2>/dev/null)" 5:7.0.15-1~deb12u7
expect_eq "dropped .deb: install, update, install" "$(tr '\n' ';' < "$fake/log")" \
  "install -y -qq redis-server=5:7.0.15-1~deb12u1;update -qq;install -y -qq redis-server=5:7.0.15-1~deb12u7;"

# The same with fresh lists: the failure is reported, not retried.
reset_fake
echo 5:7.0.15-1~deb12u1 > "$fake/stale/redis-server"
echo 5:7.0.15-1~deb12u1 > "$fake/fresh/redis-server"
echo 5:7.0.15-1~deb12u7 > "$fake/mirror/redis-server"
out=$(run_need redis-server 7.0.0)
expect_eq "dropped .deb, fresh lists too: fails" "${out%% *}" 1
case $out in
  *"404  Not Found"*"apt-get install redis-server=5:7.0.15-1~deb12u1 failed"*) pass ;;
  *) fail "dropped .deb, fresh lists too: message shows apt's error: $out" ;;
esac
expect_eq "dropped .deb, fresh lists too: one update" "$(grep -c update "$fake/log")" 1

# The registry cannot give it even after the update: stop, naming the tool and versions.
reset_fake
echo 1.85.0+dfsg3-1~deb12u3 > "$fake/stale/rustc-web"
echo 1.85.0+dfsg3-1~deb12u3 > "$fake/fresh/rustc-web"
out=$(run_need rustc-web 1.96.0)
expect_eq "too old everywhere: fails" "${out%% *}" 1
case $out in
  *"rustc-web: found none, need >= 1.96.0; apt offers 1.85.0+dfsg3-1~deb12u3 even after apt-get update"*) pass ;;
  *) fail "too old everywhere: message names tool and versions: $out" ;;
esac
expect_eq "too old everywhere: nothing installed" "$(cat "$fake/installed/rustc-web" 2>/dev/null)" ""

# A package apt does not know at all.
reset_fake
out=$(run_need postgresql-99 1.0)
expect_eq "unknown package: fails" "${out%% *}" 1
case $out in
  *"postgresql-99: found none, need >= 1.0; apt offers nothing even after apt-get update"*) pass ;;
  *) fail "unknown package: message: $out" ;;
esac

# --- need_tool: the tool as the scripts run it, stubs on PATH printing their versions.
# $fake/sys holds only the system tools setup's functions use, so that "no apt-get" (a
# laptop: macOS, another Linux) can be tested on this machine.
mkdir -p "$fake/sys" "$fake/tools"
for t in bash env cat grep head tail awk sed cut sort ls dirname mktemp rm tr id touch cp chmod; do
  ln -sf "$(command -v "$t")" "$fake/sys/$t"
done
stub() { # NAME OUTPUT...: a tool printing OUTPUT for any arguments
  local f=$fake/tools/$1
  shift
  printf '#!%s\nprintf "%%s\\n" %s\n' "$(command -v bash)" "$(printf '%q ' "$@")" > "$f"
  chmod +x "$f"
}
reset_tools() { rm -f "$fake/tools/"*; }
# run_tool STEP_OR_FN [ARGS]: a setup function on the stubs and the fake apt (WITH_APT=1)
# or with no apt at all; prints its exit status and its error message on one line.
run_tool() {
  local err rc path=$fake/tools:$fake/sys
  [ -z "${WITH_APT:-}" ] || path=$fake/tools:$fake/bin:$fake/sys
  err=$( (PATH=$path apt_updated="" "$@") 2>&1 >/dev/null)
  rc=$?
  echo "$rc $err"
}

# A laptop without apt, with Homebrew's Redis: enough, whatever installed it.
reset_tools
stub redis-server "Redis server v=7.2.4 sha=00000000:0 malloc=libc bits=64 build=1"
stub redis-cli "redis-cli 7.2.4"
stub python3 "Python 3.12.1"
stub kill ""
out=$(run_tool step_redis)
expect_eq "no apt, Redis 7.2 on PATH: ok" "$out" "0 "
# ... but no kill executable (bash's builtin does not count: Rust runs the executable).
rm "$fake/tools/kill"
out=$(run_tool step_redis)
case $out in
  "1 setup: error: kill not found, and there is no apt-get to install it: install a kill executable (procps)") pass ;;
  *) fail "no kill executable: message: $out" ;;
esac
stub kill ""
# ... an old one: stops, saying what is there and what to do.
stub redis-server "Redis server v=6.2.14 sha=00000000:0 malloc=libc bits=64 build=1"
out=$(run_tool step_redis)
expect_eq "no apt, Redis 6.2: fails" "${out%% *}" 1
case $out in
  *"redis-server: found 6.2.14, need >= $REDIS_MIN, and there is no apt-get to install it: install Redis"*) pass ;;
  *) fail "no apt, Redis 6.2: message: $out" ;;
esac
# ... none at all.
reset_tools
stub python3 "Python 3.12.1"
out=$(run_tool step_redis)
case $out in
  "1 "*"redis-server: found none, need >= $REDIS_MIN, and there is no apt-get"*) pass ;;
  *) fail "no apt, no Redis: message: $out" ;;
esac

# Chrome on a laptop through $CHROMIUM, its chromedriver a major version behind.
reset_tools
stub chrome "Google Chrome 150.0.7700.10"
stub chromedriver "ChromeDriver 149.0.7600.3 (abc)"
out=$(CHROMIUM=$fake/tools/chrome run_tool step_chromium)
case $out in
  "1 "*"chromium 150.0.7700.10 and chromedriver 149.0.7600.3: a chromedriver drives only its own major version"*) pass ;;
  *) fail "chromedriver of another major: message: $out" ;;
esac
stub chromedriver "ChromeDriver 150.0.7700.10 (abc)"
out=$(CHROMIUM=$fake/tools/chrome run_tool step_chromium)
expect_eq "Chrome and chromedriver 150 through CHROMIUM: ok" "$out" "0 "
# The browser the tests run is $CHROMIUM, not whatever is on PATH.
stub chromium "Chromium 156.0.8078.114 built on Debian GNU/Linux 12 (bookworm)"
stub chrome "Google Chrome 120.0.6099.5"
out=$(CHROMIUM=$fake/tools/chrome run_tool step_chromium)
case $out in
  "1 setup: error: chromium ($fake/tools/chrome): found 120.0.6099.5, need >= $CHROMIUM_MIN"*) pass ;;
  *) fail "old \$CHROMIUM with a new chromium on PATH: message: $out" ;;
esac

# Node: Debian 12's 18 is too old; 22.5 is in the gap vite does not run on.
reset_tools
stub node v18.20.4
stub npm 9.2.0
out=$(run_tool step_node)
case $out in
  "1 setup: error: node: found 18.20.4, need >= $NODE_MIN, and there is no apt-get to install it: install Node >= $NODE_MIN, not in [21.0.0, 22.12.0)"*) pass ;;
  *) fail "node 18: message: $out" ;;
esac
stub node v22.5.1
out=$(run_tool step_node)
case $out in
  "1 setup: error: node: found 22.5.1, which vite (the browser tests) does not run on"*) pass ;;
  *) fail "node 22.5: message: $out" ;;
esac
# ... and with apt whose lists have nothing newer than 18: the message says where to look.
reset_fake
echo 18.20.4+dfsg-1~deb12u3 > "$fake/installed/nodejs"
echo 18.20.4+dfsg-1~deb12u3 > "$fake/stale/nodejs"
echo 18.20.4+dfsg-1~deb12u3 > "$fake/fresh/nodejs"
stub node v18.20.4
out=$(WITH_APT=1 run_tool step_node)
case $out in
  "1 setup: error: nodejs: found 18.20.4+dfsg-1~deb12u3, need >= $NODE_MIN; apt offers 18.20.4+dfsg-1~deb12u3 even after apt-get update: install Node >= $NODE_MIN"*) pass ;;
  *) fail "node 18 from apt: message: $out" ;;
esac

# Debian's package is new enough but another, older tool comes first on PATH.
reset_fake
reset_tools
echo 5:7.0.15-1~deb12u7 > "$fake/installed/redis-server"
stub redis-server "Redis server v=6.0.16 sha=00000000:0 malloc=jemalloc-5.2.1 bits=64 build=1"
out=$(WITH_APT=1 run_tool need_tool redis-server "$REDIS_MIN" have_redis "HINT" redis-server)
case $out in
  "1 setup: error: redis-server: found 6.0.16 although Debian's redis-server is >= $REDIS_MIN: the one the scripts run is another"*"; HINT") pass ;;
  *) fail "shadowed redis-server: message: $out" ;;
esac
expect_eq "shadowed redis-server: apt not asked" "$(cat "$fake/log" 2>/dev/null)" ""

# PostgreSQL through PG_BINDIR (a laptop's), PostGIS found through its pg_config.
reset_tools
mkdir -p "$fake/pg/bin" "$fake/pg/share/extension"
stub postgres "postgres (PostgreSQL) 16.4"
stub pg_config "$fake/pg/share"
mv "$fake/tools/postgres" "$fake/tools/pg_config" "$fake/pg/bin/"
touch "$fake/pg/bin/pg_ctl" && chmod +x "$fake/pg/bin/pg_ctl"
touch "$fake/pg/share/extension/postgis--3.5.2.sql" "$fake/pg/share/extension/postgis--3.4.0--3.5.2.sql"
stub python3 "Python 3.12.1"
expect_eq "postgis through PG_BINDIR's pg_config" "$(PG_BINDIR=$fake/pg/bin PATH=$fake/tools:$fake/sys have_postgis)" 3.5.2
out=$(PG_BINDIR=$fake/pg/bin run_tool step_postgis)
expect_eq "no apt, PostgreSQL 16 + PostGIS 3.5 in PG_BINDIR: ok" "$out" "0 "
rm "$fake/pg/share/extension/postgis--3.5.2.sql"
out=$(PG_BINDIR=$fake/pg/bin run_tool step_postgis)
case $out in
  "1 setup: error: postgis: found none, need >= $POSTGIS_MIN, and there is no apt-get"*"PG_BINDIR"*) pass ;;
  *) fail "no PostGIS: message: $out" ;;
esac

# files_hash without sha256sum (macOS): shasum, the same hash.
if command -v shasum >/dev/null; then
  ln -sf "$(command -v shasum)" "$fake/sys/shasum"
  expect_eq "files_hash with shasum" "$(PATH=$fake/sys files_hash scripts/versions.sh)" \
    "$(sha256sum < scripts/versions.sh | cut -d' ' -f1)"
fi

echo "test-setup: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
