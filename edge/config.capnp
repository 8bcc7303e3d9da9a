# workerd config for running the edge worker locally, from the built package in ../pkg
# (make pkg):
#
#   TILEWARM_ORIGIN=http://127.0.0.1:8080/v1/batch TILEWARM_ORIGIN_TOKEN=... TILEWARM_JWT_SECRET=... \
#     edge/node_modules/.bin/workerd serve edge/config.capnp --socket-addr http=127.0.0.1:8787
#
# Module names mirror the npm package, so worker.js's `import 'tilewarm/edge'` resolves here
# as it does under wrangler. The bindings come from the environment of the workerd process
# (never from a request). See docs/edge.md.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .edgeWorker),
    # Outbound fetches may reach loopback and private addresses (a local origin); the
    # default "internet" service allows only public ones.
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "main")],
);

const edgeWorker :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.js"),
    (name = "tilewarm/edge", esModule = embed "../pkg/edge.js"),
    (name = "tilewarm/tilewarm_edge.js", esModule = embed "../pkg/tilewarm_edge.js"),
    (name = "tilewarm/tilewarm_edge_bg.wasm", wasm = embed "../pkg/tilewarm_edge_bg.wasm"),
  ],
  compatibilityDate = "2025-09-01",
  globalOutbound = "internet",
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
