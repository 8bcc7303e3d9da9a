//! The client engine: cache + planner + batcher behind one sans-IO state machine.
//!
//! Every shell (the wasm package, the edge worker, the simulator) drives it the same way:
//!
//! 1. [`Client::set_viewport`] when the map moves: it reads what the cache has for the view
//!    (one pass, items handed to a sink), plans foreground and prefetch work, and queues it.
//! 2. [`Client::poll_request`] until `None`: each [`Send`] is one batch request to POST.
//!    [`Client::poll_cancel`] names in-flight prefetches to abort.
//! 3. [`Client::on_response`] / [`Client::on_failure`] when a request ends.
//! 4. [`Client::poll_event`] for what to tell the page: new data in view, view complete,
//!    errors. [`Client::next_wakeup`] says when to call [`Client::handle_timeout`] if
//!    nothing else happens (retry backoff, breaker probe, request deadline).
//!
//! The engine never blocks and never fails on backend trouble: failures become events and
//! counters, and what is cached stays usable.

use crate::util::{sort_pairs, HashMap};
use std::collections::VecDeque;

use crate::access::Access;
use crate::batch::{
    BatchConfig, BatchConfigError, BatchStats, Batcher, Failure, FailureOutcome, Kind, RequestId,
};
use crate::cache::{
    CacheConfig, CacheError, CacheItem, CacheStats, Invalidate, ItemCache, ItemMeta, Lookup,
    Priority, TileFreshness,
};
use crate::planner::{Planner, PlannerConfig, PlannerError, Viewport, Work};
use crate::protocol::{BatchRequest, BatchResponse, Limits, ProtocolError};
use crate::tile::{TileId, TileSet};

/// Everything the client needs to know. `cache.tile_zoom` and `planner.tile_zoom` must
/// agree ([`ClientConfig::with_tile_zoom`] sets both).
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    pub cache: CacheConfig,
    pub planner: PlannerConfig,
    pub batch: BatchConfig,
    pub limits: Limits,
    /// The caller's access tier (default public).
    pub access: Access,
}

impl ClientConfig {
    /// Sets the data zoom of both the cache and the planner.
    pub fn with_tile_zoom(mut self, z: u8) -> Self {
        self.cache.tile_zoom = z;
        self.planner.tile_zoom = z;
        self
    }
}

/// Errors from the client: configuration, viewport input, or an invalid response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Planner(#[from] PlannerError),
    #[error(transparent)]
    Batch(#[from] BatchConfigError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The cache and the planner were configured with different data zooms.
    #[error("cache tile_zoom ({cache}) and planner tile_zoom ({planner}) must be equal")]
    ZoomMismatch { cache: u8, planner: u8 },
}

/// What the view looks like right after [`Client::set_viewport`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewOutcome {
    /// Every visible tile can be shown (fresh, or stale within the SWR window).
    pub complete: bool,
    /// Visible tiles that cannot be shown yet (being fetched).
    pub missing: Vec<TileId>,
    /// Some shown items are stale (a refresh is planned).
    pub stale: bool,
    /// Number of visible data tiles (0 below `min_zoom`).
    pub visible: usize,
    /// Items handed to the sink.
    pub items: usize,
}

/// A batch request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Send {
    pub id: RequestId,
    pub kind: Kind,
    pub request: BatchRequest,
    pub attempt: u32,
    pub timeout_ms: u64,
}

/// A failed request, as reported to the page.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchError {
    pub request: RequestId,
    pub kind: Kind,
    pub failure: Failure,
    pub tiles: Vec<TileId>,
    /// The work is queued again (after a backoff).
    pub will_retry: bool,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Foreground => "foreground",
            Kind::Prefetch => "prefetch",
        };
        write!(
            f,
            "{kind} batch request for {} tiles failed: {}",
            self.tiles.len(),
            self.failure
        )?;
        if self.will_retry {
            f.write_str(" (will retry)")?;
        }
        Ok(())
    }
}

/// Something the page should hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Data for visible tiles arrived: read the view again ([`Client::view_items`]).
    Updated,
    /// Every visible tile can now be shown.
    Complete,
    /// A request failed.
    Error(FetchError),
}

/// Display state of a data tile, for overlays and debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileState {
    /// Showable, and was fetched for the view (or already shown).
    Loaded,
    /// Showable, fetched ahead by prefetch and not shown yet.
    Prefetched,
    /// A request for it is out.
    InFlight,
    /// Not showable and not being fetched.
    Missing,
}

/// Counters across the cache, the batcher and the client itself.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientStats {
    pub cache: CacheStats,
    pub batch: BatchStats,
    /// Items received from the backend.
    pub items_fetched: u64,
    /// Tiles received from prefetch requests.
    pub prefetch_tiles_fetched: u64,
    /// Prefetched tiles later shown.
    pub prefetch_tiles_used: u64,
    /// Prefetched tiles that expired or were forgotten before being shown.
    pub prefetch_tiles_wasted: u64,
    /// Failed requests (each attempt).
    pub errors: u64,
    /// Responses dropped because they arrived after an access-tier change.
    pub discarded_responses: u64,
    pub in_flight: usize,
    pub breaker_open: bool,
    /// Viewports set, and those fully showable at once (the viewport hit rate).
    pub viewports: u64,
    pub viewports_complete: u64,
}

impl ClientStats {
    /// Item hit rate: (hits + stale hits) / lookups, 0 before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let hits = self.cache.hits + self.cache.stale_hits;
        let all = hits + self.cache.misses;
        if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        }
    }
}

/// An item payload as the client stores it: it only needs to know its size, for the
/// cache's byte budget. The wasm shell implements it for a JS handle with the size of the
/// item's JSON; natively the raw JSON text is the payload.
pub trait Payload {
    /// Bytes this payload occupies (an estimate is fine; it must not change while cached).
    fn size_bytes(&self) -> usize;
}

impl Payload for Box<serde_json::value::RawValue> {
    fn size_bytes(&self) -> usize {
        self.get().len()
    }
}

impl Payload for Vec<u8> {
    fn size_bytes(&self) -> usize {
        self.len()
    }
}

impl Payload for String {
    fn size_bytes(&self) -> usize {
        self.len()
    }
}

impl Payload for () {
    fn size_bytes(&self) -> usize {
        0
    }
}

/// Bytes of bookkeeping per cached item on top of its id, class and payload.
const ITEM_OVERHEAD_BYTES: usize = 96;

/// Most prefetched tiles remembered for the used/wasted counters.
const MAX_PREFETCH_MARKS: usize = 8192;

/// The client engine. `P` is the item payload (a JS handle in the browser, raw JSON bytes
/// natively).
pub struct Client<P> {
    cache: ItemCache<P>,
    planner: Planner,
    batcher: Batcher,
    limits: Limits,
    access: Access,
    viewport: Option<Viewport>,
    visible: Vec<TileId>,
    visible_set: TileSet,
    /// Access tier each request the batcher tracks was sent with. A `Vec` searched linearly
    /// rather than a hash map (one hash table type fewer in the wasm): an entry goes when
    /// the batcher stops tracking its request (answer, failure, cancel), so it holds at most
    /// `max_in_flight` (at most 64) entries.
    request_access: Vec<(RequestId, Access)>,
    cancels: VecDeque<RequestId>,
    events: VecDeque<Event>,
    /// Prefetched tiles not shown yet, with when they arrived.
    prefetched: HashMap<TileId, u64>,
    complete: bool,
    items_fetched: u64,
    prefetch_tiles_fetched: u64,
    prefetch_tiles_used: u64,
    prefetch_tiles_wasted: u64,
    errors: u64,
    discarded: u64,
    viewports: u64,
    viewports_complete: u64,
    /// Answers in a row after which some visible tile could not be kept (see
    /// [`Client::on_response`]); grows their backoff, reset by a new viewport.
    unkept_rounds: u32,
}

impl<P: Payload> Client<P> {
    /// A client with a checked configuration.
    pub fn new(config: ClientConfig) -> Result<Client<P>, ClientError> {
        if config.cache.tile_zoom != config.planner.tile_zoom {
            return Err(ClientError::ZoomMismatch {
                cache: config.cache.tile_zoom,
                planner: config.planner.tile_zoom,
            });
        }
        Ok(Client {
            cache: ItemCache::new(config.cache)?,
            planner: Planner::new(config.planner)?,
            batcher: Batcher::new(config.batch)?,
            limits: config.limits,
            access: config.access,
            viewport: None,
            visible: Vec::new(),
            visible_set: TileSet::default(),
            request_access: Vec::new(),
            cancels: VecDeque::new(),
            events: VecDeque::new(),
            prefetched: HashMap::new(),
            complete: true,
            items_fetched: 0,
            prefetch_tiles_fetched: 0,
            prefetch_tiles_used: 0,
            prefetch_tiles_wasted: 0,
            errors: 0,
            discarded: 0,
            viewports: 0,
            viewports_complete: 0,
            unkept_rounds: 0,
        })
    }

    /// The cache, for reads that do not change it.
    pub fn cache(&self) -> &ItemCache<P> {
        &self.cache
    }

    /// The planner.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// The caller's access tier.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Visible data tiles of the current viewport.
    pub fn visible_tiles(&self) -> &[TileId] {
        &self.visible
    }

    /// Whether every visible tile can be shown.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The map moved. Reads the view from the cache into `sink(item, stale)` (one call
    /// per item, no copies), plans foreground and prefetch work and queues it. Errors only
    /// for a viewport wider than `max_visible_tiles` data tiles; nothing is changed then.
    pub fn set_viewport(
        &mut self,
        viewport: Viewport,
        now_ms: u64,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> Result<ViewOutcome, ClientError> {
        let access = self.access;
        let cache = &self.cache;
        let batcher = &self.batcher;
        let mut plan = self.planner.plan(
            &viewport,
            now_ms,
            |t| cache.tile_freshness(t, access, now_ms),
            |t| batcher.is_tile_in_flight(t),
        )?;
        if self.viewport.as_ref() != Some(&viewport) {
            self.unkept_rounds = 0;
        }
        self.viewport = Some(viewport);
        self.visible = std::mem::take(&mut plan.visible);
        self.visible_set = TileSet::new(self.visible.iter().copied());
        self.cache.set_visible(&self.visible);
        for t in &self.visible {
            if self.prefetched.remove(t).is_some() {
                self.prefetch_tiles_used += 1;
            }
        }
        let outcome = self.read_view(now_ms, sink);
        self.viewports += 1;
        if outcome.complete {
            self.viewports_complete += 1;
        }
        self.batcher
            .set_foreground(std::mem::take(&mut plan.foreground));
        let mut background = std::mem::take(&mut plan.refresh);
        background.append(&mut plan.prefetch);
        self.batcher.set_prefetch(background);
        for id in self.batcher.cancel_unwanted(|t| plan.wants(t)) {
            self.sent_with(id);
            self.cancels.push_back(id);
        }
        Ok(outcome)
    }

    /// Reads the current view again (after [`Event::Updated`]) without planning.
    pub fn view_items(
        &mut self,
        now_ms: u64,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> ViewOutcome {
        self.read_view(now_ms, sink)
    }

    fn read_view(&mut self, now_ms: u64, mut sink: impl FnMut(&CacheItem<P>, bool)) -> ViewOutcome {
        let mut out = ViewOutcome {
            visible: self.visible.len(),
            ..ViewOutcome::default()
        };
        for &t in &self.visible {
            let state = self.cache.read_tile(t, self.access, now_ms, |item, stale| {
                out.items += 1;
                out.stale |= stale;
                sink(item, stale);
            });
            if !state.is_showable() {
                out.missing.push(t);
            }
        }
        out.complete = out.missing.is_empty();
        self.complete = out.complete;
        out
    }

    /// The next batch request to send, if one may go out now. Call until `None`.
    pub fn poll_request(&mut self, now_ms: u64) -> Option<Send> {
        let (cache, access) = (&self.cache, self.access);
        let out = self.batcher.poll(now_ms, |w| {
            cache.tile_freshness(w.tile(), access, now_ms) != TileFreshness::Fresh
        })?;
        self.request_access.push((out.id, self.access));
        Some(Send {
            id: out.id,
            kind: out.kind,
            request: BatchRequest {
                tiles: out.tiles,
                ids: out.ids,
                access: self.access,
            },
            attempt: out.attempt,
            timeout_ms: out.timeout_ms,
        })
    }

    /// An in-flight request to abort (no longer wanted). Its late answer is ignored.
    pub fn poll_cancel(&mut self) -> Option<RequestId> {
        self.cancels.pop_front()
    }

    /// The access tier request `id` was sent with, forgotten: the batcher no longer tracks
    /// the request.
    fn sent_with(&mut self, id: RequestId) -> Option<Access> {
        let i = self.request_access.iter().position(|&(r, _)| r == id)?;
        Some(self.request_access.swap_remove(i).1)
    }

    /// The next event for the page.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A request answered. The response is validated; items and tile lists go into the
    /// cache. An invalid response is handled as a failure (retried per the batch config)
    /// and returned as an error for the shell to log; the cache is unchanged then.
    pub fn on_response(
        &mut self,
        id: RequestId,
        response: BatchResponse<P>,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        if let Err(e) = response.validate(&self.limits) {
            self.on_failure(id, Failure::Invalid(e.to_string()), now_ms);
            return Err(e.into());
        }
        let sent_with = self.sent_with(id);
        // Data tiles the request was for that no tile list in the answer covers (the list
        // of the tile or of an ancestor) back off in the batcher and become an error below.
        let listed = TileSet::new(response.tiles.iter().map(|l| l.tile));
        let covered = |t: TileId| {
            let mut a = Some(t);
            while let Some(tile) = a {
                if listed.contains(tile) {
                    return true;
                }
                a = tile.parent();
            }
            false
        };
        let Some((finished, unanswered)) = self.batcher.on_answer(id, &covered, now_ms) else {
            return Ok(()); // cancelled or unknown: its tiles were not wanted any more
        };
        if sent_with != Some(self.access) {
            // The tier changed while it was out: its lists are for another tier, and its
            // items may be above the current one. Drop it; the next round asks again.
            self.discarded += 1;
            self.refresh_foreground(now_ms);
            return Ok(());
        }
        let was_complete = self.complete;
        let mut shown_before = Vec::with_capacity(self.visible.len());
        for &t in &self.visible {
            shown_before.push(
                self.cache
                    .tile_freshness(t, self.access, now_ms)
                    .is_showable(),
            );
        }
        let mut touched_visible = false;
        let tile_zoom = self.cache.config().tile_zoom;
        let BatchResponse {
            tiles,
            items,
            missing,
        } = response;
        self.items_fetched += items.len() as u64;
        for item in items {
            if !self.access.can_see(item.access) {
                continue; // a server that ignores tiers must not put them in our cache
            }
            let data_tile = TileId::from_lon_lat(item.lon, item.lat, tile_zoom).ok();
            let visible = data_tile.is_some_and(|t| self.visible_set.contains(t));
            touched_visible |= visible;
            let priority = if visible || finished.kind == Kind::Foreground {
                Priority::Visible
            } else {
                Priority::Prefetch
            };
            let size_bytes =
                ITEM_OVERHEAD_BYTES + item.id.len() + item.class.len() + item.data.size_bytes();
            let meta = ItemMeta {
                lon: item.lon,
                lat: item.lat,
                class: item.class,
                access: item.access,
                ttl_ms: item.ttl.map(|s| s as u64 * 1000),
                size_bytes,
            };
            // Validated above; an item the cache still refuses is skipped, not fatal.
            let _ = self
                .cache
                .insert(&item.id, meta, item.data, now_ms, priority);
        }
        if !missing.is_empty() {
            let ids: Vec<&str> = missing.iter().map(String::as_str).collect();
            self.cache.forget_ids(&ids);
        }
        for list in &tiles {
            let ids: Vec<&str> = list.ids.iter().map(String::as_str).collect();
            let ttl = list.ttl.map(|s| s as u64 * 1000);
            if self
                .cache
                .insert_tile(list.tile, &ids, ttl, self.access, now_ms)
                .is_err()
            {
                continue;
            }
            // The list's tile itself at the data zoom; none for a finer tile.
            for t in list.tile.descendants(tile_zoom).unwrap_or_default() {
                if self.visible_set.contains(t) {
                    touched_visible = true;
                } else if finished.kind == Kind::Prefetch {
                    self.mark_prefetched(t, now_ms);
                }
            }
        }
        if !unanswered.is_empty() {
            // An error, or a visible one would be asked for again at once, for ever.
            self.errors += 1;
            self.events.push_back(Event::Error(FetchError {
                request: id,
                kind: finished.kind,
                failure: Failure::Invalid(format!(
                    "the answer leaves out {} of the requested tiles (first {}); every requested tile must be listed, empty or not",
                    unanswered.len(),
                    unanswered[0]
                )),
                tiles: unanswered,
                will_retry: false,
            }));
        }
        // Visible tiles this answer covered, or that were showable before it, that cannot be
        // shown now: the view needs more items or bytes than the cache may hold (inserting
        // one visible tile evicted another), or the lists name items above the tier. Asking
        // for them again at once would loop for ever, tile after tile.
        let answered = TileSet::new(finished.works.iter().filter_map(|w| match w {
            Work::Tile(t) if covered(*t) => Some(*t),
            _ => None,
        }));
        let mut unkept = Vec::new();
        for (&t, &before) in self.visible.iter().zip(&shown_before) {
            if (before || answered.contains(t))
                && !self
                    .cache
                    .tile_freshness(t, self.access, now_ms)
                    .is_showable()
            {
                unkept.push(t);
            }
        }
        if unkept.is_empty() {
            self.unkept_rounds = 0;
        } else {
            // The tiles take turns evicting each other, and each one's success resets its
            // own backoff: the streak that grows the delay is the view's, not the tile's.
            self.unkept_rounds = self.unkept_rounds.saturating_add(1);
            self.batcher.back_off(&unkept, self.unkept_rounds, now_ms);
            let config = self.cache.config();
            self.errors += 1;
            self.events.push_back(Event::Error(FetchError {
                request: id,
                kind: finished.kind,
                failure: Failure::Invalid(format!(
                    "{} answered tiles could not be kept (first {}): the view needs more than \
                     the cache holds (max_items {}, max_bytes {}), or the answer's lists name \
                     items above the caller's tier; they are asked for again after a backoff",
                    unkept.len(),
                    unkept[0],
                    config.max_items,
                    config.max_bytes
                )),
                tiles: unkept,
                will_retry: false,
            }));
        }
        let now_complete = self.refresh_foreground(now_ms);
        if touched_visible {
            self.events.push_back(Event::Updated);
        }
        self.complete = now_complete;
        if now_complete && !was_complete {
            self.events.push_back(Event::Complete);
        }
        Ok(())
    }

    fn mark_prefetched(&mut self, t: TileId, now_ms: u64) {
        self.prefetch_tiles_fetched += 1;
        if self.prefetched.len() >= MAX_PREFETCH_MARKS {
            // Forget the oldest half: they were fetched and never shown.
            let mut ages: Vec<(u64, u64)> = self.prefetched.values().map(|&at| (at, 0)).collect();
            sort_pairs(&mut ages);
            let cutoff = ages[ages.len() / 2].0;
            let before = self.prefetched.len();
            self.prefetched.retain(|_, at| *at > cutoff);
            self.prefetch_tiles_wasted += (before - self.prefetched.len()) as u64;
        }
        if self.prefetched.insert(t, now_ms).is_some() {
            // Fetched again before being shown: the first fetch was wasted.
            self.prefetch_tiles_wasted += 1;
        }
    }

    /// A request failed (timeout, network, HTTP error, undecodable answer, or aborted by the
    /// shell). Never fails: the error becomes an [`Event::Error`] and a counter.
    pub fn on_failure(&mut self, id: RequestId, failure: Failure, now_ms: u64) {
        self.sent_with(id);
        let outcome = self.batcher.on_failure(id, &failure, now_ms);
        let (finished, will_retry) = match outcome {
            FailureOutcome::Unknown => return,
            FailureOutcome::Retrying { request, .. } => (request, true),
            FailureOutcome::GaveUp(request) => (request, false),
        };
        if matches!(failure, Failure::Aborted) {
            return;
        }
        self.errors += 1;
        self.events.push_back(Event::Error(FetchError {
            request: id,
            kind: finished.kind,
            tiles: finished.tiles().collect(),
            failure,
            will_retry,
        }));
        if !will_retry {
            self.refresh_foreground(now_ms);
        }
    }

    /// Re-derives the foreground queue from the visible tiles (after responses, failures,
    /// invalidation or a tier change), so a visible tile is never left unrequested.
    /// Returns whether every visible tile can be shown.
    fn refresh_foreground(&mut self, now_ms: u64) -> bool {
        let mut works = Vec::new();
        let mut complete = true;
        for &t in &self.visible {
            let st = self.cache.tile_freshness(t, self.access, now_ms);
            if st.is_showable() {
                continue;
            }
            complete = false;
            if !self.batcher.is_tile_in_flight(t) {
                if let Some(w) = Work::from_state(t, st) {
                    works.push(w);
                }
            }
        }
        self.batcher.set_foreground(works);
        complete
    }

    /// Requests whose deadline passed: the shell should abort each and report
    /// [`Failure::Timeout`]. For shells without their own timers.
    pub fn overdue(&self, now_ms: u64) -> Vec<RequestId> {
        self.batcher.overdue(now_ms)
    }

    /// When to call [`Client::handle_timeout`] if nothing else happens first.
    pub fn next_wakeup(&self, now_ms: u64) -> Option<u64> {
        self.batcher.next_wakeup(now_ms)
    }

    /// Time passed: expired requests fail with [`Failure::Timeout`], and work whose
    /// backoff ended becomes sendable (then call [`Client::poll_request`]).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        for id in self.batcher.overdue(now_ms) {
            self.cancels.push_back(id);
            self.on_failure(id, Failure::Timeout, now_ms);
        }
    }

    /// Changes the caller's tier. Lowering it drops every cached item and tile list above
    /// the new tier at once; raising it makes tile lists fetched at a lower tier incomplete.
    /// Visible tiles that became incomplete are queued again.
    pub fn set_access(&mut self, access: Access, now_ms: u64) {
        if access < self.access {
            self.cache.drop_above(access);
        }
        self.access = access;
        self.complete = self.refresh_foreground(now_ms);
    }

    /// Drops cached items or tiles; visible tiles that became incomplete are queued again.
    pub fn invalidate(&mut self, what: Invalidate<'_>, now_ms: u64) -> usize {
        let n = self.cache.invalidate(what);
        self.complete = self.refresh_foreground(now_ms);
        n
    }

    /// One item by id, from the cache (counts a hit or a miss). A miss queues the id for
    /// a foreground fetch; call [`Client::poll_request`] after.
    pub fn get(&mut self, id: &str, now_ms: u64) -> Option<Lookup<'_, P>> {
        if self.cache.peek(id, self.access, now_ms).is_none() {
            self.batcher.request_ids([id]);
        }
        self.cache.get(id, self.access, now_ms)
    }

    /// Queues ids for a foreground fetch (those not fresh in the cache).
    pub fn request_ids<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>, now_ms: u64) {
        let (cache, access) = (&self.cache, self.access);
        let wanted: Vec<&str> = ids
            .into_iter()
            .filter(|id| cache.peek(id, access, now_ms).is_none_or(|l| l.stale))
            .collect();
        self.batcher.request_ids(wanted);
    }

    /// Queues data tiles as prefetch work behind the planner's, for a caller that knows
    /// where the user goes next (a search result, a route, a recorded session). Tiles at
    /// another zoom, fresh in the cache or in flight are skipped. The next
    /// [`Client::set_viewport`] replaces the prefetch queue, so call this after it.
    /// Returns the tiles queued.
    pub fn warm(&mut self, tiles: &[TileId], now_ms: u64) -> usize {
        let tile_zoom = self.cache.config().tile_zoom;
        let works: Vec<Work> = tiles
            .iter()
            .filter(|t| t.z() == tile_zoom && !self.batcher.is_tile_in_flight(**t))
            .filter_map(|&t| Work::from_state(t, self.cache.tile_freshness(t, self.access, now_ms)))
            .collect();
        let n = works.len();
        self.batcher.extend_prefetch(works);
        n
    }

    /// Display state of a data tile.
    pub fn tile_state(&self, tile: TileId, now_ms: u64) -> TileState {
        if self.batcher.is_tile_in_flight(tile) {
            return TileState::InFlight;
        }
        if !self
            .cache
            .tile_freshness(tile, self.access, now_ms)
            .is_showable()
        {
            return TileState::Missing;
        }
        if self.prefetched.contains_key(&tile) {
            TileState::Prefetched
        } else {
            TileState::Loaded
        }
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            cache: self.cache.stats(),
            batch: self.batcher.stats(),
            items_fetched: self.items_fetched,
            prefetch_tiles_fetched: self.prefetch_tiles_fetched,
            prefetch_tiles_used: self.prefetch_tiles_used,
            prefetch_tiles_wasted: self.prefetch_tiles_wasted,
            errors: self.errors,
            discarded_responses: self.discarded,
            in_flight: self.batcher.in_flight(),
            breaker_open: self.batcher.breaker_open(),
            viewports: self.viewports,
            viewports_complete: self.viewports_complete,
        }
    }
}
