//! The origin: where the items come from, behind one async trait with three
//! implementations, and [`OriginService`], the one way the request path and warm-up call it.
//!
//! | `--origin` | backend | what it is |
//! | --- | --- | --- |
//! | (none, or `memory`) | [`memory::MemoryOrigin`] | the core's in-memory [`Origin`] over `--data` or the synthetic city (the default: `make demo` needs nothing installed) |
//! | `postgres://…` | [`postgis::PostgisOrigin`] | a PostGIS table or view (`docs/postgis.md`) |
//! | `http(s)://…/v1/batch` | [`upstream::UpstreamOrigin`] | another batch endpoint speaking `docs/openapi.yaml` (a second tilewarm-server, or an existing service) |
//!
//! [`OriginService`] adds what every backend shares, so each rule lives once:
//! - `--origin-latency-ms` (and the soak test's stall hook) before every call (a fetch or
//!   a count, which is a round trip for a backend out of process), call and item counting;
//! - the timeout: [`OriginService::fetch_within`] gives up after `--origin-timeout-ms`
//!   ([`OriginFailure::Timeout`], a 504 `upstream_timeout`); a backend's own failure is
//!   [`OriginFailure::Failed`] (a 502 `upstream_error`; [`OriginFailure::Misconfigured`]
//!   when the database refused the query in a way retrying will not change,
//!   [`OriginFailure::Unservable`] when the backend's own check finds its source cannot be
//!   served as configured), or
//!   [`OriginFailure::Refused`] when
//!   an upstream refused the request as the caller's mistake (400, 413 passed on, as the
//!   edge does), or [`OriginFailure::RateLimited`] for its 429 (passed on with its
//!   `Retry-After`), or [`OriginFailure::Overloaded`] when the backend is at capacity (every
//!   PostGIS connection busy past `--origin-pool-wait-ms`, an upstream's 503): a 503
//!   `overloaded` with `Retry-After`, so callers back off as from the server's own 503.
//!   Nothing from a failed call is ever cached: the caller gets no response to write back;
//! - the **tier guard**: an item above the tier the request was asked at never leaves this
//!   module, whatever the backend answered (a PostGIS view with a wrong filter, an upstream
//!   that leaks). Such items are dropped from `items` and every list, requested ids among
//!   them become `missing`, and each is counted in `tilewarm_origin_leaked_items_total`.
//!   So is an item no client can read ([`validate_item_fields`] fails: every answer
//!   holding it would fail to decode), counted in `tilewarm_origin_bad_rows_total`;
//! - the **shape guard**: an answer that leaves out a requested tile or id is a failure (not
//!   a silent hole that would be cached as "empty"), unless the answer names it as left out
//!   ([`Answer`]: a tile over `--max-tile-items`, an oversized item, what an upstream's
//!   partial answer names); lists of tiles nobody asked for are
//!   dropped; a list keeps only the items that lie in its tile by the core's rule
//!   ([`TileId::contains_point`]: the cache finds the tiles holding an item by its position
//!   when it invalidates it), the others counted in `tilewarm_origin_misplaced_items_total`;
//! - an answer that reports a tier other than the one asked for
//!   ([`BatchResponse::check_tier`], the edge's rule too: an upstream whose token gives
//!   less) is a failure: its lists lack items of the asked tier.
//!
//! # Counting before paying: [`OriginService::count_up_to`]
//! A request's coarse "direct" tiles (more than `--split-levels` above the data zoom) are
//! answered straight from the origin and may hold thousands of items; the request path
//! refuses them with a 400 when they hold more than `--max-response-items` for the caller,
//! *before* asking for them. What that bound costs depends on the backend:
//! - memory: exact and free (two binary searches per tile in the Morton index);
//! - PostGIS: one indexed query that reads at most `limit + 1` rows of the tiles' envelopes
//!   (no payloads): `SELECT count(*) FROM (SELECT 1 … LIMIT limit+1)`, so a zoom-2 tile over
//!   a country costs `limit + 1` index entries, not the country. It counts envelope rows (an
//!   item within the envelope margin of a neighbouring tile can be counted twice), so it can
//!   only refuse early, never let too much through; the exact count after the answer still
//!   applies;
//! - upstream: unknown ([`ItemCount::Unknown`]): the upstream enforces its own limit (a
//!   tilewarm-server answers 400, passed on) on the direct tiles, which it is asked for at
//!   the caller's tier (in a call of their own), and the request path's exact check after
//!   the answer refuses what is still too large.
//!
//! # Bounding the fetch: [`ItemBound`]
//! A count is not a promise: between it and the fetch the data set can grow (PostGIS takes
//! writes all the time; an upstream can answer differently), so the fetch of the direct
//! tiles carries the same limit ([`OriginService::fetch_within`]'s `bound`), and an answer
//! over it is [`OriginFailure::TooManyItems`] (400, nothing of it cached):
//! - memory: counted at the bound's tier before anything is copied, stopping at
//!   `limit + 1`;
//! - PostGIS: the direct tiles are read by their own statement, at the bound's tier and
//!   `LIMIT limit + 1`, so at most `limit + 1` rows (payloads included) are ever read for
//!   them;
//! - upstream: its answer is already read whole (at most the protocol's 8 MiB) and decoded
//!   by the core's bounded decoder; it is checked right after, like every backend's: the
//!   service counts the bounded tiles' lists (summed per tile, items the bound's tier may
//!   see) after the guards and drops an answer over the limit.

//!
//! # Holding every other tile to a size: [`Answer`]
//! Each tile of a call outside its [`ItemBound`] (the data tiles, asked at the top tier) is
//! held to `--max-tile-items` items: [`OriginService`] asks the backend through
//! [`OriginBackend::answer_limited`], and a tile over the limit is left out of the answer
//! and named in [`Answer::over_limit`] (logged, `tilewarm_origin_tiles_over_limit_total`),
//! never cut short: a shortened list would be cached and served as the whole tile. The rest
//! of the call is answered. Each tile is counted at the tier the call is asked at
//! ([`TileOverLimit::at`]): the request path asks such a tile again at the tier of a caller
//! below `agent`, so that it is refused only what is over the limit among the items it may
//! see, and reports the tile unanswered only then (`crate::batch`). PostGIS stops reading
//! each tile at `limit + 1` rows of the asked tier (its tier filter comes before the
//! `LIMIT`); memory and upstream answers are counted once read (the upstream's within its
//! 8 MiB; an upstream asked at a caller's tier counts at that tier too).

pub mod changes;
pub mod memory;
pub mod postgis;
pub mod relay;
pub mod upstream;
pub mod upstream_changes;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use tilewarm::origin::Origin;
use tilewarm::protocol::{
    validate_item_fields, BatchRequest, BatchResponse, DataTooLarge, ErrorBody, ErrorCode, Limits,
    RawData, Unanswered,
};
use tilewarm::{Access, TileId};

use crate::config::Config;
use crate::metrics::Metrics;

/// A boxed future, so that [`OriginBackend`] can be used as a trait object.
pub type OriginFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who is calling the origin, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallSource {
    Request,
    Warmup,
}

/// Why an origin call gave no answer. Nothing of a failed call is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginFailure {
    /// No answer within `--origin-timeout-ms` (or the backend's own statement timeout):
    /// 504 `upstream_timeout`.
    Timeout { ms: u64 },
    /// The backend failed (connection refused or dropped, a query error, an upstream's 5xx
    /// other than 503, or an answer that does not decode): 502 `upstream_error`. The message
    /// says what.
    Failed(String),
    /// An upstream refused the request as the caller's mistake (400, 413): passed on with
    /// its code and message, as the edge does, to a caller at the tier it was asked at
    /// (`asked`); below it, without its message ([`OriginFailure::for_caller`]).
    Refused { error: ErrorBody, asked: Access },
    /// An upstream asked this server to slow down (429): passed on as a 429
    /// `rate_limited` with its message and its `Retry-After` in seconds (`None`: it sent
    /// none the server could read, and `--retry-after-s` is sent instead).
    RateLimited {
        message: String,
        retry_after_s: Option<u64>,
    },
    /// The backend is at capacity: every PostGIS connection stayed busy for
    /// `--origin-pool-wait-ms`, or an upstream answered 503. A 503 `overloaded` with this
    /// message and `Retry-After` in seconds (the upstream's, at most
    /// [`upstream::MAX_RETRY_AFTER_S`]; `None`: `--retry-after-s`). Nothing was fetched.
    Overloaded {
        message: String,
        retry_after_s: Option<u64>,
    },
    /// The bounded tiles of the call ([`ItemBound`]) held more than `limit` items: 400
    /// `bad_request`, as when the count before the call says so.
    TooManyItems { limit: usize },
    /// The database refused the query in a way that retrying will not change: SQLSTATE
    /// class 42 (a table or column that does not exist, a type mismatch such as
    /// `bigint = text`, a missing privilege) or class 22 (a value that does not fit its
    /// type). A 502 `upstream_error` that says so and points at `--origin-config` and
    /// docs/postgis.md, not "retry later". `detail` is PostgreSQL's message: a class 22 one
    /// may quote a row's value, and calls ask at the top tier, so it is passed on only to an
    /// `agent` caller ([`OriginFailure::for_caller`]); a class 42 one names only the
    /// query's tables, columns and types, as every 502 did before.
    Misconfigured {
        sqlstate: String,
        detail: Option<String>,
    },
    /// The backend's own check found that its source cannot be served as configured, and
    /// retrying will not change that: a PostGIS geometry column not in degrees (its SRID
    /// is 3857, say), which would answer every tile empty. A 502 `upstream_error` with
    /// `message` (it names the table, the column and the SRID, nothing of a row's data),
    /// saying it will not pass by retrying.
    Unservable { message: String },
}

impl OriginFailure {
    /// The protocol error to answer with.
    pub fn to_error(&self) -> ErrorBody {
        match self {
            OriginFailure::Timeout { ms } => ErrorBody {
                code: ErrorCode::UpstreamTimeout,
                message: format!(
                    "the origin did not answer within {ms} ms (--origin-timeout-ms); retry later"
                ),
            },
            OriginFailure::Failed(why) => ErrorBody {
                code: ErrorCode::UpstreamError,
                message: format!("the origin failed: {why}; retry later"),
            },
            OriginFailure::Refused { error, .. } => ErrorBody {
                code: error.code,
                message: format!("the origin refused the request: {}", error.message),
            },
            OriginFailure::RateLimited { message, .. } => ErrorBody {
                code: ErrorCode::RateLimited,
                message: format!("the origin refused the request: {message}"),
            },
            OriginFailure::Overloaded { message, .. } => ErrorBody {
                code: ErrorCode::Overloaded,
                message: format!("the origin is at capacity: {message}; retry later"),
            },
            OriginFailure::Misconfigured { sqlstate, detail } => {
                let detail = detail.as_deref().unwrap_or(
                    "its message is not passed on below the \"agent\" tier, as it may quote a row",
                );
                let fix = if sqlstate.starts_with("22") {
                    "a value in the table does not fit the type the server reads it as: \
                     fix the row, or cast or filter it in a view named by --origin-config"
                } else {
                    "the table, view, columns, types or privileges do not match what the \
                     server asks for: check --origin-config against the database"
                };
                ErrorBody {
                    code: ErrorCode::UpstreamError,
                    message: format!(
                        "the origin's database refused the query: {detail} (SQLSTATE \
                         {sqlstate}); this will not pass by retrying: {fix} (docs/postgis.md)"
                    ),
                }
            }
            OriginFailure::Unservable { message } => ErrorBody {
                code: ErrorCode::UpstreamError,
                message: format!(
                    "the origin cannot be served as configured: {message}; this will not pass \
                     by retrying"
                ),
            },
            OriginFailure::TooManyItems { limit } => ErrorBody {
                code: ErrorCode::BadRequest,
                message: format!(
                    "response would hold more than {limit} items, at most {limit} are allowed: request finer tiles"
                ),
            },
        }
    }

    /// The failure as a caller at tier `caller` may see it. An upstream's refusal of a call
    /// made at a tier above the caller's (the server asks at `agent` for every caller)
    /// loses its message: the upstream counted what it was asked for at that tier (a
    /// tilewarm-server's 400 names how many items the answer would hold), and the count of
    /// items above the caller's tier must not reach it. The code is kept.
    pub fn for_caller(self, caller: Access) -> OriginFailure {
        match self {
            OriginFailure::Refused { error, asked } if asked > caller => OriginFailure::Refused {
                error: ErrorBody {
                    code: error.code,
                    message: format!(
                        "asked at the \"{asked}\" tier this server asks at, its message is not \
                         passed on below it; ask for fewer or finer tiles, or fewer ids"
                    ),
                },
                asked,
            },
            OriginFailure::Misconfigured { sqlstate, .. }
                if caller < Access::Agent && !sqlstate.starts_with("42") =>
            {
                OriginFailure::Misconfigured {
                    sqlstate,
                    detail: None,
                }
            }
            other => other,
        }
    }

    /// The `Retry-After` the backend asked for, in seconds (an upstream's 429 or 503).
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            OriginFailure::RateLimited { retry_after_s, .. }
            | OriginFailure::Overloaded { retry_after_s, .. } => *retry_after_s,
            _ => None,
        }
    }
}

impl std::fmt::Display for OriginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_error().message)
    }
}

/// How many items some tiles hold, as far as a backend can tell cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemCount {
    /// Exactly this many.
    Exact(usize),
    /// More than the limit asked about (counting stopped there).
    MoreThan(usize),
    /// The backend cannot count without answering (an upstream).
    Unknown,
}

impl ItemCount {
    /// Whether the count is known to exceed `max`.
    pub fn exceeds(self, max: usize) -> Option<usize> {
        match self {
            ItemCount::Exact(n) if n > max => Some(n),
            ItemCount::MoreThan(n) if n >= max => Some(n + 1),
            _ => None,
        }
    }
}

/// A cap on the items of some of a call's tiles: the request path's direct tiles, which it
/// counted with [`OriginService::count_up_to`] before the call (module docs). The items of
/// `tiles` visible at `access`, summed per tile as the count sums them, must be at most
/// `limit`; a backend answers [`OriginFailure::TooManyItems`] as soon as it knows they are
/// more, without reading further. Within `tiles` a backend may leave out items above
/// `access` (PostGIS reads only the others, so that its `LIMIT` counts what the caller may
/// see): those tiles are answered to that caller only, never cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemBound<'a> {
    /// Tiles of the request (others are ignored).
    pub tiles: &'a [TileId],
    /// The tier the items are counted at (the caller's).
    pub access: Access,
    /// At most this many items.
    pub limit: usize,
}

impl ItemBound<'_> {
    /// Whether `tile` is one of the bounded tiles.
    pub fn covers(&self, tile: TileId) -> bool {
        self.tiles.contains(&tile)
    }

    /// The answer's bounded tiles hold more than the limit: the items listed in them (summed
    /// per tile) that `access` may see. Items are looked up in the answer by id; a listed id
    /// without its item is not counted (the shape guard deals with answers, not sizes).
    fn exceeded_by(&self, r: &BatchResponse<RawData>) -> bool {
        use std::collections::HashMap;
        let tiers: HashMap<&str, Access> = r
            .items
            .iter()
            .map(|it| (it.id.as_str(), it.access))
            .collect();
        let mut n = 0usize;
        for list in r.tiles.iter().filter(|l| self.covers(l.tile)) {
            n += list
                .ids
                .iter()
                .filter(|id| {
                    tiers
                        .get(id.as_str())
                        .is_some_and(|&a| self.access.can_see(a))
                })
                .count();
            if n > self.limit {
                return true;
            }
        }
        false
    }
}

/// A backend's answer under a per-tile limit ([`OriginBackend::answer_limited`]): the
/// protocol answer, and the requested tiles it leaves out because they hold more items than
/// the limit (`--max-tile-items`). Such a tile has no list in `response`: it is neither
/// answered nor cached, never cut short (a shortened list would be cached as the tile).
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: BatchResponse<RawData>,
    pub over_limit: Vec<TileOverLimit>,
    /// Items left out of `response` (items and every list) because their `data` is larger
    /// than `--max-item-data-bytes`: a requested id among them is in neither `items` nor
    /// `missing`.
    pub too_large: Vec<DataTooLarge>,
    /// What an upstream's partial answer left out and why (its `error` member: a
    /// tilewarm-server's tile over its `--max-tile-items`, say): those tiles and ids are
    /// reported unanswered, not a failure of the call.
    pub unanswered: Option<Unanswered>,
}

/// A requested tile that holds more items than the per-tile limit ([`Answer`]), counted at
/// the tier the origin was asked at (`at`): the items a caller at that tier may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileOverLimit {
    pub tile: TileId,
    /// How many it holds: exactly (a backend that has them all, as memory) or more than
    /// the limit (PostGIS stops reading at `limit + 1` rows).
    pub items: ItemCount,
    /// The limit it is over.
    pub limit: usize,
    /// The tier they were counted at (the request's): the message is for callers at it.
    pub at: Access,
}

impl std::fmt::Display for TileOverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limit = self.limit;
        match self.items {
            ItemCount::Exact(n) => write!(f, "tile {} holds {n} items", self.tile),
            _ => write!(f, "tile {} holds more than {limit} items", self.tile),
        }?;
        if self.at < Access::Agent {
            write!(f, " a \"{}\" caller may see", self.at)?;
        }
        write!(
            f,
            " at the origin, at most {limit} are served per tile (--max-tile-items): it is \
             left out, not cached"
        )
    }
}

impl Answer {
    /// `response` (asked at tier `at`) with the lists of requested tiles that hold more
    /// than `limit` ids left out (all but `bound`'s tiles, which their own limit covers),
    /// each as a [`TileOverLimit`] with its exact count: the rule for a backend that read
    /// them whole.
    pub fn limit_lists(
        mut response: BatchResponse<RawData>,
        limit: usize,
        bound: Option<ItemBound<'_>>,
        at: Access,
    ) -> Answer {
        let mut over_limit = Vec::new();
        response.tiles.retain(|l| {
            let over = l.ids.len() > limit && !bound.is_some_and(|b| b.covers(l.tile));
            if over {
                over_limit.push(TileOverLimit {
                    tile: l.tile,
                    items: ItemCount::Exact(l.ids.len()),
                    limit,
                    at,
                });
            }
            !over
        });
        Answer {
            response,
            over_limit,
            too_large: Vec::new(),
            unanswered: None,
        }
    }
}

/// A source of items. Implementations answer at the request's tier (the server asks at
/// `agent` and filters per caller); [`OriginService`] guards tiers and shapes around them,
/// so a backend's mistake cannot leak.
pub trait OriginBackend: Send + Sync + 'static {
    /// `memory`, `postgis` or `upstream` (logs, `/healthz`, metrics).
    fn kind(&self) -> &'static str;

    /// Answers `request`: one list per requested tile (any zoom, the core's tile rule: an
    /// item is in a tile when its zoom-24 tile descends from it), the items of every list
    /// and requested id once, unknown or forbidden ids in `missing`. With a `bound`, its
    /// tiles are read no further than its limit ([`ItemBound`]).
    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>>;

    /// [`answer`](Self::answer) with each requested tile outside `bound` held to
    /// `tile_limit` items at the request's tier: a tile with more is left out of the answer
    /// and named in [`Answer::over_limit`] ([`OriginService`] asks this way). The default
    /// asks [`answer`](Self::answer) and applies [`Answer::limit_lists`]; a backend that
    /// can stop reading at the limit (PostGIS) does so instead.
    fn answer_limited<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
        tile_limit: usize,
    ) -> OriginFuture<'a, Result<Answer, OriginFailure>> {
        Box::pin(async move {
            let r = self.answer(request, bound).await?;
            Ok(Answer::limit_lists(r, tile_limit, bound, request.access))
        })
    }

    /// Items inside `tiles` (summed per tile) visible at `access`, counted no further than
    /// `limit + 1`; see the [module docs](self).
    fn count_up_to<'a>(
        &'a self,
        tiles: &'a [TileId],
        access: Access,
        limit: usize,
    ) -> OriginFuture<'a, Result<ItemCount, OriginFailure>>;

    /// The in-memory index, for the memory backend (demos, tests, benchmarks).
    fn index(&self) -> Option<&Origin<RawData>> {
        None
    }

    /// Where the items come from, for the startup log (no secrets).
    fn describe(&self) -> String;

    /// The database change feed that invalidates the cache tier, for backends that have
    /// one (PostGIS); see [`changes`].
    fn change_feed(&self) -> Option<changes::ChangeFeed> {
        None
    }

    /// The upstream tilewarm-server's change feed this server follows, for an upstream
    /// backend that has one; see [`upstream_changes`].
    fn upstream_feed(&self) -> Option<upstream_changes::UpstreamFeed> {
        None
    }

    /// For an upstream backend, the most tiles and ids it asks the upstream for in one call
    /// as found from the upstream's 400s (`None` in each: none found); see
    /// [`upstream::UpstreamOrigin::part_limits`].
    fn upstream_part_limits(&self) -> Option<(Option<usize>, Option<usize>)> {
        None
    }
}

/// Counters of what the guards and backends saw (`/metrics`).
#[derive(Default)]
pub struct OriginStats {
    /// Calls that timed out (request path and warm-up).
    pub timeouts: AtomicU64,
    /// Calls that gave no answer but for a timeout or an answer over its bound: a failure
    /// (502), an upstream's refusal (400, 413, 429) or the origin at capacity (503: a
    /// PostGIS pool overload, an upstream's 503). `tilewarm_origin_failures_total`.
    pub failures: AtomicU64,
    /// Items above the asked tier dropped by the tier guard.
    pub leaked_items: AtomicU64,
    /// Answers refused by the shape guard (a requested tile or id left out).
    pub incomplete_answers: AtomicU64,
    /// Tile list entries the shape guard dropped: their item does not lie in the tile.
    pub misplaced_items: AtomicU64,
    /// Rows a database backend skipped as unusable (bad id, coordinates, class or tier), and
    /// items of any backend's answer the guard dropped as no client can read them.
    pub bad_rows: AtomicU64,
    /// Items the backend's data set holds, when it knows (memory).
    pub dataset_items: AtomicUsize,
    /// `count_up_to` calls that needed a query.
    pub count_queries: AtomicU64,
    /// Fetches refused because their bounded tiles held more than the limit
    /// ([`OriginFailure::TooManyItems`]).
    pub over_bound: AtomicU64,
    /// Tiles left out of answers because they held more than `--max-tile-items`
    /// ([`TileOverLimit`]).
    pub tiles_over_limit: AtomicU64,
    /// Items left out of answers because their `data` was larger than
    /// `--max-item-data-bytes` ([`DataTooLarge`]).
    pub items_too_large: AtomicU64,
}

/// The origin with latency, timeouts, guards and call counting, over any backend.
pub struct OriginService {
    backend: Box<dyn OriginBackend>,
    latency: Duration,
    /// Extra latency injected by the soak test's fault hook (`--fault-origin-stall-ms`).
    stall_ms: AtomicU64,
    metrics: Arc<Metrics>,
    pub stats: Arc<OriginStats>,
    /// `--max-tile-items`.
    max_tile_items: usize,
    /// The protocol limits, for `--max-item-data-bytes`.
    limits: Limits,
    /// Until when warm-up stays quiet, on this process's monotonic clock
    /// ([`crate::tier::mono_ms`]; a host clock stepping back does not lengthen it): the origin answered a call
    /// with 429 or 503 (its `Retry-After`, else `--retry-after-s`, at most
    /// [`upstream::MAX_RETRY_AFTER_S`]); see [`Self::quiet_for_ms`].
    quiet_until_ms: AtomicU64,
    /// `--retry-after-s`: the wait after a 429 or 503 that asked for none.
    retry_after_s: u64,
}

/// Opening the origin failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading `--data` (the memory origin's, or `--postgis-load`'s).
    #[error("--data: {0}")]
    Dataset(#[from] tilewarm::dataset::DatasetError),
    #[error("data set: {0}")]
    Origin(#[from] tilewarm::origin::OriginError),
    #[error("--origin: {0}")]
    Spec(String),
    #[error("--origin postgres: {0}")]
    Postgis(String),
    #[error("--origin upstream: {0}")]
    Upstream(String),
}

/// What `--origin` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginSpec {
    /// The in-memory data set (`--data` or the synthetic city).
    Memory,
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgis(String),
    /// An upstream batch endpoint URL.
    Upstream(String),
}

impl OriginSpec {
    /// Parses `--origin`: `memory` (or nothing), `postgres://…`, `postgresql://…`,
    /// `http://…` or `https://…`.
    pub fn parse(value: Option<&str>) -> Result<OriginSpec, LoadError> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(OriginSpec::Memory);
        };
        let lower = v.to_ascii_lowercase();
        if lower == "memory" {
            Ok(OriginSpec::Memory)
        } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Ok(OriginSpec::Postgis(v.to_owned()))
        } else if lower.starts_with("http://") || lower.starts_with("https://") {
            Ok(OriginSpec::Upstream(v.to_owned()))
        } else {
            Err(LoadError::Spec(format!(
                "expected memory, postgres://… or http(s)://…/v1/batch, got {:?}",
                redact_url(v)
            )))
        }
    }
}

/// A URL with its password (and anything that looks like a credential) replaced by `***`,
/// for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, auth, tail)) = url_parts(url) else {
        return url.to_owned();
    };
    let auth = match auth.rfind('@') {
        Some(at) => {
            let (user, host) = auth.split_at(at);
            match user.find(':') {
                Some(c) => format!("{}:***{host}", &user[..c]),
                None => format!("{user}{host}"),
            }
        }
        None => auth.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) if tail[q..].to_ascii_lowercase().contains("password") => {
            format!("{}?***", &tail[..q])
        }
        _ => tail.to_owned(),
    };
    format!("{scheme}://{auth}{tail}")
}

/// A URL's scheme, authority (`user:password@host:port`) and the rest (path, query,
/// fragment); `None` without `://`.
pub fn url_parts(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    Some((scheme, auth, tail))
}

impl OriginService {
    /// Opens the origin `--origin` names: loads `--data` (or generates the synthetic city)
    /// for the memory backend, connects the pool for PostGIS (the server starts even when
    /// the database is down: calls fail with 502 until it is up), or prepares the client
    /// for an upstream.
    pub async fn open(config: &Config, metrics: Arc<Metrics>) -> Result<OriginService, LoadError> {
        let stats = Arc::new(OriginStats::default());
        let backend: Box<dyn OriginBackend> = match OriginSpec::parse(config.origin.as_deref())? {
            OriginSpec::Memory => {
                let c = config.clone();
                let m = tokio::task::spawn_blocking(move || memory::MemoryOrigin::load(&c))
                    .await
                    .map_err(|e| {
                        LoadError::Spec(format!("loading the data set panicked: {e}"))
                    })??;
                Box::new(m)
            }
            OriginSpec::Postgis(url) => {
                let origin = postgis::PostgisOrigin::open(&url, config, Arc::clone(&stats))?;
                // A geometry column not in degrees is refused here when the database
                // answers; when it does not, the first call checks it.
                origin.check_at_start().await?;
                Box::new(origin)
            }
            OriginSpec::Upstream(url) => Box::new(upstream::UpstreamOrigin::new(
                &url,
                config,
                Arc::clone(&stats),
            )?),
        };
        Ok(OriginService::with_backend(backend, config, metrics, stats))
    }

    /// Wraps any backend (tests, embedders with their own source).
    pub fn with_backend(
        backend: Box<dyn OriginBackend>,
        config: &Config,
        metrics: Arc<Metrics>,
        stats: Arc<OriginStats>,
    ) -> OriginService {
        if let Some(o) = backend.index() {
            stats.dataset_items.store(o.len(), Relaxed);
        }
        OriginService {
            backend,
            latency: Duration::from_millis(config.origin_latency_ms),
            stall_ms: AtomicU64::new(0),
            metrics,
            stats,
            max_tile_items: config.max_tile_items,
            limits: config.limits(),
            quiet_until_ms: AtomicU64::new(0),
            retry_after_s: config.retry_after_s,
        }
    }

    /// How much longer warm-up asks the origin nothing (ms; 0: not quiet): a
    /// call of any source (a request's or warm-up's) answered 429 `rate_limited` or 503
    /// `overloaded` (an upstream's, a PostGIS pool with no connection free), for its
    /// `Retry-After` (else `--retry-after-s`), or with a partial answer that left tiles or
    /// ids out as `rate_limited` or `overloaded` (a chained upstream shedding load, the same
    /// signal), for `--retry-after-s`. A timeout (whole, or `upstream_timeout` in a partial
    /// answer) does not: warm-up gives up its own call at the timeout. Requests still ask: their callers get the
    /// failure with its `Retry-After`; warm-up is optional load on a backend that asked for
    /// quiet.
    /// The time is this process's own, on its monotonic clock ([`crate::tier::mono_ms`]),
    /// so a host clock stepping back does not lengthen it.
    pub fn quiet_for_ms(&self) -> u64 {
        (self.quiet_until_ms.load(Relaxed)).saturating_sub(crate::tier::mono_ms())
    }

    /// `memory`, `postgis` or `upstream`.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Whether a call mostly *waits* here rather than computes: the backend is out of
    /// process (PostGIS, an upstream), or latency is added (`--origin-latency-ms`, the stall
    /// hook). The in-memory backend's call is this process's own CPU work.
    pub fn waits(&self) -> bool {
        self.kind() != "memory" || !self.latency.is_zero() || self.stall_ms() > 0
    }

    /// Where the items come from (no secrets).
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The in-memory data set, when the origin is the memory backend (for counting, demos
    /// and tests; not an origin call).
    pub fn index(&self) -> Option<&Origin<RawData>> {
        self.backend.index()
    }

    /// The change feed of a database backend.
    pub fn change_feed(&self) -> Option<changes::ChangeFeed> {
        self.backend.change_feed()
    }

    /// The upstream's change feed this server follows (an upstream backend).
    pub fn upstream_feed(&self) -> Option<upstream_changes::UpstreamFeed> {
        self.backend.upstream_feed()
    }

    /// The limits of tiles and ids a call found from an upstream's 400s (an upstream
    /// backend; `None` in each: none found).
    pub fn upstream_part_limits(&self) -> Option<(Option<usize>, Option<usize>)> {
        self.backend.upstream_part_limits()
    }

    /// One origin call: waits the configured latency, then asks the backend at the
    /// request's tier and applies the tier and shape guards (module docs). The server always
    /// asks at [`Access::Agent`] so that the answer can be cached for every tier.
    ///
    /// Each requested tile is held to `--max-tile-items` items: a fuller one is left out of
    /// the answer and named in [`Answer::over_limit`] (logged and counted), the rest is
    /// answered.
    pub async fn fetch(
        &self,
        request: &BatchRequest,
        source: CallSource,
    ) -> Result<Answer, OriginFailure> {
        self.fetch_bounded(request, source, None).await
    }

    /// [`fetch`](Self::fetch) with the items of `bound`'s tiles capped (module docs): an
    /// answer over it is [`OriginFailure::TooManyItems`], whether the backend stopped early
    /// or the check after the guards found it.
    async fn fetch_bounded(
        &self,
        request: &BatchRequest,
        source: CallSource,
        bound: Option<ItemBound<'_>>,
    ) -> Result<Answer, OriginFailure> {
        match source {
            CallSource::Request => self.metrics.origin_calls_request.fetch_add(1, Relaxed),
            CallSource::Warmup => self.metrics.origin_calls_warmup.fetch_add(1, Relaxed),
        };
        let latency = self.latency + Duration::from_millis(self.stall_ms.load(Relaxed));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let result = self
            .backend
            .answer_limited(request, bound, self.max_tile_items)
            .await
            .and_then(|a| self.guard_answer(request, a))
            .and_then(|a| match bound {
                Some(b) if b.exceeded_by(&a.response) => {
                    Err(OriginFailure::TooManyItems { limit: b.limit })
                }
                _ => Ok(a),
            });
        match &result {
            Ok(a) => {
                self.metrics
                    .origin_items
                    .fetch_add(a.response.items.len() as u64, Relaxed);
            }
            Err(OriginFailure::Timeout { .. }) => {
                self.stats.timeouts.fetch_add(1, Relaxed);
            }
            // The request's own size, not the origin's failure.
            Err(OriginFailure::TooManyItems { .. }) => {
                self.stats.over_bound.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.stats.failures.fetch_add(1, Relaxed);
            }
        }
        // The origin asks for less: a whole 429 or 503, or a partial answer that left work
        // out as `rate_limited` or `overloaded` (a chained upstream shedding load; such a
        // 200 carries no `Retry-After`).
        let asks_for_less = match &result {
            Err(e @ (OriginFailure::RateLimited { .. } | OriginFailure::Overloaded { .. })) => {
                Some(e.retry_after_s())
            }
            Ok(a) if a.unanswered.as_ref().is_some_and(|u| sheds_load(u.code)) => Some(None),
            _ => None,
        };
        if let Some(asked_s) = asks_for_less {
            let wait_s =
                (asked_s.unwrap_or(self.retry_after_s)).clamp(1, upstream::MAX_RETRY_AFTER_S);
            let until = crate::tier::mono_ms().saturating_add(wait_s.saturating_mul(1000));
            self.quiet_until_ms.fetch_max(until, Relaxed);
        }
        result
    }

    /// [`fetch`](Self::fetch), given up after `timeout_ms` (`--origin-timeout-ms`; 0 waits as
    /// long as the origin takes) with [`OriginFailure::Timeout`], and with the items of
    /// `bound`'s tiles capped ([`ItemBound`]; the request path bounds its direct tiles by
    /// `--max-response-items`, warm-up asks data tiles only). The request path and warm-up
    /// both call the origin through this.
    pub async fn fetch_within(
        &self,
        request: &BatchRequest,
        source: CallSource,
        timeout_ms: u64,
        bound: Option<ItemBound<'_>>,
    ) -> Result<Answer, OriginFailure> {
        within(
            timeout_ms,
            &self.stats,
            self.fetch_bounded(request, source, bound),
        )
        .await
    }

    /// Items inside `tiles` visible at `access`, counted no further than `limit + 1`, given
    /// up after `timeout_ms` like a fetch (module docs: free in memory, one bounded query for
    /// PostGIS, unknown upstream).
    pub async fn count_up_to(
        &self,
        tiles: &[TileId],
        access: Access,
        limit: usize,
        timeout_ms: u64,
    ) -> Result<ItemCount, OriginFailure> {
        if tiles.is_empty() {
            return Ok(ItemCount::Exact(0));
        }
        let count = async {
            let latency = self.latency + Duration::from_millis(self.stall_ms.load(Relaxed));
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            self.backend.count_up_to(tiles, access, limit).await
        };
        within(timeout_ms, &self.stats, count).await
    }

    /// The guards (module docs) over an answer under the per-tile limit: its tiles over
    /// the limit (only requested ones, each once) are logged and counted, and the shape
    /// guard holds the answer to the request without them (a list the backend gave for one
    /// anyway is dropped).
    fn guard_answer(&self, request: &BatchRequest, a: Answer) -> Result<Answer, OriginFailure> {
        let Answer {
            mut response,
            mut over_limit,
            mut too_large,
            unanswered,
        } = a;
        // Oversized payloads, whichever backend sent them (PostGIS leaves them out itself).
        too_large.extend(response.take_oversized(&self.limits));
        if over_limit.is_empty() && too_large.is_empty() && unanswered.is_none() {
            return Ok(Answer {
                response: self.guard(request, response)?,
                over_limit,
                too_large,
                unanswered,
            });
        }
        if let Some(u) = &unanswered {
            tracing::warn!(
                origin = self.kind(),
                tiles = u.tiles.len(),
                ids = u.ids.len(),
                code = %u.code,
                message = %u.message,
                "the origin's partial answer left tiles or ids out"
            );
        }
        let mut tiles = HashSet::new();
        over_limit.retain(|o| request.tiles.contains(&o.tile) && tiles.insert(o.tile));
        self.stats
            .tiles_over_limit
            .fetch_add(over_limit.len() as u64, Relaxed);
        if let Some(first) = over_limit.first() {
            tracing::warn!(
                origin = self.kind(),
                tiles = over_limit.len(),
                first = %first,
                "tiles over --max-tile-items left out of the answer"
            );
        }
        let mut ids = HashSet::new();
        too_large.retain(|o| ids.insert(o.id.clone()));
        self.stats
            .items_too_large
            .fetch_add(too_large.len() as u64, Relaxed);
        if let Some(first) = too_large.first() {
            tracing::warn!(
                origin = self.kind(),
                items = too_large.len(),
                first = %first,
                "items over --max-item-data-bytes left out of the answer"
            );
        }
        // The shape guard holds the answer to what is left to answer.
        let told = |t: &TileId| unanswered.as_ref().is_some_and(|u| u.tiles.contains(t));
        let told_id = |id: &String| unanswered.as_ref().is_some_and(|u| u.ids.contains(id));
        let rest = BatchRequest {
            tiles: request
                .tiles
                .iter()
                .copied()
                .filter(|t| !tiles.contains(t) && !told(t))
                .collect(),
            ids: request
                .ids
                .iter()
                .filter(|id| !ids.contains(*id) && !told_id(id))
                .cloned()
                .collect(),
            access: request.access,
        };
        Ok(Answer {
            response: self.guard(&rest, response)?,
            over_limit,
            too_large,
            unanswered,
        })
    }

    /// The tier and shape guards (module docs).
    fn guard(
        &self,
        request: &BatchRequest,
        mut r: BatchResponse<RawData>,
    ) -> Result<BatchResponse<RawData>, OriginFailure> {
        let asked = request.access;
        // An answer made for another tier (an upstream whose token gives less than asked)
        // lacks items the asked tier sees: cached, its lists would be wrong for every tier.
        // The edge refuses it by the same rule.
        if let Err(other) = r.check_tier(asked) {
            tracing::warn!(origin = self.kind(), "{other}; refused");
            return Err(OriginFailure::Failed(format!(
                "{other}: check the tier of the server's origin token \
                 (--origin-token-file or {})",
                upstream::TOKEN_ENV
            )));
        }
        // An item no client can read (an empty or overlong id or class, a position off
        // the map) would make every answer holding it fail to decode, for as long as it is
        // cached: it is dropped as a database backend skips such a row (counted with them).
        // Its `ttl` is not checked: the server writes its own.
        let mut unreadable: Vec<String> = Vec::new();
        let mut leaked: HashSet<String> = HashSet::new();
        let mut dropped: HashSet<String> = HashSet::new();
        r.items.retain(|it| {
            let (id, class) = (&it.id, &it.class);
            let fields = validate_item_fields(id, it.lon, it.lat, class, None, &self.limits);
            if let Err(e) = fields {
                unreadable.push(e.to_string());
            } else if !asked.can_see(it.access) {
                leaked.insert(id.clone());
            } else {
                return true;
            }
            dropped.insert(id.clone());
            false
        });
        if let Some(first) = unreadable.first() {
            self.stats
                .bad_rows
                .fetch_add(unreadable.len() as u64, Relaxed);
            tracing::warn!(
                origin = self.kind(),
                items = unreadable.len(),
                first = %first,
                "the origin answered items no client can read; dropped"
            );
        }
        if !leaked.is_empty() {
            self.stats
                .leaked_items
                .fetch_add(leaked.len() as u64, Relaxed);
            tracing::warn!(
                origin = self.kind(),
                items = leaked.len(),
                tier = %asked,
                "the origin answered items above the asked tier; dropped"
            );
        }
        if !dropped.is_empty() {
            for list in &mut r.tiles {
                list.ids.retain(|id| !dropped.contains(id));
            }
            for id in &request.ids {
                if dropped.contains(id) && !r.missing.contains(id) {
                    r.missing.push(id.clone());
                }
            }
        }
        // Shape: every requested tile and id answered; no lists nobody asked for.
        let wanted: HashSet<TileId> = request.tiles.iter().copied().collect();
        r.tiles.retain(|l| wanted.contains(&l.tile));
        self.drop_misplaced(request, &mut r);
        let unanswered_tiles = r.unanswered_tiles(request);
        let unanswered_ids = r.unanswered_ids(request);
        if !unanswered_tiles.is_empty() || !unanswered_ids.is_empty() {
            self.stats.incomplete_answers.fetch_add(1, Relaxed);
            let first = unanswered_tiles
                .first()
                .map(|t| format!("tile {t}"))
                .or_else(|| unanswered_ids.first().map(|id| format!("id {id:?}")))
                .unwrap_or_default();
            return Err(OriginFailure::Failed(format!(
                "the answer left out {} requested tiles and {} ids (first: {first})",
                unanswered_tiles.len(),
                unanswered_ids.len()
            )));
        }
        Ok(r)
    }

    /// Place: a tile list keeps only the items inside its tile by the core's rule
    /// ([`TileId::contains_point`], by which [`assemble`] and the memory origin file them).
    /// The cache tier finds the tiles holding an item by its position (Redis invalidation
    /// by id drops the item's own data tile, `tier.rs`), so an item listed under another
    /// tile would outlive every invalidation there. Dropped entries are counted
    /// (`tilewarm_origin_misplaced_items_total`) and logged; items no list or requested id
    /// names any more go too.
    fn drop_misplaced(&self, request: &BatchRequest, r: &mut BatchResponse<RawData>) {
        use std::collections::HashMap;
        let at: HashMap<&str, (f64, f64)> = r
            .items
            .iter()
            .map(|it| (it.id.as_str(), (it.lon, it.lat)))
            .collect();
        let mut misplaced = 0usize;
        let mut first = None;
        for list in &mut r.tiles {
            let tile = list.tile;
            list.ids.retain(|id| {
                let inside = at
                    .get(id.as_str())
                    .is_some_and(|&(lon, lat)| tile.contains_point(lon, lat));
                if !inside {
                    misplaced += 1;
                    first.get_or_insert_with(|| format!("{id:?} under {tile}"));
                }
                inside
            });
        }
        if misplaced == 0 {
            return;
        }
        self.stats
            .misplaced_items
            .fetch_add(misplaced as u64, Relaxed);
        tracing::warn!(
            origin = self.kind(),
            entries = misplaced,
            first = first.as_deref().unwrap_or_default(),
            "the origin listed items under tiles they do not lie in; dropped from those lists"
        );
        let named: HashSet<&str> = r
            .tiles
            .iter()
            .flat_map(|l| l.ids.iter())
            .chain(&request.ids)
            .map(String::as_str)
            .collect();
        r.items.retain(|it| named.contains(it.id.as_str()));
    }

    /// Sets the injected extra latency of every origin call (the fault hook); 0 clears it.
    pub fn set_stall_ms(&self, ms: u64) {
        self.stall_ms.store(ms, Relaxed);
    }

    /// The injected extra latency, in ms.
    pub fn stall_ms(&self) -> u64 {
        self.stall_ms.load(Relaxed)
    }

    /// Items in the data set, when the backend knows (memory); `None` otherwise.
    pub fn dataset_items(&self) -> Option<usize> {
        self.index().map(Origin::len)
    }
}

/// Whether a partial answer's code says the upstream shed load (it asks for less, as with
/// a 429 or 503).
fn sheds_load(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::RateLimited | ErrorCode::Overloaded)
}

/// Runs `fut` under `timeout_ms` (0: no limit); a timeout is counted and becomes
/// [`OriginFailure::Timeout`].
async fn within<T>(
    timeout_ms: u64,
    stats: &OriginStats,
    fut: impl Future<Output = Result<T, OriginFailure>>,
) -> Result<T, OriginFailure> {
    if timeout_ms == 0 {
        return fut.await;
    }
    match tokio::time::timeout(Duration::from_millis(timeout_ms), fut).await {
        Ok(r) => r,
        Err(_) => {
            stats.timeouts.fetch_add(1, Relaxed);
            Err(OriginFailure::Timeout { ms: timeout_ms })
        }
    }
}

/// Assigns items to requested tiles with the core's tile rule (an item is in a tile when its
/// zoom-24 tile descends from it) and builds the protocol answer: one list per requested
/// tile in request order, ids in each list in Morton (quadkey) order of the items' zoom-24
/// tiles, ties by id, items each once, requested ids not found in `missing`. Shared by the
/// database backends, so their answers are the memory backend's up to order.
pub fn assemble(
    request: &BatchRequest,
    tile_items: Vec<tilewarm::protocol::Item<RawData>>,
    id_items: Vec<tilewarm::protocol::Item<RawData>>,
    tile_ttl_s: Option<u32>,
) -> BatchResponse<RawData> {
    use std::collections::HashMap;
    // Each item's zoom-24 tile, once.
    let mut by_id: HashMap<String, (TileId, tilewarm::protocol::Item<RawData>)> = HashMap::new();
    for it in tile_items.into_iter().chain(id_items) {
        let Ok(t24) = TileId::from_lon_lat(it.lon, it.lat, tilewarm::tile::MAX_ZOOM) else {
            continue;
        };
        by_id.entry(it.id.clone()).or_insert((t24, it));
    }
    // Requested tiles by zoom, so an item is matched with one ancestor look-up per zoom.
    let mut zooms: Vec<u8> = request.tiles.iter().map(|t| t.z()).collect();
    zooms.sort_unstable();
    zooms.dedup();
    let index: HashMap<TileId, usize> = request
        .tiles
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, i))
        .collect();
    let mut members: Vec<Vec<(u64, String)>> = vec![Vec::new(); request.tiles.len()];
    for (id, (t24, _)) in &by_id {
        for &z in &zooms {
            if let Some(&i) = t24.ancestor(z).ok().as_ref().and_then(|a| index.get(a)) {
                members[i].push((t24.quadkey_order(), id.clone()));
            }
        }
    }
    let mut items = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut tiles = Vec::with_capacity(request.tiles.len());
    for (i, &t) in request.tiles.iter().enumerate() {
        let list = &mut members[i];
        list.sort_unstable();
        let ids: Vec<String> = list.drain(..).map(|(_, id)| id).collect();
        for id in &ids {
            if taken.insert(id.clone()) {
                if let Some((_, it)) = by_id.get(id) {
                    items.push(it.clone());
                }
            }
        }
        tiles.push(tilewarm::protocol::TileList {
            tile: t,
            ids,
            ttl: tile_ttl_s,
        });
    }
    let mut missing = Vec::new();
    for id in &request.ids {
        match by_id.get(id) {
            Some((_, it)) if request.access.can_see(it.access) => {
                if taken.insert(id.clone()) {
                    items.push(it.clone());
                }
            }
            _ => missing.push(id.clone()),
        }
    }
    BatchResponse {
        access: None,
        tiles,
        items,
        missing,
        left_out: None,
    }
}

/// The Morton (quadkey) order of a zoom-24 tile, as the memory origin sorts items.
trait QuadkeyOrder {
    fn quadkey_order(self) -> u64;
}

impl QuadkeyOrder for TileId {
    fn quadkey_order(self) -> u64 {
        fn spread(v: u32) -> u64 {
            let mut v = v as u64 & 0xFF_FFFF;
            v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF;
            v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF;
            v = (v | (v << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
            v = (v | (v << 2)) & 0x3333_3333_3333_3333;
            v = (v | (v << 1)) & 0x5555_5555_5555_5555;
            v
        }
        spread(self.x()) | (spread(self.y()) << 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_specs_parse_and_redact() {
        assert_eq!(OriginSpec::parse(None).unwrap(), OriginSpec::Memory);
        assert_eq!(
            OriginSpec::parse(Some("memory")).unwrap(),
            OriginSpec::Memory
        );
        assert!(matches!(
            OriginSpec::parse(Some("postgresql://u@h/db")).unwrap(),
            OriginSpec::Postgis(_)
        ));
        assert!(matches!(
            OriginSpec::parse(Some("https://a.example/v1/batch")).unwrap(),
            OriginSpec::Upstream(_)
        ));
        let e = OriginSpec::parse(Some("redis://u:secret@h/0")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("postgres://"), "{e}");
        assert_eq!(
            redact_url("postgres://tw:hunter2@db.example:5432/tw?sslmode=disable"),
            "postgres://tw:***@db.example:5432/tw?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=a&password=b"),
            "postgres://h/db?***"
        );
        assert_eq!(redact_url("http://h/v1/batch"), "http://h/v1/batch");
    }

    /// A backend answering one fixed response or failure, whatever it is asked.
    struct Fixed(Result<BatchResponse<RawData>, OriginFailure>);

    impl OriginBackend for Fixed {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn answer<'a>(
            &'a self,
            _request: &'a BatchRequest,
            _bound: Option<ItemBound<'a>>,
        ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
            let r = self.0.clone();
            Box::pin(async move { r })
        }
        fn count_up_to<'a>(
            &'a self,
            _tiles: &'a [TileId],
            _access: Access,
            _limit: usize,
        ) -> OriginFuture<'a, Result<ItemCount, OriginFailure>> {
            Box::pin(async { Ok(ItemCount::Unknown) })
        }
        fn describe(&self) -> String {
            "fixed".into()
        }
    }

    /// An item no client can read (here an empty class; an empty or overlong id, a position
    /// off the map alike) is dropped by the guard like an item above the asked tier: from
    /// every list, a requested id among them `missing`, counted with the bad rows. It went
    /// through: the server's answers holding it (for as long as it was cached) failed to
    /// decode in every client ("class must not be empty"). Found by `batch::fuzz`.
    #[test]
    fn items_no_client_can_read_are_dropped_by_the_guard() {
        let t = TileId::from_lon_lat(-122.33, 47.61, 14).unwrap();
        let item = |id: &str, class: &str| tilewarm::protocol::Item {
            id: id.into(),
            lon: -122.33,
            lat: 47.61,
            class: class.into(),
            access: Access::Public,
            ttl: None,
            data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
        };
        let response = BatchResponse {
            tiles: vec![tilewarm::protocol::TileList {
                tile: t,
                ids: vec!["good".into(), "bad".into()],
                ttl: None,
            }],
            items: vec![item("good", "active"), item("bad", "")],
            ..BatchResponse::default()
        };
        let stats = Arc::new(OriginStats::default());
        let service = OriginService::with_backend(
            Box::new(Fixed(Ok(response))),
            &Config::default(),
            Arc::new(Metrics::default()),
            Arc::clone(&stats),
        );
        let request = BatchRequest {
            tiles: vec![t],
            ids: vec!["bad".into()],
            access: Access::Agent,
        };
        let a = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(service.fetch(&request, CallSource::Request))
            .unwrap();
        let r = a.response;
        assert_eq!(r.tiles[0].ids, ["good"]);
        assert_eq!(r.items.len(), 1);
        assert_eq!(r.missing, ["bad"]);
        assert_eq!(stats.bad_rows.load(Relaxed), 1);
        assert_eq!(stats.leaked_items.load(Relaxed), 0);
        r.validate(&Limits::default()).unwrap();
    }

    /// Which failed calls `tilewarm_origin_failures_total` counts, and that its help says
    /// so: a PostGIS pool overload (503) is one, though its help spoke of 502s only.
    #[test]
    fn origin_failures_count_every_failure_but_timeouts_and_bounds_as_its_help_says() {
        let help = crate::metrics::ORIGIN_FAILURES_HELP;
        let refused = ErrorBody {
            code: ErrorCode::BadRequest,
            message: "no".into(),
        };
        for (failure, counted, says) in [
            (OriginFailure::Failed("down".into()), true, "502"),
            (
                OriginFailure::Refused {
                    error: refused,
                    asked: Access::Public,
                },
                true,
                "400",
            ),
            (
                OriginFailure::RateLimited {
                    message: "slow".into(),
                    retry_after_s: None,
                },
                true,
                "429",
            ),
            (
                OriginFailure::Overloaded {
                    message: "every connection busy".into(),
                    retry_after_s: None,
                },
                true,
                "--origin-pool-wait-ms",
            ),
            (OriginFailure::Timeout { ms: 5 }, false, "timing out"),
            (OriginFailure::TooManyItems { limit: 1 }, false, "bound"),
        ] {
            let stats = Arc::new(OriginStats::default());
            let service = OriginService::with_backend(
                Box::new(Fixed(Err(failure.clone()))),
                &Config::default(),
                Arc::new(Metrics::default()),
                Arc::clone(&stats),
            );
            let request = BatchRequest {
                tiles: vec![],
                ids: vec!["a".into()],
                access: Access::Public,
            };
            let got = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(service.fetch(&request, CallSource::Warmup));
            assert_eq!(got.err(), Some(failure.clone()));
            let n = u64::from(counted);
            assert_eq!(stats.failures.load(Relaxed), n, "{failure:?}");
            assert!(help.contains(says), "{failure:?}: {says:?} not in {help}");
        }
    }

    /// The quiet time a 429 or 503 asks for is this process's own wait: a host clock
    /// stepping back an hour does not lengthen it (on the wall clock it lasted an hour
    /// more).
    #[test]
    fn the_origins_quiet_time_is_not_lengthened_by_the_wall_clock_stepping_back() {
        let service = OriginService::with_backend(
            Box::new(Fixed(Err(OriginFailure::Overloaded {
                message: "busy".into(),
                retry_after_s: Some(2),
            }))),
            &Config::default(),
            Arc::new(Metrics::default()),
            Arc::new(OriginStats::default()),
        );
        assert_eq!(service.quiet_for_ms(), 0);
        let request = BatchRequest {
            tiles: vec![],
            ids: vec!["a".into()],
            access: Access::Public,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert!(rt
            .block_on(service.fetch(&request, CallSource::Request))
            .is_err());
        let quiet = service.quiet_for_ms();
        assert!(quiet > 0 && quiet <= 2000, "{quiet}");
        crate::tier::test_wall::step_back(3_600_000);
        let quiet = service.quiet_for_ms();
        assert!(
            quiet <= 2000,
            "quiet for {quiet} ms after the wall clock stepped back"
        );
    }

    #[test]
    fn item_counts_exceed_only_when_known() {
        assert_eq!(ItemCount::Exact(5).exceeds(4), Some(5));
        assert_eq!(ItemCount::Exact(4).exceeds(4), None);
        assert_eq!(ItemCount::MoreThan(4).exceeds(4), Some(5));
        assert_eq!(ItemCount::Unknown.exceeds(0), None);
    }

    #[test]
    fn lists_over_the_tile_limit_are_left_out_with_their_count_except_bounded_tiles() {
        let items = tilewarm::dataset::synthetic_city(7, 2_000);
        let o = Origin::new(items).unwrap();
        let tiles: Vec<TileId> = o.occupied_tiles(14).iter().map(|t| t.0).take(3).collect();
        let request = BatchRequest {
            tiles: tiles.clone(),
            ids: vec![],
            access: Access::Agent,
        };
        let r = o.answer(&request, Some(60));
        let sizes: Vec<usize> = r.tiles.iter().map(|l| l.ids.len()).collect();
        let limit = sizes.iter().copied().min().unwrap();
        let bound = ItemBound {
            tiles: &tiles[..1],
            access: Access::Agent,
            limit: usize::MAX,
        };
        let a = Answer::limit_lists(r, limit, Some(bound), Access::Agent);
        let over: Vec<TileOverLimit> = tiles[1..]
            .iter()
            .zip(&sizes[1..])
            .filter(|(_, &n)| n > limit)
            .map(|(&tile, &n)| TileOverLimit {
                tile,
                items: ItemCount::Exact(n),
                limit,
                at: Access::Agent,
            })
            .collect();
        assert!(!over.is_empty(), "{sizes:?}");
        assert_eq!(a.over_limit, over);
        assert_eq!(a.response.tiles.len(), 3 - over.len());
        assert_eq!(a.response.tiles[0].tile, tiles[0]);
        let ItemCount::Exact(n) = over[0].items else {
            unreachable!()
        };
        let msg = over[0].to_string();
        assert!(
            msg.contains(&format!("tile {} holds {n} items", over[0].tile))
                && msg.contains(&format!(
                    "at most {limit} are served per tile (--max-tile-items)"
                )),
            "{msg}"
        );
    }

    #[test]
    fn assemble_matches_the_memory_origin_up_to_order() {
        let items = tilewarm::dataset::synthetic_city(7, 2_000);
        let o = Origin::new(items.clone()).unwrap();
        let t = o.occupied_tiles(14)[3].0;
        let request = BatchRequest {
            tiles: vec![t, t.ancestor(11).unwrap(), t.children().unwrap()[2]],
            ids: vec![items[0].id.clone(), "nope".into()],
            access: Access::Agent,
        };
        let want = o.answer(&request, Some(60));
        let got = assemble(&request, items.clone(), vec![items[0].clone()], Some(60));
        for (a, b) in want.tiles.iter().zip(&got.tiles) {
            let mut x = a.ids.clone();
            let mut y = b.ids.clone();
            x.sort();
            y.sort();
            assert_eq!(x, y, "tile {}", a.tile);
        }
        assert_eq!(want.items.len(), got.items.len());
        assert_eq!(want.missing, got.missing);
    }
}
