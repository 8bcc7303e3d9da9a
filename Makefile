# tilewarm: `make test` runs every suite; each target installs what it needs first
# (scripts/setup.sh is idempotent and quick when everything is there).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
MAKEFLAGS += --no-print-directory

.PHONY: test toolchain setup-test lint fmt-check clippy doc-check cargo-test wasm-core gen pkg page-size node-test browser-test edge-test demo-test web-test web-example bench demo demo-postgis setup \
	fuzz fuzz-smoke soak soak-smoke schemathesis

## Every suite: the toolchain (installed, then checked and printed), setup's own tests,
## formatting, clippy, rustdoc's link checks, cargo tests, the bare wasm32 core build, short passes of the fuzz
## targets, the soak test and schemathesis, the npm package and the Node tests against it,
## the edge worker under workerd, the Rust browser shell (web/) and the demo page in
## headless Chromium.
## Node's summary is the closing output.
test: toolchain setup-test lint cargo-test wasm-core fuzz-smoke soak-smoke schemathesis pkg page-size node-test browser-test edge-test web-test demo-test

setup:
	scripts/setup.sh rust wasm node

## Installs every tool the suites need at the versions scripts/versions.sh names, then
## prints each with the version found (`scripts/setup.sh --check`), so a log shows the
## toolchain it ran on.
toolchain:
	scripts/setup.sh all
	scripts/setup.sh --check

## setup's version logic against real Debian version strings and a fake apt with stale lists.
setup-test:
	scripts/test-setup.sh

lint: fmt-check clippy doc-check

fmt-check:
	@scripts/setup.sh rust
	cargo fmt --all --check

clippy:
	@scripts/setup.sh rust
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --all-features -- -D warnings

## rustdoc with warnings as errors (broken links, links from public docs to private items),
## of the crates' own docs only (--no-deps): the core with every feature, the server, and
## tilewarm-web on the host and on wasm32, where its TileCache (wasm32 only) is there to
## link to.
doc-check:
	@scripts/setup.sh rust wasm-target
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features -p tilewarm -p tilewarm-server -p tilewarm-web
	RUSTDOCFLAGS="-D warnings" scripts/wasm-cargo.sh doc --no-deps -p tilewarm-web

## Rust tests of the whole workspace; the server's Redis and PostGIS tests need a real
## redis-server and PostgreSQL 15 + PostGIS (each test starts its own on a free loopback
## port through scripts/pg-scratch.sh; the Redis Cluster tests start 3 masters + 3 replicas
## through scripts/redis-cluster.sh), which server/tests/setup.sh installs;
## TILEWARM_REQUIRE_REDIS and TILEWARM_REQUIRE_POSTGRES make them fail rather than skip
## without them.
cargo-test:
	@server/tests/setup.sh
	TILEWARM_REQUIRE_REDIS=1 TILEWARM_REQUIRE_POSTGRES=1 cargo test --workspace --all-features

## The core for wasm32 with no features: proves it needs nothing from the web.
wasm-core:
	@scripts/setup.sh wasm-target
	@if cargo tree -e normal -p tilewarm --prefix none | grep -E '^(wasm-bindgen|js-sys|web-sys) '; then \
	  echo "wasm-core: the core (no features) depends on web crates" >&2; exit 1; fi
	scripts/wasm-cargo.sh build --lib

## The cargo-fuzz targets in fuzz/ (nightly; scripts/setup.sh fuzz installs cargo-fuzz),
## each for FUZZ_SECONDS; figures in target/fuzz/summary.md, crashers in
## target/fuzz/artifacts/. fuzz-smoke is the short pass `make test` runs.
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke:
	scripts/fuzz.sh 3

## Fixed-rate load on tilewarm-server with an origin stall and Redis killed and restarted;
## passes on zero failed requests, bounded RSS and recovery (target/soak/soak.md).
## soak-smoke is the 12 s variant `make test` runs.
SOAK_SECONDS ?= 60
soak:
	server/soak/run.sh $(SOAK_SECONDS)

soak-smoke:
	PROFILE=dev server/soak/run.sh 12 --rate 20 --homes 5000 --out target/soak/smoke.md

## schemathesis against docs/openapi.yaml on a running server (ST_MAX_EXAMPLES, default 50).
schemathesis:
	server/tests/schemathesis.sh

## Rewrites what is generated from the Rust for the JS side of the wasm boundary
## (js/gen/boundary.js, js/gen/types.d.ts, the tables in js/README.md; src/wasm/codegen.rs).
## `cargo test --features wasm` (so cargo-test) fails while they are stale.
gen:
	@scripts/setup.sh rust
	TILEWARM_WRITE_GEN=1 cargo test --lib --features wasm wasm::codegen

## The npm package in pkg/.
pkg:
	@scripts/setup.sh wasm node
	scripts/build-pkg.sh

## The size ratchet: the browser page (wasm + the JS it loads, gzipped) within 1 KB of the
## figure recorded in bench/page-size.txt; a change that moves it further updates the figure.
## The figure is the -Zbuild-std build's: on rustup's prebuilt wasm32 std the check is skipped.
page-size: pkg
	scripts/pkg-size.sh --check

node-test: pkg
	scripts/test-node.sh

## The map adapters in headless Chromium: pages built with Vite over pkg/ (real maplibre-gl);
## screenshots in target/browser-test/*.png.
browser-test: pkg
	scripts/test-browser.sh

## The edge worker (edge/, tilewarm/edge) under real workerd against tilewarm-server on
## loopback; installs workerd (scripts/setup.sh edge).
edge-test: pkg
	scripts/test-edge.sh

## The demo page (www/): its helpers under Node, then end to end in headless Chromium
## against tilewarm-server; screenshots in target/demo-screenshot*.png.
demo-test: pkg
	scripts/demo-test.sh

## The Rust browser shell (web/, tilewarm-web): wasm-bindgen-test in headless Chromium
## against tilewarm-server on loopback behind a fault proxy (scripts/test-web.sh).
## Builds the example page (examples/web-canvas) first, so `make test` proves it builds.
web-test: web-example
	scripts/test-web.sh

## The Rust example page on tilewarm-web into target/web-canvas/ (prints its wasm size);
## serve it with `target/debug/tilewarm-server --www target/web-canvas`.
web-example:
	@scripts/setup.sh wasm node
	scripts/build-web-example.sh

## Every benchmark; writes target/bench/BENCHMARKS.md, whose figures are carried over to
## docs/BENCHMARKS.md by hand (scripts/bench.sh PART runs one part;
## the pkg part measures the package size against the ratchet in bench/page-size.txt).
bench:
	@scripts/setup.sh rust
	scripts/bench.sh

## Builds the package, the server and the page, starts tilewarm-server with the synthetic
## city on http://127.0.0.1:8080/ (PORT=... to change) and stays until Ctrl-C.
demo:
	scripts/demo.sh

## The same page over the King County homes loaded into a scratch PostGIS (needs
## ../shared/data/kc_house_data.csv; skips with a message without it).
demo-postgis:
	scripts/demo-postgis.sh
