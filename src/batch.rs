//! The batch planner: turns planned [`Work`] into batch requests and keeps track of them.
//!
//! - Requests hold at most `max_tiles` tiles and `max_ids` ids; foreground work goes out
//!   before prefetch work; a tile or id already in flight is never requested twice.
//! - At most `max_in_flight` requests are out at once, and prefetch never takes the last
//!   free slot, so a foreground request can always start at once.
//! - A failed request is retried with exponential backoff and full jitter, up to `retries`
//!   times (a `429 Retry-After` is honoured); client errors (4xx) are not retried. The
//!   delay grows with a tile's failures in a row across rounds, so a visible tile queued
//!   again after its request gave up backs off further each round, up to `backoff_max_ms`.
//! - A circuit breaker suspends **prefetch only** after `breaker_threshold` consecutive
//!   failures, and lets one prefetch through as a probe after a cool-down that doubles
//!   while the backend keeps failing. Foreground requests are never held back by it: a
//!   slow backend must not stall the page any more than it has to.
//!
//! Sans-IO: the caller sends [`Outgoing`] requests however it likes and reports back with
//! [`Batcher::on_success`] / [`Batcher::on_failure`]; time is always an argument.

use crate::{HashMap, HashSet};

use crate::planner::Work;
use crate::tile::{find_tile, TileId, TileSet};

/// Identifies one request while it is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Whether a request serves what the user sees now, or what they may see next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Foreground,
    Prefetch,
}

/// Batch settings. The defaults suit a browser talking to one batch endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Tiles per request, at most (default 16).
    pub max_tiles: usize,
    /// Ids per request, at most (default 200).
    pub max_ids: usize,
    /// Requests in flight at once, at most (default 4).
    pub max_in_flight: usize,
    /// Time a request may take before it counts as failed (default 3000 ms).
    pub timeout_ms: u64,
    /// Retries after the first attempt (default 2).
    pub retries: u32,
    /// First backoff delay (default 200 ms); doubles per attempt, with full jitter.
    pub backoff_base_ms: u64,
    /// Backoff delays never exceed this (default 10 000 ms).
    pub backoff_max_ms: u64,
    /// Consecutive failures that open the prefetch breaker (default 3).
    pub breaker_threshold: u32,
    /// First breaker cool-down before a probe (default 5000 ms); doubles per failed probe.
    pub breaker_cooldown_ms: u64,
    /// Longest breaker cool-down (default 60 000 ms).
    pub breaker_max_cooldown_ms: u64,
    /// Seed of the jitter generator (deterministic for tests and the simulator).
    pub seed: u64,
    /// Ask for a coarser tile instead of its data tiles when all of them are queued:
    /// up to this many zoom levels up (default 2: one zoom-12 tile for 16 zoom-14 tiles;
    /// 0 = off). Cuts requests when a zoomed-out view misses hundreds of tiles. The
    /// protocol answers a coarse tile with all its items; the server's `min_zoom` must
    /// allow `tile_zoom - coalesce_levels`.
    pub coalesce_levels: u8,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_tiles: 16,
            max_ids: 200,
            max_in_flight: 4,
            timeout_ms: 3000,
            retries: 2,
            backoff_base_ms: 200,
            backoff_max_ms: 10_000,
            breaker_threshold: 3,
            breaker_cooldown_ms: 5000,
            breaker_max_cooldown_ms: 60_000,
            seed: 0x5eed_7113_3a3d_0001,
            coalesce_levels: 2,
        }
    }
}

/// A batch configuration field out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch config {field} must be {allowed}, got {value}")]
pub struct BatchConfigError {
    pub field: &'static str,
    pub value: u64,
    pub allowed: &'static str,
}

impl BatchConfig {
    /// Checks every field; the error names the field, the value and the allowed range.
    pub fn validate(&self) -> Result<(), BatchConfigError> {
        // (field, lowest, highest, as the error says it), in the order of `values`.
        const RANGES: [(&str, u64, u64, &str); 10] = [
            ("max_tiles", 1, 1024, "in 1..=1024"),
            ("max_ids", 1, 100_000, "in 1..=100000"),
            ("max_in_flight", 1, 64, "in 1..=64"),
            ("timeout_ms", 1, 600_000, "in 1..=600000"),
            ("retries", 0, 10, "in 0..=10"),
            ("backoff_base_ms", 1, 600_000, "in 1..=600000"),
            ("backoff_max_ms", 1, 3_600_000, "in 1..=3600000"),
            ("breaker_threshold", 1, 1000, "in 1..=1000"),
            ("breaker_cooldown_ms", 1, 3_600_000, "in 1..=3600000"),
            ("coalesce_levels", 0, 4, "in 0..=4"),
        ];
        let values = [
            self.max_tiles as u64,
            self.max_ids as u64,
            self.max_in_flight as u64,
            self.timeout_ms,
            self.retries as u64,
            self.backoff_base_ms,
            self.backoff_max_ms,
            self.breaker_threshold as u64,
            self.breaker_cooldown_ms,
            self.coalesce_levels as u64,
        ];
        for (&(field, lo, hi, allowed), value) in RANGES.iter().zip(values) {
            if value < lo || value > hi {
                return Err(BatchConfigError {
                    field,
                    value,
                    allowed,
                });
            }
        }
        if self.breaker_max_cooldown_ms < self.breaker_cooldown_ms {
            return Err(BatchConfigError {
                field: "breaker_max_cooldown_ms",
                value: self.breaker_max_cooldown_ms,
                allowed: "at least breaker_cooldown_ms",
            });
        }
        Ok(())
    }
}

/// A request to send: the tiles and ids to ask the batch endpoint for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub id: RequestId,
    pub kind: Kind,
    pub tiles: Vec<TileId>,
    pub ids: Vec<String>,
    /// 0 for the first try.
    pub attempt: u32,
    /// Abort the request if it has not completed after this long.
    pub timeout_ms: u64,
}

/// Why a request failed, as the shell saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// The connection failed.
    Network(String),
    /// An HTTP error status; `retry_after_ms` from a `Retry-After` header.
    Http {
        status: u16,
        retry_after_ms: Option<u64>,
    },
    /// The answer could not be decoded or failed validation.
    Invalid(String),
    /// The shell aborted it (e.g. after [`Batcher::cancel_unwanted`]).
    Aborted,
}

impl Failure {
    /// Whether trying again may help: network trouble, timeouts, 5xx, 408, 429 and bad
    /// answers (a proxy may have cut them short). Other 4xx statuses are the caller's bug.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Timeout | Failure::Network(_) | Failure::Invalid(_) => true,
            Failure::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Failure::Aborted => false,
        }
    }

    /// Whether the failure says something about the backend's health (counts towards the
    /// breaker).
    fn is_backend_trouble(&self) -> bool {
        self.is_retryable()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("request timed out"),
            Failure::Network(m) => write!(f, "network error: {m}"),
            Failure::Http { status, .. } => write!(f, "backend answered HTTP {status}"),
            Failure::Invalid(m) => write!(f, "invalid response: {m}"),
            Failure::Aborted => f.write_str("request aborted"),
        }
    }
}

/// A request that has finished (successfully, or for good).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub id: RequestId,
    pub kind: Kind,
    pub works: Vec<Work>,
    pub loose_ids: Vec<String>,
    pub sent_at_ms: u64,
    pub attempt: u32,
}

impl Finished {
    /// The tiles this request served.
    pub fn tiles(&self) -> impl Iterator<Item = TileId> + '_ {
        self.works.iter().map(Work::tile)
    }
}

/// What became of a failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Its work is queued again and may go out at `at_ms`.
    Retrying { at_ms: u64, request: Finished },
    /// Out of retries, or not retryable: the work is dropped.
    GaveUp(Finished),
    /// The id was not in flight (already cancelled or finished): nothing to do.
    Unknown,
}

/// Counters of the batch layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub requests: u64,
    pub prefetch_requests: u64,
    pub tiles_requested: u64,
    pub ids_requested: u64,
    pub retries: u64,
    pub failures: u64,
    pub gave_up: u64,
    pub cancelled: u64,
    pub breaker_opened: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { probe: Option<RequestId> },
}

#[derive(Clone, Debug)]
struct InFlight {
    /// What the request is for, handed back as it is when the request ends.
    request: Finished,
    /// The data tiles of its work, for [`Batcher::is_tile_in_flight`].
    tiles: TileSet,
    deadline_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    /// Attempt number of the tile's next request within its current round of retries.
    attempt: u32,
    /// Consecutive failures of the tile's requests, across rounds (a round ends when the
    /// request gives up and a later round asks again): the backoff exponent, so a tile that
    /// keeps failing waits longer each time, up to `backoff_max_ms`, until a success.
    failures: u32,
    not_before_ms: u64,
}

/// Most tiles remembered as backing off; older entries are dropped beyond it.
const MAX_BACKOFF_ENTRIES: usize = 4096;

/// The batch planner. See the module docs.
#[derive(Clone, Debug)]
pub struct Batcher {
    config: BatchConfig,
    next_id: u64,
    foreground: Vec<Work>,
    prefetch: Vec<Work>,
    /// Ids asked for directly, in order: `(id, attempt, not before ms)`.
    loose_ids: Vec<(String, u32, u64)>,
    /// Requests in flight, in ascending id order (ids grow, and new requests are pushed at
    /// the end). A `Vec` searched linearly rather than a hash map: it never holds more than
    /// `max_in_flight` (at most 64) requests, and the wasm carries one hash table type fewer.
    /// Each keeps its data tiles as a [`TileSet`], so whether a tile is in flight is at most
    /// 64 binary searches, and a request's tiles are sorted once when it goes out and
    /// forgotten with it (no map from tiles to requests to keep in step).
    in_flight: Vec<InFlight>,
    ids_in_flight: HashMap<String, RequestId>,
    /// Tiles backing off, as `(packed tile, backoff)` sorted by tile and found by binary
    /// search. A sorted `Vec` rather than a hash map (no hash table code of its own in the
    /// wasm): at most [`MAX_BACKOFF_ENTRIES`] entries, and usually a handful (tiles whose
    /// requests failed), so inserting into the middle moves little.
    backoff: Vec<(u64, Backoff)>,
    breaker: Breaker,
    consecutive_failures: u32,
    cooldown_ms: u64,
    rng: u64,
    stats: BatchStats,
}

impl Batcher {
    /// A batcher with a checked configuration.
    pub fn new(config: BatchConfig) -> Result<Batcher, BatchConfigError> {
        config.validate()?;
        Ok(Batcher {
            rng: config.seed | 1,
            cooldown_ms: config.breaker_cooldown_ms,
            config,
            next_id: 1,
            foreground: Vec::new(),
            prefetch: Vec::new(),
            loose_ids: Vec::new(),
            in_flight: Vec::new(),
            ids_in_flight: HashMap::new(),
            backoff: Vec::new(),
            breaker: Breaker::Closed,
            consecutive_failures: 0,
            stats: BatchStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a request for this tile is out.
    pub fn is_tile_in_flight(&self, tile: TileId) -> bool {
        self.in_flight.iter().any(|f| f.tiles.contains(tile))
    }

    /// Whether a request for this id is out.
    pub fn is_id_in_flight(&self, id: &str) -> bool {
        self.ids_in_flight.contains_key(id)
    }

    /// Whether foreground work is waiting to be sent.
    pub fn has_foreground_queued(&self) -> bool {
        !self.foreground.is_empty() || !self.loose_ids.is_empty()
    }

    /// Whether the breaker currently holds prefetch back (open, or half-open with its
    /// probe out).
    pub fn breaker_open(&self) -> bool {
        !matches!(self.breaker, Breaker::Closed)
    }

    /// Replaces the foreground queue with this round's foreground work (visible tiles
    /// that cannot be shown), in priority order. Work for tiles no longer listed is
    /// dropped; retry state of a tile is kept across rounds.
    pub fn set_foreground(&mut self, works: Vec<Work>) {
        self.foreground = dedup_by_tile(works);
    }

    /// Replaces the prefetch queue with this round's prefetch (and refresh) work.
    pub fn set_prefetch(&mut self, works: Vec<Work>) {
        self.prefetch = dedup_by_tile(works);
    }

    /// Adds prefetch work behind this round's (tiles already queued are skipped).
    pub fn extend_prefetch(&mut self, works: Vec<Work>) {
        // The queue has no tile twice, so deduplicating it with the new work behind keeps
        // it whole and adds the new work's first of each tile not queued yet.
        self.prefetch.extend(works);
        self.prefetch = dedup_by_tile(std::mem::take(&mut self.prefetch));
    }

    /// Queues ids asked for directly (not through a tile) as foreground work.
    pub fn request_ids<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        // A set of borrowed ids (the key type the protocol's checks use too), so the new
        // ones are collected before they are queued.
        let mut queued: HashSet<&str> = HashSet::with_capacity(self.loose_ids.len());
        for (id, _, _) in &self.loose_ids {
            queued.insert(id);
        }
        let mut new = Vec::new();
        for id in ids {
            if !queued.contains(id) && !self.is_id_in_flight(id) {
                new.push((id.to_owned(), 0, 0));
            }
        }
        drop(queued);
        self.loose_ids.append(&mut new);
    }

    /// The next request to send, if any may go out now. Call until it returns `None`.
    /// `needed(work)` lets the caller drop queued work that became unnecessary (e.g. the
    /// tile was filled by another response).
    pub fn poll(&mut self, now_ms: u64, mut needed: impl FnMut(&Work) -> bool) -> Option<Outgoing> {
        if self.in_flight.len() >= self.config.max_in_flight {
            return None;
        }
        if let Some(out) = self.take(Kind::Foreground, now_ms, &mut needed) {
            return Some(out);
        }
        // Prefetch never takes the last free slot, so foreground can always start at once
        // (with a single slot, prefetch waits while foreground work is queued).
        let free = self.config.max_in_flight - self.in_flight.len();
        if (self.config.max_in_flight > 1 && free <= 1)
            || (free == 1 && self.has_foreground_queued())
        {
            return None;
        }
        if !self.prefetch_allowed(now_ms) {
            return None;
        }
        let out = self.take(Kind::Prefetch, now_ms, &mut needed)?;
        if let Breaker::HalfOpen { probe } = &mut self.breaker {
            *probe = Some(out.id);
        }
        Some(out)
    }

    fn prefetch_allowed(&mut self, now_ms: u64) -> bool {
        match self.breaker {
            Breaker::Closed => true,
            Breaker::Open { until_ms } if now_ms >= until_ms => {
                self.breaker = Breaker::HalfOpen { probe: None };
                true
            }
            Breaker::Open { .. } => false,
            Breaker::HalfOpen { probe } => probe.is_none(),
        }
    }

    fn ready(&self, tile: TileId, now_ms: u64) -> bool {
        self.backoff_of(tile)
            .is_none_or(|b| b.not_before_ms <= now_ms)
    }

    /// Where `tile` is in [`Batcher::backoff`], or where it would go.
    fn find_backoff(&self, tile: TileId) -> Result<usize, usize> {
        let key = tile.to_u64();
        self.backoff.binary_search_by(|(k, _)| k.cmp(&key))
    }

    fn backoff_of(&self, tile: TileId) -> Option<&Backoff> {
        let i = self.find_backoff(tile).ok()?;
        Some(&self.backoff[i].1)
    }

    /// Builds one request of `kind` from the queue, or `None` when nothing is ready.
    fn take(
        &mut self,
        kind: Kind,
        now_ms: u64,
        needed: &mut impl FnMut(&Work) -> bool,
    ) -> Option<Outgoing> {
        let queue = match kind {
            Kind::Foreground => std::mem::take(&mut self.foreground),
            Kind::Prefetch => std::mem::take(&mut self.prefetch),
        };
        let (mut tiles, mut ids, mut works, mut keep): (
            Vec<TileId>,
            Vec<String>,
            Vec<Work>,
            Vec<Work>,
        ) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut attempt = 0;
        // Data tiles gathered per request: room for `max_tiles` coarse tiles' worth.
        let tile_cap = self
            .config
            .max_tiles
            .saturating_mul(1 << (2 * self.config.coalesce_levels as usize))
            .min(4096)
            .max(self.config.max_tiles);
        for w in queue {
            let tile = w.tile();
            if self.is_tile_in_flight(tile) || !needed(&w) {
                continue; // already coming, or no longer needed: drop
            }
            let fits = match &w {
                Work::Tile(_) => tiles.len() < tile_cap,
                Work::Ids { ids: wi, .. } => {
                    ids.len() + wi.len() <= self.config.max_ids || ids.is_empty()
                }
            };
            if !fits || !self.ready(tile, now_ms) {
                keep.push(w);
                continue;
            }
            match &w {
                Work::Tile(t) => tiles.push(*t),
                Work::Ids { ids: wi, .. } => {
                    // Its first ids up to the room left (only an oversized work is cut).
                    let room = self.config.max_ids.saturating_sub(ids.len());
                    for id in &wi[..room.min(wi.len())] {
                        if !self.is_id_in_flight(id) {
                            ids.push(id.clone());
                        }
                    }
                }
            }
            attempt = attempt.max(self.backoff_of(tile).map_or(0, |b| b.attempt));
            works.push(w);
        }
        // Coalesce complete groups into coarse tiles; what does not fit in `max_tiles`
        // request tiles goes back to the front of the queue.
        // `tiles` holds the data tiles of the `Work::Tile`s in `works`, in the same order.
        let (mut request_tiles, group_of) = coalesce(&tiles, self.config.coalesce_levels);
        if request_tiles.len() > self.config.max_tiles {
            let mut groups = group_of.iter();
            let (mut sent, mut returned) = (Vec::new(), Vec::new());
            for w in works {
                let back = matches!(w, Work::Tile(_))
                    && groups.next().is_some_and(|&g| g >= self.config.max_tiles);
                if back { &mut returned } else { &mut sent }.push(w);
            }
            works = sent;
            returned.append(&mut keep);
            keep = returned;
            request_tiles.truncate(self.config.max_tiles);
        }
        let tiles = request_tiles;
        match kind {
            Kind::Foreground => self.foreground = keep,
            Kind::Prefetch => self.prefetch = keep,
        }
        let mut loose = Vec::new();
        if kind == Kind::Foreground {
            let mut rest = Vec::new();
            for (id, a, not_before) in std::mem::take(&mut self.loose_ids) {
                if self.is_id_in_flight(&id) {
                    continue;
                }
                if not_before > now_ms || ids.len() >= self.config.max_ids {
                    rest.push((id, a, not_before));
                    continue;
                }
                attempt = attempt.max(a);
                ids.push(id.clone());
                loose.push(id);
            }
            self.loose_ids = rest;
        }
        if tiles.is_empty() && ids.is_empty() {
            return None;
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        for i in &ids {
            self.ids_in_flight.insert(i.clone(), id);
        }
        self.stats.requests += 1;
        if kind == Kind::Prefetch {
            self.stats.prefetch_requests += 1;
        }
        self.stats.tiles_requested += tiles.len() as u64;
        self.stats.ids_requested += ids.len() as u64;
        if attempt > 0 {
            self.stats.retries += 1;
        }
        self.in_flight.push(InFlight {
            tiles: TileSet::new(works.iter().map(Work::tile)),
            request: Finished {
                id,
                kind,
                works,
                loose_ids: loose,
                sent_at_ms: now_ms,
                attempt,
            },
            deadline_ms: now_ms.saturating_add(self.config.timeout_ms),
        });
        Some(Outgoing {
            id,
            kind,
            tiles,
            ids,
            attempt,
            timeout_ms: self.config.timeout_ms,
        })
    }

    fn finish(&mut self, id: RequestId) -> Option<Finished> {
        let i = self.in_flight.iter().position(|f| f.request.id == id)?;
        let f = self.in_flight.remove(i).request;
        self.ids_in_flight.retain(|_, r| *r != id);
        if let Breaker::HalfOpen { probe: Some(p) } = self.breaker {
            if p == id {
                self.breaker = Breaker::HalfOpen { probe: None };
            }
        }
        Some(f)
    }

    /// The request answered. Closes the breaker. Returns what it was for, or `None` if it
    /// was no longer tracked (cancelled).
    pub fn on_success(&mut self, id: RequestId) -> Option<Finished> {
        self.on_answer(id, |_| true, 0).map(|(f, _)| f)
    }

    /// The request answered, but `listed(tile)` says whether the answer covers each tile it
    /// asked for. Closes the breaker (the backend is up). Tiles the answer left out (a
    /// server bug or a cut-short answer) back off like a failed request's tiles, with the
    /// same growing delay, so a visible tile queued again is not asked for in a tight loop;
    /// they are returned with what the request was for. `None` if it was no longer tracked.
    pub fn on_answer(
        &mut self,
        id: RequestId,
        mut listed: impl FnMut(TileId) -> bool,
        now_ms: u64,
    ) -> Option<(Finished, Vec<TileId>)> {
        let f = self.finish(id)?;
        let mut unanswered = Vec::new();
        for w in &f.works {
            match w {
                Work::Tile(t) if !listed(*t) => unanswered.push(*t),
                _ => {
                    if let Ok(i) = self.find_backoff(w.tile()) {
                        self.backoff.remove(i);
                    }
                }
            }
        }
        self.consecutive_failures = 0;
        self.breaker = Breaker::Closed;
        self.cooldown_ms = self.config.breaker_cooldown_ms;
        if !unanswered.is_empty() {
            self.back_off(&unanswered, 0, now_ms);
        }
        Some((f, unanswered))
    }

    /// Holds these tiles back as if their request had failed: not requested again before
    /// a backoff that grows with each call (and each failure) until a request for them
    /// succeeds. For tiles an answer came back for that still cannot be shown (e.g. the
    /// view holds more than the cache may keep), so they are not asked for in a tight loop.
    /// `at_least` sets a floor on the failure count the delay is computed from, for callers
    /// that track a streak across tiles. Returns when they may go out again.
    pub fn back_off(&mut self, tiles: &[TileId], at_least: u32, now_ms: u64) -> u64 {
        self.hold_back(tiles, 0, at_least, None, now_ms)
    }

    /// Holds `tiles` back for a backoff whose exponent is one more than the most failures in
    /// a row of any of them, and at least `at_least`; their next request counts as attempt
    /// `attempt`. Returns when they may go out again.
    fn hold_back(
        &mut self,
        tiles: &[TileId],
        attempt: u32,
        at_least: u32,
        retry_after_ms: Option<u64>,
        now_ms: u64,
    ) -> u64 {
        let failures = tiles
            .iter()
            .filter_map(|&t| self.backoff_of(t))
            .map(|b| b.failures)
            .max()
            .unwrap_or(0)
            .saturating_add(1)
            .max(at_least);
        let at = now_ms.saturating_add(self.backoff_delay(failures, retry_after_ms));
        for &t in tiles {
            self.remember_backoff(t, attempt, failures, at);
        }
        at
    }

    /// The request failed. Retryable failures within the retry limit requeue the work
    /// with a backoff; everything else drops it.
    pub fn on_failure(&mut self, id: RequestId, failure: &Failure, now_ms: u64) -> FailureOutcome {
        let Some(f) = self.finish(id) else {
            return FailureOutcome::Unknown;
        };
        if matches!(failure, Failure::Aborted) {
            return FailureOutcome::GaveUp(f);
        }
        self.stats.failures += 1;
        if failure.is_backend_trouble() {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            let open = match self.breaker {
                // The probe (or a request sent before it) failed: open again, for longer.
                Breaker::HalfOpen { .. } => {
                    self.cooldown_ms = (self.cooldown_ms.saturating_mul(2))
                        .min(self.config.breaker_max_cooldown_ms);
                    true
                }
                Breaker::Closed if self.consecutive_failures >= self.config.breaker_threshold => {
                    self.stats.breaker_opened += 1;
                    true
                }
                _ => false,
            };
            if open {
                self.breaker = Breaker::Open {
                    until_ms: now_ms.saturating_add(self.cooldown_ms),
                };
            }
        }
        let next_attempt = f.attempt + 1;
        let give_up = !failure.is_retryable() || next_attempt > self.config.retries;
        let retry_after_ms = match failure {
            Failure::Http { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        };
        // The backoff grows with the tiles' failures in a row, not only this round's
        // attempts: a visible tile the client queues again after a give-up waits longer
        // each round (up to `backoff_max_ms`) instead of hitting a dead backend every
        // second for as long as the page stays open. After a give-up, a later round may
        // ask again, but not before a backoff has passed.
        let tiles: Vec<TileId> = f.tiles().collect();
        let attempt = if give_up { 0 } else { next_attempt };
        let at_ms = self.hold_back(&tiles, attempt, next_attempt, retry_after_ms, now_ms);
        if give_up {
            self.stats.gave_up += 1;
            return FailureOutcome::GaveUp(f);
        }
        let queue = match f.kind {
            Kind::Foreground => &mut self.foreground,
            Kind::Prefetch => &mut self.prefetch,
        };
        let queued = TileSet::new(queue.iter().map(Work::tile));
        let mut again = Vec::new();
        for w in &f.works {
            if !queued.contains(w.tile()) {
                again.push(w.clone());
            }
        }
        again.append(queue);
        *queue = again;
        let mut loose: Vec<(String, u32, u64)> = Vec::new();
        for id in &f.loose_ids {
            loose.push((id.clone(), next_attempt, at_ms));
        }
        loose.append(&mut self.loose_ids);
        self.loose_ids = loose;
        FailureOutcome::Retrying { at_ms, request: f }
    }

    fn remember_backoff(&mut self, t: TileId, attempt: u32, failures: u32, not_before_ms: u64) {
        let b = Backoff {
            attempt,
            failures,
            not_before_ms,
        };
        if let Ok(i) = self.find_backoff(t) {
            self.backoff[i].1 = b;
            return;
        }
        if self.backoff.len() >= MAX_BACKOFF_ENTRIES {
            // Forget the entries whose wait is over; if that is not enough, forget all.
            let horizon = not_before_ms.saturating_sub(self.config.backoff_max_ms);
            self.backoff.retain(|(_, b)| b.not_before_ms > horizon);
            if self.backoff.len() >= MAX_BACKOFF_ENTRIES {
                self.backoff.clear();
            }
        }
        if let Err(i) = self.find_backoff(t) {
            self.backoff.insert(i, (t.to_u64(), b));
        }
    }

    /// Exponential backoff with full jitter: a uniform delay in `[d/2, d]` where
    /// `d = min(max, base * 2^(attempt-1))`, at least any `Retry-After`.
    fn backoff_delay(&mut self, attempt: u32, retry_after_ms: Option<u64>) -> u64 {
        let exp = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(20))
            .min(self.config.backoff_max_ms);
        let half = exp / 2;
        let jittered = half + self.next_rand() % (exp - half + 1);
        match retry_after_ms {
            Some(ra) => jittered.max(ra.min(3_600_000)),
            None => jittered,
        }
    }

    /// xorshift64*: small, deterministic, good enough for jitter.
    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In-flight prefetch requests none of whose tiles is still wanted. They stop being
    /// tracked; the shell should abort them (a late answer is then ignored).
    pub fn cancel_unwanted(&mut self, mut wanted: impl FnMut(TileId) -> bool) -> Vec<RequestId> {
        let mut doomed = Vec::new();
        for InFlight { request: f, .. } in &self.in_flight {
            if f.kind == Kind::Prefetch
                && f.loose_ids.is_empty()
                && !f.works.iter().any(|w| wanted(w.tile()))
            {
                doomed.push(f.id);
            }
        }
        for id in &doomed {
            self.finish(*id);
            self.stats.cancelled += 1;
        }
        doomed
    }

    /// Requests whose deadline has passed at `now_ms`; the shell should abort each and
    /// report [`Failure::Timeout`] (shells with their own timers may ignore this).
    pub fn overdue(&self, now_ms: u64) -> Vec<RequestId> {
        let mut ids = Vec::new();
        for f in &self.in_flight {
            if f.deadline_ms <= now_ms {
                ids.push(f.request.id);
            }
        }
        ids
    }

    /// The earliest time something changes without outside input: a backoff ends, the
    /// breaker allows a probe, or an in-flight request reaches its deadline.
    pub fn next_wakeup(&self, now_ms: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| {
            if t > now_ms {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for w in self.foreground.iter().chain(self.prefetch.iter()) {
            if let Some(b) = self.backoff_of(w.tile()) {
                consider(b.not_before_ms);
            }
        }
        for (_, _, nb) in &self.loose_ids {
            consider(*nb);
        }
        if let Breaker::Open { until_ms } = self.breaker {
            if !self.prefetch.is_empty() {
                consider(until_ms);
            }
        }
        for f in &self.in_flight {
            consider(f.deadline_ms);
        }
        next
    }
}

/// Groups data tiles (in priority order) into request tiles: an ancestor up to `levels`
/// zooms up stands for its descendants when all of them are in `tiles` (the coarsest such
/// ancestor does). Returns the request tiles in order of first appearance, and for each data
/// tile the index of its request tile.
///
/// Sorted `(u64, u64)` vectors throughout ([`crate::sort_pairs`]), no hash tables: per level,
/// the `(ancestor, tile)` pairs sorted and deduplicated count the distinct tiles below each
/// ancestor, and one with `4^k` of them `k` zooms up is complete. O(levels · n log n).
pub fn coalesce(tiles: &[TileId], levels: u8) -> (Vec<TileId>, Vec<usize>) {
    // (request tile, position) of each data tile: the tile itself unless an ancestor is complete.
    let mut chosen: Vec<(u64, u64)> = Vec::with_capacity(tiles.len());
    for (i, t) in tiles.iter().enumerate() {
        chosen.push((t.to_u64(), i as u64));
    }
    let above = |t: TileId, k: u8| t.ancestor(t.z().checked_sub(k)?).ok();
    // Finest level first, so a complete coarser ancestor replaces a finer one.
    for k in 1..=levels {
        let mut pairs: Vec<(u64, u64)> = Vec::with_capacity(tiles.len());
        for &t in tiles {
            if let Some(a) = above(t, k) {
                pairs.push((a.to_u64(), t.to_u64()));
            }
        }
        crate::sort_pairs(&mut pairs);
        pairs.dedup();
        let mut complete: Vec<(u64, u64)> = Vec::new();
        for below in pairs.chunk_by(|p, q| p.0 == q.0) {
            if below.len() == 1 << (2 * k) {
                complete.push((below[0].0, 0));
            }
        }
        if complete.is_empty() {
            continue;
        }
        for (&t, c) in tiles.iter().zip(chosen.iter_mut()) {
            if let Some(a) = above(t, k).filter(|&a| find_tile(&complete, a).is_ok()) {
                c.0 = a.to_u64();
            }
        }
    }
    // Sorted by request tile, each run is one group, first seen at its smallest position;
    // the groups sorted by that position are in order of first appearance.
    crate::sort_pairs(&mut chosen);
    let mut firsts: Vec<(u64, u64)> = Vec::new();
    for (j, c) in chosen.iter().enumerate() {
        if j == 0 || chosen[j - 1].0 != c.0 {
            firsts.push((c.1, j as u64));
        }
    }
    crate::sort_pairs(&mut firsts);
    let mut request_tiles = Vec::with_capacity(firsts.len());
    let mut group_of = vec![0; tiles.len()];
    for (g, &(_, start)) in firsts.iter().enumerate() {
        let key = chosen[start as usize].0;
        request_tiles.push(TileId::from_packed(key));
        for &(_, i) in chosen[start as usize..].iter().take_while(|c| c.0 == key) {
            group_of[i as usize] = g;
        }
    }
    (request_tiles, group_of)
}

/// `works` without the later ones of a tile listed earlier, in their order. Sorted as
/// `(tile, position)` pairs rather than checked against a hash set: the first of each run
/// of a tile stays.
fn dedup_by_tile(mut works: Vec<Work>) -> Vec<Work> {
    let mut keys: Vec<(u64, u64)> = Vec::with_capacity(works.len());
    for (i, w) in works.iter().enumerate() {
        keys.push((w.tile().to_u64(), i as u64));
    }
    crate::sort_pairs(&mut keys);
    let mut repeat = vec![false; works.len()];
    for p in keys.windows(2) {
        if p[0].0 == p[1].0 {
            repeat[p[1].1 as usize] = true;
        }
    }
    let mut i = 0;
    works.retain(|_| {
        i += 1;
        !repeat[i - 1]
    });
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(x: u32) -> TileId {
        TileId::new(14, x, 100).unwrap()
    }
    fn tiles(r: std::ops::Range<u32>) -> Vec<Work> {
        r.map(|x| Work::Tile(t(x))).collect()
    }
    fn all(_: &Work) -> bool {
        true
    }

    #[test]
    fn groups_foreground_first_and_respects_sizes() {
        let mut b = Batcher::new(BatchConfig {
            max_tiles: 4,
            ..BatchConfig::default()
        })
        .unwrap();
        b.set_prefetch(tiles(100..103));
        b.set_foreground(tiles(0..6));
        let r1 = b.poll(0, all).unwrap();
        assert_eq!((r1.kind, r1.tiles.len()), (Kind::Foreground, 4));
        let r2 = b.poll(0, all).unwrap();
        assert_eq!((r2.kind, r2.tiles.len()), (Kind::Foreground, 2));
        let r3 = b.poll(0, all).unwrap();
        assert_eq!((r3.kind, r3.tiles.len()), (Kind::Prefetch, 3));
        // 3 in flight of 4: the last slot is kept for foreground.
        b.set_prefetch(tiles(200..203));
        assert_eq!(b.poll(0, all), None);
        b.set_foreground(tiles(300..301));
        assert_eq!(b.poll(0, all).unwrap().kind, Kind::Foreground);
        assert_eq!(b.in_flight(), 4);
        assert_eq!(b.poll(0, all), None);
    }

    #[test]
    fn never_requests_in_flight_twice() {
        let mut b = Batcher::new(BatchConfig::default()).unwrap();
        b.set_foreground(tiles(0..3));
        let r = b.poll(0, all).unwrap();
        b.set_foreground(tiles(0..5));
        b.set_prefetch(tiles(0..5));
        let r2 = b.poll(0, all).unwrap();
        assert_eq!(r2.tiles, vec![t(3), t(4)]);
        assert_eq!(b.poll(0, all), None);
        assert!(b.on_success(r.id).is_some());
        assert!(b.on_success(r.id).is_none());
    }

    #[test]
    fn ids_respect_max_ids_and_dedup() {
        let mut b = Batcher::new(BatchConfig {
            max_ids: 3,
            ..BatchConfig::default()
        })
        .unwrap();
        b.request_ids(["a", "b", "c", "d", "a"]);
        let r = b.poll(0, all).unwrap();
        assert_eq!(r.ids, vec!["a", "b", "c"]);
        b.request_ids(["a", "d"]);
        let r2 = b.poll(0, all).unwrap();
        assert_eq!(r2.ids, vec!["d"]);
        assert!(b.is_id_in_flight("a"));
    }

    #[test]
    fn retries_with_backoff_then_gives_up() {
        let mut b = Batcher::new(BatchConfig {
            retries: 2,
            backoff_base_ms: 100,
            ..BatchConfig::default()
        })
        .unwrap();
        b.set_foreground(tiles(0..1));
        let r = b.poll(0, all).unwrap();
        let FailureOutcome::Retrying { at_ms, .. } = b.on_failure(r.id, &Failure::Timeout, 1000)
        else {
            panic!("should retry")
        };
        assert!((1050..=1100).contains(&at_ms), "{at_ms}");
        assert_eq!(b.poll(at_ms - 1, all), None, "not before the backoff");
        assert_eq!(b.next_wakeup(1000), Some(at_ms));
        let r = b.poll(at_ms, all).unwrap();
        assert_eq!(r.attempt, 1);
        let FailureOutcome::Retrying { at_ms: at2, .. } =
            b.on_failure(r.id, &Failure::Network("reset".into()), at_ms)
        else {
            panic!("should retry")
        };
        assert!((at_ms + 100..=at_ms + 200).contains(&at2), "{at2}");
        let r = b.poll(at2, all).unwrap();
        assert_eq!(r.attempt, 2);
        assert!(matches!(
            b.on_failure(r.id, &Failure::Timeout, at2),
            FailureOutcome::GaveUp(_)
        ));
        assert_eq!(b.stats().gave_up, 1);
    }

    /// A dead backend and a client that queues the visible tile again after every give-up
    /// (as `Client::refresh_foreground` does): the gaps between rounds grow to
    /// `backoff_max_ms` instead of staying at a second, and a success resets them.
    #[test]
    fn backoff_keeps_growing_across_give_ups_until_a_success() {
        let mut b = Batcher::new(BatchConfig {
            retries: 2,
            backoff_base_ms: 200,
            backoff_max_ms: 10_000,
            ..BatchConfig::default()
        })
        .unwrap();
        let dead = Failure::Http {
            status: 503,
            retry_after_ms: None,
        };
        let mut now = 0;
        let mut sent_at = Vec::new();
        let mut gave_up = 0;
        // Ten minutes against the dead backend.
        b.set_foreground(tiles(0..1));
        while now < 600_000 {
            if let Some(r) = b.poll(now, all) {
                sent_at.push(now);
                if matches!(b.on_failure(r.id, &dead, now), FailureOutcome::GaveUp(_)) {
                    gave_up += 1;
                    b.set_foreground(tiles(0..1));
                }
            }
            now = b.next_wakeup(now).expect("the queued tile's backoff");
        }
        // The first round is as before: 200 ms, then 400 ms (full jitter: [d/2, d]).
        assert!(
            (100..=200).contains(&(sent_at[1] - sent_at[0])),
            "{sent_at:?}"
        );
        assert!(
            (200..=400).contains(&(sent_at[2] - sent_at[1])),
            "{sent_at:?}"
        );
        // Later gaps reach the cap's jitter window and never exceed it.
        let gaps: Vec<u64> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g <= 10_000), "{gaps:?}");
        assert!(gaps[10..].iter().all(|&g| g >= 5_000), "{gaps:?}");
        // At most one request per 5 s once grown: about 120 in 10 minutes, not ~1500.
        assert!(sent_at.len() < 130, "{} requests", sent_at.len());
        assert!(
            gave_up > 20,
            "rounds keep giving up and starting again: {gave_up}"
        );
        // The backend recovers: the next attempt succeeds and the streak resets.
        b.set_foreground(tiles(0..1));
        let at = b.next_wakeup(now).unwrap_or(now);
        let r = b.poll(at, all).unwrap();
        assert!(b.on_success(r.id).is_some());
        b.set_foreground(tiles(0..1));
        let r = b.poll(at, all).unwrap();
        let FailureOutcome::Retrying { at_ms, .. } = b.on_failure(r.id, &dead, at) else {
            panic!("should retry")
        };
        assert!(
            (at + 100..=at + 200).contains(&at_ms),
            "back to the base delay: {at_ms}"
        );
    }

    #[test]
    fn client_errors_are_not_retried_and_retry_after_is_honoured() {
        let mut b = Batcher::new(BatchConfig::default()).unwrap();
        b.set_foreground(tiles(0..1));
        let r = b.poll(0, all).unwrap();
        let bad = Failure::Http {
            status: 400,
            retry_after_ms: None,
        };
        assert!(matches!(
            b.on_failure(r.id, &bad, 0),
            FailureOutcome::GaveUp(_)
        ));
        b.set_foreground(tiles(1..2));
        let r = b.poll(0, all).unwrap();
        let slow = Failure::Http {
            status: 429,
            retry_after_ms: Some(7000),
        };
        let FailureOutcome::Retrying { at_ms, .. } = b.on_failure(r.id, &slow, 0) else {
            panic!()
        };
        assert_eq!(at_ms, 7000);
    }

    #[test]
    fn breaker_suspends_prefetch_not_foreground_and_probes() {
        let mut b = Batcher::new(BatchConfig {
            breaker_threshold: 2,
            breaker_cooldown_ms: 1000,
            retries: 0,
            ..BatchConfig::default()
        })
        .unwrap();
        for x in 0..2 {
            b.set_prefetch(tiles(x..x + 1));
            let r = b.poll(0, all).unwrap();
            b.on_failure(
                r.id,
                &Failure::Http {
                    status: 503,
                    retry_after_ms: None,
                },
                0,
            );
        }
        assert!(b.breaker_open());
        assert_eq!(b.stats().breaker_opened, 1);
        b.set_prefetch(tiles(10..12));
        assert_eq!(b.poll(500, all), None, "prefetch held while open");
        b.set_foreground(tiles(20..21));
        assert_eq!(
            b.poll(500, all).unwrap().kind,
            Kind::Foreground,
            "foreground never held"
        );
        // After the cool-down, one probe.
        let probe = b.poll(1000, all).unwrap();
        assert_eq!(probe.kind, Kind::Prefetch);
        assert_eq!(b.poll(1000, all), None, "only one probe at a time");
        // Probe fails: open again with a doubled cool-down.
        b.on_failure(probe.id, &Failure::Timeout, 1000);
        b.set_prefetch(tiles(30..31));
        assert_eq!(b.poll(2999, all), None);
        let probe = b.poll(3000, all).unwrap();
        b.on_success(probe.id);
        assert!(!b.breaker_open());
        b.set_prefetch(tiles(40..41));
        assert!(b.poll(3000, all).is_some());
    }

    #[test]
    fn cancel_unwanted_prefetch_only() {
        let mut b = Batcher::new(BatchConfig {
            max_tiles: 2,
            ..BatchConfig::default()
        })
        .unwrap();
        b.set_foreground(tiles(0..2));
        let fg = b.poll(0, all).unwrap();
        b.set_prefetch(tiles(10..14));
        let p1 = b.poll(0, all).unwrap();
        let p2 = b.poll(0, all).unwrap();
        let cancelled = b.cancel_unwanted(|tile| tile == t(12));
        assert_eq!(cancelled, vec![p1.id]);
        assert!(!b.is_tile_in_flight(t(10)));
        assert!(b.is_tile_in_flight(t(13)), "{p2:?} keeps a wanted tile");
        assert!(b.is_tile_in_flight(t(0)), "foreground is never cancelled");
        assert_eq!(
            b.on_failure(p1.id, &Failure::Aborted, 0),
            FailureOutcome::Unknown
        );
        assert!(b.on_success(fg.id).is_some());
    }

    #[test]
    fn overdue_and_needed_filter() {
        let mut b = Batcher::new(BatchConfig {
            timeout_ms: 100,
            ..BatchConfig::default()
        })
        .unwrap();
        b.set_foreground(tiles(0..3));
        let r = b.poll(0, |w| w.tile() != t(1)).unwrap();
        assert_eq!(r.tiles, vec![t(0), t(2)]);
        assert!(b.overdue(99).is_empty());
        assert_eq!(b.overdue(100), vec![r.id]);
        assert_eq!(b.next_wakeup(0), Some(100));
    }

    /// [`coalesce`]'s answer as each request tile with its data tiles.
    fn grouped(tiles: &[TileId], levels: u8) -> Vec<(TileId, Vec<TileId>)> {
        let (request_tiles, group_of) = coalesce(tiles, levels);
        assert_eq!(group_of.len(), tiles.len());
        let mut groups: Vec<(TileId, Vec<TileId>)> =
            request_tiles.into_iter().map(|t| (t, Vec::new())).collect();
        for (&t, &g) in tiles.iter().zip(&group_of) {
            groups[g].1.push(t);
        }
        assert!(groups.iter().all(|(_, m)| !m.is_empty()), "{groups:?}");
        groups
    }

    #[test]
    fn coalesces_complete_groups_into_coarse_tiles() {
        let parent = TileId::new(12, 100, 100).unwrap();
        let block = parent.descendants(14).unwrap(); // 16 tiles
        let lone = TileId::new(14, 1000, 1000).unwrap();
        let mut tiles = vec![lone];
        tiles.extend(&block);
        let groups = grouped(&tiles, 2);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0], (lone, vec![lone]));
        assert_eq!(groups[1].0, parent);
        assert_eq!(groups[1].1.len(), 16);
        // 15 of 16: four zoom-13 groups minus one tile -> three z13 tiles + 3 singles.
        let groups = grouped(&block[1..], 2);
        assert_eq!(groups.len(), 6, "{groups:?}");
        assert!(groups.iter().filter(|(t, _)| t.z() == 13).count() == 3);
        // Every data tile is covered exactly once.
        let covered: usize = groups.iter().map(|(_, m)| m.len()).sum();
        assert_eq!(covered, 15);
        assert_eq!(grouped(&block, 0).len(), 16);
    }

    proptest::proptest! {
        /// Against the definition: each data tile goes out as its coarsest ancestor up to
        /// `levels` zooms up whose descendants are all listed (else as itself), and the
        /// request tiles come in order of first appearance.
        #[test]
        fn coalesce_matches_the_definition(
            cells in proptest::collection::vec((0u32..8, 0u32..8), 0..80),
            levels in 0u8..4,
        ) {
            let tiles: Vec<TileId> = cells
                .iter()
                .map(|&(x, y)| TileId::new(14, 1000 + x, 2000 + y).unwrap())
                .collect();
            let full = |a: TileId| {
                a.descendants(14).unwrap().iter().all(|d| tiles.contains(d))
            };
            let mut want: Vec<(TileId, Vec<TileId>)> = Vec::new();
            for &t in &tiles {
                let chosen = (1..=levels)
                    .rev()
                    .map(|k| t.ancestor(14 - k).unwrap())
                    .find(|&a| full(a))
                    .unwrap_or(t);
                match want.iter_mut().find(|(r, _)| *r == chosen) {
                    Some((_, members)) => members.push(t),
                    None => want.push((chosen, vec![t])),
                }
            }
            proptest::prop_assert_eq!(grouped(&tiles, levels), want);
        }
    }

    #[test]
    fn a_zoomed_out_miss_goes_out_as_few_coarse_tiles() {
        let mut b = Batcher::new(BatchConfig {
            max_tiles: 2,
            ..BatchConfig::default()
        })
        .unwrap();
        let parents = [
            TileId::new(12, 100, 100).unwrap(),
            TileId::new(12, 101, 100).unwrap(),
            TileId::new(12, 102, 100).unwrap(),
        ];
        let works: Vec<Work> = parents
            .iter()
            .flat_map(|p| p.descendants(14).unwrap())
            .map(Work::Tile)
            .collect();
        b.set_foreground(works);
        let r = b.poll(0, all).unwrap();
        assert_eq!(
            r.tiles,
            parents[..2].to_vec(),
            "two coarse tiles fill the request"
        );
        let r2 = b.poll(0, all).unwrap();
        assert_eq!(r2.tiles, vec![parents[2]]);
        // Every data tile is tracked as in flight, and an answer frees all of them.
        assert!(parents[0]
            .descendants(14)
            .unwrap()
            .iter()
            .all(|t| b.is_tile_in_flight(*t)));
        let f = b.on_success(r.id).unwrap();
        assert_eq!(f.works.len(), 32);
        assert!(!b.is_tile_in_flight(parents[0].descendants(14).unwrap()[0]));
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = Batcher::new(BatchConfig {
            max_in_flight: 0,
            ..BatchConfig::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "batch config max_in_flight must be in 1..=64, got 0"
        );
    }
}
