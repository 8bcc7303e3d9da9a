//! The client engine: cache + planner + batcher behind one sans-IO state machine, in the
//! shape of quinn-proto's `Connection`: values and time in, requests, events and a
//! wake-up time out, no I/O.
//!
//! Every shell (the wasm package, the simulator, the tests) drives it the same way:
//!
//! 1. [`Client::set_viewport`] when the map moves: it reads what the cache has for the view
//!    (one pass, items handed to a sink), plans foreground and prefetch work, and queues it.
//! 2. [`Client::poll_request`] until `None`: each [`Transmit`] is one batch request to
//!    POST. [`Client::poll_cancel`] names in-flight prefetches to abort.
//! 3. [`Client::on_response`] / [`Client::on_failure`] when a request ends.
//! 4. [`Client::poll_event`] for what to tell the page: new data in view, view complete,
//!    errors. [`Client::next_wakeup`] says when to call [`Client::handle_timeout`] if
//!    nothing else happens (retry backoff, breaker probe, request deadline, the view
//!    changing with time: a shown item turning stale or expiring); that is the one way
//!    time passes for the engine.
//!
//! Every time given is the caller's clock now (ms since the epoch, `Date.now()` in the
//! browser). The engine reads each through its own clock (`crate::clock`), whose time never
//! goes back: a time before one given earlier is the wall clock stepping back, counted as
//! no time passing, so no backoff, hold, deadline or TTL lasts longer for it.
//!
//! The engine never blocks and never fails on backend trouble. Failed requests and bad
//! answers have one channel: an [`Event::Error`] (and a counter); `on_response` and
//! `on_failure` return nothing. What is cached stays usable. The only errors returned are
//! the caller's: a bad configuration ([`ClientConfigError`]) and a host's tile that covers
//! too many data tiles to load ([`TooManyDataTiles`]). A viewport too large to plan
//! is a state, not an error: [`ViewOutcome::too_wide`] says so, nothing is fetched for it
//! and the cached items in it are still read.
//!
//! Files: `mod.rs` (the engine), `response.rs` (how a request ends), `load.rs` (tiles a
//! host asks for itself, and prefetch of known destinations), `config.rs`, `event.rs`,
//! `stats.rs`, `options.rs` (the npm package's options, by their JS names, onto
//! [`ClientConfig`]), `payload.rs`, `density.rs` (items per data tile, which sizes prefetch to
//! the cache), `overtaking.rs` (answers an invalidation made since they were sent covers);
//! tests in `tests.rs`.

mod changed;
mod config;
mod density;
mod event;
mod fresh;
mod load;
pub mod options;
mod overtaking;
mod payload;
mod response;
mod stats;
#[cfg(test)]
mod tests;

pub use changed::{ChangedTiles, MAX_CHANGED_TILES};
pub use config::{ClientConfig, ClientConfigError, ViewTooLarge};
use density::Density;
pub use event::{Event, FetchError, TileState, ViewOutcome};
pub use load::{TooManyDataTiles, MAX_DESTINATIONS};
use overtaking::Overtaking;
pub use overtaking::MAX_OVERTAKING;
pub use payload::{Payload, Received};
pub use response::Answered;
pub use stats::ClientStats;

/// The batch layer's types the client speaks in, re-exported: requests go out as
/// [`Transmit`]s under a [`RequestId`], of a [`Kind`], and end in a response or a
/// [`Failure`].
pub use crate::batch::{Failure, Kind, RequestId, Transmit};

use std::collections::VecDeque;

use crate::access::Access;
use crate::batch::Batcher;
use crate::cache::{CacheError, CacheItem, Invalidate, ItemCache, Lookup, TileFreshness};
use crate::clock::Clock;
use crate::planner::{Plan, Planner, PopularTiles, PopularTooFine, Room, Viewport, Work};
use crate::protocol::Limits;
use crate::tile::{cover_range, Bbox, CoverRange, TileId, TileSet};
use crate::util::{HashMap, HashSet};
use fresh::FreshTiles;

/// Most prefetched tiles remembered for the used/wasted counters.
const MAX_PREFETCH_MARKS: usize = 8192;

/// Most events ([`Client::poll_event`]) and most cancels ([`Client::poll_cancel`]) queued
/// for a shell that does not poll them: past it the oldest error, or the oldest cancel, is
/// dropped. An [`Event::Updated`] or [`Event::Complete`] already queued is not queued again
/// (the page reads the view when it hears of it, which covers both), and is never dropped.
pub const MAX_QUEUED_EVENTS: usize = 256;

/// The longest a planning round is reused for viewports with the same visible tiles and
/// motion ([`Client::set_viewport`]): prefetch candidates turn stale with time too.
const REPLAN_MS: u64 = 500;

/// What the last planning round was made from ([`Client::set_viewport`] skips a round
/// when they are unchanged).
#[derive(Clone, Copy, PartialEq)]
struct Planned {
    key: [i64; 9],
    generation: u64,
    changes: u64,
    access: Access,
    at: u64,
    /// A visible tile can change state with time from then on (the read's
    /// [`Shown::until`]): the round's foreground and refresh work would differ.
    until: u64,
}

/// What the last view read showed and what it depended on
/// ([`Client::update_viewport`] hands it back when unchanged).
#[derive(Clone)]
struct Shown {
    generation: u64,
    access: Access,
    at: u64,
    /// The read could return something else from this time on.
    until: u64,
    outcome: ViewOutcome,
    /// The lookups the read counted (hits, stale hits, misses), counted again on reuse.
    counted: (u64, u64, u64),
}

/// What a request in flight was sent with.
#[derive(Clone, Copy, Debug)]
struct Sent {
    access: Access,
    /// The invalidations made before it ([`Overtaking::count`]).
    at: u64,
    /// It carries work an overtaken answer asked again: its answer is taken.
    again: bool,
}

/// The client engine. `P` is the item payload (the slot of a JS object in the browser, raw
/// JSON bytes natively); answers deliver it in a [`Received`] form that gives its size.
pub struct Client<P> {
    cache: ItemCache<P>,
    planner: Planner,
    batcher: Batcher,
    limits: Limits,
    access: Access,
    /// The tier the server reported when it answered below the tier asked (it lowers what
    /// the credential does not give): the highest tier the cache may view as from then on.
    verified: Option<Access>,
    viewport: Option<Viewport>,
    visible: Vec<TileId>,
    /// Their range (`None` below `min_zoom` or too wide): a call compares the new view's
    /// range to it, without listing the tiles.
    visible_range: Option<CoverRange>,
    visible_set: TileSet,
    /// Access tier and invalidation count ([`Overtaking::count`]) each request the batcher
    /// tracks was sent with. A `Vec` searched linearly
    /// rather than a hash map (one hash table type fewer in the wasm): an entry goes when
    /// the batcher stops tracking its request (answer, failure, cancel), so it holds at most
    /// `max_in_flight` (at most 64) entries. Measured on 2026-12-02: a
    /// `HashMap<RequestId, Access>` costs the browser wasm 0.47 KB gzipped more (68,750 →
    /// 69,221 bytes).
    request_access: Vec<(RequestId, Sent)>,
    /// Invalidations made while requests were out (`overtaking.rs`).
    overtaking: Overtaking,
    /// At most [`MAX_QUEUED_EVENTS`] each ([`Client::queue_event`], [`Client::queue_cancel`]).
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
    /// The current viewport covers more than `max_visible_tiles` data tiles: nothing is
    /// fetched for it, and views read the cached tiles in this range.
    too_wide: Option<(ViewTooLarge, CoverRange)>,
    /// Data tiles a host waits for ([`Client::load_tile`]) until it releases them: those
    /// that cannot be shown are kept in the foreground queue, and all are protected in the
    /// cache one step below the visible tiles ([`Client::protect`]).
    loading: Vec<TileId>,
    /// Data tiles of known destinations ([`Client::prefetch`]) not fetched yet: kept
    /// behind the prefetch queue.
    destinations: Vec<TileId>,
    /// Answers in a row after which some visible tile could not be kept (see
    /// [`Client::on_response`]); grows their backoff, reset by a new viewport.
    unkept_rounds: u32,
    /// Items the last answer gave for ids asked for directly, at the caller's tier, that
    /// the cache could not keep ([`Client::take_unkept`]); emptied by the next answer.
    unkept: Vec<(String, P)>,
    /// Bumped by every call that changes the queues, the tier or the loading and
    /// destination tiles, so a planning round is not skipped after it.
    changes: u64,
    planned: Option<Planned>,
    shown: Option<Shown>,
    /// When the view, as last read ([`Shown::until`]) or refreshed by
    /// [`Client::handle_timeout`], could next read differently with nothing else changed (a
    /// shown item or tile list turning stale or expiring past the stale-while-revalidate
    /// window): [`Client::next_wakeup`] includes it, so a map at rest hears of it. `u64::MAX`:
    /// never.
    view_until: u64,
    /// Data tiles known fresh (a planning round asks for the state of about a hundred).
    fresh: FreshTiles,
    /// Items per data tile, from the answers: sizes prefetch to the cache.
    density: Density,
    /// Tiles whose items changed since [`Client::take_changed_tiles`] (`changed.rs`).
    changed_tiles: ChangedTiles,
    /// Data tiles a host read ([`Client::load_tile`]), each with when its read could next
    /// differ with time (`changed.rs`).
    held: Vec<(TileId, u64)>,
    /// The shell's times read as monotonic (`crate::clock`): each public call that takes a
    /// time reads it once, so a wall clock stepping back delays no wait or expiry.
    clock: Clock,
    /// Tests: reads and planning rounds classify every tile again (the reference the fast
    /// path is checked against).
    #[cfg(test)]
    full_reads: bool,
}

impl<P> Client<P> {
    /// A client with a checked configuration.
    pub fn new(config: ClientConfig) -> Result<Client<P>, ClientConfigError> {
        if config.cache.tile_zoom != config.planner.tile_zoom {
            return Err(ClientConfigError::ZoomMismatch {
                cache: config.cache.tile_zoom,
                planner: config.planner.tile_zoom,
            });
        }
        // A data tile refused as too large on its own is held for a tile TTL, as the server
        // and the edge hold it.
        let mut batcher = Batcher::new(config.batch)?;
        let cache = &config.cache;
        batcher.hold_too_large_for(cache.tile_ttl_ms.unwrap_or(cache.default_ttl_ms));
        Ok(Client {
            cache: ItemCache::new(config.cache)?,
            planner: Planner::new(config.planner)?,
            batcher,
            limits: config.limits,
            access: config.access,
            verified: None,
            viewport: None,
            visible: Vec::new(),
            visible_range: None,
            visible_set: TileSet::default(),
            request_access: Vec::new(),
            overtaking: Overtaking::default(),
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
            too_wide: None,
            loading: Vec::new(),
            destinations: Vec::new(),
            unkept_rounds: 0,
            unkept: Vec::new(),
            changed_tiles: ChangedTiles::default(),
            held: Vec::new(),
            changes: 0,
            planned: None,
            shown: None,
            view_until: u64::MAX,
            fresh: FreshTiles::new(config.access),
            density: Density::default(),
            clock: Clock::default(),
            #[cfg(test)]
            full_reads: false,
        })
    }

    /// The cache, for reads that do not change it. Its times (an item's expiry) are on the
    /// client's clock, which runs ahead of the caller's once the caller's stepped back
    /// (`crate::clock`): read items at a caller's time through [`Client::peek`] or
    /// [`Client::get`].
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

    /// The highest tier the server has shown the caller may see, once an answer reported a
    /// tier below the one asked for (see [`Client::on_response`]); `None` before, and after
    /// [`Client::new_credential`].
    pub fn verified(&self) -> Option<Access> {
        self.verified
    }

    /// The caller's credential changed (a sign-in, an upgraded subscription): what the server
    /// reported for the old one ([`Client::verified`]) says nothing of the new one, so it is
    /// forgotten. The shells refuse a tier above [`Client::verified`] (a host setting its old
    /// tier again at every update would be refused and lowered round trip after round trip);
    /// after this, the next [`Client::set_access`] may ask above it, and the answers report
    /// the new credential's tier (a lower one lowers the cache again, as any answer does).
    /// What the cache holds stays: items and lists of a tier the caller could see still are.
    pub fn new_credential(&mut self) {
        self.verified = None;
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
    /// per item, no copies), plans foreground and prefetch work and queues it.
    ///
    /// A viewport wider than `max_visible_tiles` data tiles is not an error but a state
    /// ([`ViewOutcome::too_wide`]): nothing is fetched or prefetched for it (queued work is
    /// dropped and in-flight prefetches are cancelled), the view is never complete, and the
    /// sink still gets the cached items of the data tiles in it, so a page can keep showing
    /// what it has and ask the user to zoom in.
    ///
    /// A planning round is skipped when the visible tiles, the cache, the tier, the queues
    /// and the motion ([`Planner::observe`]) are as they were for the last round, less than
    /// `REPLAN_MS` ago: the queued work is that round's. A map calls this every frame of
    /// a pan, and most frames change none of them.
    pub fn set_viewport(
        &mut self,
        viewport: Viewport,
        now_ms: u64,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> ViewOutcome {
        self.move_to(viewport, now_ms, false, sink)
    }

    /// [`set_viewport`](Self::set_viewport) for a caller that keeps the last view it was
    /// given: when the view would read exactly as the last read did (same visible tiles,
    /// tier and cache, and no item or tile list changed state with time since), the sink is
    /// not called and the outcome has [`ViewOutcome::unchanged`] set, with the last read's
    /// counts. The last read is the last `set_viewport`, `update_viewport` or
    /// [`view_items`](Self::view_items).
    pub fn update_viewport(
        &mut self,
        viewport: Viewport,
        now_ms: u64,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> ViewOutcome {
        self.move_to(viewport, now_ms, true, sink)
    }

    fn move_to(
        &mut self,
        viewport: Viewport,
        now_ms: u64,
        reuse: bool,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> ViewOutcome {
        let now_ms = self.clock.read(now_ms);
        let seen = self.planner.observe(&viewport, now_ms);
        if self.viewport.as_ref() != Some(&viewport) {
            self.unkept_rounds = 0;
        }
        self.viewport = Some(viewport);
        // The visible tiles' range, as the round would compute them (`Err`: too wide).
        let visible = self.planner.visible_range(&viewport);
        let same_tiles = match &visible {
            Ok(v) => self.too_wide.is_none() && *v == self.visible_range,
            Err(_) => self.too_wide.is_some_and(|(_, r)| {
                cover_range(&viewport.bbox, self.planner.config().tile_zoom).ok() == Some(r)
            }),
        };
        let planned = Planned {
            key: seen.key,
            generation: self.cache.generation(),
            changes: self.changes,
            access: self.access,
            at: now_ms,
            until: 0,
        };
        let fresh_plan = self.planned.is_some_and(|p| {
            Planned {
                at: p.at,
                until: p.until,
                ..planned
            } == p
                && now_ms >= p.at
                && now_ms - p.at < REPLAN_MS
                && now_ms < p.until
        });
        if same_tiles && fresh_plan {
            self.viewports += 1;
            let outcome = self.read_again(now_ms, reuse, sink);
            if outcome.complete {
                self.viewports_complete += 1;
            }
            return outcome;
        }
        let (access, generation) = (self.access, self.cache.generation());
        self.fresh.begin(generation, access);
        // What the cache can hold, at the density the answers have shown: the round asks
        // for no more (past it, each answer would push out an earlier one, to be fetched
        // again next round, then the view's own items). Before the first answer there is
        // nothing to go by.
        let (cache, batcher, fresh) = (&self.cache, &self.batcher, &mut self.fresh);
        let takes_room = |t| !cache.outside_bounds(t);
        let room = self.density.per_tile().map(|d| Room {
            tiles: cache.tiles_that_fit(d, self.density.per_item()),
            takes_room: &takes_room,
        });
        #[cfg(test)]
        let full_reads = self.full_reads;
        // Whether every tile the round asks about is fresh, and until when.
        let (mut every_fresh, mut first_end) = (true, u64::MAX);
        let planned_round = self.planner.plan_observed(
            &viewport,
            &seen,
            |t| {
                let known = fresh.until(t, generation, access, now_ms);
                #[cfg(test)]
                let known = known.filter(|_| !full_reads);
                if let Some(until) = known {
                    first_end = first_end.min(until);
                    return TileFreshness::Fresh;
                }
                let mut until = u64::MAX;
                let state = cache.tile_freshness_until(t, access, now_ms, &mut until);
                if state == TileFreshness::Fresh {
                    fresh.insert(t, until);
                    first_end = first_end.min(until);
                } else {
                    every_fresh = false;
                }
                state
            },
            |t| batcher.is_tile_in_flight(t),
            room,
        );
        let mut plan = match planned_round {
            Ok(plan) => {
                self.too_wide = None;
                plan
            }
            Err(_) => {
                // A round fails only on a cover over `max_visible_tiles` (a
                // `TileError::TooManyTiles`): the viewport and the planner's config were
                // checked when they were made, so the cover's range exists.
                let config = self.planner.config();
                let limit = ViewTooLarge {
                    max: config.max_visible_tiles,
                    tile_zoom: config.tile_zoom,
                };
                self.too_wide = cover_range(&viewport.bbox, config.tile_zoom)
                    .ok()
                    .map(|r| (limit, r));
                self.visible.clear();
                self.visible_range = None;
                self.fresh.keep_round(None);
                self.visible_set = TileSet::default();
                self.protect();
                let loading = self.with_loading(Vec::new(), now_ms);
                self.batcher.set_foreground(loading);
                self.batcher.set_prefetch(Vec::new());
                self.warm_destinations(now_ms);
                self.cancel_unwanted(None);
                let outcome = if same_tiles {
                    self.read_again(now_ms, reuse, sink)
                } else {
                    self.read_view(now_ms, sink)
                };
                self.remember_plan(planned);
                self.viewports += 1;
                return outcome;
            }
        };
        if !same_tiles {
            self.visible = std::mem::take(&mut plan.visible);
            self.visible_range = visible.ok().flatten();
            self.visible_set = TileSet::new(self.visible.iter().copied());
            self.protect();
            for t in &self.visible {
                if self.prefetched.remove(t).is_some() {
                    self.prefetch_tiles_used += 1;
                }
            }
        }
        let outcome = if same_tiles {
            self.read_again(now_ms, reuse, sink)
        } else {
            self.read_view(now_ms, sink)
        };
        self.viewports += 1;
        if outcome.complete {
            self.viewports_complete += 1;
        }
        let foreground = self.with_loading(std::mem::take(&mut plan.foreground), now_ms);
        self.batcher.set_foreground(foreground);
        let mut background = std::mem::take(&mut plan.refresh);
        background.append(&mut plan.prefetch);
        self.batcher.set_prefetch(background);
        self.warm_destinations(now_ms);
        self.cancel_unwanted(Some(&plan));
        self.fresh
            .keep_round(every_fresh.then_some((plan, first_end)));
        self.remember_plan(planned);
        outcome
    }

    /// Notes the round just planned, with the cache and queues as the round left them (the
    /// read may have dropped expired items; the round queued work).
    fn remember_plan(&mut self, planned: Planned) {
        self.planned = Some(Planned {
            generation: self.cache.generation(),
            changes: self.changes,
            until: self.shown.as_ref().map_or(0, |s| s.until),
            ..planned
        });
    }

    /// Protects the visible and the loading tiles' items from eviction by prefetch (and
    /// their tile lists from being trimmed first), the visible ones above the loading ones:
    /// what the user sees stays until nothing else is left to evict for the view itself; what
    /// a host waits for stays until nothing unprotected is left, and never pushes out the
    /// view (its load fails instead, see [`Client::on_response`]).
    fn protect(&mut self) {
        self.cache.set_visible(&self.visible);
        self.cache.set_loading(&self.loading);
    }

    /// Something other than a viewport changed the queues, the tier or the loading and
    /// destination tiles: the next [`Client::set_viewport`] plans a round.
    fn changed(&mut self) {
        self.changes = self.changes.wrapping_add(1);
    }

    /// The view of the same visible tiles again: the last read's outcome when it still
    /// holds (with the sink not called when `reuse`, else called for the items a read
    /// returns), else a read.
    fn read_again(
        &mut self,
        now_ms: u64,
        reuse: bool,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> ViewOutcome {
        let holds = self.shown.as_ref().is_some_and(|s| {
            s.generation == self.cache.generation()
                && s.access == self.access
                && now_ms >= s.at
                && now_ms < s.until
        });
        if !(holds && reuse) {
            return self.read_view(now_ms, sink);
        }
        let Some(shown) = self.shown.as_ref() else {
            return self.read_view(now_ms, sink);
        };
        let (hits, stale_hits, misses) = shown.counted;
        let mut outcome = shown.outcome.clone();
        self.cache.count_repeated(hits, stale_hits, misses);
        self.complete = outcome.complete;
        outcome.unchanged = true;
        outcome
    }

    /// Whether the current viewport is too wide to fetch ([`ViewOutcome::too_wide`]).
    pub fn is_too_wide(&self) -> bool {
        self.too_wide.is_some()
    }

    /// Reads the current view again (after [`Event::Updated`]) without planning.
    pub fn view_items(
        &mut self,
        now_ms: u64,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> ViewOutcome {
        let now_ms = self.clock.read(now_ms);
        self.read_view(now_ms, sink)
    }

    fn read_view(&mut self, now_ms: u64, mut sink: impl FnMut(&CacheItem<P>, bool)) -> ViewOutcome {
        let before = self.cache.stats();
        let mut until = u64::MAX;
        let out = if let Some((limit, range)) = self.too_wide {
            // Too wide: the cached data tiles in the range, showable ones only; nothing is
            // missing, since nothing will be fetched.
            let mut out = ViewOutcome {
                too_wide: Some(limit),
                ..ViewOutcome::default()
            };
            // In tile order, so the order does not depend on recency.
            let mut tiles: Vec<(u64, u64)> = self
                .cache
                .cached_tiles()
                .filter(|&t| range.contains(t))
                .map(|t| (t.to_u64(), 0))
                .collect();
            crate::util::sort_pairs(&mut tiles);
            for (t, _) in tiles {
                let t = TileId::from_packed(t);
                self.cache.read_tile_until(
                    t,
                    self.access,
                    now_ms,
                    None,
                    &mut until,
                    |item, _, stale| {
                        out.items += 1;
                        out.stale |= stale;
                        sink(item, stale);
                    },
                );
            }
            self.complete = false;
            out
        } else {
            let mut out = ViewOutcome {
                visible: self.visible.len(),
                ..ViewOutcome::default()
            };
            for &t in &self.visible {
                // A tile the planner just found fresh (same generation and tier) is not
                // classified again.
                let generation = self.cache.generation();
                let known = self.fresh.until(t, generation, self.access, now_ms);
                #[cfg(test)]
                let known = known.filter(|_| !self.full_reads);
                let state = self.cache.read_tile_until(
                    t,
                    self.access,
                    now_ms,
                    known,
                    &mut until,
                    |item, _, stale| {
                        out.items += 1;
                        out.stale |= stale;
                        sink(item, stale);
                    },
                );
                if !state.is_showable() {
                    out.missing.push(t);
                }
            }
            out.complete = out.missing.is_empty();
            self.complete = out.complete;
            out
        };
        let after = self.cache.stats();
        self.view_until = until;
        self.shown = Some(Shown {
            generation: self.cache.generation(),
            access: self.access,
            at: now_ms,
            until,
            outcome: out.clone(),
            counted: (
                after.hits - before.hits,
                after.stale_hits - before.stale_hits,
                after.misses - before.misses,
            ),
        });
        out
    }

    /// The next batch request to send, if one may go out now. Call until `None`.
    pub fn poll_request(&mut self, now_ms: u64) -> Option<Transmit> {
        let now_ms = self.clock.read(now_ms);
        let (cache, access) = (&self.cache, self.access);
        let empty = |t| cache.outside_bounds(t);
        let out = self.batcher.poll_with_empty(
            now_ms,
            access,
            |w| cache.tile_freshness(w.tile(), access, now_ms) != TileFreshness::Fresh,
            cache
                .has_bounds()
                .then_some(&empty as &dyn Fn(TileId) -> bool),
        )?;
        let at = self.overtaking.count();
        let again = self.overtaking.carries_again(&out.request);
        self.request_access
            .push((out.id, Sent { access, at, again }));
        Some(out)
    }

    /// An in-flight request to abort (no longer wanted, or past its deadline). Its late
    /// answer is ignored.
    pub fn poll_cancel(&mut self) -> Option<RequestId> {
        self.cancels.pop_front()
    }

    /// Cancels the in-flight prefetch requests none of whose tiles the view's `plan` wants
    /// (none without one), a known destination holds, or a host waits for (`load_tile`:
    /// such a tile was not queued again this round because it was in flight); the shell
    /// hears of each through `poll_cancel`.
    fn cancel_unwanted(&mut self, plan: Option<&Plan>) {
        let (destinations, loading) = (&self.destinations, &self.loading);
        for id in self.batcher.cancel_unwanted(|t| {
            plan.is_some_and(|p| p.wants(t)) || destinations.contains(&t) || loading.contains(&t)
        }) {
            self.sent_with(id);
            self.queue_cancel(id);
        }
    }

    /// What request `id` was sent with, forgotten: the batcher no longer tracks the
    /// request.
    fn sent_with(&mut self, id: RequestId) -> Option<Sent> {
        let i = self.request_access.iter().position(|&(r, _)| r == id)?;
        Some(self.request_access.swap_remove(i).1)
    }

    /// The next event for the page. At most [`MAX_QUEUED_EVENTS`] wait: a shell that
    /// polls seldom loses the oldest errors (the `errors` counter still counts them), and
    /// hears `Updated` and `Complete` once however many answers came.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues `event` for [`Client::poll_event`], within [`MAX_QUEUED_EVENTS`]: when full,
    /// the oldest error makes room, never the one `Updated` or `Complete` (a page that polls
    /// late must still hear of them).
    fn queue_event(&mut self, event: Event) {
        let queued = match event {
            Event::Updated => self.events.iter().any(|e| matches!(e, Event::Updated)),
            Event::Complete => self.events.iter().any(|e| matches!(e, Event::Complete)),
            Event::Error(_) => false,
        };
        if queued {
            return;
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            // The oldest error goes (at most one `Updated` and one `Complete` are queued, so
            // a full queue holds errors).
            let mut dropped = false;
            self.events.retain(|e| {
                let drop = !dropped && matches!(e, Event::Error(_));
                dropped |= drop;
                !drop
            });
        }
        self.events.push_back(event);
    }

    /// Queues `id` for [`Client::poll_cancel`], within [`MAX_QUEUED_EVENTS`] (an abort
    /// dropped only wastes the request: its late answer is ignored).
    fn queue_cancel(&mut self, id: RequestId) {
        if self.cancels.len() >= MAX_QUEUED_EVENTS {
            self.cancels.pop_front();
        }
        self.cancels.push_back(id);
    }

    /// Whether each visible tile can be shown now, in [`Client::visible_tiles`] order.
    fn showable_visible(&self, now_ms: u64) -> Vec<bool> {
        let mut showable = Vec::with_capacity(self.visible.len());
        for &t in &self.visible {
            showable.push(
                self.cache
                    .tile_freshness(t, self.access, now_ms)
                    .is_showable(),
            );
        }
        showable
    }

    /// Each visible tile's state for the caller, in [`Client::visible_tiles`] order. Notes
    /// when the first of them can change with time (the view's next change, for
    /// [`Client::next_wakeup`]), unless the view is too wide to fetch.
    fn visible_states(&mut self, now_ms: u64) -> Vec<TileFreshness> {
        // A change of the view already due (an answer or a call came before the timer) is
        // acted on here, as `handle_timeout` would have: once `view_until` moves on below,
        // the timer no longer sees it.
        let due = self.view_until <= now_ms;
        let mut until = u64::MAX;
        let mut states = Vec::with_capacity(self.visible.len());
        for &t in &self.visible {
            states.push(
                self.cache
                    .tile_freshness_until(t, self.access, now_ms, &mut until),
            );
        }
        if self.too_wide.is_none() {
            self.view_until = until;
        }
        if due {
            self.refresh_stale(&states);
        }
        states
    }

    /// Queues a refresh of the visible tiles shown stale, and tells the page the view reads
    /// differently ([`Event::Updated`]).
    fn refresh_stale(&mut self, states: &[TileFreshness]) {
        let mut refresh = Vec::new();
        for (&t, state) in self.visible.iter().zip(states) {
            if state.is_showable() && !self.batcher.is_tile_in_flight(t) {
                refresh.extend(Work::from_state(t, state.clone()));
            }
            if *state != TileFreshness::Fresh {
                self.changed_tiles.add(t);
            }
        }
        self.batcher.extend_prefetch(refresh);
        self.queue_event(Event::Updated);
    }

    /// Re-derives the foreground queue from the visible tiles (after failures,
    /// invalidation or a tier change), so a visible tile is never left unrequested.
    /// Returns whether every visible tile can be shown.
    fn refresh_foreground(&mut self, now_ms: u64) -> bool {
        let states = self.visible_states(now_ms);
        self.queue_foreground(states, now_ms)
    }

    /// Queues as foreground work the visible tiles that cannot be shown and are not in
    /// flight, from their `states` (in [`Client::visible_tiles`] order). Returns whether
    /// every visible tile can be shown.
    /// Loading tiles ([`Client::load_tile`]) are queued after them.
    fn queue_foreground(&mut self, states: Vec<TileFreshness>, now_ms: u64) -> bool {
        let mut works = Vec::new();
        let mut complete = true;
        for (&t, st) in self.visible.iter().zip(states) {
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
        let works = self.with_loading(works, now_ms);
        self.batcher.set_foreground(works);
        complete && self.too_wide.is_none()
    }

    /// When to call [`Client::handle_timeout`] if nothing else happens first: a backoff
    /// ends, the breaker allows a probe, a request reaches its deadline, or the view reads
    /// differently (the first time a shown item or tile list turns stale or expires past
    /// the stale-while-revalidate window: a wake-up per change of the view, not a poll), or
    /// a tile a host read ([`Client::load_tile`]) does (see [`Client::take_changed_tiles`]).
    ///
    /// The time is on the caller's clock, as `now_ms` is: after the wall clock stepped back,
    /// as much before the engine's own (see `crate::clock`).
    pub fn next_wakeup(&self, now_ms: u64) -> Option<u64> {
        let now_ms = self.clock.read(now_ms);
        // A change already due (a call came before the timer) is due now, not dropped.
        let first = (self.held.iter()).fold(self.view_until, |at, &(_, t)| at.min(t));
        let view = Some(first).filter(|&t| t < u64::MAX).map(|t| t.max(now_ms));
        let at = (self.batcher.next_wakeup(now_ms).into_iter())
            .chain(view)
            .min()?;
        Some(self.clock.wall(at))
    }

    /// Time passed: requests past their deadline fail with [`Failure::Timeout`] and are
    /// named by [`Client::poll_cancel`] for the shell to abort, and work whose backoff
    /// ended becomes sendable (then call [`Client::poll_request`]). When the view reads
    /// differently from now on with nothing else changed, it is refreshed as a new round
    /// would: visible tiles shown stale are queued for a refresh, those that cannot be
    /// shown any more for the foreground ([`Client::is_complete`] follows), and
    /// [`Event::Updated`] tells the page to read it again (the stale flags changed). Tiles
    /// a host read that read differently from now on are reported changed
    /// ([`Client::take_changed_tiles`]).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let now_ms = self.clock.read(now_ms);
        self.changed();
        for id in self.batcher.overdue(now_ms) {
            self.queue_cancel(id);
            self.fail(id, Failure::Timeout, now_ms);
        }
        self.changed_with_time(now_ms);
        if self.view_until <= now_ms {
            self.refresh_view(now_ms);
        }
    }

    /// The view reads differently at `now_ms` than when it was last read (see
    /// [`Client::handle_timeout`]): each visible tile is classified again (no item is read
    /// or counted: the page reads the view when it hears of it), its work queued, and the
    /// next time the view can change noted.
    fn refresh_view(&mut self, now_ms: u64) {
        // A view too wide to fetch has no visible tiles and no work: its next change is
        // noted when the page reads it again.
        self.view_until = u64::MAX;
        let states = self.visible_states(now_ms);
        self.refresh_stale(&states);
        self.complete = self.queue_foreground(states, now_ms);
    }

    /// Changes the caller's tier. Lowering it drops every cached item and tile list above
    /// the new tier at once; raising it makes tile lists fetched at a lower tier incomplete
    /// (what they list is still shown while they are fetched again).
    /// Visible tiles that became incomplete are queued again.
    pub fn set_access(&mut self, access: Access, now_ms: u64) {
        let now_ms = self.clock.read(now_ms);
        self.changed();
        if access < self.access {
            self.cache.drop_above(access);
        }
        if access != self.access {
            // Another tier sees other items: what the answers showed was for this one (and
            // a tile too large at it may not be at another).
            self.density = Density::default();
            self.changed_tiles = ChangedTiles::All;
            self.batcher.release_held(None);
        }
        self.access = access;
        self.complete = self.refresh_foreground(now_ms);
    }

    /// Limits the planner's prefetch to the tiles earlier sessions viewed (see
    /// [`ViewCounts`](crate::planner::ViewCounts)), or, with `None`, lifts the limit; the
    /// visible tiles are asked for wherever they are. A coarse tile the batcher asks for
    /// because half its block is queued still brings the rest of the block, and
    /// [`prefetch`](Self::prefetch) destinations and loading tiles are not limited. The next
    /// viewport set is planned with it, even the same view (until then the queues stay as
    /// they are). A list with a tile finer than the data tiles is refused, with nothing
    /// changed.
    pub fn set_popular_tiles(&mut self, tiles: Option<PopularTiles>) -> Result<(), PopularTooFine> {
        self.planner.set_popular(tiles)?;
        self.changed();
        Ok(())
    }

    /// The data's extent as the backend declares it, `None` for none: adopted when the config
    /// declares none, see [`ItemCache::adopt_bounds`]. Tiles outside it that the backend never
    /// listed items in are then fresh and empty: a view over them is complete, and queued
    /// work for them is dropped before it is sent. A bad box is refused with nothing changed.
    /// A shell that reads it from the answers' headers hands it to
    /// [`on_declared_response`](Self::on_declared_response) instead.
    pub fn adopt_bounds(&mut self, bounds: Option<&Bbox>, now_ms: u64) -> Result<(), CacheError> {
        let now_ms = self.clock.read(now_ms);
        if self.cache.adopt_bounds(bounds)? {
            self.changed();
            self.changed_tiles = ChangedTiles::All;
            self.complete = self.refresh_foreground(now_ms);
        }
        Ok(())
    }

    /// Drops cached items or tiles; visible tiles that became incomplete are queued again.
    /// A data tile held as too large to serve that it covers (its tile, a class, all) may
    /// have shrunk: it is asked for again. (Ids do not: a held tile's items are not cached,
    /// so where they are is not known.)
    pub fn invalidate(&mut self, what: Invalidate<'_>, now_ms: u64) -> usize {
        let now_ms = self.clock.read(now_ms);
        self.changed();
        let oldest_out = self.request_access.iter().map(|(_, s)| s.at).min();
        self.overtaking.record(&what, oldest_out);
        let batcher = &mut self.batcher;
        match what {
            Invalidate::Ids(ids) => {
                for id in ids {
                    self.changed_tiles.add_item(&self.cache, id);
                }
                // An item pushed out of the cache is placed nowhere, but the list of a tile a
                // host read may still name it (and the host draw it): that tile.
                let cache = &self.cache;
                let gone: HashSet<&str> = (ids.iter().copied())
                    .filter(|id| cache.tile_of(id).is_none())
                    .collect();
                for &(t, _) in &self.held {
                    if cache.lists_any(t, &gone) {
                        self.changed_tiles.add(t);
                    }
                }
            }
            // A finer tile stands for its data tile (the whole of it is dropped).
            Invalidate::Tiles(tiles) => {
                let z = self.cache.config().tile_zoom;
                batcher.release_held(Some(tiles));
                (tiles.iter()).for_each(|&t| self.changed_tiles.add(t.ancestor(z).unwrap_or(t)));
            }
            Invalidate::Class(_) | Invalidate::All => {
                batcher.release_held(None);
                self.changed_tiles = ChangedTiles::All;
            }
        }
        let n = self.cache.invalidate(what);
        self.complete = self.refresh_foreground(now_ms);
        n
    }

    /// The protocol's limits the client checks answers (and ids it is asked for) against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether `id` can be asked for, by the protocol's rule for ids (non-empty, at most
    /// [`Limits::max_id_len`] bytes, no control characters): `Err` says what is wrong. No
    /// item has such an id, and a server refuses a request naming one, with the visible
    /// tiles and other ids that went in it; so a shell checks ids with this before
    /// [`Client::get`], and `get` never queues one that fails it.
    pub fn check_id(&self, id: &str) -> Result<(), String> {
        crate::protocol::check_id(id, &self.limits)
    }

    /// One item by id, from the cache (counts a hit or a miss). A miss queues the id for
    /// a foreground fetch (unless [`check_id`](Self::check_id) refuses it); call
    /// [`Client::poll_request`] after.
    pub fn get(&mut self, id: &str, now_ms: u64) -> Option<Lookup<'_, P>> {
        let now_ms = self.clock.read(now_ms);
        if self.cache.peek(id, self.access, now_ms).is_none() && self.check_id(id).is_ok() {
            self.batcher.request_ids([id]);
        }
        self.cache.get(id, self.access, now_ms)
    }

    /// [`Client::get`] of each of `ids`, in order, each lookup handed to `each`, with the
    /// misses queued in one go: a `get` per id rebuilds the queue's set of queued ids each
    /// time, which made `getMany` of 10,000 ids take 2.4 s in the browser's wasm.
    pub fn get_many<'i>(
        &mut self,
        ids: impl IntoIterator<Item = &'i str> + Clone,
        now_ms: u64,
        mut each: impl FnMut(Option<Lookup<'_, P>>),
    ) {
        let now_ms = self.clock.read(now_ms);
        let (cache, access, limits) = (&self.cache, self.access, &self.limits);
        self.batcher
            .request_ids(ids.clone().into_iter().filter(|id| {
                cache.peek(id, access, now_ms).is_none()
                    && crate::protocol::check_id(id, limits).is_ok()
            }));
        for id in ids {
            each(self.cache.get(id, self.access, now_ms));
        }
    }

    /// One item by id when the cache has it for this caller (fresh or stale; counted as a
    /// hit); otherwise `None` with nothing counted or queued, for a caller that then takes
    /// [`Client::get`] or [`Client::request_ids`].
    pub fn get_cached(&mut self, id: &str, now_ms: u64) -> Option<Lookup<'_, P>> {
        let now_ms = self.clock.read(now_ms);
        self.cache.get_hit(id, self.access, now_ms)
    }

    /// Queues ids for a foreground fetch (those not fresh in the cache; none that
    /// [`check_id`](Self::check_id) refuses).
    pub fn request_ids<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>, now_ms: u64) {
        let now_ms = self.clock.read(now_ms);
        let (cache, access, limits) = (&self.cache, self.access, &self.limits);
        let wanted: Vec<&str> = ids
            .into_iter()
            .filter(|id| crate::protocol::check_id(id, limits).is_ok())
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
        let now_ms = self.clock.read(now_ms);
        self.warm_at(tiles, now_ms)
    }

    /// [`warm`](Self::warm) at a time read already.
    fn warm_at(&mut self, tiles: &[TileId], now_ms: u64) -> usize {
        self.changed();
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

    /// Whether data tile `tile` is held as too large to serve at `now_ms` (refused so on its
    /// own: not asked for again for a tile TTL, unless a change covering it, another tier or
    /// an answer for another tier ends the hold; [`Batcher::held`]).
    pub fn held_too_large(&self, tile: TileId, now_ms: u64) -> bool {
        self.batcher.held(tile, self.clock.read(now_ms))
    }

    /// The cached item with this id for the caller's tier (fresh or stale), without counting
    /// or fetching: [`ItemCache::peek`] at the caller's tier, on the engine's clock.
    pub fn peek(&self, id: &str, now_ms: u64) -> Option<Lookup<'_, P>> {
        self.cache.peek(id, self.access, self.clock.read(now_ms))
    }

    /// Display state of a data tile.
    pub fn tile_state(&self, tile: TileId, now_ms: u64) -> TileState {
        let now_ms = self.clock.read(now_ms);
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
