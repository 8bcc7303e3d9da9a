# workerd config for running the edge worker locally, from the built package in ../pkg
# (make pkg):
#
#   TILEWARM_ORIGIN=http://127.0.0.1:8080/v1/batch TILEWARM_ORIGIN_TOKEN=... TILEWARM_JWT_SECRET=... \
#     edge/node_modules/.bin/workerd serve edge/config.capnp --socket-addr http=127.0.0.1:8787
#
# It listens on two sockets: "http" (the worker) and "cache" (the local Cache API store,
# 127.0.0.1:8788; move it with --socket-addr cache=ADDR and --external-addr cache=ADDR).
#
# Module names mirror the npm package, so worker.js's `import 'tilewarm/edge'` resolves here
# as it does under wrangler. The bindings come from the environment of the workerd process
# (never from a request). See docs/edge.md.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .edgeWorker),
    # The Cache API (`caches.default`): workerd sends cache calls over HTTP to the "cache"
    # service. By default that is this process's own in-memory cache (cache-service.js, on
    # the "cache" socket); `--external-addr cache=HOST:PORT` points it at another process's,
    # so several workerd processes share one cache, as the isolates of a data centre do.
    (name = "cache", external = (address = "127.0.0.1:8788", http = ())),
    (name = "cacheStore", worker = .cacheWorker),
    # Outbound fetches may reach loopback and private addresses (a local origin); the
    # default "internet" service allows only public ones.
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [
    (name = "http", address = "127.0.0.1:8787", http = (), service = "main"),
    (name = "cache", address = "127.0.0.1:8788", http = (), service = "cacheStore"),
  ],
);

const edgeWorker :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.js"),
    (name = "tilewarm/edge", esModule = embed "../pkg/edge.js"),
    (name = "tilewarm/tilewarm_edge.js", esModule = embed "../pkg/tilewarm_edge.js"),
    (name = "tilewarm/tilewarm_edge_bg.wasm", wasm = embed "../pkg/tilewarm_edge_bg.wasm"),
  ],
  compatibilityDate = "2025-09-01",
  # request.signal aborts when the client disconnects (no default date): a request whose
  # client left gives its place among those waiting for the origin back at once.
  compatibilityFlags = ["enable_request_signal"],
  globalOutbound = "internet",
  cacheApiOutbound = "cache",
  bindings = [
    (name = "ORIGIN", fromEnvironment = "TILEWARM_ORIGIN"),
    (name = "TILEWARM_OPTIONS", fromEnvironment = "TILEWARM_OPTIONS"),
    # The edge's own bearer token for the origin, and the keys callers' tokens are
    # verified with (at most one of the three). Unset: no origin token; every caller public.
    (name = "ORIGIN_TOKEN", fromEnvironment = "TILEWARM_ORIGIN_TOKEN"),
    (name = "JWT_SECRET", fromEnvironment = "TILEWARM_JWT_SECRET"),
    (name = "JWKS", fromEnvironment = "TILEWARM_JWKS"),
    (name = "JWKS_URL", fromEnvironment = "TILEWARM_JWKS_URL"),
  ],
);

const cacheWorker :Workerd.Worker = (
  modules = [(name = "cache-service.js", esModule = embed "cache-service.js")],
  compatibilityDate = "2025-09-01",
);
