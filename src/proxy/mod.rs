//! A caching batch proxy: the logic of the edge worker, sans IO, over the caching-proxy
//! [`policy`] the server runs too (this module is the edge's store and its rules; the
//! server's `batch.rs` is its tier's).
//!
//! One request goes through two calls. [`Proxy::begin`] takes the caller's decoded
//! [`BatchRequest`] and `now_ms`, answers what the cache holds for the caller's tier and
//! hands out one origin [`BatchRequest`] with only the misses (tiles and ids), at the
//! caller's tier. [`Proxy::complete`] takes the origin's outcome (a body, an error status, a
//! timeout, a network failure), fills the cache, and produces the merged response body with
//! its HTTP status and the [`Verdict`] (`hit | partial | miss`), plus a second origin
//! request that warms the neighbour tiles ([`Answer::warm`]); its answer goes to
//! [`Proxy::warmed`]. The shell (the worker in `edge/`) only moves bytes.
//!
//! # Access isolation, by construction
//! There is one [`ItemCache`] per access tier. A request at tier `t` reads only the cache of
//! tier `t`, and that cache is filled only from origin answers to requests made at tier
//! `t`, after dropping any item above `t` (an origin that breaks the protocol's access rule
//! is not trusted either). So a `public` caller can never receive an item that an `agent`
//! request brought in, whatever the order of requests. The price is memory: a tile popular
//! with two tiers is held twice.
//!
//! # How requested tiles map onto the cache
//! The cache keys tile lists by *data tile* ([`CacheConfig::tile_zoom`], default 14), as the
//! server's tier does:
//! - a tile at the data zoom or finer is answered from its data-zoom ancestor (a finer tile
//!   keeps only the items positioned inside it); on a miss the data tile is forwarded;
//! - a tile up to [`ProxyConfig::split_levels`] coarser is answered from its `4^levels`
//!   data tiles when every one of them is fresh; otherwise the tile itself is forwarded
//!   (one origin tile per requested tile, so the origin request never exceeds the caller's
//!   tile count) and its list is split onto the data tiles when cached;
//! - a coarser tile is forwarded and not cached; nor are the items only its list names
//!   (the policy's write-back rule, [`Rules::write_back`], which the server follows too).
//!
//! Only [`TileFreshness::Fresh`] data tiles count as hits; anything else (unknown, partial,
//! stale) is forwarded whole.
//!
//! # When the origin fails
//! What the cache held is still served: `200` with those tiles and items, the rest left out
//! of the answer and listed in an extra `error` member ([`Unanswered`]: the code and message
//! of what failed, and exactly which requested tiles and ids are not answered; decoders that
//! do not know it ignore it), so a client treats them as failed, never as empty or missing.
//! An origin answer that leaves out a requested tile or id is reported the same way. With nothing cached the answer is the error itself: `504
//! upstream_timeout` for a timeout, `502 upstream_error` for a network failure, an error
//! status or an invalid body; `400`, `413` and `429` from the origin are the caller's
//! problem and are passed on with the origin's message; a `503` (the origin at capacity)
//! is a `503 overloaded`, as the server answers its own origin's. A `2xx` too large to read
//! for more than one tile or id is asked again in part ([`Proxy::ask_in_part`]). A `429` or `503` carries
//! the origin's `Retry-After` ([`Answer::retry_after_s`], capped, or a default); a `200`
//! never does.

pub mod change;
pub mod policy;
pub mod shared;
pub mod warm_tries;
mod wire;

use std::fmt;
use std::num::NonZeroUsize;

use lru::LruCache;
use serde::Serialize;

use crate::access::Access;
use crate::cache::{
    item_size_bytes, CacheConfig, CacheError, CacheStats, ItemCache, ItemMeta, Priority,
    TileFreshness,
};
use crate::clock::Clock;
use crate::protocol::{
    decode_error, decode_response, ttl_left_s, BatchRequest, BatchResponse, DataTooLarge,
    ErrorBody, ErrorCode, Item, Limits, RawData, TileList, Unanswered,
};
use crate::tile::{ring_around, TileId};
use crate::util::{HashMap, HashSet};
use policy::{reserved_bytes, CoarseMiss, IdSource, Plan, Read, Room, Rules, TileSource};
pub use warm_tries::{WarmTries, MAX_WARM_HOLDS, MAX_WARM_TRIES, WARM_RETRY_MAX_MS, WARM_RETRY_MS};

/// How the proxy caches and warms. Every field has a documented default.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// The cache of *each* tier (limits, TTLs, data zoom). Default [`CacheConfig::default`]
    /// with `max_items` 20 000 and `max_bytes` 16 MiB, so the four tiers together stay well
    /// inside a 128 MB isolate. Stale-while-revalidate is not used: only fresh tiles are
    /// hits.
    pub cache: CacheConfig,
    /// How many zoom levels coarser than the data zoom a requested tile may be and still be
    /// cached (split onto its data tiles). Default 3, as the server's `--split-levels` (the
    /// package coalesces up to 3 levels); at most [`crate::cache::MAX_SPLIT_LEVELS`].
    pub split_levels: u8,
    /// Ring of neighbour data tiles warmed after each request; 0 turns warming off.
    /// Default 1; at most 4. A tile warmed and still not fresh is warmed again only after
    /// [`WARM_RETRY_MS`], doubled per try up to [`WARM_RETRY_MAX_MS`] (its answer may still
    /// be out, or failed, or the cache could not keep it); one a warming's answer left out
    /// as `response_full` (no room) while answering others is due again at once, as a
    /// client asks again; one the origin left out as
    /// `payload_too_large` (to a warming or to a caller's request) only after a tile TTL
    /// (`tile_ttl_ms`, else `default_ttl_ms`: nothing of it could be cached). The tiles of
    /// a warming answered `2xx` with a body over the body limit are warmed again at once
    /// in warmings of at most half as many, down to one: that one's tile is held as one
    /// left out as `payload_too_large`, and warmed alone after ([`WarmTries::split`]); so
    /// is a data tile a caller's request asked for alone and got such an answer for.
    /// After an origin's `429` or `503` (to a warming or to a caller's request, whatever
    /// its body) no warming is planned until its `Retry-After` has passed
    /// ([`origin_retry_after_s`]: capped, or its default); nor for
    /// [`DEFAULT_RETRY_AFTER_S`] after a partial answer that left work out as
    /// `rate_limited` or `overloaded` (load shed, with no `Retry-After`).
    pub warm_ring: u32,
    /// Most tiles in one warming request. Default 16; at least 1.
    pub max_warm_tiles: usize,
    /// How long a warming request may be out, in ms (the worker's `warmTimeoutMs`): the
    /// shell gives its outcome to [`Proxy::warmed`] within this long of its planning, or
    /// never (an answer later than that is given back as a failure). A warming planned
    /// this long ago no longer counts as out ([`change`]): one whose outcome never came
    /// back (its `waitUntil` was cut off) does not make the answers of later warmings of
    /// the same tiles judged by its planning for good. Default [`DEFAULT_WARM_TIMEOUT_MS`]
    /// (5 s); at least 1.
    pub warm_timeout_ms: u64,
    /// Most data tiles one request may cover once its coarse tiles are split; past it
    /// [`Proxy::begin`] refuses it with `400 bad_request` before the cache is read or the
    /// origin asked. Default [`policy::DEFAULT_MAX_DATA_TILES`] (1024), as the server's
    /// `--max-data-tiles`; at least 1.
    pub max_data_tiles: usize,
    /// Limits for decoding origin answers (and for the requests the shell decodes).
    pub limits: Limits,
    /// Answer whole hits of data tiles from their serialised form (`wire`). Default
    /// true; the answers are the same either way.
    pub spliced_hits: bool,
    /// How far back a new isolate replays the origin's change feed (the worker's
    /// `changesLookbackMs`), in ms. A shared-cache entry is kept at most this long after its
    /// origin request ([`shared::SharedEntry::max_age_s`]) and refused when read back older:
    /// a new isolate does not replay a change made longer ago than this before its start,
    /// so it could not refuse an entry fetched before such a change. Default
    /// [`DEFAULT_CHANGES_LOOKBACK_MS`] (4 h); 0: no entry is shared.
    pub changes_lookback_ms: u64,
}

/// The default [`ProxyConfig::changes_lookback_ms`]: 4 h, the longest default class TTL
/// (`off_market`), as the worker's `changesLookbackMs`.
pub const DEFAULT_CHANGES_LOOKBACK_MS: u64 = 4 * 3_600_000;

/// The default [`ProxyConfig::warm_timeout_ms`]: 5 s, as the worker's `warmTimeoutMs`.
pub const DEFAULT_WARM_TIMEOUT_MS: u64 = 5_000;

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            cache: CacheConfig {
                max_items: 20_000,
                max_bytes: 16 * 1024 * 1024,
                ..CacheConfig::default()
            },
            split_levels: 3,
            warm_ring: 1,
            max_warm_tiles: 16,
            warm_timeout_ms: DEFAULT_WARM_TIMEOUT_MS,
            max_data_tiles: policy::DEFAULT_MAX_DATA_TILES,
            limits: Limits::default(),
            spliced_hits: true,
            changes_lookback_ms: DEFAULT_CHANGES_LOOKBACK_MS,
        }
    }
}

/// A [`ProxyConfig`] that is out of range. The message names the field and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The per-tier cache config is invalid.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A proxy field is out of range.
    #[error("proxy config {field} must be in {allowed}, got {value}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        allowed: &'static str,
    },
}

/// Whether a response came from the cache: the `x-tilewarm-cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Everything from the cache; no origin call.
    Hit,
    /// Some from the cache, the rest from the origin (or, when the origin failed, left out).
    Partial,
    /// Nothing from the cache.
    Miss,
}

impl Verdict {
    /// `hit`, `partial` or `miss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Hit => "hit",
            Verdict::Partial => "partial",
            Verdict::Miss => "miss",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of an origin request, as the shell saw it.
#[derive(Clone, Copy, Debug)]
pub enum OriginOutcome<'a> {
    /// An HTTP answer: status and body, and its `Retry-After` in ms when it sent a
    /// well-formed one (delay seconds, or an HTTP date as the ms from now; the shell reads
    /// it, the proxy decides what of it goes on: [`Answer::retry_after_s`]).
    Answer {
        status: u16,
        body: &'a [u8],
        retry_after_ms: Option<u64>,
    },
    /// No answer within the shell's timeout; with what the shell says of it (which timeout,
    /// how much of it was left), added to the answer's message (empty: nothing to add).
    Timeout(&'a str),
    /// No answer at all (connection refused, DNS, TLS, ...), with the shell's description.
    Unreachable(&'a str),
    /// An HTTP answer (`status`) whose body is over [`Limits::max_body_bytes`], not read
    /// past it: `bytes` is its declared length, or what the shell had read when it passed
    /// the limit (the body is at least that large). Its status and `Retry-After` (as for
    /// [`OriginOutcome::Answer`]) keep their meaning: an origin's `503` is at capacity
    /// whatever its body.
    TooLarge {
        status: u16,
        bytes: u64,
        retry_after_ms: Option<u64>,
    },
}

/// A request between [`Proxy::begin`] and [`Proxy::complete`].
#[derive(Debug)]
pub struct Pending {
    request: BatchRequest,
    /// The policy's plan with what the cache held fresh.
    read: Read,
    /// The cached data tiles the answer uses (by index into the plan's data tiles): their
    /// items and the list's expiry.
    stored: HashMap<usize, TileRead>,
    /// Per requested id: `Some(Some(item))` from the cache, `Some(None)` known missing,
    /// `None` asked of the origin.
    id_hits: Vec<Option<Option<Item<RawData>>>>,
    origin: Option<BatchRequest>,
    /// The whole answer, when the cache answered it from serialised tiles ([`wire`]).
    spliced: Option<String>,
    /// The epoch it was planned in ([`change`]): its origin answer is written back only
    /// if no change was applied since.
    epoch: u64,
    /// When it was planned (before its origin request left): what the tiles its answer
    /// fills are dated by for the shared cache ([`change`]).
    planned_ms: u64,
    /// Tiles and ids of the origin request not asked after its answer was too large to
    /// read ([`Proxy::ask_in_part`]): left out as `response_full`, asked again by the client
    /// (with the code of the origin's failure of the last part instead, when it failed).
    deferred: Units,
    /// Tiles and ids not asked of the origin: their answer alone was too large to read
    /// ([`MAX_HELD_TOO_LARGE`]); left out as `payload_too_large`.
    held: Units,
}

/// Tiles and ids of an origin request, in its order.
#[derive(Debug, Default)]
struct Units {
    tiles: Vec<TileId>,
    ids: Vec<String>,
}

impl Units {
    fn is_empty(&self) -> bool {
        self.tiles.is_empty() && self.ids.is_empty()
    }
}

/// One tile or id asked of the origin, as held ([`MAX_HELD_TOO_LARGE`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Unit {
    Tile(TileId),
    Id(String),
}

impl Pending {
    /// The origin request with only the misses, at the caller's tier; `None` when the cache
    /// answers everything (call [`Proxy::complete`] with any outcome, it is not looked at).
    pub fn origin_request(&self) -> Option<&BatchRequest> {
        self.origin.as_ref()
    }

    /// The caller's request.
    pub fn request(&self) -> &BatchRequest {
        &self.request
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// HTTP status: 200, or the error's.
    pub status: u16,
    /// A [`BatchResponse`] (possibly with an `error` member, see the module docs) or an
    /// [`ErrorBody`], as JSON.
    pub body: String,
    /// The `x-tilewarm-cache` header.
    pub verdict: Verdict,
    /// Why the origin's part is missing from a `200` answer, when it is (the
    /// `x-tilewarm-origin-error` header of a `partial` answer); never on an error answer,
    /// which is that error itself.
    pub origin_error: Option<ErrorBody>,
    /// Neighbour tiles to warm (send it after answering, and give its outcome to
    /// [`Proxy::warmed`]).
    pub warm: Option<BatchRequest>,
    /// The tier the answer was filtered for: the request's `access` (which the shell has
    /// checked against the caller's verified tier). Also the body's `access` member.
    pub access: Access,
    /// Data tiles the origin's answer brought into the cache, for the shared cache
    /// ([`Proxy::shared_entry`], see [`shared`]).
    pub shared_put: Vec<TileId>,
    /// The `Retry-After` of an error answer made of the origin's `429 rate_limited` or
    /// `503 overloaded`, in seconds ([`origin_retry_after_s`]); never on a `200`.
    pub retry_after_s: Option<u64>,
}

/// The longest origin `Retry-After` passed on, in seconds: an origin that asks for more (by
/// mistake or not) does not park every caller for longer than an hour (tilewarm-server caps an
/// upstream's with this constant).
pub const MAX_RETRY_AFTER_S: u64 = 3_600;

/// The `Retry-After` passed on with an origin's `429` or `503` that sent none (or none
/// that could be read), in seconds: the server's default `--retry-after-s`.
pub const DEFAULT_RETRY_AFTER_S: u64 = 1;

/// The `Retry-After`, in seconds, of the answer made of `outcome` when it is an origin's
/// `429` or `503`: the origin's, rounded up to whole seconds, at least 1 and at most
/// [`MAX_RETRY_AFTER_S`]; [`DEFAULT_RETRY_AFTER_S`] when it sent none. `None` otherwise.
pub fn origin_retry_after_s(outcome: &OriginOutcome<'_>) -> Option<u64> {
    match *outcome {
        OriginOutcome::Answer {
            status: 429 | 503,
            retry_after_ms,
            ..
        }
        | OriginOutcome::TooLarge {
            status: 429 | 503,
            retry_after_ms,
            ..
        } => Some(retry_after_ms.map_or(DEFAULT_RETRY_AFTER_S, |ms| {
            ms.div_ceil(1000).clamp(1, MAX_RETRY_AFTER_S)
        })),
        _ => None,
    }
}

/// The error an origin's error `status` (not 2xx) with `message` (what its body said)
/// is answered with: `400`, `413` and `429` are the caller's problem and passed on; a `503`
/// (at capacity: the server's own refusal, or its origin's) is `503 overloaded`, so the
/// caller backs off as from the server's ([`origin_retry_after_s`]); any other a `502`.
fn origin_refused(status: u16, message: &str) -> ErrorBody {
    match status {
        400 | 413 | 429 => ErrorBody {
            code: ErrorCode::from_http_status(status),
            message: format!("the origin refused the request: {message}"),
        },
        503 => ErrorBody {
            code: ErrorCode::Overloaded,
            message: format!("the origin is at capacity (HTTP 503): {message}"),
        },
        _ => ErrorBody {
            code: ErrorCode::UpstreamError,
            message: format!("the origin answered HTTP {status}: {message}"),
        },
    }
}

/// Counters since the proxy was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests completed, by verdict.
    pub hits: u64,
    pub partials: u64,
    pub misses: u64,
    /// Origin requests for callers (not warming), and those that failed.
    pub origin_requests: u64,
    pub origin_failures: u64,
    /// Warming requests planned, and warming answers that filled the cache.
    pub warm_requests: u64,
    pub warm_fills: u64,
    /// Origin items dropped because they were above the tier they were asked at.
    pub dropped_above_tier: u64,
    /// Origin items left out because their `data` was over
    /// [`Limits::max_data_bytes`] ([`BatchResponse::take_oversized`]).
    pub items_too_large: u64,
    /// Shared-cache entries taken into the cache, and refused ([`shared`]).
    pub shared_fills: u64,
    pub shared_refused: u64,
}

/// An item's payload in the proxy's caches: its data, and its exact position (written out
/// again in answers; the cache itself keeps only the zoom-24 tile it falls in).
#[derive(Clone, Debug)]
struct Held {
    lon: f64,
    lat: f64,
    data: RawData,
}

/// The caching batch proxy: one [`ItemCache`] per access tier. See the module docs.
pub struct Proxy {
    config: ProxyConfig,
    caches: [ItemCache<Held>; 4],
    /// Per tier: ids the origin reported missing, and until when that answer holds.
    missing: [LruCache<String, u64>; 4],
    stats: ProxyStats,
    /// Serialised data tiles for whole hits.
    wire: wire::Wire,
    /// Changes applied from the feed ([`change`]).
    changes: change::Changes,
    /// Data tiles warmed and not seen fresh since, per tier: not warmed again before
    /// their time ([`WARM_RETRY_MS`]).
    warm_tries: WarmTries<(Access, TileId)>,
    /// No warming is planned before this (ms): the origin answered `429` or `503` with
    /// this `Retry-After` ([`Proxy::origin_asks_for_quiet`]).
    warm_quiet_until_ms: u64,
    /// Per tier, tiles and ids whose origin answer alone was too large to read, and until
    /// when they are not asked of the origin for callers ([`Proxy::ask_in_part`]).
    held_too_large: LruCache<(Access, Unit), u64>,
    /// The shell's times read as monotonic (`crate::clock`): each public call that takes a
    /// time reads it once, so a wall clock stepping back delays no wait or expiry. Times
    /// from outside ([`SharedEntry::fetched_at_ms`](shared::SharedEntry::fetched_at_ms),
    /// [`Proxy::invalidate_all_before`]'s floor) are taken as they are: at most as late as
    /// on this clock, so an entry looks older than it is, never newer (refused or aged
    /// sooner, never kept past a change or its TTL). An entry's date after this clock's wall
    /// time counts as now, and one too far after it is refused
    /// ([`shared::MAX_SHARED_DATE_AHEAD_MS`]).
    clock: Clock,
}

/// Most tiles and ids (of all tiers) held as too large to read alone
/// ([`Proxy::ask_in_part`]); least recently used go first.
pub const MAX_HELD_TOO_LARGE: usize = 1024;

/// A data tile read from the cache: its items shown to the tier, and the list's expiry.
type TileRead = (Vec<Item<RawData>>, u64);

/// Most ids remembered as missing, per tier (least recently used go first).
pub const MAX_MISSING_IDS: usize = 4096;

/// An upper bound of what an item costs in an answer beside twice its id and class and its
/// `data`: its keys, quotes, the longest `lon`, `lat`, tier and `ttl`, a comma.
const ITEM_BYTES: usize = 136;

/// The merged response, its items borrowed (the wire form of [`BatchResponse`]).
#[derive(Serialize, Default)]
struct OutResponse<'a> {
    tiles: Vec<TileList<&'a str>>,
    items: Vec<&'a Item<RawData>>,
    missing: Vec<String>,
    /// The tier the answer was filtered for (the protocol's optional `access` member).
    #[serde(skip_serializing_if = "Option::is_none")]
    access: Option<Access>,
}

/// A response that answers part of a request, with what is not answered and why.
#[derive(Serialize)]
struct PartialResponse<'a> {
    #[serde(flatten)]
    response: &'a OutResponse<'a>,
    error: &'a Unanswered,
}

impl Proxy {
    /// A proxy with empty caches. Errors name the out-of-range field.
    pub fn new(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let range = |field, value: u64, ok: bool, allowed| {
            if ok {
                Ok(())
            } else {
                Err(ProxyError::OutOfRange {
                    field,
                    value,
                    allowed,
                })
            }
        };
        let s = config.split_levels;
        range(
            "split_levels",
            s.into(),
            s <= crate::cache::MAX_SPLIT_LEVELS && s <= config.cache.tile_zoom,
            "0..=8 and at most tile_zoom",
        )?;
        range(
            "warm_ring",
            config.warm_ring.into(),
            config.warm_ring <= 4,
            "0..=4",
        )?;
        let w = config.max_warm_tiles;
        range("max_warm_tiles", w as u64, (1..=64).contains(&w), "1..=64")?;
        let t = config.warm_timeout_ms;
        range("warm_timeout_ms", t, t >= 1, "1..")?;
        let d = config.max_data_tiles;
        range("max_data_tiles", d as u64, d >= 1, "1..")?;
        let make = || ItemCache::new(config.cache.clone());
        let caches = [make()?, make()?, make()?, make()?];
        let cap = NonZeroUsize::new(MAX_MISSING_IDS).unwrap_or(NonZeroUsize::MIN);
        let missing = std::array::from_fn(|_| LruCache::new(cap));
        let changes = change::Changes::new(config.warm_timeout_ms);
        Ok(Proxy {
            config,
            caches,
            missing,
            stats: ProxyStats::default(),
            wire: wire::Wire::new(),
            changes,
            warm_tries: WarmTries::default(),
            warm_quiet_until_ms: 0,
            held_too_large: LruCache::new(
                NonZeroUsize::new(MAX_HELD_TOO_LARGE).unwrap_or(NonZeroUsize::MIN),
            ),
            clock: Clock::default(),
        })
    }

    /// The config.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Counters of the proxy.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// The cache counters of one tier.
    pub fn cache_stats(&self, tier: Access) -> CacheStats {
        self.caches[tier.rank() as usize].stats()
    }

    fn cache(&mut self, tier: Access) -> &mut ItemCache<Held> {
        &mut self.caches[tier.rank() as usize]
    }

    /// The policy's rules for the edge: per-tier caches of data tiles, a coarse tile with a
    /// stale data tile forwarded whole.
    fn rules(&self) -> Rules {
        Rules {
            data_zoom: self.config.cache.tile_zoom,
            split_levels: self.config.split_levels,
            coarse_miss: CoarseMiss::ForwardTile,
            max_data_tiles: self.config.max_data_tiles,
        }
    }

    /// Reads one fresh data tile from `tier`'s cache: its items and the list's expiry.
    fn read_data_tile(&mut self, d: TileId, tier: Access, now_ms: u64) -> TileRead {
        let cache = self.cache(tier);
        let exp = cache.tile_expires_at_ms(d).unwrap_or(now_ms);
        let mut items = Vec::new();
        cache.read_tile(d, tier, now_ms, |item, class, _stale| {
            let held = item.payload();
            items.push(Item {
                id: item.id().to_owned(),
                lon: held.lon,
                lat: held.lat,
                class: class.to_owned(),
                access: item.access(),
                ttl: Some(ttl_left_s(item.expires_at_ms(), now_ms)),
                data: held.data.clone(),
            });
        });
        (items, exp)
    }

    /// Answers what `tier`'s cache holds and plans the origin request for the rest.
    /// `request` is a decoded (hence valid, de-duplicated) request. A request covering more
    /// than [`ProxyConfig::max_data_tiles`] data tiles is refused (`400 bad_request`, the
    /// body to answer with) before anything is read.
    pub fn begin(&mut self, request: BatchRequest, now_ms: u64) -> Result<Pending, ErrorBody> {
        let now_ms = self.clock.read(now_ms);
        self.plan_at(request, now_ms)
    }

    /// [`begin`](Self::begin) at a time read already.
    fn plan_at(&mut self, request: BatchRequest, now_ms: u64) -> Result<Pending, ErrorBody> {
        let tier = request.access;
        // Steps 1 and 2 of the policy: only fresh data tiles count as found.
        let plan = Plan::new(&request.tiles, self.rules()).map_err(|e| e.to_error_body())?;
        let found: Vec<bool> = plan
            .data_tiles()
            .iter()
            .map(|&d| self.cache(tier).tile_freshness(d, tier, now_ms) == TileFreshness::Fresh)
            .collect();
        let dz = self.config.cache.tile_zoom;
        let whole_hit = self.config.spliced_hits
            && request.ids.is_empty()
            && !request.tiles.is_empty()
            && request.tiles.iter().all(|t| t.z() == dz)
            && found.iter().all(|&f| f)
            && plan.data_tiles().len() == request.tiles.len();
        if whole_hit {
            if let Some(body) = self.spliced_answer(&request.tiles, tier, now_ms) {
                return Ok(Pending {
                    read: plan.read(&found),
                    request,
                    stored: HashMap::new(),
                    id_hits: Vec::new(),
                    origin: None,
                    spliced: Some(body),
                    epoch: self.changes.epoch,
                    planned_ms: now_ms,
                    deferred: Units::default(),
                    held: Units::default(),
                });
            }
        }
        let read = plan.read(&found);
        let mut stored = HashMap::new();
        for i in read.stored_tiles() {
            let d = read.plan().data_tiles()[i];
            stored.insert(i, self.read_data_tile(d, tier, now_ms));
        }

        let mut id_hits = Vec::with_capacity(request.ids.len());
        let mut miss_ids = Vec::new();
        for id in &request.ids {
            let hit = self.cache(tier).get(id, tier, now_ms).map(|l| Item {
                id: id.clone(),
                lon: l.item.payload().lon,
                lat: l.item.payload().lat,
                class: l.class.to_owned(),
                access: l.item.access(),
                ttl: Some(ttl_left_s(l.item.expires_at_ms(), now_ms)),
                data: l.item.payload().data.clone(),
            });
            let known_missing = hit.is_none() && {
                let missing = &mut self.missing[tier.rank() as usize];
                match missing.get(id) {
                    Some(&until) if now_ms < until => true,
                    Some(_) => {
                        missing.pop(id);
                        false
                    }
                    None => false,
                }
            };
            id_hits.push(match hit {
                Some(item) => Some(Some(item)),
                None if known_missing => Some(None),
                None => {
                    miss_ids.push(id.clone());
                    None
                }
            });
        }

        // Not asked: what the origin's answer alone was too large to read, while held.
        let mut held = Units::default();
        let mut forward = Vec::new();
        for t in read.origin_tiles() {
            match self.is_held(tier, Unit::Tile(t), now_ms) {
                true => held.tiles.push(t),
                false => forward.push(t),
            }
        }
        miss_ids.retain(|id| {
            let h = self.is_held(tier, Unit::Id(id.clone()), now_ms);
            if h {
                held.ids.push(id.clone());
            }
            !h
        });
        let origin = (!forward.is_empty() || !miss_ids.is_empty()).then_some(BatchRequest {
            tiles: forward,
            ids: miss_ids,
            access: tier,
        });
        Ok(Pending {
            request,
            read,
            stored,
            id_hits,
            origin,
            spliced: None,
            epoch: self.changes.epoch,
            planned_ms: now_ms,
            deferred: Units::default(),
            held,
        })
    }

    /// Whether `unit` is held at `tier` at `now_ms` (its origin answer alone was too large
    /// to read, [`Proxy::ask_in_part`]); a hold that is over is dropped.
    fn is_held(&mut self, tier: Access, unit: Unit, now_ms: u64) -> bool {
        if self.held_too_large.is_empty() {
            return false;
        }
        let key = (tier, unit);
        match self.held_too_large.get(&key) {
            Some(&until) if now_ms < until => true,
            Some(_) => {
                self.held_too_large.pop(&key);
                false
            }
            None => false,
        }
    }

    /// Turns the origin's outcome into a decoded response, or the error to report.
    /// The origin's answer to a request made at `tier`. An answer that reports another tier
    /// (the origin filtered it for a tier the edge did not ask at, e.g. its `ORIGIN_TOKEN`
    /// gives less) is refused ([`BatchResponse::check_tier`]): an answer is never stored
    /// under a tier it was not made for.
    fn decode_origin(
        &self,
        outcome: OriginOutcome<'_>,
        tier: Access,
    ) -> Result<BatchResponse<RawData>, ErrorBody> {
        let response = self.decode_origin_body(outcome)?;
        match response.check_tier(tier) {
            Err(other) => Err(ErrorBody {
                code: ErrorCode::UpstreamError,
                message: format!("{other}: check the tier of the edge's origin credential"),
            }),
            Ok(()) => Ok(response),
        }
    }

    fn decode_origin_body(
        &self,
        outcome: OriginOutcome<'_>,
    ) -> Result<BatchResponse<RawData>, ErrorBody> {
        match outcome {
            OriginOutcome::Timeout(why) => Err(ErrorBody {
                code: ErrorCode::UpstreamTimeout,
                message: match why {
                    "" => "the origin did not answer in time".into(),
                    why => format!("the origin did not answer in time: {why}"),
                },
            }),
            OriginOutcome::Unreachable(why) => Err(ErrorBody {
                code: ErrorCode::UpstreamError,
                message: format!("the origin could not be reached: {why}"),
            }),
            OriginOutcome::TooLarge { status, bytes, .. } => {
                let too_large = format!(
                    "the origin's answer (HTTP {status}) is too large: {bytes} bytes or more, \
                     at most {} are allowed",
                    self.config.limits.max_body_bytes
                );
                // A refusal says what it says whatever its body (a 503 is at capacity, its
                // Retry-After goes on); only the origin's message could not be read.
                Err(match status {
                    400 | 413 | 429 | 503 => origin_refused(status, &too_large),
                    _ => ErrorBody {
                        code: ErrorCode::UpstreamError,
                        message: too_large,
                    },
                })
            }
            OriginOutcome::Answer { status, body, .. } if (200..300).contains(&status) => {
                decode_response(body, &self.config.limits).map_err(|e| ErrorBody {
                    code: ErrorCode::UpstreamError,
                    message: format!("the origin's answer is invalid: {e}"),
                })
            }
            OriginOutcome::Answer { status, body, .. } => {
                let said = decode_error(body);
                let message = said.as_ref().map_or("", |e| e.message.as_str());
                Err(origin_refused(status, message))
            }
        }
    }

    /// Fills `tier`'s cache from an origin answer to a request made at `tier` that asked
    /// for `asked_ids`. Items above `tier` are dropped first (see the module docs); what is
    /// written is the policy's rule ([`Rules::write_back`]); nothing is written when `write`
    /// is false (an answer planned before a change, [`change`]). The data tiles it fills
    /// are dated `planned_ms`, when the answer's origin request was planned (for the shared
    /// cache, [`change`]). Items whose `data` is over [`Limits::max_data_bytes`] are left
    /// out next ([`BatchResponse::take_oversized`]: neither cached nor served, and a copy
    /// cached while smaller dropped). Returns the answer, filtered, and the items left out
    /// for their size.
    fn fill(
        &mut self,
        tier: Access,
        mut response: BatchResponse<RawData>,
        asked_ids: &[String],
        now_ms: u64,
        write: Option<u64>,
    ) -> (BatchResponse<RawData>, Vec<DataTooLarge>) {
        let before = response.items.len();
        let mut dropped_ids = Vec::new();
        response.items.retain(|it| {
            let ok = tier.can_see(it.access);
            if !ok {
                dropped_ids.push(it.id.clone());
            }
            ok
        });
        let dropped = before - response.items.len();
        // For this tier an item above it does not exist (the protocol's rule).
        response.missing.extend(dropped_ids);
        if dropped > 0 {
            self.stats.dropped_above_tier += dropped as u64;
            let kept: HashSet<&str> = response.items.iter().map(|i| i.id.as_str()).collect();
            let kept: HashSet<String> = kept.into_iter().map(str::to_owned).collect();
            for list in &mut response.tiles {
                list.ids.retain(|id| kept.contains(id));
            }
        }
        // After the tier's filter: what it names is an item this tier may see.
        let too_large = response.take_oversized(&self.config.limits);
        self.stats.items_too_large += too_large.len() as u64;
        // A copy cached while it was smaller (it grew with no change) is not served on until
        // its TTL while the origin says it is too large: the fresh answer wins. Dropping it
        // only costs a refetch, so an answer not written back drops it too. Only what is
        // held: an item always too large is named by every answer holding it.
        let cache = self.cache(tier);
        let held: Vec<&str> = (too_large.iter())
            .map(|o| o.id.as_str())
            .filter(|id| cache.tile_of(id).is_some())
            .collect();
        if !held.is_empty() {
            cache.forget_ids(&held);
            self.wire.changed(tier);
        }
        let Some(planned_ms) = write else {
            return (response, too_large);
        };
        // Every serialised tile of this tier is out of date now.
        self.wire.changed(tier);
        let rules = self.rules();
        let missing_until = now_ms.saturating_add(self.config.cache.default_ttl_ms);
        let missing = &mut self.missing[tier.rank() as usize];
        for id in &response.missing {
            missing.put(id.clone(), missing_until);
        }
        for it in &response.items {
            missing.pop(&it.id);
        }
        let keep = rules.write_back(
            response.tiles.iter().map(|l| (l.tile, &l.ids[..])),
            asked_ids,
        );
        let cache = self.cache(tier);
        for it in &response.items {
            if !keep.keeps(&it.id) {
                continue;
            }
            let meta = ItemMeta {
                lon: it.lon,
                lat: it.lat,
                class: it.class.clone(),
                access: it.access,
                ttl_ms: it.ttl.map(|s| u64::from(s) * 1000),
                size_bytes: item_size_bytes(&it.id, &it.class, it.data.get().len()),
            };
            // An item bigger than the cache, or of a class beyond the `MAX_CLASSES` held, is
            // served but not cached.
            let held = Held {
                lon: it.lon,
                lat: it.lat,
                data: it.data.clone(),
            };
            let _ = cache.insert(&it.id, meta, held, now_ms, Priority::Visible);
        }
        drop(keep);
        for list in &response.tiles {
            let t = list.tile;
            if rules.cacheable(t) {
                let ids: Vec<&str> = list.ids.iter().map(String::as_str).collect();
                let ttl_ms = list.ttl.map(|s| u64::from(s) * 1000);
                // Tiles in range and ids already checked by the decoder: cannot fail.
                let _ = cache.insert_tile(t, &ids, ttl_ms, tier, now_ms);
            }
        }
        let (dz, levels) = (rules.data_zoom, rules.split_levels);
        for list in &response.tiles {
            if rules.cacheable(list.tile) {
                for d in list.tile.data_tiles(dz, levels).unwrap_or_default() {
                    self.changes.fetched(tier, d, planned_ms);
                }
            }
        }
        (response, too_large)
    }

    /// Neighbour data tiles of `data_tiles` that `tier`'s cache does not hold fresh and that
    /// were not warmed too recently ([`WARM_RETRY_MS`]), at most
    /// [`ProxyConfig::max_warm_tiles`], as a request at `tier`; none while the origin asked
    /// for quiet ([`Self::origin_asks_for_quiet`]).
    fn plan_warm(
        &mut self,
        data_tiles: &[TileId],
        tier: Access,
        now_ms: u64,
    ) -> Option<BatchRequest> {
        if self.config.warm_ring == 0 || data_tiles.is_empty() || now_ms < self.warm_quiet_until_ms
        {
            return None;
        }
        let ring = ring_around(data_tiles, self.config.warm_ring).ok()?;
        // At most `max_warm_tiles`, and no more than any tile taken may be warmed with
        // ([`WarmTries::group`]: it was in a warming whose answer was too large to read); a
        // tile that needs a smaller group than the one taken so far waits for the next.
        let mut most = self.config.max_warm_tiles;
        let cache = &self.caches[tier.rank() as usize];
        let warm_tries = &mut self.warm_tries;
        let mut tiles = Vec::new();
        for t in ring {
            if tiles.len() >= most {
                break;
            }
            if cache.tile_freshness(t, tier, now_ms) == TileFreshness::Fresh {
                warm_tries.forget(&(tier, t));
                continue;
            }
            let group = warm_tries.group(&(tier, t));
            if warm_tries.due(&(tier, t), now_ms) && tiles.len() < group {
                most = most.min(group);
                tiles.push(t);
            }
        }
        if tiles.is_empty() {
            return None;
        }
        for &t in &tiles {
            warm_tries.tried((tier, t), now_ms);
        }
        self.stats.warm_requests += 1;
        self.changes.warm_planned(tier, &tiles, now_ms);
        Some(BatchRequest {
            tiles,
            ids: Vec::new(),
            access: tier,
        })
    }

    /// The origin's answer `response` to a request for `asked` at `tier`: when it is a
    /// partial answer that left tiles out as `payload_too_large` (a tilewarm-server's tile
    /// over `--max-tile-items` at this tier, or too large for one answer), the data tiles it
    /// has no list for are not warmed at `tier` for a tile TTL (the cache's `tile_ttl_ms`,
    /// else `default_ttl_ms`): nothing of them could be cached, and each warming of them
    /// would be an origin request (and a full read of a dense tile behind it) on the
    /// tiles' retry delays ([`WARM_RETRY_MS`], at most [`WARM_RETRY_MAX_MS`]). Any other
    /// reason (`response_full`, a failing upstream) keeps those delays.
    fn hold_too_large(
        &mut self,
        tier: Access,
        asked: &[TileId],
        response: &BatchResponse<RawData>,
        now_ms: u64,
    ) {
        if response.left_out != Some(ErrorCode::PayloadTooLarge) {
            return;
        }
        let until = now_ms.saturating_add(self.hold_ms());
        let dz = self.config.cache.tile_zoom;
        for &t in asked {
            if t.z() == dz && !response.tiles.iter().any(|l| l.tile == t) {
                self.warm_tries.held_until((tier, t), until);
            }
        }
    }

    /// How long a tile too large to cache is not warmed: a tile TTL (the cache's
    /// `tile_ttl_ms`, else `default_ttl_ms`).
    fn hold_ms(&self) -> u64 {
        let cache = &self.config.cache;
        cache.tile_ttl_ms.unwrap_or(cache.default_ttl_ms)
    }

    /// A warming of `tiles` at `tier` was answered `2xx` with a body over the body limit,
    /// not read: which tile made it too large is not known, and warmed again whole it would
    /// be too large again (an origin request paid for each time, on the retry delays). Each
    /// is warmed next, at once, in a warming of at most half as many ([`WarmTries::split`]),
    /// so the one too large comes out alone within a few warmings and is held, as a tile
    /// the origin leaves out as `payload_too_large`, while the others are cached.
    fn split_too_large(&mut self, tier: Access, tiles: &[TileId], now_ms: u64) {
        let until = now_ms.saturating_add(self.hold_ms());
        for &t in tiles {
            self.warm_tries.split((tier, t), tiles.len(), now_ms, until);
        }
    }

    /// The origin answered `outcome` at `now_ms`: when it is a `429` or `503`, warming
    /// (which nobody waits for) plans nothing until its `Retry-After` has passed
    /// ([`origin_retry_after_s`]: at most [`MAX_RETRY_AFTER_S`], [`DEFAULT_RETRY_AFTER_S`]
    /// when it sent none), whatever the tiles' own retry delays ([`WARM_RETRY_MS`]).
    fn origin_asks_for_quiet(&mut self, outcome: &OriginOutcome<'_>, now_ms: u64) {
        if let Some(s) = origin_retry_after_s(outcome) {
            self.quiet_for(s, now_ms);
        }
    }

    /// The origin's `response` is a partial answer that left work out as `rate_limited` or
    /// `overloaded` (a tilewarm-server whose upstream sheds load): it asks for less as its
    /// whole `429` or `503` does, with no `Retry-After` (a `200` carries none), so warming
    /// plans nothing for [`DEFAULT_RETRY_AFTER_S`], as the server's warm-up is quiet for its
    /// `--retry-after-s`. A timeout left out (`upstream_timeout`) does not, as a whole
    /// `504` does not.
    fn partial_asks_for_quiet(&mut self, response: &BatchResponse<RawData>, now_ms: u64) {
        if matches!(
            response.left_out,
            Some(ErrorCode::RateLimited | ErrorCode::Overloaded)
        ) {
            self.quiet_for(DEFAULT_RETRY_AFTER_S, now_ms);
        }
    }

    /// No warming is planned for `s` seconds from `now_ms` (nor before a later time set).
    fn quiet_for(&mut self, s: u64, now_ms: u64) {
        let until = now_ms.saturating_add(s.saturating_mul(1000));
        self.warm_quiet_until_ms = self.warm_quiet_until_ms.max(until);
    }

    /// The origin answered `pending`'s origin request `2xx` with a body over the body limit
    /// (`outcome` is [`OriginOutcome::TooLarge`]), not read: which of its tiles and ids made
    /// it so is not known, and asked whole again (the client retrying) it would be too large
    /// each time, a `502` on every retry. When it asked for more than one tile or id, it is
    /// narrowed to its first half (tiles, then ids, in its order) and `true` is returned:
    /// send [`Pending::origin_request`] again, and give its outcome to this again or to
    /// [`Proxy::complete`]. What it no longer asks is left out of the answer as
    /// `response_full` (the client asks for it again, in a later request), or with the code
    /// of the origin's failure of the last part (`upstream_timeout`, `upstream_error`,
    /// `rate_limited`, `overloaded`: the client backs off first). One asked alone
    /// in this way and too large is held by [`Proxy::complete`] for a tile TTL (or until a
    /// change covers it, [`Proxy::invalidate`]): not asked
    /// of the origin for callers at that tier, left out as `payload_too_large`. So a request either
    /// answers part of what it asked the origin for or holds one tile or id (progress), in
    /// at most 1 + log2(tiles and ids asked) origin calls. `false` for any other outcome
    /// (and nothing changes): call [`Proxy::complete`].
    pub fn ask_in_part(&mut self, pending: &mut Pending, outcome: &OriginOutcome<'_>) -> bool {
        let Some(o) = pending.origin.as_mut() else {
            return false;
        };
        let unread = matches!(
            outcome,
            OriginOutcome::TooLarge {
                status: 200..=299,
                ..
            }
        );
        let n = o.tiles.len() + o.ids.len();
        if !unread || n <= 1 {
            return false;
        }
        let keep = n / 2;
        let (tiles, ids) = if keep < o.tiles.len() {
            (o.tiles.split_off(keep), std::mem::take(&mut o.ids))
        } else {
            (Vec::new(), o.ids.split_off(keep - o.tiles.len()))
        };
        // In request order: what this call no longer asks comes before what an earlier
        // one left.
        pending.deferred.tiles.splice(0..0, tiles);
        pending.deferred.ids.splice(0..0, ids);
        self.stats.origin_requests += 1;
        self.stats.origin_failures += 1;
        true
    }

    /// Takes the origin's outcome for [`Pending::origin_request`] (ignored when there was
    /// none), fills the cache and answers the caller.
    pub fn complete(
        &mut self,
        pending: Pending,
        outcome: OriginOutcome<'_>,
        now_ms: u64,
    ) -> Answer {
        let now_ms = self.clock.read(now_ms);
        let Pending {
            request,
            read,
            stored,
            id_hits,
            origin,
            spliced,
            epoch,
            planned_ms,
            deferred,
            held,
        } = pending;
        let write = self.current(epoch).then_some(planned_ms);
        let tier = request.access;
        if let Some(body) = spliced {
            self.stats.hits += 1;
            let warm = self.plan_warm(read.plan().data_tiles(), tier, now_ms);
            return Answer {
                status: 200,
                body,
                verdict: Verdict::Hit,
                origin_error: None,
                warm,
                access: tier,
                shared_put: Vec::new(),
                retry_after_s: None,
            };
        }
        let retry_after_s = origin.as_ref().and(origin_retry_after_s(&outcome));
        // A `2xx` too large to read: for a part asked alone, no failure of the origin.
        let unread = matches!(
            outcome,
            OriginOutcome::TooLarge {
                status: 200..=299,
                ..
            }
        );
        if let Some(o) = &origin {
            self.origin_asks_for_quiet(&outcome, now_ms);
            // The answer for one data tile alone was too large to read: that tile is too
            // large, and is held from warming as after a warming of it alone.
            let dz = self.config.cache.tile_zoom;
            let alone = o.ids.is_empty() && matches!(o.tiles[..], [t] if t.z() == dz);
            if alone && unread {
                self.split_too_large(tier, &o.tiles, now_ms);
            }
            // One tile or id asked alone, in part of a request ([`Proxy::ask_in_part`]),
            // whose answer is too large to read: not asked again for callers for a tile TTL,
            // so the request's next try asks the rest. (A request for it alone gets the
            // error, as before: there is no rest.)
            let unit = match (&o.tiles[..], &o.ids[..]) {
                ([t], []) => Some(Unit::Tile(*t)),
                ([], [id]) => Some(Unit::Id(id.clone())),
                _ => None,
            };
            if let (Some(unit), true) = (unit, unread && !deferred.is_empty()) {
                let until = now_ms.saturating_add(self.hold_ms());
                self.held_too_large.put((tier, unit), until);
            }
        }
        let mut too_large = Vec::new();
        let (origin_answer, origin_error) = match &origin {
            None => (None, None),
            Some(_) => {
                self.stats.origin_requests += 1;
                match self.decode_origin(outcome, tier) {
                    Ok(r) => {
                        if let Some(o) = &origin {
                            self.hold_too_large(tier, &o.tiles, &r, now_ms);
                        }
                        self.partial_asks_for_quiet(&r, now_ms);
                        let asked = origin.as_ref().map_or(&[][..], |o| &o.ids[..]);
                        let (r, over) = self.fill(tier, r, asked, now_ms, write);
                        too_large = over;
                        (Some(r), None)
                    }
                    Err(e) => {
                        self.stats.origin_failures += 1;
                        (None, Some(e))
                    }
                }
            }
        };

        let empty = BatchResponse::default();
        let answer = origin_answer.as_ref().unwrap_or(&empty);
        let lists: HashMap<TileId, &TileList> = answer.tiles.iter().map(|l| (l.tile, l)).collect();
        let origin_items: HashMap<&str, &Item<RawData>> =
            answer.items.iter().map(|i| (i.id.as_str(), i)).collect();
        let origin_missing: HashSet<&str> = answer.missing.iter().map(String::as_str).collect();

        // Step 4 of the policy; items are borrowed from the cache read and the origin's
        // answer, not copied.
        let served_cached = read.uses_store() || id_hits.iter().any(Option::is_some);
        let id_sources = id_hits.iter().zip(&request.ids).map(|(hit, id)| match hit {
            // Not a copy the origin's answer says is too large now (`fill` dropped it).
            Some(Some(item)) if !too_large.iter().any(|o| o.id == *id) => IdSource::Found(item),
            Some(Some(_)) => IdSource::Unanswered,
            Some(None) => IdSource::Missing,
            None => match origin_items.get(id.as_str()) {
                Some(item) => IdSource::Found(*item),
                // Known not to exist (items above the tier were moved to `missing` by `fill`).
                None if origin_missing.contains(id.as_str()) => IdSource::Missing,
                // The call failed, or its answer says nothing of the id: not answered.
                None => IdSource::Unanswered,
            },
        });
        let mut assembled = read.assemble(
            tier,
            |i| {
                stored.get(&i).map(|(items, exp)| TileSource {
                    items: items.iter().collect(),
                    ttl_s: Some(ttl_left_s(*exp, now_ms)),
                })
            },
            |t| {
                lists.get(&t).map(|l| TileSource {
                    items: l
                        .ids
                        .iter()
                        .filter_map(|id| origin_items.get(id.as_str()).copied())
                        .collect(),
                    ttl_s: l.ttl,
                })
            },
            &request.ids,
            id_sources,
        );
        // What clients read: what fits is answered in request order, the rest left out to
        // be asked again (`response_full`), a tile too large alone named.
        let limits = &self.config.limits;
        let room = Room {
            items: limits.max_items,
            bytes: (limits.max_body_bytes)
                .saturating_sub(reserved_bytes(&request.tiles, &request.ids)),
        };
        let fitted = assembled.fit(room, &request.ids, |it| {
            2 * (it.id.len() + it.class.len()) + it.data.get().len() + ITEM_BYTES
        });
        let unanswered = assembled.is_partial().then(|| {
            let left_out = format!(
                "the origin's answer left out {} of the tiles and {} of the ids asked for",
                assembled.unanswered_tiles.len(),
                assembled.unanswered_ids.len()
            );
            // An id left out for its size is named, with its size and the limit.
            let oversized = assembled
                .unanswered_ids
                .iter()
                .find_map(|id| too_large.iter().find(|o| o.id == *id));
            // An origin's partial answer says why it left them out (a tilewarm-server's
            // `response_full` is asked again, not a failure): its code is passed on.
            let told = answer.left_out.unwrap_or(ErrorCode::UpstreamError);
            // One code for all: the origin's own reason (shed load, no room) wins over the
            // size, as what it left out is not too large (a client retries it as the
            // overload; told `payload_too_large`, it would not).
            let (code, message) = match (&origin_error, oversized, answer.left_out) {
                (Some(e), ..) => (e.code, e.message.clone()),
                (None, Some(o), Some(c)) if c != ErrorCode::PayloadTooLarge => {
                    (c, format!("{left_out}: {o}"))
                }
                (None, Some(o), _) => (ErrorCode::PayloadTooLarge, format!("{left_out}: {o}")),
                (None, None, _) => (told, left_out),
            };
            let max = self.config.limits.max_body_bytes;
            let (code, message) = if !deferred.is_empty() {
                // Asked in part: the rest is served when asked again (`response_full`
                // wins, as in one answer's report, unless the origin failed the last part).
                let part = format!(
                    "the origin's answer to them all was over the body limit ({max} bytes) \
                     and they were asked for in part: {} of the tiles and {} of the ids were \
                     not asked, ask for them again",
                    deferred.tiles.len(),
                    deferred.ids.len()
                );
                let own =
                    origin_error.is_some() || oversized.is_some() || answer.left_out.is_some();
                let message = if own {
                    format!("{part}; {message}")
                } else {
                    part
                };
                // The origin's trouble wins (a timeout, shed load, a failure): asked again at
                // once (`response_full`), the rest would go to an origin that could not
                // answer the part; a client backs off first after such a code, as after a
                // whole request's. A part too large alone (`unread`: held, no failure of the
                // origin's) keeps `response_full`: the rest is served when asked again.
                let code = match &origin_error {
                    Some(e)
                        if !unread
                            && (e.code.sheds_load() || e.code == ErrorCode::UpstreamError) =>
                    {
                        e.code
                    }
                    _ => ErrorCode::ResponseFull,
                };
                (code, message)
            } else if !held.is_empty() && code == ErrorCode::UpstreamError && origin_error.is_none()
            {
                let why = format!(
                    "{message}: the origin's answer for {} of the tiles and {} of the ids alone \
                     was over the body limit ({max} bytes), so they are not asked of it again \
                     for a tile TTL",
                    held.tiles.len(),
                    held.ids.len()
                );
                (ErrorCode::PayloadTooLarge, why)
            } else {
                (code, message)
            };
            Unanswered {
                code,
                message,
                tiles: assembled.unanswered_tiles.clone(),
                ids: assembled.unanswered_ids.clone(),
            }
        });
        let unanswered = fitted.report(unanswered, room.items, limits.max_body_bytes);
        let out = OutResponse {
            tiles: assembled.tiles,
            items: assembled.items,
            missing: assembled.missing,
            access: Some(tier),
        };

        let verdict = match (&origin, served_cached) {
            (None, _) => Verdict::Hit,
            (Some(_), true) => Verdict::Partial,
            (Some(_), false) => Verdict::Miss,
        };
        match verdict {
            Verdict::Hit => self.stats.hits += 1,
            Verdict::Partial => self.stats.partials += 1,
            Verdict::Miss => self.stats.misses += 1,
        }

        if let Some(error) = &origin_error {
            if !served_cached {
                return Answer {
                    status: error.code.http_status(),
                    body: error.to_json(),
                    verdict,
                    origin_error: None,
                    warm: None,
                    access: tier,
                    shared_put: Vec::new(),
                    retry_after_s,
                };
            }
        }
        if let Some(error) = &unanswered {
            let body = serde_json::to_string(&PartialResponse {
                response: &out,
                error,
            })
            .unwrap_or_default();
            return Answer {
                status: 200,
                body,
                verdict,
                origin_error,
                warm: None,
                access: tier,
                shared_put: Vec::new(),
                retry_after_s: None,
            };
        }
        // Tiles, strings, numbers and raw JSON always serialise.
        let body = serde_json::to_string(&out).unwrap_or_default();
        let warm = self.plan_warm(read.plan().data_tiles(), tier, now_ms);
        let shared_put = match origin {
            None => Vec::new(),
            Some(_) => {
                let cache = &self.caches[tier.rank() as usize];
                read.plan()
                    .data_tiles()
                    .iter()
                    .enumerate()
                    .filter(|(i, &d)| {
                        !stored.contains_key(i)
                            && cache.tile_freshness(d, tier, now_ms) == TileFreshness::Fresh
                    })
                    .map(|(_, &d)| d)
                    .collect()
            }
        };
        Answer {
            status: 200,
            body,
            verdict,
            origin_error: None,
            warm,
            access: tier,
            shared_put,
            retry_after_s: None,
        }
    }

    /// Takes the origin's answer to an [`Answer::warm`] request and fills the cache of the
    /// request's tier, unless a change was applied since it was planned ([`change`]).
    /// Returns how many items the answer held, or why it was not used.
    pub fn warmed(
        &mut self,
        request: &BatchRequest,
        outcome: OriginOutcome<'_>,
        now_ms: u64,
    ) -> Result<usize, ErrorBody> {
        let now_ms = self.clock.read(now_ms);
        // Its planning is used up by any answer, a failure too (a warming of the same tiles
        // planned later is judged by its own, [`change::Changes::warm_planned`]).
        let planned = self
            .changes
            .warm_current(request.access, &request.tiles, now_ms);
        self.origin_asks_for_quiet(&outcome, now_ms);
        if let OriginOutcome::TooLarge {
            status: 200..=299, ..
        } = outcome
        {
            self.split_too_large(request.access, &request.tiles, now_ms);
        }
        let response = self.decode_origin(outcome, request.access)?;
        self.hold_too_large(request.access, &request.tiles, &response, now_ms);
        self.partial_asks_for_quiet(&response, now_ms);
        let Some(planned_ms) = planned else {
            return Err(ErrorBody {
                code: ErrorCode::UpstreamError,
                message: "the warming answer was asked for before a change to the cache \
                          (or is not one this proxy planned); not written"
                    .into(),
            });
        };
        let n = response.items.len();
        // Left out for want of room by an answer that held some of them (progress): the
        // rest only did not fit, and are warmed again at once, as a client asks again.
        let no_room: Vec<TileId> =
            if response.left_out == Some(ErrorCode::ResponseFull) && !response.tiles.is_empty() {
                let listed: HashSet<TileId> = response.tiles.iter().map(|l| l.tile).collect();
                (request.tiles.iter().copied())
                    .filter(|t| !listed.contains(t))
                    .collect()
            } else {
                Vec::new()
            };
        self.fill(
            request.access,
            response,
            &request.ids,
            now_ms,
            Some(planned_ms),
        );
        self.stats.warm_fills += 1;
        // The tiles it filled are warmed again as soon as they expire, not after a delay.
        let cache = &self.caches[request.access.rank() as usize];
        for &t in &request.tiles {
            if cache.tile_freshness(t, request.access, now_ms) == TileFreshness::Fresh {
                self.warm_tries.forget(&(request.access, t));
            }
        }
        for t in no_room {
            self.warm_tries.again(&(request.access, t), now_ms);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_in_parts;
