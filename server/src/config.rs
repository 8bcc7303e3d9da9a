//! Command line and configuration. Every flag has a documented default; `Config::default()`
//! is what the binary runs with when given no flags (tests use it and change fields).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tilewarm::cache::{CacheConfig, MAX_SPLIT_LEVELS};
use tilewarm::protocol::Limits;
use tilewarm::tile::MAX_ZOOM;

/// How the number of batch slots is chosen (`--in-flight-limit`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlightLimitKind {
    /// Moved by measured hold times, up to `--max-in-flight` (`crate::adaptive`).
    Adaptive,
    /// Always `--max-in-flight`.
    Fixed,
}

/// Reference backend for the tilewarm batch protocol.
///
/// Answers `POST /v1/batch` from a cache tier (in-process, or Redis shared by several
/// instances) in front of an origin (a data file or a synthetic city), and warms the
/// neighbour tiles of every request in the background.
#[derive(Parser, Debug, Clone)]
#[command(name = "tilewarm-server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Origin data: a King County house-sales CSV (.csv) or JSON lines (.jsonl, .ndjson).
    /// Without it, a deterministic synthetic city is generated.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,

    /// Homes in the synthetic city (when no --data is given).
    #[arg(long, default_value_t = 50_000, value_name = "N")]
    pub synthetic_homes: usize,

    /// Seed of the synthetic city.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Latency added to every origin call, in milliseconds (the origin stands in for an
    /// expensive valuation API).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub origin_latency_ms: u64,

    /// Longest wait for the origin on the request path, in milliseconds: a request whose
    /// misses the origin has not answered by then gets a 504 `upstream_timeout` instead of
    /// waiting on (requests the cache tier answers never wait for the origin). It is one
    /// budget per request, from its first wait: counting a coarse tile's items, its own
    /// call and following another request's call for the same tile all draw on it. Warm-up's
    /// origin calls are given up after the same time. 0 waits as long as the origin takes.
    /// At most 2147483647 (about 24.8 days, PostgreSQL's longest `statement_timeout`).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub origin_timeout_ms: u64,

    /// Where items come from: `memory` (the default: --data or the synthetic city, in
    /// memory), `postgres://user@host/db` (a PostGIS table, see docs/postgis.md), or
    /// `http(s)://host/v1/batch` (another batch endpoint).
    #[arg(long, value_name = "memory|postgres://…|http(s)://…")]
    pub origin: Option<String>,

    /// The PostGIS origin's table, column and channel names (TOML; see docs/postgis.md).
    /// Without it: table `tilewarm_items`, columns id, geom, class, access, data,
    /// updated_at, channel `tilewarm_changes`.
    #[arg(long, value_name = "FILE")]
    pub origin_config: Option<PathBuf>,

    /// A file holding the bearer token sent to an upstream origin (re-read when it
    /// changes); without it, TILEWARM_ORIGIN_TOKEN, else no Authorization header.
    #[arg(long, value_name = "FILE")]
    pub origin_token_file: Option<PathBuf>,

    /// With an upstream origin (another tilewarm-server): its change feed, followed so that
    /// an invalidation made there reaches this server's tier and followers. Without it:
    /// the --origin URL with `/v1/batch` replaced by `/v1/changes`; `off` follows none.
    /// Sent the same bearer token as the batch calls (so never plain http when --origin is
    /// https).
    #[arg(long, value_name = "URL|off")]
    pub origin_changes: Option<String>,

    /// The upstream change feed's connection is replaced when nothing (not even a
    /// keep-alive, which a tilewarm-server sends every 15 s) arrived for this long.
    #[arg(long, default_value_t = 35_000, value_name = "MS")]
    pub origin_changes_idle_ms: u64,

    /// Connections to the origin: the PostGIS pool's size, an upstream's idle
    /// connections kept.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub origin_pool: usize,

    /// With a PostGIS origin: longest a call waits for a free pooled connection, in
    /// milliseconds (within the request's --origin-timeout-ms); then its request is
    /// answered 503 `overloaded` with `Retry-After`, so a busy database is refused quickly,
    /// not queued. 0: refused at once when no connection is free.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub origin_pool_wait_ms: u64,

    /// With a PostGIS origin: create the table, index and triggers if missing and load
    /// --data (or the synthetic city) into it before serving (rows with the same id are
    /// replaced).
    #[arg(long)]
    pub postgis_load: bool,

    /// Print the DDL of a ready PostGIS table for --origin-config's names, and exit.
    #[arg(long)]
    pub postgis_print_ddl: bool,

    /// Redis URL (e.g. redis://127.0.0.1:6379/0): use Redis as the shared cache tier
    /// instead of the in-process cache. A Redis Cluster: redis+cluster://host:port,host:port
    /// (seed nodes; one is enough), or a comma list of host:port, redis://host:port or
    /// valkey://host:port seeds.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// With a Redis Cluster: let replicas answer reads (more read capacity; a replica may
    /// lag its master by a few milliseconds, see docs/server.md).
    #[arg(long)]
    pub redis_read_from_replicas: bool,

    /// Prefix of every Redis key (items `<prefix>v4:i:<id>`, tiles `<prefix>v4:t:<z/x/y>`, the
    /// class generations `<prefix>v4:g`).
    /// Give different deployments (another origin or data zoom) different prefixes, none
    /// starting with another: an instance does not use a prefix whose owner record
    /// (`<prefix>v4:owner`) names another deployment, and invalidating `all` deletes every
    /// key under the prefix, so those of a longer prefix too (all but its class generations
    /// and owner record, its change stream included).
    #[arg(long, default_value = "tw:", value_name = "PREFIX")]
    pub redis_prefix: String,

    /// Take the --redis-prefix over from the deployment whose owner record is there
    /// (`<prefix>v4:owner`, docs/server.md "Who owns a prefix"): write this deployment's
    /// record over it, wait until the other's instances have stepped off, then invalidate
    /// `all`. For the first instance of a deployment whose fingerprint changed (another
    /// origin or data zoom) on the same prefix; remove it after that start, else an old
    /// instance given it too would take the prefix back.
    #[arg(long)]
    pub redis_take_over: bool,

    /// The origin as the --redis-prefix's owner record names it (docs/server.md "Who owns a
    /// prefix"), in place of the one worked out from --origin (its URL without secrets, or
    /// the memory origin's --data path or synthetic city): for instances of one deployment
    /// that spell their origin differently (an address on one host, a name on another; a
    /// --data path that differs), given the same name on each. One line of at most 200
    /// characters; give another deployment another name. Naming (or renaming) a running
    /// deployment changes its owner record: start one instance once with --redis-take-over.
    #[arg(long, value_name = "NAME")]
    pub redis_owner_origin: Option<String>,

    /// Timeout of one Redis round trip, in milliseconds; a slower answer counts as a Redis
    /// error (degraded mode).
    #[arg(long, default_value_t = 250, value_name = "MS")]
    pub redis_timeout_ms: u64,

    /// The data's extent, `WEST,SOUTH,EAST,NORTH` in degrees (TileJSON's `bounds` order;
    /// west greater than east crosses the antimeridian): where the origin's items lie. Batch
    /// and tile answers carry it in the `x-tilewarm-bounds` header, and clients that declare
    /// no extent of their own then never ask for tiles wholly outside it. A promise about
    /// the data: an item outside it is still served, but only to clients that ask.
    #[arg(
        long,
        value_name = "W,S,E,N",
        value_parser = tilewarm::cache::parse_bounds,
        allow_hyphen_values = true
    )]
    pub bounds: Option<tilewarm::tile::Bbox>,

    /// Directory of static files served at `/` (the demo page); it must exist at start.
    #[arg(long, value_name = "DIR")]
    pub www: Option<PathBuf>,

    /// Log filter: error, warn, info, debug, trace, off, or tracing directives
    /// (`tilewarm_server=debug,tower_http=info`; a target needs its `=level`). RUST_LOG,
    /// when set and not empty, wins.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,

    /// CORS: `any` (any origin, no credentials), `none` (no CORS headers), or a
    /// comma-separated list of allowed origins as browsers send them, `scheme://host[:port]`
    /// (`https://a.example,http://localhost:3000`).
    #[arg(long, default_value = "any", value_name = "any|none|ORIGINS")]
    pub cors: String,

    /// HS256 secret that caller tokens (`Authorization: Bearer <JWT>`) are verified with,
    /// at least 32 bytes. Prefer the TILEWARM_JWT_SECRET environment variable (a flag
    /// shows in the process list). Without it and without --jwks, every caller is `public`.
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<String>,

    /// Public keys that caller tokens are verified with: a JWKS file (read at startup), or
    /// an http(s) URL (read at startup, and again as the key server rotates its keys: see
    /// --jwks-max-age-s and --jwks-cooldown-s). RS256/PS256/ES256/ES384/EdDSA; the token's
    /// `kid` selects the key; each key verifies only its own algorithm.
    #[arg(long, value_name = "FILE|URL")]
    pub jwks: Option<String>,

    /// How long a key set fetched from a --jwks URL is used before it is fetched again, in
    /// seconds (the edge's `jwksCacheMaxAgeS`). Requests go on with the old set while the
    /// new one is fetched; if the key server fails, the old set verifies for up to an hour
    /// more.
    #[arg(long, default_value_t = 600, value_name = "S")]
    pub jwks_max_age_s: u64,

    /// A token whose `kid` the --jwks URL's set lacks makes the server fetch the set again
    /// (the key server rotated its keys) only if no fetch started in the last this many
    /// seconds (the edge's `jwksCooldownS`); 1..=3600.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub jwks_cooldown_s: u64,

    /// Required `iss` of caller tokens (not checked when absent).
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of caller tokens (not checked when absent).
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// Clock leeway for `exp` and `nbf`, in seconds.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub jwt_leeway_s: u64,

    /// The token claim holding the caller's tier (public, registered, verified, agent).
    #[arg(long, default_value = "tilewarm_access", value_name = "CLAIM")]
    pub jwt_tier_claim: String,

    /// Take the caller's tier from this request header, UNVERIFIED. Only for a server that
    /// is reachable solely through an authenticating gateway that sets (and strips) it;
    /// excludes --jwt-secret and --jwks.
    #[arg(long, value_name = "NAME")]
    pub trust_tier_header: Option<String>,

    /// Serve `GET /metrics` on its own address (e.g. 127.0.0.1:9090) instead of the API's.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve `GET /metrics` on the API's address too, to anyone who can reach it (off by
    /// default: the counters describe traffic and data).
    #[arg(long)]
    pub metrics_public: bool,

    /// Development only: `POST /dev/token {"access":"<tier>"}` issues short-lived tokens
    /// signed with the HS256 secret, to loopback callers only, never to a request a
    /// --trusted-proxy forwarded (`make demo`).
    #[arg(long)]
    pub dev_tokens: bool,

    /// Zoom of the data tiles the cache tier keys tile lists by.
    #[arg(long, default_value_t = crate::tier::DEFAULT_DATA_ZOOM, value_name = "Z")]
    pub data_zoom: u8,

    /// A requested tile at most this many zoom levels coarser than the data zoom is answered
    /// through the cache tier (split onto its 4^levels data tiles); a coarser one is answered
    /// straight from the origin, uncached. The default, 3, is as coarse as the npm package
    /// coalesces by default (`batch.coalesceLevels`).
    #[arg(long, default_value_t = 3, value_name = "LEVELS")]
    pub split_levels: u8,

    /// Most data tiles one request may cover once its coarse tiles are split onto data tiles
    /// (`--split-levels`); past it a 400 naming the cap, before the tier is read or the
    /// origin asked. The default, 1024, is the package's default request (16 tiles of up to
    /// 8x8).
    #[arg(long, default_value_t = tilewarm::proxy::policy::DEFAULT_MAX_DATA_TILES, value_name = "N")]
    pub max_data_tiles: usize,

    /// Most items in one response (at most the clients' 50 000). An answer that would hold
    /// more, or be over the 8 MiB clients read, answers what fits in request order and
    /// leaves the rest out of a partial answer (200, `response_full`: asked again, served
    /// then); a tile over either alone is left out as `payload_too_large`. Tiles too coarse
    /// for the tier whose origin count passes it are a 400 before they are fetched.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub max_response_items: usize,

    /// Most items the origin may hold in one data tile for a caller: past it the tile is
    /// read no further (PostGIS: `LIMIT N + 1` per tile), not cached, and left out of the
    /// answer as unanswered, with the tile, the count and this limit in the answer's `error`
    /// and the log (`tilewarm_origin_tiles_over_limit_total`); the other tiles are answered.
    /// Counted at the top tier first (the list cached for every tier); a tile over it there
    /// is asked again at the tier of a caller below it, and served (and cached for that
    /// tier) when it holds at most N items that caller may see
    /// (`tilewarm_origin_tiles_asked_at_caller_tier_total`). The default, 20 000, is
    /// `--max-response-items`' default: a fuller data tile could not be answered whole anyway.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub max_tile_items: usize,

    /// Largest item `data` the server caches and serves, in bytes of its JSON text
    /// (`tilewarm::protocol::Limits::max_data_bytes`). An origin's item over it is left out
    /// (PostGIS does not even send it): from every tile list, and a requested id is
    /// unanswered with the id, the size and this limit in the answer's `error`; logged,
    /// `tilewarm_origin_items_too_large_total`. The rest of the answer is served.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_item_data_bytes: usize,

    /// TTL of `active` (for sale) items, in seconds.
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub ttl_active_s: u64,

    /// TTL of `off_market` items, in seconds.
    #[arg(long, default_value_t = 14_400, value_name = "S")]
    pub ttl_off_market_s: u64,

    /// TTL of items of any other class, in seconds.
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub ttl_default_s: u64,

    /// TTL of tile lists (membership), in seconds.
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub tile_ttl_s: u64,

    /// Most items held by the in-process cache tier.
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub cache_items: usize,

    /// Most bytes of item JSON held by the in-process cache tier, in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub cache_mib: usize,

    /// Most tile lists held by the in-process cache tier.
    #[arg(long, default_value_t = 262_144, value_name = "N")]
    pub cache_tiles: usize,

    /// Largest request body, in bytes (larger: 413). Without it: the largest request the
    /// tile and id limits allow (`Limits::max_request_bytes`, about 517 KiB at the
    /// defaults).
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Most batches answered at once; more wait in the queue (--max-queue). With
    /// `--in-flight-limit adaptive` (the default) the ceiling of the adaptive limit.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_in_flight: usize,

    /// How many batches are answered at once: `adaptive` (the default) starts at two per
    /// core and moves with how long batches hold their slot, up to --max-in-flight
    /// (docs/server.md, "Admission control"); `fixed` is always --max-in-flight.
    #[arg(long, value_enum, default_value_t = InFlightLimitKind::Adaptive)]
    pub in_flight_limit: InFlightLimitKind,

    /// Most requests waiting for the origin at once (they give their batch slot back while
    /// they wait); past it a request that needs the origin is answered 503 `overloaded`.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_origin_waits: usize,

    /// Most batches waiting for a slot; past it a batch is answered 503 `overloaded` with
    /// `Retry-After` at once.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_queue: usize,

    /// Longest a batch waits for a slot, in milliseconds; then it is answered 503
    /// `overloaded` with `Retry-After`, so overload is refused quickly, not queued.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    pub max_queue_wait_ms: u64,

    /// Most origin calls for requests at once while the cache tier (Redis) is down; past it
    /// a request that needs the origin is answered 503 `overloaded` with `Retry-After`, so
    /// the origin is not made to take every request the tier used to answer.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub degraded_origin_calls: usize,

    /// Longest life of an empty tile list in the cache tier, in seconds (a tile the origin
    /// has nothing for, or nothing `public` may see); at most `--tile-ttl-s`.
    #[arg(long, default_value_t = 60, value_name = "S")]
    pub empty_tile_ttl_s: u64,

    /// Most empty tile lists this instance keeps alive in the cache tier; past it an empty
    /// list is answered but not stored. With Redis it counts keys: the empty lists of one
    /// answer filling a whole tile up to --split-levels coarser than the data zoom are one
    /// key, an empty block (so a zoomed-out request over empty land is a few keys).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_empty_tiles: usize,

    /// `Retry-After` of a 503 `overloaded`, in seconds; 1..=3600.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub retry_after_s: u64,

    /// Batches a second per caller (the verified token's `sub`, else the client address, see
    /// --trusted-proxy; an IPv6 one by its /64); past it and the burst, 429 `rate_limited`
    /// with `Retry-After`. 0: no per-caller limit.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub caller_rate: u32,

    /// Batches one caller may send at once above --caller-rate; at least 1 while the rate
    /// is on.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub caller_burst: u32,

    /// A verified token subject (`sub`) exempt from the per-caller limit; repeatable. For
    /// the service tokens of edge workers and other proxies, whose calls stand for many
    /// callers. They still count against --max-in-flight and --max-queue.
    #[arg(long = "unlimited-sub", value_name = "SUB")]
    pub unlimited_subs: Vec<String>,

    /// A reverse proxy whose `X-Forwarded-For` (--trusted-proxy-header) is believed: a CIDR
    /// range (10.0.0.0/8, 2001:db8::/32) or an address; repeatable. When the TCP peer is in
    /// one of them, the client address (for --auth-fail-rate, the per-caller limits of
    /// callers without a token `sub`, and --dev-tokens' loopback check) is the right-most
    /// entry of the header that is not itself a trusted proxy (a malformed one: the last
    /// trusted hop); from any other peer the header is ignored.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<crate::client_addr::TrustedProxy>,

    /// The header --trusted-proxy peers write the client's address in, the one read:
    /// `x-forwarded-for`, or `forwarded` (RFC 7239, its `for=`). Never both: a proxy passes
    /// the other on as the client sent it.
    #[arg(long, value_enum, default_value_t = crate::client_addr::ForwardedHeader::XForwardedFor, value_name = "HEADER")]
    pub trusted_proxy_header: crate::client_addr::ForwardedHeader,

    /// Refused credentials a second per client address (an IPv6 address by its /64),
    /// after a burst of --auth-fail-burst: past it a request carrying a credential from that
    /// address is answered 429 `rate_limited` with `Retry-After` before its token is
    /// checked, so invalid or expired tokens cannot make the server verify signatures at
    /// any rate. Requests without a credential are not affected. 0: no limit.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub auth_fail_rate: u32,

    /// Refused credentials one client address may send at once above --auth-fail-rate.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub auth_fail_burst: u32,

    /// Most client addresses whose refused credentials are tracked (memory stays bounded);
    /// addresses that recovered are forgotten, and past this many the rest share one limit.
    #[arg(long, default_value_t = 65_536, value_name = "N")]
    pub auth_fail_max_addresses: usize,

    /// `POST /v1/invalidate` calls a second, server-wide, after a burst of
    /// --invalidate-burst (each deletes keys in the shared tier and sends the next requests
    /// to the origin); past it, 429 `rate_limited` with `Retry-After`. 0: no limit.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub invalidate_rate: u32,

    /// `POST /v1/invalidate` calls allowed at once above --invalidate-rate.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub invalidate_burst: u32,

    /// Most open client connections; more wait in the accept backlog.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,

    /// Most open connections from one TCP peer address (an IPv6 one by its /64); one more
    /// is closed at once, unread. Peers in --trusted-proxy ranges are not capped (they carry
    /// many clients); behind a proxy not named there every client shares its address. 0
    /// (the default): no cap.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_connections_per_address: usize,

    /// Longest wait for a request's headers (on a new or idle kept-alive connection), in
    /// milliseconds; then the connection is closed.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub header_timeout_ms: u64,

    /// Longest a write to a client may make no progress, in milliseconds (the client takes
    /// no byte of the answer); then the connection is closed, its slot freed and the unsent
    /// answer dropped. A client reading slowly is not cut off: each byte it takes restarts
    /// the clock.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub write_timeout_ms: u64,

    /// Longest wait for a request's body, in milliseconds; then 408 `request_timeout`.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub body_timeout_ms: u64,

    /// Most tiles in one request.
    #[arg(long, default_value_t = Limits::default().max_tiles, value_name = "N")]
    pub max_tiles: usize,

    /// Most ids in one request.
    #[arg(long, default_value_t = Limits::default().max_ids, value_name = "N")]
    pub max_ids: usize,

    /// Coarsest zoom a request may ask for.
    #[arg(long, default_value_t = Limits::default().min_zoom, value_name = "Z")]
    pub min_zoom: u8,

    /// Warm-up ring: after each request, the data tiles within this Chebyshev distance of the
    /// requested ones are warmed into the cache tier in the background. 0 turns warm-up off.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub warmup_ring: u32,

    /// Capacity of the warm-up queue, in jobs; a job that does not fit is dropped (counted),
    /// never waited for.
    #[arg(long, default_value_t = 256, value_name = "JOBS")]
    pub warmup_queue: usize,

    /// Warm-up workers.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub warmup_workers: usize,

    /// Most tiles one warm-up job plans (the ring of a large request is cut to this).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub warmup_max_tiles: usize,

    /// Most tiles per warm-up origin call.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub warmup_batch_tiles: usize,

    /// Change stream retention: about this many invalidations are kept (Redis `XADD MAXLEN
    /// ~ N`, or in-process). A `GET /v1/changes` client that resumes from an event older than
    /// that gets a `reset` (invalidate everything) instead of the events it missed.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub changes_retention: usize,

    /// Most database changes (PostGIS `NOTIFY`s) waiting to be applied to the cache tier;
    /// when one more arrives (the tier is down or slower than the writes), the waiting ones
    /// are collapsed into one invalidate-all, which loses nothing (counted in
    /// `tilewarm_changes_queue_overflows_total` and logged).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub change_queue_max: usize,

    /// Most open `GET /v1/changes` streams; one more is answered 503 `overloaded`.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub changes_max_subscribers: usize,

    /// Most open `GET /v1/changes` streams of one caller (the verified token's `sub`, else
    /// the address; `--unlimited-sub` callers are not capped); one more is answered 429
    /// `rate_limited`.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub changes_max_per_caller: usize,

    /// Fault injection for the soak test (`server/soak/run.sh`), hidden from `--help`: with
    /// N > 0, each SIGUSR1 the process receives toggles an extra N ms on every origin call
    /// (off at start). Only a local process allowed to signal the server can flip it; no
    /// HTTP route exists for it. 0 (the default) installs no handler.
    #[arg(long, default_value_t = 0, value_name = "MS", hide = true)]
    pub fault_origin_stall_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config::parse_from(["tilewarm-server"])
    }
}

/// The most of anything counted at once (`--max-connections`, `--max-in-flight`, queues):
/// far past any machine, and below what tokio's semaphores and channels take.
pub const MAX_COUNT: usize = 1_000_000_000;

/// The most `--warmup-workers`.
pub const MAX_WARMUP_WORKERS: usize = 1024;

/// The longest `--origin-timeout-ms`: PostgreSQL's `statement_timeout` is an `int` of
/// milliseconds.
pub const MAX_ORIGIN_TIMEOUT_MS: u64 = i32::MAX as u64;

/// Checks `--log-level`: a level, or tracing directives in which every part without `=` is
/// a level. tracing reads a bare word as a target at every level, so a misspelt level
/// (`infp`) or a target without its level started a server that logged nothing at all.
pub fn check_log_level(v: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let allowed = "a level (error, warn, info, debug, trace, off) or tracing directives \
                   such as tilewarm_server=debug,tower_http=info";
    if v.trim().is_empty() {
        return Err(ConfigError(format!("--log-level is empty: give {allowed}")));
    }
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !part.contains('=') && !LEVELS.iter().any(|l| part.eq_ignore_ascii_case(l)) {
            return Err(ConfigError(format!(
                "--log-level: {part:?} is not a level (a target needs its level: \
                 {part}=debug); give {allowed}"
            )));
        }
    }
    tracing_subscriber::EnvFilter::try_new(v)
        .map(|_| ())
        .map_err(|e| ConfigError(format!("--log-level {v:?}: {e}; give {allowed}")))
}

/// The flags that act only in one setup: the argument's id (its field), the flag, and what
/// it needs, for [`Config::check_given`].
const SETUP_FLAGS: &[(&str, &str, &str)] = &[
    (
        "cache_items",
        "--cache-items",
        "the in-process tier, which --redis replaces",
    ),
    (
        "cache_mib",
        "--cache-mib",
        "the in-process tier, which --redis replaces",
    ),
    (
        "cache_tiles",
        "--cache-tiles",
        "the in-process tier, which --redis replaces",
    ),
    ("redis_prefix", "--redis-prefix", "--redis"),
    ("redis_owner_origin", "--redis-owner-origin", "--redis"),
    ("redis_timeout_ms", "--redis-timeout-ms", "--redis"),
    (
        "degraded_origin_calls",
        "--degraded-origin-calls",
        "--redis (it bounds the origin calls while Redis is down)",
    ),
    (
        "origin_pool",
        "--origin-pool",
        "--origin postgres://… or http(s)://…",
    ),
    (
        "origin_pool_wait_ms",
        "--origin-pool-wait-ms",
        "--origin postgres://…",
    ),
    (
        "origin_changes_idle_ms",
        "--origin-changes-idle-ms",
        "--origin http(s)://… with its change feed followed (not --origin-changes off)",
    ),
    (
        "synthetic_homes",
        "--synthetic-homes",
        "the synthetic city: no --data, and the memory origin or --postgis-load",
    ),
    (
        "seed",
        "--seed",
        "the synthetic city: no --data, and the memory origin or --postgis-load",
    ),
    (
        "jwks_max_age_s",
        "--jwks-max-age-s",
        "--jwks with an http(s) URL (a file is read once, at start)",
    ),
    (
        "jwks_cooldown_s",
        "--jwks-cooldown-s",
        "--jwks with an http(s) URL (a file is read once, at start)",
    ),
    (
        "jwt_issuer",
        "--jwt-issuer",
        "--jwt-secret (or TILEWARM_JWT_SECRET) or --jwks: without them no token is verified",
    ),
    (
        "jwt_audience",
        "--jwt-audience",
        "--jwt-secret (or TILEWARM_JWT_SECRET) or --jwks: without them no token is verified",
    ),
    (
        "jwt_leeway_s",
        "--jwt-leeway-s",
        "--jwt-secret (or TILEWARM_JWT_SECRET) or --jwks: without them no token is verified",
    ),
    (
        "jwt_tier_claim",
        "--jwt-tier-claim",
        "--jwt-secret (or TILEWARM_JWT_SECRET) or --jwks: without them no token is verified",
    ),
    (
        "trusted_proxy_header",
        "--trusted-proxy-header",
        "--trusted-proxy",
    ),
];

/// Why [`Config::try_parse_checked`] gave no configuration.
#[derive(Debug)]
pub enum ParseError {
    /// clap's: a flag unknown or of the wrong form, or `--help` / `--version` asked for
    /// (`clap::Error::exit` prints each as clap does).
    Clap(clap::Error),
    /// A flag given that does nothing in this setup.
    Config(ConfigError),
}

/// A configuration value out of range; the message names the flag and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The request limits: the protocol defaults with the flags applied.
    pub fn limits(&self) -> Limits {
        let limits = Limits {
            max_tiles: self.max_tiles,
            max_ids: self.max_ids,
            min_zoom: self.min_zoom,
            max_data_bytes: self.max_item_data_bytes,
            ..Limits::default()
        };
        Limits {
            max_body_bytes: self
                .max_body_bytes
                .unwrap_or_else(|| limits.max_request_bytes()),
            ..limits
        }
    }

    /// The in-process tier's cache configuration (the same TTL policy as the clients).
    pub fn cache_config(&self) -> CacheConfig {
        let mut c = CacheConfig {
            tile_zoom: self.data_zoom,
            max_items: self.cache_items,
            max_bytes: self.cache_mib.saturating_mul(1024 * 1024),
            max_tiles: self.cache_tiles,
            default_ttl_ms: self.ttl_default_s.saturating_mul(1000),
            tile_ttl_ms: Some(self.tile_ttl_s.saturating_mul(1000)),
            ..CacheConfig::default()
        };
        c.class_ttl_ms
            .insert("active".into(), self.ttl_active_s * 1000);
        c.class_ttl_ms
            .insert("off_market".into(), self.ttl_off_market_s * 1000);
        c
    }

    /// The server-wide bound of one route (`crate::admission::Shed`).
    pub fn shed(&self) -> crate::admission::Shed {
        let wait = std::time::Duration::from_millis(self.max_queue_wait_ms);
        let max = self.max_in_flight;
        match self.in_flight_limit {
            InFlightLimitKind::Fixed => {
                crate::admission::Shed::fixed(max, self.max_queue, wait, self.retry_after_s)
            }
            InFlightLimitKind::Adaptive => crate::admission::Shed::adaptive(
                crate::adaptive::initial_limit(max),
                max,
                self.max_queue,
                wait,
                self.retry_after_s,
            ),
        }
    }

    /// Parses the command line as the binary does: clap's parse (whose error is also how
    /// `--help` and `--version` come back), then [`Config::check_given`] with what was on
    /// the command line and whether `TILEWARM_JWT_SECRET` is set.
    pub fn try_parse_checked<I, T>(args: I) -> Result<Config, ParseError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Config::command()
            .try_get_matches_from(args)
            .map_err(ParseError::Clap)?;
        let config = Config::from_arg_matches(&matches).map_err(ParseError::Clap)?;
        let secret_in_env = std::env::var(crate::auth::SECRET_ENV).is_ok_and(|s| !s.is_empty());
        config
            .check_given(
                |id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine),
                secret_in_env,
            )
            .map_err(ParseError::Config)?;
        Ok(config)
    }

    /// Refuses a flag given on the command line that does nothing in this setup, naming what
    /// it needs: `--redis-prefix` without `--redis` would leave each instance on its own
    /// in-process tier while the operator believes they share one. `given(id)` says whether
    /// the argument `id` (its field's name) was on the command line: defaults pass.
    pub fn check_given(
        &self,
        given: impl Fn(&str) -> bool,
        secret_in_env: bool,
    ) -> Result<(), ConfigError> {
        use crate::origin::OriginSpec;
        // An --origin that does not parse is refused by `validate` with its own message;
        // naming a flag that depends on it instead would hide the real mistake.
        let Ok(spec) = OriginSpec::parse(self.origin.as_deref()) else {
            return Ok(());
        };
        let postgis = matches!(spec, OriginSpec::Postgis(_));
        let upstream = matches!(spec, OriginSpec::Upstream(_));
        let memory = matches!(spec, OriginSpec::Memory);
        let verifies = self.jwt_secret.is_some() || secret_in_env || self.jwks.is_some();
        for &(id, flag, needs) in SETUP_FLAGS {
            let acts = match id {
                "cache_items" | "cache_mib" | "cache_tiles" => self.redis.is_none(),
                "redis_prefix"
                | "redis_timeout_ms"
                | "redis_owner_origin"
                | "degraded_origin_calls" => self.redis.is_some(),
                "origin_pool" => postgis || upstream,
                "origin_pool_wait_ms" => postgis,
                "origin_changes_idle_ms" => {
                    upstream && self.origin_changes.as_deref() != Some("off")
                }
                "synthetic_homes" | "seed" => self.data.is_none() && (memory || self.postgis_load),
                "jwks_max_age_s" | "jwks_cooldown_s" => {
                    self.jwks.as_deref().is_some_and(crate::auth::is_url)
                }
                "jwt_issuer" | "jwt_audience" | "jwt_leeway_s" | "jwt_tier_claim" => verifies,
                "trusted_proxy_header" => !self.trusted_proxies.is_empty(),
                _ => true,
            };
            if !acts && given(id) {
                return Err(ConfigError(format!(
                    "{flag} does nothing here: it needs {needs} (remove it, or give what it needs)"
                )));
            }
        }
        Ok(())
    }

    /// Checks ranges; the error names the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        check_log_level(&self.log_level)?;
        if self.data_zoom > MAX_ZOOM {
            return bad(format!(
                "--data-zoom must be in 0..={MAX_ZOOM}, got {}",
                self.data_zoom
            ));
        }
        if self.split_levels > MAX_SPLIT_LEVELS.min(4) {
            return bad(format!(
                "--split-levels must be in 0..=4, got {}",
                self.split_levels
            ));
        }
        if self.min_zoom > MAX_ZOOM {
            return bad(format!(
                "--min-zoom must be in 0..={MAX_ZOOM}, got {}",
                self.min_zoom
            ));
        }
        if self.degraded_origin_calls == 0 {
            return bad("--degraded-origin-calls must be at least 1, got 0".into());
        }
        if self.empty_tile_ttl_s == 0 {
            return bad("--empty-tile-ttl-s must be at least 1, got 0".into());
        }
        if self.max_data_tiles == 0 {
            return bad("--max-data-tiles must be at least 1, got 0".into());
        }
        let max_items = Limits::default().max_items;
        if self.max_response_items == 0 || self.max_response_items > max_items {
            return bad(format!(
                "--max-response-items must be in 1..={max_items} (what clients accept), got {}",
                self.max_response_items
            ));
        }
        if self.max_item_data_bytes == 0 {
            return bad("--max-item-data-bytes must be at least 1, got 0".into());
        }
        if self.max_tile_items == 0 || self.max_tile_items > max_items {
            return bad(format!(
                "--max-tile-items must be in 1..={max_items} (the items of one tile list \
                 clients accept), got {}",
                self.max_tile_items
            ));
        }
        for (flag, v) in [
            ("--ttl-active-s", self.ttl_active_s),
            ("--ttl-off-market-s", self.ttl_off_market_s),
            ("--ttl-default-s", self.ttl_default_s),
            ("--tile-ttl-s", self.tile_ttl_s),
        ] {
            let max = Limits::default().max_ttl_s as u64;
            if v == 0 || v > max {
                return bad(format!("{flag} must be in 1..={max}, got {v}"));
            }
        }
        for (flag, v) in [
            ("--max-tiles", self.max_tiles),
            ("--max-ids", self.max_ids),
            ("--max-body-bytes", self.max_body_bytes.unwrap_or(1)),
            ("--max-in-flight", self.max_in_flight),
            ("--max-queue", self.max_queue),
            ("--max-origin-waits", self.max_origin_waits),
            ("--max-queue-wait-ms", self.max_queue_wait_ms as usize),
            ("--max-connections", self.max_connections),
            ("--header-timeout-ms", self.header_timeout_ms as usize),
            ("--write-timeout-ms", self.write_timeout_ms as usize),
            ("--body-timeout-ms", self.body_timeout_ms as usize),
            ("--warmup-queue", self.warmup_queue),
            ("--warmup-workers", self.warmup_workers),
            ("--warmup-max-tiles", self.warmup_max_tiles),
            ("--warmup-batch-tiles", self.warmup_batch_tiles),
            ("--origin-pool", self.origin_pool),
            ("--auth-fail-burst", self.auth_fail_burst as usize),
            ("--auth-fail-max-addresses", self.auth_fail_max_addresses),
            ("--invalidate-burst", self.invalidate_burst as usize),
            ("--change-queue-max", self.change_queue_max),
        ] {
            if v == 0 {
                return bad(format!("{flag} must be at least 1, got 0"));
            }
        }
        let spec = crate::origin::OriginSpec::parse(self.origin.as_deref())
            .map_err(|e| ConfigError(e.to_string()))?;
        let memory = spec == crate::origin::OriginSpec::Memory;
        if !memory && self.data.is_some() && !self.postgis_load {
            return bad(
                "--data is the memory origin's data set; with another --origin it is only read by --postgis-load".into(),
            );
        }
        if self.postgis_load && !matches!(spec, crate::origin::OriginSpec::Postgis(_)) {
            return bad("--postgis-load needs --origin postgres://…".into());
        }
        if self.origin_config.is_some() && !matches!(spec, crate::origin::OriginSpec::Postgis(_)) {
            return bad(
                "--origin-config names a PostGIS table: it needs --origin postgres://…".into(),
            );
        }
        if self.origin_token_file.is_some()
            && !matches!(spec, crate::origin::OriginSpec::Upstream(_))
        {
            return bad(
                "--origin-token-file is for an upstream origin (--origin http(s)://…)".into(),
            );
        }
        // A PostGIS origin sets it as each connection's statement_timeout, an int of ms in
        // PostgreSQL: past that every connection fails to start and every call is a 502.
        // One bound for every origin, so that switching origins never makes it invalid.
        if self.origin_timeout_ms > MAX_ORIGIN_TIMEOUT_MS {
            return bad(format!(
                "--origin-timeout-ms must be at most {MAX_ORIGIN_TIMEOUT_MS} (about 24.8 days, \
                 PostgreSQL's longest statement_timeout; 0 waits as long as the origin takes), \
                 got {}",
                self.origin_timeout_ms
            ));
        }
        if let Some(v) = &self.origin_changes {
            let crate::origin::OriginSpec::Upstream(origin) = &spec else {
                return bad(
                    "--origin-changes is the change feed of an upstream origin: it needs --origin http(s)://…"
                        .into(),
                );
            };
            crate::origin::upstream_changes::FeedUrl::choose(origin, Some(v))
                .map_err(ConfigError)?;
        }
        if !(100..=3_600_000).contains(&self.origin_changes_idle_ms) {
            return bad(format!(
                "--origin-changes-idle-ms must be in 100..=3600000, got {}",
                self.origin_changes_idle_ms
            ));
        }
        if !(1..=86_400).contains(&self.jwks_max_age_s) {
            return bad(format!(
                "--jwks-max-age-s must be in 1..=86400, got {}",
                self.jwks_max_age_s
            ));
        }
        if !(1..=3600).contains(&self.jwks_cooldown_s) {
            return bad(format!(
                "--jwks-cooldown-s must be in 1..=3600, got {}",
                self.jwks_cooldown_s
            ));
        }
        if self.jwt_leeway_s > 600 {
            return bad(format!(
                "--jwt-leeway-s must be in 0..=600, got {}",
                self.jwt_leeway_s
            ));
        }
        if let Some(spec) = &self.redis {
            let target = crate::redis_conn::RedisTarget::parse(spec)
                .map_err(|e| ConfigError(format!("--redis: {e}")))?;
            // Invalidating `all` deletes every key under the prefix: with none, every key of
            // the Redis database, other applications' too.
            if self.redis_prefix.is_empty() {
                return bad(
                    "--redis-prefix must not be empty with --redis: invalidating `all` deletes \
                     every key under it, so every key of the database (give one such as tw:)"
                        .into(),
                );
            }
            if self.redis_read_from_replicas
                && !matches!(target, crate::redis_conn::RedisTarget::Cluster(_))
            {
                return bad(
                    "--redis-read-from-replicas needs a Redis Cluster in --redis \
                     (redis+cluster://host:port,…)"
                        .into(),
                );
            }
        } else if self.redis_read_from_replicas {
            return bad("--redis-read-from-replicas needs --redis (a Redis Cluster)".into());
        } else if self.redis_take_over {
            return bad(
                "--redis-take-over needs --redis (it takes a Redis key prefix over)".into(),
            );
        }
        if let Some(name) = &self.redis_owner_origin {
            // The owner record is one `name=value` line per field.
            if name.trim().is_empty()
                || name.chars().count() > 200
                || name.chars().any(char::is_control)
            {
                return bad(format!(
                    "--redis-owner-origin must be one line of 1 to 200 characters without \
                     control characters, got {:?}",
                    name.chars().take(80).collect::<String>()
                ));
            }
        }
        // A burst of 0 would be a limiter that refuses everything; governor needs at least
        // one cell, and taking the rate instead would be a silent default.
        if self.caller_rate > 0 && self.caller_burst == 0 {
            return bad(
                "--caller-burst must be at least 1 while --caller-rate is on (0 turns the \
                 per-caller limit off), got 0"
                    .into(),
            );
        }
        // `Retry-After` is whole seconds of at least 1; an upstream's is capped at 3600 too.
        if !(1..=3600).contains(&self.retry_after_s) {
            return bad(format!(
                "--retry-after-s must be in 1..=3600, got {}",
                self.retry_after_s
            ));
        }
        // 0 would refuse every change feed (503 or 429) while looking configured.
        for (flag, v) in [
            ("--changes-max-subscribers", self.changes_max_subscribers),
            ("--changes-max-per-caller", self.changes_max_per_caller),
        ] {
            if v == 0 {
                return bad(format!("{flag} must be at least 1, got 0"));
            }
        }
        if self.unlimited_subs.iter().any(|s| s.is_empty()) {
            return bad("--unlimited-sub must name a token `sub`, got an empty one".into());
        }
        if let Some(dir) = &self.www {
            if !dir.is_dir() {
                return bad(format!(
                    "--www {} is not a directory (give the directory of the static files)",
                    dir.display()
                ));
            }
        }
        // These size semaphores and queues: tokio panics past 2^61 permits (the accept loop
        // died with the server still bound, or the start panicked), and a billion is
        // already more than any machine holds at once.
        for (flag, v) in [
            ("--max-in-flight", self.max_in_flight),
            ("--max-queue", self.max_queue),
            ("--max-origin-waits", self.max_origin_waits),
            ("--max-connections", self.max_connections),
            (
                "--max-connections-per-address",
                self.max_connections_per_address,
            ),
            ("--degraded-origin-calls", self.degraded_origin_calls),
            ("--changes-max-subscribers", self.changes_max_subscribers),
            ("--changes-max-per-caller", self.changes_max_per_caller),
            ("--warmup-queue", self.warmup_queue),
        ] {
            if v > MAX_COUNT {
                return bad(format!("{flag} must be at most {MAX_COUNT}, got {v}"));
            }
        }
        // Each worker is a task started at once: a huge count never got to listen.
        if self.warmup_workers > MAX_WARMUP_WORKERS {
            return bad(format!(
                "--warmup-workers must be in 1..={MAX_WARMUP_WORKERS}, got {}",
                self.warmup_workers
            ));
        }
        if self.changes_retention == 0 {
            return bad("--changes-retention must be at least 1, got 0".into());
        }
        if self.redis_timeout_ms == 0 {
            return bad("--redis-timeout-ms must be at least 1, got 0".into());
        }
        self.cache_config()
            .validate()
            .map_err(|e| ConfigError(format!("cache flags: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            (
                c.synthetic_homes,
                c.data_zoom,
                c.split_levels,
                c.max_data_tiles
            ),
            (50_000, 14, 3, 1024)
        );
        assert_eq!(
            c.limits(),
            Limits {
                max_body_bytes: Limits::default().max_request_bytes(),
                ..Limits::default()
            }
        );
        // The body cap follows the tile and id limits unless given.
        let c = Config::parse_from(["x", "--max-ids", "10"]);
        assert!(c.limits().max_body_bytes < 16 * 1024);
        let c = Config::parse_from(["x", "--max-body-bytes", "5000"]);
        assert_eq!(c.limits().max_body_bytes, 5000);
        let cache = c.cache_config();
        assert_eq!(cache.ttl_for("active", None), 300_000);
        assert_eq!(cache.ttl_for("off_market", None), 14_400_000);
        assert_eq!(cache.ttl_for("sold", None), 300_000);
        c.validate().unwrap();
    }

    #[test]
    fn out_of_range_flags_are_named() {
        let c = Config::parse_from(["x", "--split-levels", "7"]);
        assert!(c.validate().unwrap_err().0.contains("--split-levels"));
        let c = Config::parse_from(["x", "--warmup-queue", "0"]);
        assert!(c.validate().unwrap_err().0.contains("--warmup-queue"));
        let c = Config::parse_from(["x", "--max-response-items", "60000"]);
        assert!(c.validate().unwrap_err().0.contains("--max-response-items"));
        let c = Config::parse_from(["x", "--max-tile-items", "0"]);
        assert!(c.validate().unwrap_err().0.contains("--max-tile-items"));
        let c = Config::parse_from(["x", "--max-item-data-bytes", "0"]);
        assert!(c
            .validate()
            .unwrap_err()
            .0
            .contains("--max-item-data-bytes"));
        let c = Config::parse_from(["x", "--ttl-active-s", "0"]);
        assert!(c.validate().unwrap_err().0.contains("--ttl-active-s"));
        let c = Config::parse_from(["x", "--origin", "ftp://h"]);
        assert!(c.validate().unwrap_err().0.contains("--origin"));
        let c = Config::parse_from(["x", "--origin", "postgres://h/db", "--data", "a.csv"]);
        assert!(c.validate().unwrap_err().0.contains("--postgis-load"));
        let c = Config::parse_from(["x", "--postgis-load"]);
        assert!(c.validate().unwrap_err().0.contains("--postgis-load"));
        let long = "g".repeat(201);
        for name in ["", "  ", "geo\nformat=9", &long] {
            let c = Config::parse_from(["x", "--redis-owner-origin", name]);
            let e = c.validate().unwrap_err().0;
            assert!(e.contains("--redis-owner-origin must be one line"), "{e}");
        }
        Config::parse_from(["x", "--redis-owner-origin", &long[..200]])
            .validate()
            .unwrap();
        // Characters, not bytes.
        Config::parse_from(["x", "--redis-owner-origin", &"é".repeat(200)])
            .validate()
            .unwrap();
        for flag in [
            "--write-timeout-ms",
            "--auth-fail-burst",
            "--auth-fail-max-addresses",
            "--invalidate-burst",
            "--change-queue-max",
        ] {
            let c = Config::parse_from(["x", flag, "0"]);
            assert!(c.validate().unwrap_err().0.contains(flag), "{flag}");
        }
        // PostgreSQL's statement_timeout cap, for every origin; 0 and the cap itself pass.
        for origin in ["memory", "postgres://h/db"] {
            let c =
                Config::parse_from(["x", "--origin", origin, "--origin-timeout-ms", "2147483648"]);
            let e = c.validate().unwrap_err().0;
            assert!(
                e.contains("--origin-timeout-ms") && e.contains("2147483647"),
                "{e}"
            );
            for ok in ["0", "2147483647"] {
                let c = Config::parse_from(["x", "--origin", origin, "--origin-timeout-ms", ok]);
                c.validate().unwrap();
            }
        }
        let c = Config::parse_from(["x", "--origin-token-file", "t"]);
        assert!(c.validate().unwrap_err().0.contains("--origin-token-file"));
        let c = Config::parse_from(["x", "--origin-changes", "off"]);
        assert!(c.validate().unwrap_err().0.contains("--origin-changes"));
        for bad in ["ftp://h/v1/changes", "http:///v1/changes", "", "of"] {
            let c = Config::parse_from([
                "x",
                "--origin",
                "http://up/v1/batch",
                "--origin-changes",
                bad,
            ]);
            let e = c.validate().unwrap_err().0;
            assert!(
                e.contains("--origin-changes") && e.contains("off"),
                "{bad}: {e}"
            );
        }
        for good in ["off", "OFF", "https://up:8443/feed/v1/changes"] {
            let c = Config::parse_from([
                "x",
                "--origin",
                "http://up/v1/batch",
                "--origin-changes",
                good,
            ]);
            c.validate().unwrap();
        }
        let c = Config::parse_from(["x", "--origin-changes-idle-ms", "5"]);
        assert!(c
            .validate()
            .unwrap_err()
            .0
            .contains("--origin-changes-idle-ms"));
        let c = Config::parse_from([
            "x",
            "--origin",
            "postgres://h/db",
            "--data",
            "a.csv",
            "--postgis-load",
        ]);
        c.validate().unwrap();
    }

    /// Values that used to start a server that refuses every request of a kind, or that
    /// were silently replaced (`--caller-burst 0` by the rate, `--retry-after-s 0` by 1).
    #[test]
    fn values_that_would_refuse_everything_or_be_replaced_are_named() {
        for (args, flag) in [
            (&["--caller-burst", "0"][..], "--caller-burst"),
            (&["--retry-after-s", "0"], "--retry-after-s"),
            (&["--retry-after-s", "3601"], "--retry-after-s"),
            (
                &["--changes-max-subscribers", "0"],
                "--changes-max-subscribers",
            ),
            (
                &["--changes-max-per-caller", "0"],
                "--changes-max-per-caller",
            ),
            (&["--unlimited-sub", ""], "--unlimited-sub"),
            (&["--www", "/nonexistent/tilewarm-www"], "--www"),
            (&["--www", "Cargo.toml"], "--www"),
        ] {
            let c = Config::parse_from(std::iter::once("x").chain(args.iter().copied()));
            let e = c.validate().unwrap_err().0;
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        // With the per-caller limit off, its burst is not used.
        let c = Config::parse_from(["x", "--caller-rate", "0", "--caller-burst", "0"]);
        c.validate().unwrap();
        for ok in ["1", "3600"] {
            Config::parse_from(["x", "--retry-after-s", ok])
                .validate()
                .unwrap();
        }
        Config::parse_from(["x", "--www", "."]).validate().unwrap();
        // Past tokio's semaphore bound these panicked at start (or in the accept loop).
        for flag in [
            "--max-in-flight",
            "--max-connections",
            "--degraded-origin-calls",
            "--changes-max-subscribers",
            "--warmup-queue",
            "--warmup-workers",
        ] {
            let c = Config::parse_from(["x", flag, "18446744073709551615"]);
            let e = c.validate().unwrap_err().0;
            assert!(e.contains(flag), "{e}");
        }
        Config::parse_from(["x", "--max-connections", "1000000000"])
            .validate()
            .unwrap();
        for bad in [
            "bogus",
            "infp",
            "info,tilewarm_server",
            "",
            "tilewarm_server=loud",
        ] {
            let c = Config::parse_from(["x", "--log-level", bad]);
            let e = c.validate().unwrap_err().0;
            assert!(
                e.contains("--log-level") && e.contains("debug"),
                "{bad:?}: {e}"
            );
        }
        for ok in [
            "warn",
            "INFO",
            "off",
            "info,tower_http=warn",
            "tilewarm_server::origin=debug",
        ] {
            Config::parse_from(["x", "--log-level", ok])
                .validate()
                .unwrap();
        }
        let c = Config::parse_from(["x", "--redis", "redis://h:6379/0", "--redis-prefix", ""]);
        assert!(c.validate().unwrap_err().0.contains("--redis-prefix"));
    }

    /// A flag given on the command line that does nothing in its setup is refused, naming
    /// itself and what it needs; in its setup, or left at its default, it is taken.
    #[test]
    fn a_flag_that_does_nothing_here_is_refused() {
        let refused = |args: &[&str], flag: &str, needs: &str| {
            let all: Vec<&str> = ["tilewarm-server"].iter().chain(args).copied().collect();
            match Config::try_parse_checked(all) {
                Err(ParseError::Config(e)) => {
                    assert!(e.0.starts_with(&format!("{flag} does nothing here")), "{e}");
                    assert!(e.0.contains(needs), "{e}");
                }
                other => panic!("{args:?} taken: {other:?}"),
            }
        };
        let taken = |args: &[&str]| {
            let all: Vec<&str> = ["tilewarm-server"].iter().chain(args).copied().collect();
            if let Err(e) = Config::try_parse_checked(all) {
                panic!("{args:?} refused: {e:?}");
            }
        };
        let redis = ["--redis", "redis://127.0.0.1:6379/0"];
        refused(&["--redis-prefix", "a:"], "--redis-prefix", "--redis");
        taken(&[&redis[..], &["--redis-prefix", "a:"]].concat());
        refused(
            &["--redis-owner-origin", "geo"],
            "--redis-owner-origin",
            "--redis",
        );
        taken(&[&redis[..], &["--redis-owner-origin", "geo"]].concat());
        refused(
            &["--redis-timeout-ms", "9"],
            "--redis-timeout-ms",
            "--redis",
        );
        refused(
            &["--degraded-origin-calls", "2"],
            "--degraded-origin-calls",
            "--redis",
        );
        taken(
            &[
                &redis[..],
                &["--redis-timeout-ms", "9", "--degraded-origin-calls", "2"],
            ]
            .concat(),
        );
        refused(
            &[&redis[..], &["--cache-items", "9"]].concat(),
            "--cache-items",
            "in-process",
        );
        refused(
            &[&redis[..], &["--cache-mib", "9"]].concat(),
            "--cache-mib",
            "in-process",
        );
        refused(
            &[&redis[..], &["--cache-tiles", "9"]].concat(),
            "--cache-tiles",
            "in-process",
        );
        taken(&[
            "--cache-items",
            "9",
            "--cache-mib",
            "9",
            "--cache-tiles",
            "9",
        ]);

        let pg = ["--origin", "postgres://u@h/db"];
        let up = ["--origin", "http://127.0.0.1:9/v1/batch"];
        refused(
            &["--origin-pool", "2"],
            "--origin-pool",
            "--origin postgres://",
        );
        // A mistyped --origin is left to `validate`, which names it.
        let c =
            Config::try_parse_checked(["x", "--origin", "postgress://h/db", "--origin-pool", "2"]);
        assert!(c.unwrap().validate().unwrap_err().0.contains("--origin"));
        taken(
            &[
                &pg[..],
                &["--origin-pool", "2", "--origin-pool-wait-ms", "5"],
            ]
            .concat(),
        );
        taken(
            &[
                &up[..],
                &["--origin-pool", "2", "--origin-changes-idle-ms", "500"],
            ]
            .concat(),
        );
        refused(
            &[&up[..], &["--origin-pool-wait-ms", "5"]].concat(),
            "--origin-pool-wait-ms",
            "postgres",
        );
        refused(
            &["--origin-changes-idle-ms", "500"],
            "--origin-changes-idle-ms",
            "http(s)",
        );
        refused(
            &[
                &up[..],
                &["--origin-changes", "off", "--origin-changes-idle-ms", "500"],
            ]
            .concat(),
            "--origin-changes-idle-ms",
            "not --origin-changes off",
        );

        refused(&["--data", "x.csv", "--seed", "1"], "--seed", "no --data");
        refused(
            &[&pg[..], &["--synthetic-homes", "9"]].concat(),
            "--synthetic-homes",
            "--postgis-load",
        );
        taken(
            &[
                &pg[..],
                &["--postgis-load", "--synthetic-homes", "9", "--seed", "1"],
            ]
            .concat(),
        );
        taken(&["--synthetic-homes", "9", "--seed", "1"]);

        refused(
            &["--jwks-max-age-s", "60"],
            "--jwks-max-age-s",
            "http(s) URL",
        );
        refused(
            &["--jwks", "keys.json", "--jwks-cooldown-s", "60"],
            "--jwks-cooldown-s",
            "http(s) URL",
        );
        taken(&[
            "--jwks",
            "https://idp.example/jwks",
            "--jwks-max-age-s",
            "60",
            "--jwks-cooldown-s",
            "60",
        ]);
        let secret = ["--jwt-secret", "0123456789abcdef0123456789abcdef"];
        for flag in [
            "--jwt-issuer",
            "--jwt-audience",
            "--jwt-leeway-s",
            "--jwt-tier-claim",
        ] {
            let c = Config::try_parse_from(["tilewarm-server", flag, "1"]).unwrap();
            let given = |id: &str| id == flag.trim_start_matches("--").replace('-', "_");
            let e = c.check_given(given, false).unwrap_err();
            assert!(e.0.starts_with(&format!("{flag} does nothing here")), "{e}");
            c.check_given(given, true).unwrap();
            taken(&[&secret[..], &[flag, "1"]].concat());
            taken(&["--jwks", "keys.json", flag, "1"]);
        }
        refused(
            &["--trusted-proxy-header", "forwarded"],
            "--trusted-proxy-header",
            "--trusted-proxy",
        );
        taken(&[
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy-header",
            "forwarded",
        ]);
    }

    /// clap's own errors and `--help` come back as clap's, for it to print.
    #[test]
    fn clap_errors_and_help_come_back_as_clap_errors() {
        for args in [
            &["x", "--no-such-flag"][..],
            &["x", "--help"],
            &["x", "--seed", "x"],
        ] {
            assert!(
                matches!(Config::try_parse_checked(args), Err(ParseError::Clap(_))),
                "{args:?}"
            );
        }
    }
}
