//! JavaScript bindings of the caching batch proxy for the edge worker (feature `edge`),
//! built by `scripts/build-pkg.sh` into its own wasm (`pkg/tilewarm_edge_bg.wasm`), so the
//! browser package's wasm does not carry it. Thin: JSON text and bytes in, JSON text out;
//! the logic is [`crate::proxy::Proxy`]. `pkg/edge.js` (from `js/edge.js`) is the worker around it.
//!
//! A request is `begin` (with the caller's verified tier, from its checked token) → (the shell fetches [`Step::origin`] from the origin) →
//! `complete` or `fail` → respond with [`Step::status`], [`Step::body`] and
//! `x-tilewarm-cache: `[`Step::cache`]; then send [`Step::warm`] (if any) inside
//! `ctx.waitUntil` and give its answer to `warmed`. Requests in between are held by a
//! numeric handle, at most [`MAX_PENDING`] at once, each for at most its hold time
//! ([`hold_ms`]): a worker whose client went away may never call `complete`, `fail` or
//! `abandon` (the runtime drops the request's continuation), so a request held longer than
//! its calls can take is let go before the next one is taken. The worker calls `abandon`
//! as soon as the client disconnects (`request.signal`), so that is the fallback.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::access::{effective_tier, Access};
use crate::cache::CacheError;
use crate::clock::{Clock, HostTime};
use crate::protocol::{decode_request, BatchRequest, ErrorBody, ErrorCode, Limits, MAX_TTL_S};
use crate::proxy::{Answer, OriginOutcome, Pending, Proxy, ProxyConfig, ProxyError};
use crate::tile::TileId;
use crate::util::HashMap;

/// Most requests waiting for the origin in one isolate.
pub const MAX_PENDING: usize = 1024;

/// Worker options (JSON, all optional, camelCase). TTLs in seconds (`defaultTtl`,
/// `classTtl`), times with `Ms` in their name in ms, with `S` in seconds.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Options {
    tile_zoom: Option<u8>,
    max_items: Option<usize>,
    max_bytes: Option<usize>,
    split_levels: Option<u8>,
    warm_ring: Option<u32>,
    max_warm_tiles: Option<usize>,
    max_data_tiles: Option<usize>,
    default_ttl: Option<u64>,
    class_ttl: Option<BTreeMap<String, u64>>,
    /// Read by the worker (js/edge.js); here it sets how long a request is held ([`hold_ms`]).
    origin_timeout_ms: Option<u64>,
    /// Read by the worker (js/edge.js) for its warming calls, and by the core
    /// ([`ProxyConfig::warm_timeout_ms`]).
    warm_timeout_ms: Option<u64>,
    /// Token checks, read by the worker (js/edge-auth.js); typed here so a wrong type is
    /// named like any other option.
    #[allow(dead_code)]
    jwt_issuer: Option<String>,
    #[allow(dead_code)]
    jwt_audience: Option<String>,
    #[allow(dead_code)]
    jwt_leeway_s: Option<u16>,
    #[allow(dead_code)]
    jwt_tier_claim: Option<String>,
    #[allow(dead_code)]
    jwks_cache_max_age_s: Option<u32>,
    #[allow(dead_code)]
    jwks_cooldown_s: Option<u32>,
    #[allow(dead_code)]
    jwt_cache_size: Option<u32>,
    /// Most data tiles looked up in (and, separately, written to) the shared cache per
    /// request; 0 turns the shared cache off. Default [`SHARED_TILES`].
    shared_cache_tiles: Option<usize>,
    /// Whole hits written from serialised tiles (default true; the answers are the same).
    spliced_hits: Option<bool>,
    /// Read by the worker: how long a shared-cache call may take before it counts as a miss.
    shared_cache_timeout_ms: Option<u64>,
    /// Read by the worker: how often (at most) it asks the origin's change feed for changes
    /// (0 = never), and how far back a new isolate asks (docs/edge.md, *Changes*).
    #[allow(dead_code)]
    changes_poll_ms: Option<u64>,
    /// Also caps how long a shared-cache entry is kept ([`ProxyConfig::changes_lookback_ms`]).
    changes_lookback_ms: Option<u64>,
    /// Read by the worker: plain `http://` for `ORIGIN` and `JWKS_URL` to any host, not only
    /// to a loopback one (js/edge-auth.js, `checkedUrl`).
    #[allow(dead_code)]
    allow_insecure_origin: Option<bool>,
    /// Read by the worker: `GET /edge/stats` to anyone, not only to a verified token with
    /// `tilewarm_admin: true` (js/edge.js, `statsRefused`).
    #[allow(dead_code)]
    stats_public: Option<bool>,
}

/// Default most data tiles looked up in the shared cache per request and per warming (and
/// written to it, for the answer and for the warming call each): with the origin call, the warming call, a
/// change-feed poll and a key fetch, up to 69 subrequests (docs/edge.md, "Subrequests");
/// on the Free plan set `sharedCacheTiles` to 11 or lower.
pub const SHARED_TILES: usize = 16;

/// Most `sharedCacheTiles` allowed.
pub const MAX_SHARED_TILES: usize = 64;

/// How long a request waiting for the origin is held: the worker's shared-cache lookups and
/// origin calls (`sharedCacheTimeoutMs` + `originTimeoutMs`, 250 ms and 3 s by default: a
/// request's asks in part share its one `originTimeoutMs`, js/edge.js) twice over, plus
/// 10 s. A request held longer is one whose worker will not come back for it.
fn hold_ms(options: &Options) -> u64 {
    let calls = options
        .shared_cache_timeout_ms
        .unwrap_or(250)
        .saturating_add(options.origin_timeout_ms.unwrap_or(3_000));
    calls.saturating_mul(2).saturating_add(10_000)
}

/// The shared-cache tile count from worker options; errors name the option.
fn shared_tiles_from(options: &Options) -> Result<usize, String> {
    match options.shared_cache_tiles {
        None => Ok(SHARED_TILES),
        Some(n) if n <= MAX_SHARED_TILES => Ok(n),
        Some(n) => Err(format!(
            "tilewarm edge options: sharedCacheTiles must be in 0..={MAX_SHARED_TILES}, got {n}"
        )),
    }
}

/// Most a timeout the worker reads (`originTimeoutMs`, `warmTimeoutMs`,
/// `sharedCacheTimeoutMs`) may be, in ms: 10 minutes, the npm package's `batch.timeoutMs`
/// bound. A longer one is no timeout a client waits for, and past 2^31 ms the runtime's
/// timers fire at once.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Worker options from their JSON text (empty for the defaults); errors name the option.
///
/// Each option is read on its own first, so that a value of the wrong type is named by
/// its option, not by a line and column of the JSON text the worker wrote (its defaults
/// and `TILEWARM_OPTIONS` merged), which the deployer never saw.
fn parse_options(options: &str) -> Result<Options, String> {
    use serde_json::value::RawValue;
    if options.trim().is_empty() {
        return Ok(Options::default());
    }
    // Raw values, not `serde_json::Value`, whose deserializer added 12 KB to the edge wasm
    // (470 KB against 458 KB, wasm-opt -O3).
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(options).map_err(|e| {
        format!(
            "tilewarm edge options must be a JSON object: {}",
            unplaced(&e)
        )
    })?;
    for (name, value) in &fields {
        let one = format!(
            "{{{}:{}}}",
            serde_json::to_string(name).unwrap_or_default(),
            value.get()
        );
        if let Err(e) = serde_json::from_str::<Options>(&one) {
            let shown: String = name.chars().take(64).collect();
            return Err(format!("tilewarm edge options: {shown}: {}", unplaced(&e)));
        }
    }
    let options: Options = serde_json::from_str(options)
        .map_err(|e| format!("tilewarm edge options: {}", unplaced(&e)))?;
    check_timeouts(&options)?;
    check_ttls(&options)?;
    Ok(options)
}

/// A JSON error's message without its place (" at line 1 column 21"): a place in the text
/// the worker wrote, or in one option's, says nothing to the deployer.
fn unplaced(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let place = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&place) {
        Some(m) => m.to_owned(),
        None => message,
    }
}

/// `defaultTtl` and `classTtl`'s TTLs are at most [`MAX_TTL_S`] (30 days, the longest
/// `ttl` clients accept), as the server's `--ttl-*-s` flags: a longer one would be
/// answered as 30 days anyway ([`crate::protocol::ttl_left_s`]), so it is a mistake to say
/// at start rather than a setting taken. Zero is the core's check (in the option's units).
fn check_ttls(o: &Options) -> Result<(), String> {
    let max = u64::from(MAX_TTL_S);
    if let Some(s) = o.default_ttl.filter(|s| *s > max) {
        return Err(format!(
            "tilewarm edge options: defaultTtl must be at most {max} s (30 days), got {s}"
        ));
    }
    let mut classes = o.class_ttl.iter().flatten();
    if let Some((class, s)) = classes.find(|(_, s)| **s > max) {
        let class: String = class.chars().take(64).collect();
        return Err(format!(
            "tilewarm edge options: classTtl must be a map of class to a TTL of at most {max} s \
             (30 days), got {}: {s}",
            crate::util::Quoted(&class)
        ));
    }
    Ok(())
}

/// The timeouts the worker reads are in `1..=`[`MAX_TIMEOUT_MS`]: `0` would time every
/// origin call (or shared-cache call) out at once, a silent outage rather than an error.
fn check_timeouts(o: &Options) -> Result<(), String> {
    let timeouts = [
        ("originTimeoutMs", o.origin_timeout_ms),
        ("warmTimeoutMs", o.warm_timeout_ms),
        ("sharedCacheTimeoutMs", o.shared_cache_timeout_ms),
    ];
    for (name, ms) in timeouts {
        if let Some(ms) = ms.filter(|ms| !(1..=MAX_TIMEOUT_MS).contains(ms)) {
            return Err(format!(
                "tilewarm edge options: {name} must be in 1..={MAX_TIMEOUT_MS} ms, got {ms}"
            ));
        }
    }
    Ok(())
}

/// The option (as `TILEWARM_OPTIONS` spells it) of a config field a core error names.
fn option_name(field: &str) -> &str {
    match field {
        "tile_zoom" => "tileZoom",
        "max_items" => "maxItems",
        "max_bytes" => "maxBytes",
        "default_ttl_ms" => "defaultTtl",
        "class_ttl_ms" => "classTtl",
        "split_levels" => "splitLevels",
        "warm_ring" => "warmRing",
        "max_warm_tiles" => "maxWarmTiles",
        "warm_timeout_ms" => "warmTimeoutMs",
        "max_data_tiles" => "maxDataTiles",
        "changes_lookback_ms" => "changesLookbackMs",
        other => other,
    }
}

/// A config the core refused, in the worker's option names: the core names its own fields
/// (`split_levels`, `cache config max_items`), which no deployer wrote. The values the
/// checks refuse are the same in the option's units (0, or a count).
fn option_error(e: &ProxyError) -> String {
    let message = match e {
        ProxyError::OutOfRange {
            field,
            value,
            allowed,
        } => {
            let allowed = allowed.replace("tile_zoom", "tileZoom");
            format!("{} must be in {allowed}, got {value}", option_name(field))
        }
        ProxyError::Cache(CacheError::InvalidConfig {
            field,
            value,
            allowed,
        }) => format!("{} must be {allowed}, got {value}", option_name(field)),
        other => other.to_string(),
    };
    format!("tilewarm edge options: {message}")
}

/// The limits a caller's request is decoded with: the proxy's, with a body of at most
/// [`Limits::max_request_bytes`] (the largest request the tile and id limits allow, about
/// 517 KiB, as the server reads), not the 8 MiB an origin answer may take. A caller's body
/// is held in the isolate (128 MB, shared by every request in it) and copied into the wasm
/// memory, which never shrinks: a few concurrent 8 MiB bodies would take a large share of it.
fn request_limits(limits: &Limits) -> Limits {
    Limits {
        max_body_bytes: limits.max_request_bytes().min(limits.max_body_bytes),
        ..*limits
    }
}

/// The proxy config from worker options.
fn config_from(o: Options) -> ProxyConfig {
    let mut c = ProxyConfig::default();
    if let Some(z) = o.tile_zoom {
        c.cache.tile_zoom = z;
    }
    if let Some(n) = o.max_items {
        c.cache.max_items = n;
    }
    if let Some(n) = o.max_bytes {
        c.cache.max_bytes = n;
    }
    if let Some(n) = o.split_levels {
        c.split_levels = n;
    }
    if let Some(n) = o.warm_ring {
        c.warm_ring = n;
    }
    if let Some(n) = o.max_warm_tiles {
        c.max_warm_tiles = n;
    }
    if let Some(ms) = o.warm_timeout_ms {
        c.warm_timeout_ms = ms;
    }
    if let Some(n) = o.max_data_tiles {
        c.max_data_tiles = n;
    }
    if let Some(s) = o.default_ttl {
        c.cache.default_ttl_ms = s.saturating_mul(1000);
    }
    if let Some(b) = o.spliced_hits {
        c.spliced_hits = b;
    }
    if let Some(ms) = o.changes_lookback_ms {
        c.changes_lookback_ms = ms;
    }
    if let Some(m) = o.class_ttl {
        c.cache.class_ttl_ms = m
            .into_iter()
            .map(|(k, s)| (k, s.saturating_mul(1000)))
            .collect();
    }
    c
}

/// One step of a request, for the worker.
#[wasm_bindgen]
pub struct Step {
    handle: u32,
    status: u16,
    body: Option<String>,
    origin: Option<String>,
    cache: Option<&'static str>,
    warm: Option<String>,
    origin_error: Option<String>,
    access: Option<Access>,
    shared: Option<String>,
    shared_put: Option<String>,
    retry_after_s: Option<u64>,
}

/// Tiles as one space-separated string (`None` for none): one string crosses the boundary.
fn tile_list(tiles: &[TileId]) -> Option<String> {
    (!tiles.is_empty()).then(|| {
        tiles
            .iter()
            .map(TileId::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

#[wasm_bindgen]
impl Step {
    /// The request's handle while [`Step::origin`] is set (for `complete`/`fail`), else 0.
    #[wasm_bindgen(getter)]
    pub fn handle(&self) -> u32 {
        self.handle
    }
    /// HTTP status of the answer (0 while the origin is still to be asked).
    #[wasm_bindgen(getter)]
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The answer's JSON body (UTF-8 bytes), once there is an answer. Bytes, not a
    /// string: the worker hands them to `new Response` as they are, with no UTF-16 string
    /// made and encoded again in between.
    #[wasm_bindgen(getter)]
    pub fn body(&self) -> Option<Vec<u8>> {
        self.body.as_ref().map(|b| b.as_bytes().to_vec())
    }
    /// The origin request's JSON body, when the origin must be asked.
    #[wasm_bindgen(getter)]
    pub fn origin(&self) -> Option<String> {
        self.origin.clone()
    }
    /// `hit`, `partial` or `miss`: the `x-tilewarm-cache` header (absent for a bad request).
    #[wasm_bindgen(getter)]
    pub fn cache(&self) -> Option<String> {
        self.cache.map(str::to_owned)
    }
    /// A warming request's JSON body, to send inside `ctx.waitUntil`.
    #[wasm_bindgen(getter)]
    pub fn warm(&self) -> Option<String> {
        self.warm.clone()
    }
    /// The error code of the origin's failure when a `200` answer lacks its part (the
    /// `x-tilewarm-origin-error` header of a `partial` answer); none on an error answer.
    #[wasm_bindgen(getter, js_name = originError)]
    pub fn origin_error(&self) -> Option<String> {
        self.origin_error.clone()
    }
    /// The tier a `200` answer was filtered for (the `x-tilewarm-access` header and the
    /// body's `access`); with [`Step::origin`], the tier the request is served at; on the
    /// `403` for a body asking above the caller's tier, the caller's verified tier (the
    /// header only).
    #[wasm_bindgen(getter)]
    pub fn access(&self) -> Option<String> {
        self.access.map(|a| a.as_str().to_owned())
    }
    /// With [`Step::origin`]: data tiles to look up in the shared cache first (space
    /// separated); give each entry found to `sharedFill`, then call `resume`.
    #[wasm_bindgen(getter)]
    pub fn shared(&self) -> Option<String> {
        self.shared.clone()
    }
    /// With an answer: data tiles the origin brought in, to write to the shared cache
    /// (space separated; `sharedEntry` gives each one's entry).
    #[wasm_bindgen(getter, js_name = sharedPut)]
    pub fn shared_put(&self) -> Option<String> {
        self.shared_put.clone()
    }
    /// The `Retry-After` of an error answer, in seconds: the `503 overloaded` of an isolate
    /// with [`MAX_PENDING`] requests waiting for the origin, or the `429 rate_limited` and
    /// `503 overloaded` made of the origin's ([`crate::proxy::origin_retry_after_s`]).
    /// Never on a `200`.
    #[wasm_bindgen(getter, js_name = retryAfter)]
    pub fn retry_after(&self) -> Option<u32> {
        self.retry_after_s
            .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
    }
}

/// A shared-cache entry: the body to store, its lifetime and its date.
#[wasm_bindgen]
pub struct SharedEntry {
    body: String,
    max_age_s: u32,
    fetched_at_ms: u64,
}

#[wasm_bindgen]
impl SharedEntry {
    /// The entry's JSON body (the data tile's answer at the tier).
    #[wasm_bindgen(getter)]
    pub fn body(&self) -> String {
        self.body.clone()
    }
    /// Seconds the entry may be kept (`Cache-Control: max-age`).
    #[wasm_bindgen(getter, js_name = maxAge)]
    pub fn max_age(&self) -> u32 {
        self.max_age_s
    }
    /// When the origin request its data came from was planned (ms since the epoch): store
    /// it beside the entry and give it back to `sharedFill` (not the time it is stored: see
    /// `proxy::change`).
    #[wasm_bindgen(getter, js_name = fetchedAt)]
    pub fn fetched_at(&self) -> f64 {
        self.fetched_at_ms as f64
    }
}

/// A shared-cache entry's date as the worker read it (ms since the epoch): a number no
/// clock gives (not a number, infinite, negative, past `Date`'s range of 8.64e15 ms) is the
/// end of time, which the proxy refuses as dated too far ahead
/// ([`crate::proxy::shared::MAX_SHARED_DATE_AHEAD_MS`]): a miss, refetched. (Saturated as it came,
/// `Infinity` and far futures were the end of time, which the proxy counted as now, and
/// `NaN` or a negative date the epoch: long expired.)
fn entry_date(ms: f64) -> u64 {
    if (0.0..=8.64e15).contains(&ms) {
        ms as u64
    } else {
        u64::MAX
    }
}

impl Step {
    fn error(e: &ErrorBody) -> Step {
        Step {
            handle: 0,
            status: e.code.http_status(),
            body: Some(e.to_json()),
            origin: None,
            cache: None,
            warm: None,
            origin_error: None,
            access: None,
            shared: None,
            shared_put: None,
            retry_after_s: None,
        }
    }

    fn answer(a: Answer) -> Step {
        Step {
            handle: 0,
            status: a.status,
            body: Some(a.body),
            origin: None,
            cache: Some(a.verdict.as_str()),
            warm: a.warm.map(|w| w.to_json()),
            origin_error: a.origin_error.map(|e| e.code.as_str().to_owned()),
            access: (a.status == 200).then_some(a.access),
            shared_put: tile_list(&a.shared_put),
            shared: None,
            retry_after_s: a.retry_after_s,
        }
    }
}

/// The caching batch proxy of one isolate.
#[wasm_bindgen]
pub struct EdgeProxy {
    proxy: Proxy,
    /// Requests waiting for the origin, with the time after which they are let go.
    pending: HashMap<u32, (Pending, u64)>,
    /// [`hold_ms`] of the options.
    hold_ms: u64,
    /// The worker's `originTimeoutMs` (3 s by default): the `Retry-After` of the `503` past
    /// [`MAX_PENDING`], when the requests waiting now have had their answer.
    origin_timeout_ms: u64,
    next: u32,
    /// Most data tiles looked up in (or written to) the shared cache per request.
    shared_tiles: usize,
    /// The clock `pending`'s times are on (`crate::clock`): a step back of the worker's
    /// `Date.now()` does not keep a request no worker comes back for past its time.
    clock: Clock,
    /// The worker's times as they come from JS ([`HostTime`]: one that no clock gives is
    /// taken as the last good one).
    host_time: HostTime,
}

#[wasm_bindgen]
impl EdgeProxy {
    /// A proxy from worker options (JSON text; empty for the defaults). Throws an `Error`
    /// naming the option on bad options.
    #[wasm_bindgen(constructor)]
    pub fn new(options: &str) -> Result<EdgeProxy, JsError> {
        let options = parse_options(options).map_err(|e| JsError::new(&e))?;
        let shared_tiles = shared_tiles_from(&options).map_err(|e| JsError::new(&e))?;
        let hold_ms = hold_ms(&options);
        let origin_timeout_ms = options.origin_timeout_ms.unwrap_or(3_000);
        let proxy =
            Proxy::new(config_from(options)).map_err(|e| JsError::new(&option_error(&e)))?;
        Ok(EdgeProxy {
            proxy,
            pending: HashMap::new(),
            hold_ms,
            origin_timeout_ms,
            next: 1,
            shared_tiles,
            clock: Clock::default(),
            host_time: HostTime::default(),
        })
    }

    /// Most data tiles looked up in, or written to, the shared cache per request
    /// (`sharedCacheTiles`); 0 when the shared cache is off.
    #[wasm_bindgen(getter, js_name = sharedTiles)]
    pub fn shared_tiles(&self) -> usize {
        self.shared_tiles
    }

    /// Largest origin answer read, in bytes (check `content-length` before reading): the
    /// protocol's `max_body_bytes`, 8 MiB by default.
    #[wasm_bindgen(getter, js_name = maxBodyBytes)]
    pub fn max_body_bytes(&self) -> usize {
        self.proxy.config().limits.max_body_bytes
    }

    /// Largest request body accepted, in bytes (check `content-length` before reading): the
    /// largest request the tile and id limits allow ([`request_limits`]), about 517 KiB.
    #[wasm_bindgen(getter, js_name = maxRequestBytes)]
    pub fn max_request_bytes(&self) -> usize {
        request_limits(&self.proxy.config().limits).max_body_bytes
    }

    /// Decodes a request body and answers it from the cache, or hands out the origin
    /// request for the misses (with a handle). `verified` is the caller's tier from its
    /// checked token (`public` without one): the body's `access` may only lower it, and the
    /// request is served (cached, forwarded) at that effective tier. A bad body is answered
    /// with the protocol's error (400/413), a body asking above `verified` with 403 whose
    /// [`Step::access`] is `verified`.
    pub fn begin(&mut self, body: &[u8], verified: &str, now_ms: f64) -> Step {
        let Ok(verified) = verified.parse::<Access>() else {
            return Step::error(&ErrorBody {
                code: ErrorCode::Internal,
                message: "the worker passed an unknown verified tier".into(),
            });
        };
        let request = match decode_request(body, &request_limits(&self.proxy.config().limits)) {
            Ok(r) => r,
            Err(e) => return Step::error(&ErrorBody::from(&e)),
        };
        if let Err(e) = effective_tier(verified, request.access) {
            // The tier the credential gives goes in the tier header: a client that asked
            // above it follows it down (`Client::on_reported_failure`).
            return Step {
                access: Some(e.verified),
                ..Step::error(&ErrorBody {
                    code: ErrorCode::Forbidden,
                    message: e.to_string(),
                })
            };
        }
        let now = self.host_time.ms(now_ms);
        let pending = match self.proxy.begin(request, now) {
            Ok(p) => p,
            Err(e) => return Step::error(&e),
        };
        // Requests held past their time are ones no worker will come back for.
        let held_at = self.clock.read(now);
        self.pending.retain(|_, (_, until)| *until > held_at);
        if pending.origin_request().is_some() && self.pending.len() >= MAX_PENDING {
            // Refused at once, not queued: `503 overloaded` (as the server at capacity),
            // asked again when the requests waiting now have had their origin's answer.
            let retry_s = self.origin_timeout_ms.div_ceil(1000).max(1);
            return Step {
                retry_after_s: Some(retry_s),
                ..Step::error(&ErrorBody {
                    code: ErrorCode::Overloaded,
                    message: format!(
                        "this isolate has {MAX_PENDING} requests waiting for the origin, the most \
                         it holds: retry in {retry_s} s"
                    ),
                })
            };
        }
        let handle = self.next;
        self.next = self.next.checked_add(1).unwrap_or(1);
        self.step(handle, pending, true, now)
    }

    /// Answers `pending` from the cache, or keeps it under `handle` and hands out its origin
    /// request (and, with `lookups`, the tiles to look up in the shared cache first).
    fn step(&mut self, handle: u32, pending: Pending, lookups: bool, now: u64) -> Step {
        let Some(origin) = pending.origin_request().map(BatchRequest::to_json) else {
            let answer = self
                .proxy
                .complete(pending, OriginOutcome::Timeout(""), now);
            return Step::answer(answer);
        };
        let shared = if lookups {
            tile_list(&self.proxy.shared_lookups(&pending, self.shared_tiles, now))
        } else {
            None
        };
        let access = Some(pending.request().access);
        let until = self.clock.read(now).saturating_add(self.hold_ms);
        self.pending.insert(handle, (pending, until));
        Step {
            handle,
            status: 0,
            body: None,
            origin: Some(origin),
            cache: None,
            warm: None,
            origin_error: None,
            access,
            shared,
            shared_put: None,
            retry_after_s: None,
        }
    }

    /// A shared-cache entry for data tile `tile` (one of [`Step::shared`]), fetched at
    /// `fetched_at_ms` (its [`SharedEntry::fetched_at`]), for the request of `handle`: fills
    /// the cache of the request's tier. Returns the number of items taken, or -1 when the
    /// entry was refused (not that tile's answer at that tier, expired, invalid, dated at
    /// no time or too far ahead, fetched before a change that covers it) or the handle is
    /// unknown.
    #[wasm_bindgen(js_name = sharedFill)]
    pub fn shared_fill(
        &mut self,
        handle: u32,
        tile: &str,
        body: &[u8],
        fetched_at_ms: f64,
        now_ms: f64,
    ) -> i32 {
        let (Some((p, _)), Ok(tile)) = (self.pending.get(&handle), tile.parse::<TileId>()) else {
            return -1;
        };
        let tier = p.request().access;
        let fetched = entry_date(fetched_at_ms);
        match self
            .proxy
            .shared_fill(tier, tile, body, fetched, self.host_time.ms(now_ms))
        {
            Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(_) => -1,
        }
    }

    /// After the shared-cache lookups: the request of `handle` planned again, answered from
    /// the cache when the entries covered it, else with an origin request for the rest
    /// (under the same handle).
    pub fn resume(&mut self, handle: u32, now_ms: f64) -> Step {
        let Some((p, _)) = self.pending.remove(&handle) else {
            return Step::error(&ErrorBody {
                code: ErrorCode::Internal,
                message: format!("no request is waiting under handle {handle}"),
            });
        };
        let now = self.host_time.ms(now_ms);
        match self.proxy.replan(p, now) {
            Ok(p) => self.step(handle, p, false, now),
            Err(e) => Step::error(&e),
        }
    }

    /// The shared-cache entry of data tile `tile` at tier `tier`, when this isolate's cache
    /// holds it fresh (after [`Step::shared_put`] or a warming answer named it).
    #[wasm_bindgen(js_name = sharedEntry)]
    pub fn shared_entry(&mut self, tier: &str, tile: &str, now_ms: f64) -> Option<SharedEntry> {
        let tier = tier.parse::<Access>().ok()?;
        let tile = tile.parse::<TileId>().ok()?;
        self.proxy
            .shared_entry(tier, tile, self.host_time.ms(now_ms))
            .map(|e| SharedEntry {
                body: e.body,
                max_age_s: e.max_age_s,
                fetched_at_ms: e.fetched_at_ms,
            })
    }

    /// The origin answered `status` with `body` and a `Retry-After` of `retry_after_ms` ms
    /// (negative, or not a number: none, or none that could be read): the answer to the
    /// request of `handle`.
    pub fn complete(
        &mut self,
        handle: u32,
        status: u16,
        body: &[u8],
        retry_after_ms: f64,
        now_ms: f64,
    ) -> Step {
        let retry_after_ms = (retry_after_ms >= 0.0).then_some(retry_after_ms as u64);
        let outcome = OriginOutcome::Answer {
            status,
            body,
            retry_after_ms,
        };
        self.finish(handle, outcome, now_ms)
    }

    /// The origin did not answer: in time (`timeout`; `message` says which timeout, added to
    /// the answer's, empty for nothing), or at all (a network failure described by `message`).
    pub fn fail(&mut self, handle: u32, timeout: bool, message: &str, now_ms: f64) -> Step {
        let outcome = if timeout {
            OriginOutcome::Timeout(message)
        } else {
            OriginOutcome::Unreachable(message)
        };
        self.finish(handle, outcome, now_ms)
    }

    /// The origin answered `status` with a body over [`EdgeProxy::max_body_bytes`], not read
    /// past it: `bytes` is its declared length, or what was read when it passed the limit;
    /// its `Retry-After` as for [`EdgeProxy::complete`] (a `503`'s goes on whatever its body).
    /// A `2xx` to a request for more than one tile or id gives a step with the same handle
    /// and a narrower [`Step::origin`] to send, as after `begin` ([`Proxy::ask_in_part`]).
    #[wasm_bindgen(js_name = tooLarge)]
    pub fn too_large(
        &mut self,
        handle: u32,
        status: u16,
        bytes: f64,
        retry_after_ms: f64,
        now_ms: f64,
    ) -> Step {
        let outcome = OriginOutcome::TooLarge {
            status,
            bytes: bytes.max(0.0) as u64,
            retry_after_ms: (retry_after_ms >= 0.0).then_some(retry_after_ms as u64),
        };
        self.finish(handle, outcome, now_ms)
    }

    /// Forgets a request that will not be completed.
    pub fn abandon(&mut self, handle: u32) {
        self.pending.remove(&handle);
    }

    /// The outcome of the origin request of `handle`: its answer; or, when the origin's
    /// answer was too large to read and asked for more than one tile or id, the same
    /// handle with a narrower origin request to send ([`Proxy::ask_in_part`]).
    fn finish(&mut self, handle: u32, outcome: OriginOutcome<'_>, now_ms: f64) -> Step {
        let now = self.host_time.ms(now_ms);
        match self.pending.remove(&handle) {
            Some((mut p, _)) => {
                if self.proxy.ask_in_part(&mut p, &outcome) {
                    return self.step(handle, p, false, now);
                }
                Step::answer(self.proxy.complete(p, outcome, now))
            }
            None => Step::error(&ErrorBody {
                code: ErrorCode::Internal,
                message: format!("no request is waiting under handle {handle}"),
            }),
        }
    }

    /// The origin's answer to a warming request (`warm`, as [`Step::warm`] gave it), with
    /// its `Retry-After` in ms as for [`EdgeProxy::complete`] (a `429` or `503` puts off
    /// warming that long); fills the cache. Returns the number of items, or -1 when the
    /// answer was not usable.
    pub fn warmed(
        &mut self,
        warm: &str,
        status: u16,
        body: &[u8],
        retry_after_ms: f64,
        now_ms: f64,
    ) -> i32 {
        let Ok(request) = decode_request(warm.as_bytes(), &self.proxy.config().limits) else {
            return -1;
        };
        let retry_after_ms = (retry_after_ms >= 0.0).then_some(retry_after_ms as u64);
        let outcome = OriginOutcome::Answer {
            status,
            body,
            retry_after_ms,
        };
        match self
            .proxy
            .warmed(&request, outcome, self.host_time.ms(now_ms))
        {
            Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(_) => -1,
        }
    }

    /// A shared-cache entry for `tile`, one of the tiles of the warming request `warm` (as
    /// [`Step::warm`] gave it), fetched at `fetched_at_ms`: fills the cache of the
    /// warming's tier, as `sharedFill` does for a request. Returns the number of items
    /// taken, or -1 when the entry was refused or `tile` is not one of `warm`'s. Then call
    /// `warmRest`.
    #[wasm_bindgen(js_name = warmSharedFill)]
    pub fn warm_shared_fill(
        &mut self,
        warm: &str,
        tile: &str,
        body: &[u8],
        fetched_at_ms: f64,
        now_ms: f64,
    ) -> i32 {
        let (Ok(request), Ok(tile)) = (
            decode_request(warm.as_bytes(), &self.proxy.config().limits),
            tile.parse::<TileId>(),
        ) else {
            return -1;
        };
        if !request.tiles.contains(&tile) {
            return -1;
        }
        let (fetched, now) = (entry_date(fetched_at_ms), self.host_time.ms(now_ms));
        match (self.proxy).shared_fill(request.access, tile, body, fetched, now) {
            Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(_) => -1,
        }
    }

    /// After `warmSharedFill`: the warming request to send in place of `warm` (its tiles
    /// the shared cache did not give), or none when nothing is left to ask
    /// ([`Proxy::warm_rest`]). Its answer goes to `warmed` with this request.
    #[wasm_bindgen(js_name = warmRest)]
    pub fn warm_rest(&mut self, warm: &str, now_ms: f64) -> Option<String> {
        let request = decode_request(warm.as_bytes(), &self.proxy.config().limits).ok()?;
        (self.proxy)
            .warm_rest(&request, self.host_time.ms(now_ms))
            .map(|r| r.to_json())
    }

    /// The origin answered a warming request (`warm`) `status` with a body over
    /// [`EdgeProxy::max_body_bytes`], not read past it (`bytes` and `retry_after_ms` as for
    /// [`EdgeProxy::too_large`]): nothing is filled; a `2xx`'s tiles are warmed next in
    /// smaller groups until the one too large is found and held, a `429`'s or `503`'s
    /// `Retry-After` puts off warming. Returns -1 (the answer was not usable).
    #[wasm_bindgen(js_name = warmTooLarge)]
    pub fn warm_too_large(
        &mut self,
        warm: &str,
        status: u16,
        bytes: f64,
        retry_after_ms: f64,
        now_ms: f64,
    ) -> i32 {
        let Ok(request) = decode_request(warm.as_bytes(), &self.proxy.config().limits) else {
            return -1;
        };
        let outcome = OriginOutcome::TooLarge {
            status,
            bytes: bytes.max(0.0) as u64,
            retry_after_ms: (retry_after_ms >= 0.0).then_some(retry_after_ms as u64),
        };
        let _ = self
            .proxy
            .warmed(&request, outcome, self.host_time.ms(now_ms));
        -1
    }

    /// One event of the origin's change feed (`GET /v1/changes`): `invalidate` with its
    /// data (an [`crate::protocol::Invalidation`]) drops what it covers from every tier
    /// ([`Proxy::invalidate`]); `reset` (the feed lost events) drops everything; other
    /// events (`ready`) change nothing. Returns the items dropped, or -1 when an
    /// `invalidate` event's data is not an invalidation: everything is dropped then, since
    /// what it covered is unknown.
    #[wasm_bindgen(js_name = applyChange)]
    pub fn apply_change(&mut self, event: &str, data: &str, now_ms: f64) -> i32 {
        use crate::protocol::{decode_invalidation, Invalidation};
        let now = self.host_time.ms(now_ms);
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        match event {
            "invalidate" => {
                match decode_invalidation(data.as_bytes(), &self.proxy.config().limits) {
                    Ok(inv) => count(self.proxy.invalidate(&inv, now)),
                    Err(_) => {
                        self.proxy.invalidate(&Invalidation::everything(), now);
                        -1
                    }
                }
            }
            "reset" => count(self.proxy.invalidate(&Invalidation::everything(), now)),
            _ => 0,
        }
    }

    /// The feed cannot replay the changes before `floor_ms` (a `reset` whose `from` says
    /// where it can replay from, docs/edge.md "Changes"): drops everything, as a `reset`,
    /// but refuses only shared-cache entries fetched before `floor_ms`
    /// ([`Proxy::invalidate_all_before`]); the worker then replays the changes after it.
    /// Returns the items dropped.
    #[wasm_bindgen(js_name = invalidateAllBefore)]
    pub fn invalidate_all_before(&mut self, floor_ms: f64) -> i32 {
        let n = self.proxy.invalidate_all_before(floor_ms.max(0.0) as u64);
        i32::try_from(n).unwrap_or(i32::MAX)
    }

    /// Counters as JSON: verdicts, origin calls and failures, warming, per-tier cache sizes.
    pub fn stats(&self) -> String {
        let s = self.proxy.stats();
        let tiers: Vec<String> = crate::access::Access::ALL
            .iter()
            .map(|&t| {
                let c = self.proxy.cache_stats(t);
                format!(
                    "\"{}\":{{\"entries\":{},\"bytes\":{},\"tiles\":{},\"evictions\":{}}}",
                    t.as_str(),
                    c.entries,
                    c.bytes,
                    c.tiles,
                    c.evictions
                )
            })
            .collect();
        format!(
            "{{\"hits\":{},\"partials\":{},\"misses\":{},\"originRequests\":{},\"originFailures\":{},\"warmRequests\":{},\"warmFills\":{},\"droppedAboveTier\":{},\"itemsTooLarge\":{},\"sharedFills\":{},\"sharedRefused\":{},\"epoch\":{},\"pending\":{},\"tiers\":{{{}}}}}",
            s.hits,
            s.partials,
            s.misses,
            s.origin_requests,
            s.origin_failures,
            s.warm_requests,
            s.warm_fills,
            s.dropped_above_tier,
            s.items_too_large,
            s.shared_fills,
            s.shared_refused,
            self.proxy.epoch(),
            self.pending.len(),
            tiers.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy config from worker options' JSON text.
    fn config(json: &str) -> Result<ProxyConfig, String> {
        parse_options(json).map(config_from)
    }

    /// The shared-cache tile count from worker options' JSON text.
    fn shared_tiles(json: &str) -> Result<usize, String> {
        shared_tiles_from(&parse_options(json)?)
    }

    #[test]
    fn options_are_checked_by_name() {
        assert!(config("").is_ok());
        let c = config(r#"{"tileZoom":13,"classTtl":{"active":60},"warmRing":0}"#).unwrap();
        assert_eq!(c.cache.tile_zoom, 13);
        assert_eq!(c.cache.class_ttl_ms.get("active"), Some(&60_000));
        assert_eq!(c.warm_ring, 0);
        assert!(c.spliced_hits);
        assert!(!config(r#"{"splicedHits":false}"#).unwrap().spliced_hits);
        // The change look-back caps the shared cache's entries (ProxyConfig).
        assert_eq!(c.changes_lookback_ms, 4 * 3_600_000);
        let l = config(r#"{"changesLookbackMs":600000}"#).unwrap();
        assert_eq!(l.changes_lookback_ms, 600_000);
        assert_eq!(shared_tiles(r#"{"sharedCacheTiles":0}"#), Ok(0));
        assert!(shared_tiles(r#"{"sharedCacheTiles":65}"#)
            .unwrap_err()
            .contains("sharedCacheTiles must be in 0..=64"));
        let e = config(r#"{"tileZom":13}"#).unwrap_err();
        assert!(e.contains("unknown field `tileZom`"), "{e}");
        let e = config(r#"{"maxItems":-1}"#).unwrap_err();
        assert_eq!(
            e,
            "tilewarm edge options: maxItems: invalid value: integer `-1`, expected usize"
        );
    }

    /// The message of the options' error, as `EdgeProxy::new` throws it (its `JsError`
    /// needs a JavaScript host).
    fn refused(json: &str) -> String {
        match config(json) {
            Err(e) => e,
            Ok(c) => Proxy::new(c).map_or_else(|e| option_error(&e), |_| "taken".into()),
        }
    }

    /// Every bad option is named as the deployer wrote it, in its units: a value of the
    /// wrong type by its option (not by a column of the JSON the worker merged), a value
    /// the core refuses by the option, not the core's field (`split_levels`, `max_items`).
    #[test]
    fn a_bad_option_is_named_as_the_deployer_wrote_it() {
        let cases = [
            (
                r#"{"warmRing":0,"originTimeoutMs":1.5}"#,
                "originTimeoutMs: invalid type: floating point `1.5`, expected u64",
            ),
            (
                r#"{"splicedHits":"yes"}"#,
                "splicedHits: invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"classTtl":{"active":-5}}"#,
                "classTtl: invalid value: integer `-5`, expected u64",
            ),
            (
                r#"{"splitLevels":9}"#,
                "splitLevels must be in 0..=8 and at most tileZoom, got 9",
            ),
            (
                r#"{"maxWarmTiles":0}"#,
                "maxWarmTiles must be in 1..=64, got 0",
            ),
            (r#"{"maxItems":0}"#, "maxItems must be at least 1, got 0"),
            (
                r#"{"defaultTtl":0}"#,
                "defaultTtl must be at least 1, got 0",
            ),
            (
                r#"{"tileZoom":30}"#,
                "tileZoom must be an integer in 0..=24, got 30",
            ),
            (
                r#"{"classTtl":{"active":0}}"#,
                "classTtl must be a map of class to a TTL of at least 1, got \"active\": 0",
            ),
            (
                r#"{"maxDataTiles":0}"#,
                "maxDataTiles must be in 1.., got 0",
            ),
            (
                r#"{"defaultTtl":2592001}"#,
                "defaultTtl must be at most 2592000 s (30 days), got 2592001",
            ),
            (
                r#"{"classTtl":{"active":300,"sold":31536000}}"#,
                "classTtl must be a map of class to a TTL of at most 2592000 s (30 days), \
                 got \"sold\": 31536000",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(
                refused(json),
                format!("tilewarm edge options: {want}"),
                "{json}"
            );
        }
        let e = refused("[1]");
        assert!(
            e.starts_with("tilewarm edge options must be a JSON object: invalid type: sequence"),
            "{e}"
        );
    }

    /// A timeout the worker reads is at least 1 ms (0 timed every origin call out at once:
    /// every miss a 504, with nothing said at start) and at most 10 minutes.
    #[test]
    fn the_workers_timeouts_are_in_1_to_600000_ms() {
        for name in ["originTimeoutMs", "warmTimeoutMs", "sharedCacheTimeoutMs"] {
            for ms in [1, 250, MAX_TIMEOUT_MS] {
                assert_eq!(
                    refused(&format!(r#"{{"{name}":{ms}}}"#)),
                    "taken",
                    "{name} {ms}"
                );
            }
            for ms in [0, MAX_TIMEOUT_MS + 1, u64::MAX] {
                assert_eq!(
                    refused(&format!(r#"{{"{name}":{ms}}}"#)),
                    format!("tilewarm edge options: {name} must be in 1..=600000 ms, got {ms}"),
                    "{name} {ms}"
                );
            }
        }
    }

    /// The defaults the core sets (`ProxyConfig::default`, [`SHARED_TILES`]), as the
    /// options' documentation must give them: by option, the start of the text after
    /// "Default " in js/edge.d.ts and after "`option` (" in docs/edge.md's option list.
    fn core_defaults() -> Vec<(&'static str, String)> {
        let c = ProxyConfig::default();
        vec![
            ("tileZoom", c.cache.tile_zoom.to_string()),
            ("maxItems", c.cache.max_items.to_string()),
            ("maxBytes", format!("{} MiB", c.cache.max_bytes >> 20)),
            ("splitLevels", c.split_levels.to_string()),
            ("warmRing", c.warm_ring.to_string()),
            ("maxWarmTiles", c.max_warm_tiles.to_string()),
            ("maxDataTiles", c.max_data_tiles.to_string()),
            ("defaultTtl", (c.cache.default_ttl_ms / 1000).to_string()),
            ("warmTimeoutMs", c.warm_timeout_ms.to_string()),
            ("sharedCacheTiles", SHARED_TILES.to_string()),
            ("changesLookbackMs", c.changes_lookback_ms.to_string()),
        ]
    }

    /// js/edge.d.ts and docs/edge.md give the core's defaults (edge.d.ts said 2 for
    /// `splitLevels` and 256 for `maxDataTiles`, which are 3 and 1024).
    #[test]
    fn the_documented_defaults_are_the_cores() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
        let dts = read("js/edge.d.ts");
        let md = read("docs/edge.md");
        let list = md
            .split_once("`TILEWARM_OPTIONS` (optional): JSON with any of")
            .and_then(|(_, rest)| rest.split_once("Routes:"))
            .expect("docs/edge.md lists the options")
            .0;
        for (name, default) in core_defaults() {
            // The doc comment just above `name?:` in edge.d.ts.
            let (before, _) = dts
                .split_once(&format!("  {name}?:"))
                .unwrap_or_else(|| panic!("edge.d.ts has no {name}"));
            let doc = &before[before.rfind("/**").unwrap()..];
            let given = doc
                .split_once("Default ")
                .unwrap_or_else(|| panic!("edge.d.ts gives no default for {name}"))
                .1;
            assert!(
                given.starts_with(&default),
                "edge.d.ts {name}: Default {given}"
            );
            let given = list
                .split_once(&format!("`{name}` ("))
                .unwrap_or_else(|| panic!("docs/edge.md does not list {name}"))
                .1;
            assert!(given.starts_with(&default), "docs/edge.md {name}: ({given}");
        }
    }

    /// A binding over a proxy that does not warm, with the default options otherwise.
    fn without_warming() -> EdgeProxy {
        EdgeProxy {
            proxy: Proxy::new(config(r#"{"warmRing":0}"#).unwrap()).unwrap(),
            pending: HashMap::new(),
            hold_ms: hold_ms(&Options::default()),
            origin_timeout_ms: 3_000,
            next: 1,
            shared_tiles: SHARED_TILES,
            clock: Clock::default(),
            host_time: HostTime::default(),
        }
    }

    /// A `2xx` too large to read for two tiles is not the answer: the same handle comes
    /// back with the first tile to ask (the worker sends it), and its answer is served
    /// with the second left out as `response_full`.
    #[test]
    fn an_answer_too_large_for_two_tiles_hands_out_the_first_to_ask_again() {
        let mut p = without_warming();
        let body = br#"{"tiles":["14/2624/5721","14/2625/5721"],"access":"public"}"#;
        let s = p.begin(body, "public", 0.0);
        let again = p.too_large(s.handle, 200, 9e6, -1.0, 0.0);
        assert_eq!((again.handle, again.status), (s.handle, 0));
        assert_eq!(
            again.origin.as_deref(),
            Some(r#"{"tiles":["14/2624/5721"],"ids":[],"access":"public"}"#)
        );
        let origin = br#"{"tiles":[{"tile":"14/2624/5721","ids":[],"ttl":300}],"items":[],"missing":[],"access":"public"}"#;
        let done = p.complete(s.handle, 200, origin, -1.0, 0.0);
        assert_eq!(done.status, 200);
        let body = done.body.unwrap();
        assert!(body.contains(r#""code":"response_full""#), "{body}");
        assert!(body.contains(r#""tiles":["14/2625/5721"]"#), "{body}");
        assert!(p.pending.is_empty());
    }

    #[test]
    fn a_request_goes_begin_complete_and_bad_bodies_get_protocol_errors() {
        let mut p = without_warming();
        let s = p.begin(b"{\"tiles\":[\"bad\"]}", "agent", 0.0);
        assert_eq!((s.status, s.cache), (400, None));
        assert!(s.body.unwrap().contains("\"bad_request\""));
        let s = p.begin(
            br#"{"tiles":["14/2624/5721"],"access":"agent"}"#,
            "agent",
            0.0,
        );
        assert_eq!(
            s.origin.as_deref(),
            Some(r#"{"tiles":["14/2624/5721"],"ids":[],"access":"agent"}"#)
        );
        let origin =
            br#"{"tiles":[{"tile":"14/2624/5721","ids":[],"ttl":300}],"items":[],"missing":[]}"#;
        let done = p.complete(s.handle, 200, origin, -1.0, 0.0);
        assert_eq!((done.status, done.cache), (200, Some("miss")));
        let again = p.begin(
            br#"{"tiles":["14/2624/5721"],"access":"agent"}"#,
            "agent",
            1.0,
        );
        assert_eq!(
            (again.status, again.cache, again.origin),
            (200, Some("hit"), None)
        );
        assert_eq!(done.access, Some(Access::Agent));
        assert!(done.body.unwrap().contains(r#""access":"agent""#));
        let unknown = p.complete(12345, 200, origin, -1.0, 0.0);
        assert_eq!(unknown.status, 500);
        assert!(p.stats().contains("\"hits\":1"));
    }

    #[test]
    fn a_request_body_is_at_most_what_the_tile_and_id_limits_allow_not_8_mib() {
        let mut p = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
        let max = Limits::default().max_request_bytes();
        assert_eq!(p.max_request_bytes(), max);
        assert!(max < 600 * 1024 && p.max_body_bytes() == 8 * 1024 * 1024);
        // A valid request padded with whitespace to `len` bytes.
        let padded = |len: usize| {
            let head = br#"{"tiles":["14/2624/5721"],"access":"agent""#;
            let mut b = head.to_vec();
            b.resize(len - 1, b' ');
            b.push(b'}');
            b
        };
        let s = p.begin(&padded(max), "agent", 0.0);
        assert!(s.origin.is_some(), "{:?}", s.body);
        p.abandon(s.handle);
        let s = p.begin(&padded(max + 1), "agent", 0.0);
        assert_eq!((s.status, s.origin), (413, None));
        let body = s.body.unwrap();
        assert!(body.contains("payload_too_large"), "{body}");
        assert!(body.contains(&max.to_string()), "{body}");
    }

    #[test]
    fn requests_no_worker_comes_back_for_are_let_go_after_their_hold() {
        // A worker whose client went away never calls complete, fail or abandon.
        let opts = r#"{"warmRing":0,"originTimeoutMs":750,"sharedCacheTimeoutMs":250}"#;
        let mut p = EdgeProxy::new(opts).unwrap();
        assert_eq!(p.hold_ms, 12_000);
        let body = br#"{"tiles":["14/2624/5721"],"access":"agent"}"#;
        for _ in 0..MAX_PENDING {
            assert!(p.begin(body, "agent", 0.0).origin.is_some());
        }
        // Refused at once as the server at capacity refuses: 503 overloaded, with a
        // Retry-After (the origin timeout, 1 s here), not a 500 internal error.
        let full = p.begin(body, "agent", 11_999.0);
        assert_eq!(full.retry_after(), Some(1));
        assert_eq!((full.status, full.origin), (503, None));
        let msg = full.body.unwrap();
        assert!(msg.contains("\"overloaded\""), "{msg}");
        assert!(
            msg.contains("1024 requests waiting for the origin"),
            "{msg}"
        );
        // Past the hold: the forgotten requests are let go and the isolate serves again.
        let s = p.begin(body, "agent", 12_000.0);
        assert!(s.origin.is_some(), "{:?}", s.body);
        assert!(p.stats().contains("\"pending\":1,"), "{}", p.stats());
        let origin =
            br#"{"tiles":[{"tile":"14/2624/5721","ids":[],"ttl":300}],"items":[],"missing":[]}"#;
        assert_eq!(
            p.complete(s.handle, 200, origin, -1.0, 12_001.0).status,
            200
        );
    }

    /// The worker's `Date.now()` stepping back an hour does not hold them an hour more
    /// (`crate::clock`).
    #[test]
    fn requests_no_worker_comes_back_for_are_let_go_after_their_hold_whatever_the_clock() {
        const T: f64 = 1_800_000_000_000.0;
        let mut p = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
        let body = br#"{"tiles":["14/2624/5721"],"access":"agent"}"#;
        for _ in 0..MAX_PENDING {
            assert!(p.begin(body, "agent", T).origin.is_some());
        }
        let from = T - 3_600_000.0;
        let hold = p.hold_ms as f64;
        assert_eq!(p.begin(body, "agent", from).status, 503);
        assert_eq!(p.begin(body, "agent", from + hold - 1.0).status, 503);
        let s = p.begin(body, "agent", from + hold);
        assert!(s.origin.is_some(), "{:?}", s.body);
    }

    /// A time no clock gives (`Infinity`, NaN, negative) is taken as the last good one
    /// ([`HostTime`]): as given, `Infinity` (saturated to `u64::MAX`) held the proxy's clock,
    /// which never goes back, at the end of time, and nothing was a hit again.
    #[test]
    fn a_time_no_clock_gives_leaves_the_cache_as_it_was() {
        const T: f64 = 1_800_000_000_000.0;
        let mut p = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
        let body = br#"{"tiles":["14/2624/5721"],"access":"agent"}"#;
        let s = p.begin(body, "agent", T);
        let origin =
            br#"{"tiles":[{"tile":"14/2624/5721","ids":[],"ttl":300}],"items":[],"missing":[]}"#;
        assert_eq!(p.complete(s.handle, 200, origin, -1.0, T + 1.0).status, 200);
        for (i, bad) in [f64::INFINITY, f64::NAN, -1.0, 1e300]
            .into_iter()
            .enumerate()
        {
            let _ = p.begin(
                br#"{"tiles":["14/2630/5730"],"access":"agent"}"#,
                "agent",
                bad,
            );
            let hit = p.begin(body, "agent", T + 1_000.0 * (i + 1) as f64);
            assert_eq!(
                (hit.status, hit.origin.is_none()),
                (200, true),
                "after {bad}"
            );
        }
    }

    /// A shared-cache entry whose date is not a time (`Infinity`, `NaN`, negative, far
    /// ahead of this isolate's clock) is refused: a miss, refetched. `Infinity` and far
    /// futures saturated to the end of time, which counted as now: fresh, and past every
    /// change, for ever.
    #[test]
    fn a_shared_entry_dated_at_no_time_is_refused() {
        const T: f64 = 1_800_000_000_000.0;
        let (tile, warm) = (
            "14/2624/5721",
            r#"{"tiles":["14/2624/5721"],"access":"agent"}"#,
        );
        let mut a = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
        let s = a.begin(warm.as_bytes(), "agent", T);
        let origin = br#"{"tiles":[{"tile":"14/2624/5721","ids":["a"],"ttl":300}],"items":[{"id":"a","lon":-122.33,"lat":47.613,"class":"active","access":"public","ttl":300,"data":1}],"missing":[]}"#;
        assert_eq!(a.complete(s.handle, 200, origin, -1.0, T + 1.0).status, 200);
        let e = a.shared_entry("agent", tile, T + 2.0).unwrap();
        let now = T + 10_000.0;
        for bad in [f64::INFINITY, f64::NAN, -1.0, 1e300, 9e15, now + 61_000.0] {
            let mut b = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
            let n = b.warm_shared_fill(warm, tile, e.body().as_bytes(), bad, now);
            assert_eq!(n, -1, "dated {bad}");
            let s = b.begin(warm.as_bytes(), "agent", now + 1.0);
            assert!(s.origin.is_some(), "dated {bad}: a miss");
        }
        // Its own date, or one a little ahead (another isolate's clock): taken.
        for good in [e.fetched_at(), now + 59_000.0] {
            let mut b = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
            let n = b.warm_shared_fill(warm, tile, e.body().as_bytes(), good, now);
            assert_eq!(n, 1, "dated {good}");
        }
    }

    #[test]
    fn the_body_only_lowers_the_verified_tier() {
        let mut p = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
        let body = br#"{"tiles":["14/2624/5721"],"access":"agent"}"#;
        for verified in ["public", "registered", "verified"] {
            let s = p.begin(body, verified, 0.0);
            // The 403 names the verified tier (x-tilewarm-access), for the page to lower to.
            assert_eq!(
                (s.status, s.origin, s.access.map(Access::as_str)),
                (403, None, Some(verified)),
                "{verified}"
            );
            let msg = s.body.unwrap();
            assert!(msg.contains("\"forbidden\""), "{msg}");
            assert!(msg.contains("agent") && msg.contains(verified), "{msg}");
        }
        // Lower than the token: served (and forwarded) at the body's tier.
        let s = p.begin(
            br#"{"tiles":["14/2624/5721"],"access":"registered"}"#,
            "agent",
            0.0,
        );
        assert!(s.origin.unwrap().contains(r#""access":"registered""#));
        // No access in the body is `public`, whatever the token.
        let s = p.begin(br#"{"tiles":["14/2624/5721"]}"#, "agent", 0.0);
        assert!(s.origin.unwrap().contains(r#""access":"public""#));
        let s = p.begin(body, "admin", 0.0);
        assert_eq!(s.status, 500);
        assert!(p.stats().contains("\"originRequests\":0"));
    }

    #[test]
    fn feed_events_drop_what_they_cover_and_bad_data_drops_everything() {
        let mut p = EdgeProxy::new(r#"{"warmRing":0}"#).unwrap();
        let body = br#"{"tiles":["14/2624/5721"],"access":"agent"}"#;
        let fill = |p: &mut EdgeProxy| {
            let s = p.begin(body, "agent", 0.0);
            let origin = br#"{"tiles":[{"tile":"14/2624/5721","ids":["a"],"ttl":300}],"items":[{"id":"a","lon":-122.33,"lat":47.613,"class":"active","access":"public","ttl":300,"data":1}],"missing":[]}"#;
            p.complete(s.handle, 200, origin, -1.0, 0.0);
        };
        let hit = |p: &mut EdgeProxy| p.begin(body, "agent", 1.0).cache == Some("hit");
        fill(&mut p);
        assert!(hit(&mut p));
        assert_eq!(p.apply_change("ready", "{}", 1.0), 0);
        assert!(hit(&mut p));
        assert_eq!(p.apply_change("invalidate", r#"{"ids":["a"]}"#, 1.0), 1);
        assert!(!hit(&mut p));
        fill(&mut p);
        assert_eq!(p.apply_change("invalidate", "not json", 1.0), -1);
        assert!(!hit(&mut p));
        fill(&mut p);
        assert_eq!(p.apply_change("reset", "{}", 1.0), 1);
        assert!(!hit(&mut p));
        assert!(p.stats().contains("\"epoch\":3"), "{}", p.stats());
    }
}
