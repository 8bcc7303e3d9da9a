# The versions of the tools tilewarm builds and tests with, written once. Sourced by
# scripts/setup.sh (which installs to them and checks them: `scripts/setup.sh --check`)
# and scripts/wasm-cargo.sh. Versions pinned exactly elsewhere are read from there:
#   wasm-bindgen CLI   = the wasm-bindgen crate in Cargo.lock
#   wasm-opt           = the npm package binaryen in package.json
#   workerd            = edge/package.json
#
# A minimum is compared on the upstream version's numbers: Debian's epoch and revision
# are ignored ("1:19.1.7-3~deb12u1" is 19.1.7), and a missing part counts as 0.
# shellcheck disable=SC2034   # every name is read by the scripts that source this file

# Stable cargo and rustc for the workspace: its dependencies need 1.89 (uuid; redis and
# proptest 1.88). The core crate itself declares its own, lower, rust-version.
RUST_MIN=1.89.0

# Debian's rustc-web, cargo-web and rust-web-src, the wasm32 std on a machine without
# rustup's wasm32 target (scripts/wasm-cargo.sh): the package build passes
# -Zpanic-immediate-abort and -Cpanic=immediate-abort, which cargo and rustc know from
# 1.96 on (bookworm-security; bookworm/main has 1.85, which does not know them).
RUSTC_WEB_MIN=1.96.0

# lld-19's wasm-ld-19 links the wasm on that path.
LLD_MIN=19.1.0

# Node.js runs the build tools (esbuild, wasm-opt from binaryen, typescript) and the tests.
# The floor is the test tools', not the package's (which runs on Node >= 18): vite 8 and
# its rolldown (js/test/browser) declare ^20.19.0 || >=22.12.0 (require(esm) without a
# flag), playwright-core >= 20, and the scripts use `node --test --test-concurrency`
# (20.10) and import.meta.dirname (20.11). Debian 12's nodejs is 18: the machine brings
# its own (NodeSource, nvm, ...). NODE_GAP: the versions from the first up to the second
# (not included) fall between vite's two ranges (Node 21, 22.0-22.11).
NODE_MIN=20.19.0
NODE_GAP="21.0.0 22.12.0"

# Python 3 runs the test scripts' port pickers (scripts/redis-cluster.sh,
# scripts/pg-scratch.sh) and schemathesis (which needs 3.9).
PYTHON_MIN=3.9.0

# Debian's chromium for the browser suites, driven by playwright-core (www/package.json)
# over CDP; older browsers lack protocol methods that playwright-core 1.65 calls.
CHROMIUM_MIN=140.0

# Debian's redis-server and redis-cli: the Redis tier's tests, the soak and load tests, and
# the cluster tests (scripts/redis-cluster.sh passes --cluster-port, new in 7.0, and uses
# redis-cli --cluster create).
REDIS_MIN=7.0.0

# Debian's PostgreSQL 15 and PostGIS 3 for the server's PostGIS origin (its tests, its
# benchmark and `make demo-postgis`): the test script runs initdb/pg_ctl from
# /usr/lib/postgresql/15/bin in a temporary data directory. PostGIS 3.3 is bookworm's.
POSTGRES_MIN=15.0
POSTGIS_MIN=3.3.0

# rustup's nightly for the cargo-fuzz targets (fuzz/, which builds the core and the
# server: the same dependency floor as stable).
NIGHTLY_MIN=1.89.0

# Pinned tools installed from the registries.
CARGO_FUZZ_VERSION=0.13.2
SCHEMATHESIS_VERSION=4.32.5
