//! A caching batch proxy: the logic of the edge worker, sans IO.
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
//! - a coarser tile is forwarded and not cached.
//!
//! Only [`TileFreshness::Fresh`] data tiles count as hits; anything else (unknown, partial,
//! stale) is forwarded whole.
//!
//! # When the origin fails
//! What the cache held is still served: `200` with those tiles and items, the rest left out
//! of the answer (the client asks again for tiles and ids a response does not answer), and
//! an extra `error` member (the protocol's error object, ignored by decoders that do not
//! know it) saying what failed. With nothing cached the answer is the error itself: `504
//! upstream_timeout` for a timeout, `502 upstream_error` for a network failure, an error
//! status or an invalid body; `400`, `413` and `429` from the origin are the caller's
//! problem and are passed on with the origin's message.

use std::fmt;

use std::num::NonZeroUsize;

use lru::LruCache;
use serde::Serialize;

use crate::access::Access;
use crate::cache::{
    CacheConfig, CacheError, CacheStats, ItemCache, ItemMeta, Priority, TileFreshness,
};
use crate::protocol::{
    decode_error, decode_response, ttl_left_s, BatchRequest, BatchResponse, ErrorBody, ErrorCode,
    Item, Limits, RawData, TileList,
};
use crate::tile::{ring_around, TileId};
use crate::util::{HashMap, HashSet};

/// How the proxy caches and warms. Every field has a documented default.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// The cache of *each* tier (limits, TTLs, data zoom). Default [`CacheConfig::default`]
    /// with `max_items` 20 000 and `max_bytes` 16 MiB, so the four tiers together stay well
    /// inside a 128 MB isolate. Stale-while-revalidate is not used: only fresh tiles are
    /// hits.
    pub cache: CacheConfig,
    /// How many zoom levels coarser than the data zoom a requested tile may be and still be
    /// cached (split onto its data tiles). Default 2; at most [`crate::cache::MAX_SPLIT_LEVELS`].
    pub split_levels: u8,
    /// Ring of neighbour data tiles warmed after each request; 0 turns warming off.
    /// Default 1; at most 4.
    pub warm_ring: u32,
    /// Most tiles in one warming request. Default 16; at least 1.
    pub max_warm_tiles: usize,
    /// Limits for decoding origin answers (and for the requests the shell decodes).
    pub limits: Limits,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            cache: CacheConfig {
                max_items: 20_000,
                max_bytes: 16 * 1024 * 1024,
                ..CacheConfig::default()
            },
            split_levels: 2,
            warm_ring: 1,
            max_warm_tiles: 16,
            limits: Limits::default(),
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
    /// An HTTP answer: status and body.
    Answer { status: u16, body: &'a [u8] },
    /// No answer within the shell's timeout.
    Timeout,
    /// No answer at all (connection refused, DNS, TLS, ...), with the shell's description.
    Unreachable(&'a str),
}

/// How one requested tile is answered.
#[derive(Debug)]
enum Route {
    /// From the cache: these ids (each in `Pending::cached`), list fresh until `exp_ms`.
    Cached { ids: Vec<String>, exp_ms: u64 },
    /// From the origin's list of this forwarded tile (the tile itself, or its data-zoom
    /// ancestor).
    Forward(TileId),
}

/// A request between [`Proxy::begin`] and [`Proxy::complete`].
#[derive(Debug)]
pub struct Pending {
    request: BatchRequest,
    routes: Vec<Route>,
    /// Per requested id: served from the cache?
    id_hits: Vec<bool>,
    /// Items read from the cache, by id.
    cached: HashMap<String, Item<RawData>>,
    /// The data tiles the request touched (for warming).
    data_tiles: Vec<TileId>,
    origin: Option<BatchRequest>,
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
    /// Why the origin's part is missing, when it is.
    pub origin_error: Option<ErrorBody>,
    /// Neighbour tiles to warm (send it after answering, and give its outcome to
    /// [`Proxy::warmed`]).
    pub warm: Option<BatchRequest>,
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
}

/// The caching batch proxy: one [`ItemCache`] per access tier. See the module docs.
pub struct Proxy {
    config: ProxyConfig,
    caches: [ItemCache<RawData>; 4],
    /// Per tier: ids the origin reported missing, and until when that answer holds.
    missing: [LruCache<String, u64>; 4],
    stats: ProxyStats,
}

/// A data tile read from the cache: (id, lon, lat) of each item shown, and the list's expiry.
type TileRead = (Vec<(String, f64, f64)>, u64);

/// Most ids remembered as missing, per tier (least recently used go first).
pub const MAX_MISSING_IDS: usize = 4096;

/// The bytes an item is charged in the cache: its strings and payload plus a fixed overhead.
fn size_of(item: &Item<RawData>) -> usize {
    item.id.len() + item.class.len() + item.data.get().len() + 64
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: ErrorCode,
    message: &'a str,
}

/// The merged response, its items borrowed (the wire form of [`BatchResponse`]).
#[derive(Serialize, Default)]
struct OutResponse<'a> {
    tiles: Vec<TileList>,
    items: Vec<&'a Item<RawData>>,
    missing: Vec<String>,
}

/// A response that answers part of a request, with the reason the rest is missing.
#[derive(Serialize)]
struct PartialResponse<'a> {
    #[serde(flatten)]
    response: &'a OutResponse<'a>,
    error: ErrorFields<'a>,
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
        let make = || ItemCache::new(config.cache.clone());
        let caches = [make()?, make()?, make()?, make()?];
        let cap = NonZeroUsize::new(MAX_MISSING_IDS).unwrap_or(NonZeroUsize::MIN);
        let missing = std::array::from_fn(|_| LruCache::new(cap));
        Ok(Proxy {
            config,
            caches,
            missing,
            stats: ProxyStats::default(),
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

    fn cache(&mut self, tier: Access) -> &mut ItemCache<RawData> {
        &mut self.caches[tier.rank() as usize]
    }

    /// Reads one fresh data tile from `tier`'s cache into `cached`; its ids and expiry.
    fn read_data_tile(
        &mut self,
        d: TileId,
        tier: Access,
        now_ms: u64,
        cached: &mut HashMap<String, Item<RawData>>,
    ) -> TileRead {
        let cache = self.cache(tier);
        let exp = cache.tile_expires_at_ms(d).unwrap_or(now_ms);
        let mut ids = Vec::new();
        cache.read_tile(d, tier, now_ms, |item, _stale| {
            ids.push((item.id().to_owned(), item.lon(), item.lat()));
            if !cached.contains_key(item.id()) {
                cached.insert(
                    item.id().to_owned(),
                    Item {
                        id: item.id().to_owned(),
                        lon: item.lon(),
                        lat: item.lat(),
                        class: item.class().to_owned(),
                        access: item.access(),
                        ttl: Some(ttl_left_s(item.expires_at_ms(), now_ms)),
                        data: item.payload().clone(),
                    },
                );
            }
        });
        (ids, exp)
    }

    /// Answers what `tier`'s cache holds and plans the origin request for the rest.
    /// `request` is a decoded (hence valid, de-duplicated) request.
    pub fn begin(&mut self, request: BatchRequest, now_ms: u64) -> Pending {
        let dz = self.config.cache.tile_zoom;
        let tier = request.access;
        let mut cached = HashMap::new();
        let mut routes = Vec::with_capacity(request.tiles.len());
        let mut forward: Vec<TileId> = Vec::new();
        let mut forwarded: HashSet<TileId> = HashSet::new();
        let mut data_tiles: Vec<TileId> = Vec::new();
        let mut seen_data: HashSet<TileId> = HashSet::new();
        let mut read_memo: HashMap<TileId, TileRead> = HashMap::new();

        for &t in &request.tiles {
            let data = t
                .data_tiles(dz, self.config.split_levels)
                .unwrap_or_default();
            for &d in &data {
                if seen_data.insert(d) {
                    data_tiles.push(d);
                }
            }
            let fresh = !data.is_empty()
                && data.iter().all(|&d| {
                    self.cache(tier).tile_freshness(d, tier, now_ms) == TileFreshness::Fresh
                });
            if fresh {
                let mut ids = Vec::new();
                let mut exp_ms = u64::MAX;
                for &d in &data {
                    if !read_memo.contains_key(&d) {
                        let read = self.read_data_tile(d, tier, now_ms, &mut cached);
                        read_memo.insert(d, read);
                    }
                    if let Some((list, exp)) = read_memo.get(&d) {
                        exp_ms = exp_ms.min(*exp);
                        ids.extend(
                            list.iter()
                                .filter(|(_, lon, lat)| t.z() <= dz || t.contains_point(*lon, *lat))
                                .map(|(id, _, _)| id.clone()),
                        );
                    }
                }
                routes.push(Route::Cached { ids, exp_ms });
            } else {
                // A finer tile forwards its data tile (always there), others themselves.
                let f = match data.first() {
                    Some(&d) if t.z() > dz => d,
                    _ => t,
                };
                if forwarded.insert(f) {
                    forward.push(f);
                }
                routes.push(Route::Forward(f));
            }
        }

        let mut id_hits = Vec::with_capacity(request.ids.len());
        let mut miss_ids = Vec::new();
        for id in &request.ids {
            let hit = self.cache(tier).get(id, tier, now_ms).map(|l| Item {
                id: id.clone(),
                lon: l.item.lon(),
                lat: l.item.lat(),
                class: l.item.class().to_owned(),
                access: l.item.access(),
                ttl: Some(ttl_left_s(l.item.expires_at_ms(), now_ms)),
                data: l.item.payload().clone(),
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
            id_hits.push(hit.is_some() || known_missing);
            match hit {
                Some(item) => {
                    cached.entry(id.clone()).or_insert(item);
                }
                None if known_missing => {}
                None => miss_ids.push(id.clone()),
            }
        }

        let origin = (!forward.is_empty() || !miss_ids.is_empty()).then_some(BatchRequest {
            tiles: forward,
            ids: miss_ids,
            access: tier,
        });
        Pending {
            request,
            routes,
            id_hits,
            cached,
            data_tiles,
            origin,
        }
    }

    /// Turns the origin's outcome into a decoded response, or the error to report.
    fn decode_origin(
        &self,
        outcome: OriginOutcome<'_>,
    ) -> Result<BatchResponse<RawData>, ErrorBody> {
        match outcome {
            OriginOutcome::Timeout => Err(ErrorBody {
                code: ErrorCode::UpstreamTimeout,
                message: "the origin did not answer in time".into(),
            }),
            OriginOutcome::Unreachable(why) => Err(ErrorBody {
                code: ErrorCode::UpstreamError,
                message: format!("the origin could not be reached: {why}"),
            }),
            OriginOutcome::Answer { status, body } if (200..300).contains(&status) => {
                decode_response(body, &self.config.limits).map_err(|e| ErrorBody {
                    code: ErrorCode::UpstreamError,
                    message: format!("the origin's answer is invalid: {e}"),
                })
            }
            OriginOutcome::Answer { status, body } => {
                let said = decode_error(body);
                let message = said.as_ref().map_or("", |e| e.message.as_str());
                Err(match status {
                    400 | 413 | 429 => ErrorBody {
                        code: ErrorCode::from_http_status(status),
                        message: format!("the origin refused the request: {message}"),
                    },
                    _ => ErrorBody {
                        code: ErrorCode::UpstreamError,
                        message: format!("the origin answered HTTP {status}: {message}"),
                    },
                })
            }
        }
    }

    /// Fills `tier`'s cache from an origin answer to a request made at `tier`. Items above
    /// `tier` are dropped first (see the module docs). Returns the answer, filtered.
    fn fill(
        &mut self,
        tier: Access,
        mut response: BatchResponse<RawData>,
        now_ms: u64,
    ) -> BatchResponse<RawData> {
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
        let dz = self.config.cache.tile_zoom;
        let split = self.config.split_levels;
        let missing_until = now_ms.saturating_add(self.config.cache.default_ttl_ms);
        let missing = &mut self.missing[tier.rank() as usize];
        for id in &response.missing {
            missing.put(id.clone(), missing_until);
        }
        for it in &response.items {
            missing.pop(&it.id);
        }
        let cache = self.cache(tier);
        for it in &response.items {
            let meta = ItemMeta {
                lon: it.lon,
                lat: it.lat,
                class: it.class.clone(),
                access: it.access,
                ttl_ms: it.ttl.map(|s| u64::from(s) * 1000),
                size_bytes: size_of(it),
            };
            // An item bigger than the cache is served but not cached.
            let _ = cache.insert(&it.id, meta, it.data.clone(), now_ms, Priority::Visible);
        }
        for list in &response.tiles {
            let t = list.tile;
            if t.z() <= dz && dz - t.z() <= split {
                let ids: Vec<&str> = list.ids.iter().map(String::as_str).collect();
                let ttl_ms = list.ttl.map(|s| u64::from(s) * 1000);
                // Tiles in range and ids already checked by the decoder: cannot fail.
                let _ = cache.insert_tile(t, &ids, ttl_ms, tier, now_ms);
            }
        }
        response
    }

    /// Neighbour data tiles of `data_tiles` that `tier`'s cache does not hold fresh, at most
    /// [`ProxyConfig::max_warm_tiles`], as a request at `tier`.
    fn plan_warm(
        &mut self,
        data_tiles: &[TileId],
        tier: Access,
        now_ms: u64,
    ) -> Option<BatchRequest> {
        if self.config.warm_ring == 0 || data_tiles.is_empty() {
            return None;
        }
        let ring = ring_around(data_tiles, self.config.warm_ring).ok()?;
        let max = self.config.max_warm_tiles;
        let cache = self.cache(tier);
        let tiles: Vec<TileId> = ring
            .into_iter()
            .filter(|&t| cache.tile_freshness(t, tier, now_ms) != TileFreshness::Fresh)
            .take(max)
            .collect();
        if tiles.is_empty() {
            return None;
        }
        self.stats.warm_requests += 1;
        Some(BatchRequest {
            tiles,
            ids: Vec::new(),
            access: tier,
        })
    }

    /// Takes the origin's outcome for [`Pending::origin_request`] (ignored when there was
    /// none), fills the cache and answers the caller.
    pub fn complete(
        &mut self,
        pending: Pending,
        outcome: OriginOutcome<'_>,
        now_ms: u64,
    ) -> Answer {
        let Pending {
            request,
            routes,
            id_hits,
            cached,
            data_tiles,
            origin,
        } = pending;
        let tier = request.access;
        let (origin_answer, origin_error) = match &origin {
            None => (None, None),
            Some(_) => {
                self.stats.origin_requests += 1;
                match self.decode_origin(outcome) {
                    Ok(r) => (Some(self.fill(tier, r, now_ms)), None),
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

        // Items are borrowed from the cache read and the origin's answer, not copied.
        let mut out = OutResponse::default();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut served_cached = false;
        fn add<'a>(
            item: &'a Item<RawData>,
            seen: &mut HashSet<&'a str>,
            out: &mut OutResponse<'a>,
        ) {
            if seen.insert(item.id.as_str()) {
                out.items.push(item);
            }
        }
        for (&t, route) in request.tiles.iter().zip(&routes) {
            match route {
                Route::Cached { ids, exp_ms } => {
                    served_cached = true;
                    let mut list_ids = Vec::with_capacity(ids.len());
                    for id in ids {
                        if let Some(item) = cached.get(id) {
                            list_ids.push(id.clone());
                            add(item, &mut seen, &mut out);
                        }
                    }
                    let exp = if *exp_ms == u64::MAX { now_ms } else { *exp_ms };
                    out.tiles.push(TileList {
                        tile: t,
                        ids: list_ids,
                        ttl: Some(ttl_left_s(exp, now_ms)),
                    });
                }
                Route::Forward(f) => {
                    let Some(list) = lists.get(f) else { continue };
                    let mut list_ids = Vec::new();
                    for id in &list.ids {
                        let Some(item) = origin_items.get(id.as_str()) else {
                            continue;
                        };
                        if tier.can_see(item.access)
                            && (t == *f || t.contains_point(item.lon, item.lat))
                        {
                            list_ids.push(id.clone());
                            add(item, &mut seen, &mut out);
                        }
                    }
                    out.tiles.push(TileList {
                        tile: t,
                        ids: list_ids,
                        ttl: list.ttl,
                    });
                }
            }
        }
        for (id, &hit) in request.ids.iter().zip(&id_hits) {
            if hit {
                served_cached = true;
                match cached.get(id) {
                    Some(item) => add(item, &mut seen, &mut out),
                    None => out.missing.push(id.clone()),
                }
            } else if let Some(item) = origin_items.get(id.as_str()) {
                add(item, &mut seen, &mut out);
            } else if origin_missing.contains(id.as_str()) {
                out.missing.push(id.clone());
            } else if origin_answer.is_some() {
                // Answered but neither found nor missing: an item above the tier we dropped.
                out.missing.push(id.clone());
            }
        }

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
                    origin_error: origin_error.clone(),
                    warm: None,
                };
            }
            let body = serde_json::to_string(&PartialResponse {
                response: &out,
                error: ErrorFields {
                    code: error.code,
                    message: &error.message,
                },
            })
            .unwrap_or_default();
            return Answer {
                status: 200,
                body,
                verdict,
                origin_error,
                warm: None,
            };
        }
        // Tiles, strings, numbers and raw JSON always serialise.
        let body = serde_json::to_string(&out).unwrap_or_default();
        let warm = self.plan_warm(&data_tiles, tier, now_ms);
        Answer {
            status: 200,
            body,
            verdict,
            origin_error: None,
            warm,
        }
    }

    /// Takes the origin's answer to an [`Answer::warm`] request and fills the cache of the
    /// request's tier. Returns how many items the answer held, or why it was not used.
    pub fn warmed(
        &mut self,
        request: &BatchRequest,
        outcome: OriginOutcome<'_>,
        now_ms: u64,
    ) -> Result<usize, ErrorBody> {
        let response = self.decode_origin(outcome)?;
        let n = response.items.len();
        self.fill(request.access, response, now_ms);
        self.stats.warm_fills += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Origin;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    fn raw(s: &str) -> RawData {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn tile(s: &str) -> TileId {
        s.parse().unwrap()
    }

    /// Items in and around 14/2624/5721 (Seattle), one per tier per data tile of a 3×3 block,
    /// plus a second public item in the centre tile.
    fn items() -> Vec<Item<RawData>> {
        let centre = tile("14/2624/5721");
        let mut out = Vec::new();
        for dx in -1..=1i64 {
            for dy in -1..=1i64 {
                let t = centre.offset(dx, dy).unwrap();
                let b = t.bounds();
                for (k, access) in Access::ALL.into_iter().enumerate() {
                    let f = (k as f64 + 1.0) / 6.0;
                    out.push(Item {
                        id: format!("{}-{}-{}", t.x(), t.y(), access.as_str()),
                        lon: b.west + (b.east - b.west) * f,
                        lat: b.south + (b.north - b.south) * f,
                        class: "active".into(),
                        access,
                        ttl: None,
                        data: raw(&format!("{{\"k\":{k}}}")),
                    });
                }
            }
        }
        let b = centre.bounds();
        out.push(Item {
            id: "extra".into(),
            lon: b.west + (b.east - b.west) * 0.9,
            lat: b.south + (b.north - b.south) * 0.9,
            class: "off_market".into(),
            access: Access::Public,
            ttl: Some(60),
            data: raw("null"),
        });
        out
    }

    fn origin() -> Origin<RawData> {
        Origin::new(items()).unwrap()
    }

    /// Runs one request through the proxy against `origin`; the forwarded request (if any)
    /// and the answer's decoded body.
    fn run(
        proxy: &mut Proxy,
        origin: &Origin<RawData>,
        request: BatchRequest,
        now: u64,
    ) -> (Option<BatchRequest>, Answer, BatchResponse<RawData>) {
        let pending = proxy.begin(request, now);
        let forwarded = pending.origin_request().cloned();
        let body = forwarded
            .as_ref()
            .map(|r| origin.answer(r, Some(300)).to_json())
            .unwrap_or_default();
        let answer = proxy.complete(
            pending,
            OriginOutcome::Answer {
                status: 200,
                body: body.as_bytes(),
            },
            now,
        );
        let decoded = decode_response(answer.body.as_bytes(), &Limits::default()).unwrap();
        (forwarded, answer, decoded)
    }

    fn req(tiles: &[&str], ids: &[&str], access: Access) -> BatchRequest {
        BatchRequest {
            tiles: tiles.iter().map(|t| tile(t)).collect(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            access,
        }
    }

    fn no_warm() -> ProxyConfig {
        ProxyConfig {
            warm_ring: 0,
            ..ProxyConfig::default()
        }
    }

    /// The ids and items of a response, sorted, for comparison with the origin's answer.
    type Shape = (Vec<(TileId, Vec<String>)>, Vec<String>, Vec<String>);

    fn shape(r: &BatchResponse<RawData>) -> Shape {
        let mut tiles: Vec<_> = r
            .tiles
            .iter()
            .map(|l| {
                let mut ids = l.ids.clone();
                ids.sort();
                (l.tile, ids)
            })
            .collect();
        tiles.sort();
        let mut items: Vec<String> = r
            .items
            .iter()
            .map(|i| {
                format!(
                    "{}|{}|{}|{}",
                    i.id,
                    i.class,
                    i.access.as_str(),
                    i.data.get()
                )
            })
            .collect();
        items.sort();
        let mut missing = r.missing.clone();
        missing.sort();
        (tiles, items, missing)
    }

    #[test]
    fn repeat_request_is_a_hit_with_the_same_answer() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let r = req(
            &["14/2624/5721", "14/2625/5721"],
            &["extra", "nope"],
            Access::Verified,
        );
        let (fwd, first, body1) = run(&mut p, &o, r.clone(), 1_000);
        assert_eq!(first.verdict, Verdict::Miss);
        assert_eq!(fwd.unwrap(), r);
        let (fwd, second, body2) = run(&mut p, &o, r.clone(), 2_000);
        assert_eq!(fwd, None);
        assert_eq!(second.verdict, Verdict::Hit);
        assert_eq!(shape(&body1), shape(&body2));
        // Both equal what the origin says directly.
        assert_eq!(shape(&body2), shape(&o.answer(&r, None)));
        assert_eq!(body2.missing, vec!["nope".to_string()]);
        assert_eq!(p.stats().origin_requests, 1);
    }

    #[test]
    fn partial_hit_forwards_only_the_misses() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        run(
            &mut p,
            &o,
            req(&["14/2624/5721"], &["extra"], Access::Public),
            0,
        );
        let r = req(
            &["14/2624/5721", "14/2625/5721", "14/2624/5722"],
            &["extra", "2625-5721-public"],
            Access::Public,
        );
        let (fwd, a, body) = run(&mut p, &o, r.clone(), 10);
        assert_eq!(a.verdict, Verdict::Partial);
        assert_eq!(
            fwd.unwrap(),
            req(
                &["14/2625/5721", "14/2624/5722"],
                &["2625-5721-public"],
                Access::Public
            )
        );
        assert_eq!(shape(&body), shape(&o.answer(&r, None)));
        // Finer tiles are answered from their cached data tile, filtered by position.
        let fine = req(&["15/5248/11442", "16/10496/22884"], &[], Access::Public);
        let (fwd, a, body) = run(&mut p, &o, fine.clone(), 20);
        assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
        assert_eq!(shape(&body), shape(&o.answer(&fine, None)));
    }

    #[test]
    fn fine_misses_forward_their_data_tile_once() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let fine = req(
            &["15/5248/11442", "15/5249/11442", "16/10496/22884"],
            &[],
            Access::Agent,
        );
        let (fwd, a, body) = run(&mut p, &o, fine.clone(), 0);
        assert_eq!(a.verdict, Verdict::Miss);
        assert_eq!(fwd.unwrap().tiles, vec![tile("14/2624/5721")]);
        assert_eq!(shape(&body), shape(&o.answer(&fine, None)));
    }

    #[test]
    fn coarse_tiles_split_onto_data_tiles_and_far_ones_pass_through() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let coarse = req(&["13/1312/2860"], &[], Access::Registered);
        let (fwd, a, body) = run(&mut p, &o, coarse.clone(), 0);
        assert_eq!(
            (fwd.unwrap().tiles, a.verdict),
            (coarse.tiles.clone(), Verdict::Miss)
        );
        assert_eq!(shape(&body), shape(&o.answer(&coarse, None)));
        // Its four data tiles are now known (some empty), and so is the coarse tile.
        for t in [
            "14/2624/5720",
            "14/2624/5721",
            "14/2625/5720",
            "14/2625/5721",
            "13/1312/2860",
        ] {
            let r = req(&[t], &[], Access::Registered);
            let (fwd, a, body) = run(&mut p, &o, r.clone(), 5);
            assert_eq!((fwd, a.verdict), (None, Verdict::Hit), "{t}");
            assert_eq!(shape(&body), shape(&o.answer(&r, None)), "{t}");
        }
        // Three levels coarser: always forwarded.
        let far = req(&["11/328/715"], &[], Access::Registered);
        for _ in 0..2 {
            let (fwd, a, body) = run(&mut p, &o, far.clone(), 5);
            assert_eq!((fwd.unwrap(), a.verdict), (far.clone(), Verdict::Miss));
            assert_eq!(shape(&body), shape(&o.answer(&far, None)));
        }
    }

    #[test]
    fn agent_warmed_tile_gives_a_public_caller_nothing_above_public() {
        let o = origin();
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let t = "14/2624/5721";
        let (_, a, body) = run(
            &mut p,
            &o,
            req(&[t], &["2624-5721-agent"], Access::Agent),
            0,
        );
        assert_eq!(a.verdict, Verdict::Miss);
        assert!(body.items.iter().any(|i| i.access == Access::Agent));
        let (fwd, a, body) = run(
            &mut p,
            &o,
            req(&[t], &["2624-5721-agent"], Access::Public),
            1,
        );
        // The public tier's cache is separate: a miss, forwarded at the public tier.
        assert_eq!(a.verdict, Verdict::Miss);
        assert_eq!(fwd.unwrap().access, Access::Public);
        assert!(body.items.iter().all(|i| i.access == Access::Public));
        assert_eq!(body.missing, vec!["2624-5721-agent".to_string()]);
    }

    #[test]
    fn an_origin_that_leaks_higher_tiers_is_filtered_and_not_cached() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let r = req(&["14/2624/5721"], &["2624-5721-agent"], Access::Public);
        let pending = p.begin(r.clone(), 0);
        // A broken origin answers at the agent tier.
        let leaky = BatchRequest {
            access: Access::Agent,
            ..pending.origin_request().unwrap().clone()
        };
        let body = o.answer(&leaky, None).to_json();
        let a = p.complete(
            pending,
            OriginOutcome::Answer {
                status: 200,
                body: body.as_bytes(),
            },
            0,
        );
        let got = decode_response(a.body.as_bytes(), &Limits::default()).unwrap();
        assert!(got.items.iter().all(|i| i.access == Access::Public));
        assert_eq!(got.missing, vec!["2624-5721-agent".to_string()]);
        // Registered, verified and agent in the tile (the agent one also asked for by id).
        assert_eq!(p.stats().dropped_above_tier, 3);
        let (fwd, a, got) = run(&mut p, &o, r, 1);
        assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
        assert!(got.items.iter().all(|i| i.access == Access::Public));
    }

    #[test]
    fn origin_failures_serve_what_is_cached() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        run(&mut p, &o, req(&["14/2624/5721"], &[], Access::Public), 0);
        let both = req(
            &["14/2624/5721", "14/2625/5721"],
            &["extra"],
            Access::Public,
        );
        let cases: [(OriginOutcome<'_>, u16, ErrorCode); 5] = [
            (OriginOutcome::Timeout, 504, ErrorCode::UpstreamTimeout),
            (
                OriginOutcome::Unreachable("connection refused"),
                502,
                ErrorCode::UpstreamError,
            ),
            (
                OriginOutcome::Answer {
                    status: 500,
                    body: b"oops",
                },
                502,
                ErrorCode::UpstreamError,
            ),
            (
                OriginOutcome::Answer {
                    status: 200,
                    body: b"{\"tiles\":7}",
                },
                502,
                ErrorCode::UpstreamError,
            ),
            (
                OriginOutcome::Answer {
                    status: 429,
                    body: br#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
                },
                429,
                ErrorCode::RateLimited,
            ),
        ];
        for (outcome, status, code) in cases {
            // Nothing cached for this one: the error itself.
            let pending = p.begin(req(&["14/2625/5722"], &[], Access::Public), 0);
            let a = p.complete(pending, outcome, 0);
            assert_eq!((a.status, a.verdict), (status, Verdict::Miss));
            assert_eq!(decode_error(a.body.as_bytes()).unwrap().code, code);
            // Partly cached: 200 with the cached tile, the rest left out, the error named.
            let pending = p.begin(both.clone(), 0);
            let a = p.complete(pending, outcome, 0);
            assert_eq!((a.status, a.verdict), (200, Verdict::Partial));
            assert_eq!(a.origin_error.as_ref().unwrap().code, code);
            let got = decode_response(a.body.as_bytes(), &Limits::default()).unwrap();
            assert_eq!(got.tiles.len(), 1);
            assert_eq!(got.tiles[0].tile, tile("14/2624/5721"));
            assert_eq!(got.tiles[0].ids.len(), 2);
            assert!(got.missing.is_empty());
            let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
            assert_eq!(v["error"]["code"], code.as_str());
            assert!(a.warm.is_none());
        }
    }

    #[test]
    fn warming_plans_uncached_neighbours_and_fills_them() {
        let o = origin();
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let (_, a, _) = run(
            &mut p,
            &o,
            req(&["14/2624/5721"], &[], Access::Registered),
            0,
        );
        let warm = a.warm.unwrap();
        assert_eq!(warm.access, Access::Registered);
        assert_eq!(warm.tiles.len(), 8);
        let body = o.answer(&warm, Some(300)).to_json();
        let n = p
            .warmed(
                &warm,
                OriginOutcome::Answer {
                    status: 200,
                    body: body.as_bytes(),
                },
                0,
            )
            .unwrap();
        assert_eq!(n, 16); // two tiers visible to registered, in 8 tiles
        let r = req(&["14/2623/5720", "14/2625/5722"], &[], Access::Registered);
        let (fwd, a, body) = run(&mut p, &o, r.clone(), 1);
        assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
        assert_eq!(shape(&body), shape(&o.answer(&r, None)));
        // A warming answer that fails fills nothing.
        assert!(p.warmed(&warm, OriginOutcome::Timeout, 2).is_err());
    }

    #[test]
    fn expired_tiles_are_forwarded_again() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        // The centre tile holds an item with a 60 s ttl; this one only 300 s items.
        let r = req(&["14/2625/5721"], &[], Access::Public);
        run(&mut p, &o, r.clone(), 0);
        let (fwd, a, _) = run(&mut p, &o, r.clone(), 299_999);
        assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
        let (fwd, a, _) = run(&mut p, &o, r.clone(), 300_000);
        assert_eq!((fwd.unwrap(), a.verdict), (r, Verdict::Miss));
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = Proxy::new(ProxyConfig {
            max_warm_tiles: 0,
            ..ProxyConfig::default()
        })
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "proxy config max_warm_tiles must be in 1..=64, got 0"
        );
        assert!(Proxy::new(ProxyConfig {
            split_levels: 9,
            ..ProxyConfig::default()
        })
        .is_err());
        let mut bad = ProxyConfig::default();
        bad.cache.max_items = 0;
        assert!(matches!(Proxy::new(bad), Err(ProxyError::Cache(_))));
    }

    fn tile_near() -> impl Strategy<Value = TileId> {
        // Around the item block, at zooms 11..=16.
        (11u8..=16, -2i64..=2, -2i64..=2).prop_map(|(z, dx, dy)| {
            let base = tile("16/10497/22885").ancestor(z).unwrap();
            base.offset(dx, dy).unwrap()
        })
    }

    fn id_near() -> impl Strategy<Value = String> {
        prop::sample::select(
            items()
                .into_iter()
                .map(|i| i.id)
                .chain(["ghost".to_string()])
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        /// Random requests at mixed tiers: every answer equals the origin's direct answer at
        /// the caller's tier (so nothing above the tier, nothing lost), and the origin is
        /// only asked for what the cache did not answer.
        #[test]
        fn mixed_tiers_never_leak_and_always_match_the_origin(
            steps in prop::collection::vec(
                (prop::collection::vec(tile_near(), 0..6),
                 prop::collection::vec(id_near(), 0..4),
                 prop::sample::select(Access::ALL.to_vec()),
                 0u64..2_000,
                 any::<bool>()),
                1..25),
        ) {
            let o = origin();
            let mut p = Proxy::new(ProxyConfig::default()).unwrap();
            let mut now = 0u64;
            for (tiles, ids, access, dt, warm) in steps {
                now += dt * 100;
                let mut r = BatchRequest { tiles, ids, access };
                r.tiles.sort();
                r.tiles.dedup();
                r.ids.sort();
                r.ids.dedup();
                if r.is_empty() { continue; }
                let (fwd, a, body) = run(&mut p, &o, r.clone(), now);
                prop_assert!(body.items.iter().all(|i| access.can_see(i.access)));
                prop_assert_eq!(shape(&body), shape(&o.answer(&r, None)));
                if let Some(f) = &fwd {
                    prop_assert_eq!(f.access, access);
                    prop_assert!(f.tiles.len() <= r.tiles.len());
                    prop_assert!(f.ids.iter().all(|id| r.ids.contains(id)));
                    prop_assert!(a.verdict != Verdict::Hit);
                } else {
                    prop_assert_eq!(a.verdict, Verdict::Hit);
                }
                if let (Some(w), true) = (&a.warm, warm) {
                    let body = o.answer(w, Some(300)).to_json();
                    p.warmed(w, OriginOutcome::Answer { status: 200, body: body.as_bytes() }, now)
                        .unwrap();
                }
            }
        }
    }
}
