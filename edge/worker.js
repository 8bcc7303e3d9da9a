// The tilewarm edge worker: a caching batch proxy in front of the origin's POST /v1/batch.
// Everything is in the package (`tilewarm/edge`, js/edge.js + the Rust core); this file is
// the entry point wrangler.toml and config.capnp name. Bindings: ORIGIN (the origin's batch
// URL), ORIGIN_TOKEN (the edge's bearer token for the origin), one of JWT_SECRET, JWKS or
// JWKS_URL (the keys callers' tokens are verified with; none: every caller is public),
// TILEWARM_OPTIONS (optional JSON). See docs/edge.md.
import { createWorker } from 'tilewarm/edge';

export default createWorker();
