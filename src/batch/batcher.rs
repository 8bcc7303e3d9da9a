//! [`Batcher`]: the queues, the requests in flight, the backoff and the breaker together.

use super::backoff::Backoff;
use super::breaker::Breaker;
use super::queue::Queues;
use super::{coalesce, BatchConfig, BatchConfigError, Failure, FailureOutcome, Finished, Kind};
use super::{RequestId, Transmit};
use crate::access::Access;
use crate::planner::Work;
use crate::protocol::{BatchRequest, ErrorCode};
use crate::tile::{TileId, TileSet};
use crate::util::HashMap;

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

/// A partial answer's `error` code, and whether an id asked for is in its `items` or
/// `missing` ([`Batcher::on_answer`]).
type LeftOut<'a> = (ErrorCode, &'a dyn Fn(&str) -> bool);

#[derive(Clone, Debug)]
struct InFlight {
    /// What the request is for, handed back as it is when the request ends.
    request: Finished,
    /// The data tiles of its work, for [`Batcher::is_tile_in_flight`].
    tiles: TileSet,
    deadline_ms: u64,
    /// How many zooms above its data tiles its coarsest tile was (0: none coarse).
    coarsest: u8,
}

/// Most data tiles [`Batcher`] notes as refused as too large at once; past it they are
/// forgotten (and each is asked for once more when refused as too large again, or when
/// held). Notes that lapsed are forgotten first.
const MAX_ALONE: usize = 4096;

/// How long a data tile refused as too large on its own is held by default
/// ([`Batcher::hold_too_large_for`]): the cache's default tile TTL, 5 minutes.
pub const DEFAULT_TOO_LARGE_HOLD_MS: u64 = 300_000;

/// The batch planner. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct Batcher {
    config: BatchConfig,
    next_id: u64,
    queues: Queues,
    /// Requests in flight, in ascending id order (ids grow, and new requests are pushed at
    /// the end). A `Vec` searched linearly rather than a hash map: it never holds more than
    /// `max_in_flight` (at most 64) requests, and the wasm carries one hash table type fewer.
    /// Each keeps its data tiles as a [`TileSet`], so whether a tile is in flight is at most
    /// 64 binary searches, and a request's tiles are sorted once when it goes out and
    /// forgotten with it (no map from tiles to requests to keep in step).
    in_flight: Vec<InFlight>,
    ids_in_flight: HashMap<String, RequestId>,
    backoff: Backoff,
    breaker: Breaker,
    stats: BatchStats,
    /// Data tiles the server left out as too large to serve (`payload_too_large`), noted:
    /// `(tile, held until, noted until)`, the tile packed, sorted by it; at most
    /// [`MAX_ALONE`]. Until its note lapses (a hold after the refusal), a noted tile goes out
    /// on its own, and no coarse tile holding it is asked for (the rest of a request
    /// coalesces without it); then the server is asked for a coarse tile holding it again.
    /// Refused on its own while noted, it is held: not asked for before `held until` (0:
    /// not held), and noted for a hold past that (asked for on its own first).
    alone: Vec<(u64, u64, u64)>,
    /// How long a data tile refused as too large on its own is held.
    hold_ms: u64,
    /// The zooms up requests are coalesced to: `config.coalesce_levels`, lowered by a
    /// server that refuses coarse tiles with a 400 ([`on_failure`](Self::on_failure))
    /// until `coalesce_lowered_until` (Unix ms), then the configured level again.
    coalesce_levels: u8,
    coalesce_lowered_until: u64,
}

impl Batcher {
    /// A batcher with a checked configuration.
    pub fn new(config: BatchConfig) -> Result<Batcher, BatchConfigError> {
        config.validate()?;
        Ok(Batcher {
            backoff: Backoff::new(config.backoff_base_ms, config.backoff_max_ms, config.seed),
            breaker: Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown_ms,
                config.breaker_max_cooldown_ms,
            ),
            coalesce_levels: config.coalesce_levels,
            coalesce_lowered_until: 0,
            config,
            next_id: 1,
            queues: Queues::default(),
            in_flight: Vec::new(),
            ids_in_flight: HashMap::new(),
            stats: BatchStats::default(),
            alone: Vec::new(),
            hold_ms: DEFAULT_TOO_LARGE_HOLD_MS,
        })
    }

    /// Sets how long a data tile refused as too large on its own is held: not asked for
    /// before `hold_ms` has passed (the client passes its tile TTL), unless released
    /// ([`release_held`](Self::release_held)). Default [`DEFAULT_TOO_LARGE_HOLD_MS`].
    pub fn hold_too_large_for(&mut self, hold_ms: u64) {
        self.hold_ms = hold_ms;
    }

    /// Whether data tile `tile` is held as too large to serve at `now_ms`: refused so on
    /// its own, not asked for before its hold ends or is released
    /// ([`release_held`](Self::release_held)).
    pub fn held(&self, tile: TileId, now_ms: u64) -> bool {
        self.note(tile).is_some_and(|a| a.1 > now_ms)
    }

    /// Whether data tile `tile` is noted as refused as too large at `now_ms`: it goes out on
    /// its own, within no coarse tile (`alone`).
    fn noted(&self, tile: TileId, now_ms: u64) -> bool {
        self.note(tile).is_some_and(|a| a.2 > now_ms)
    }

    fn note(&self, tile: TileId) -> Option<&(u64, u64, u64)> {
        let key = tile.to_u64();
        let i = self.alone.binary_search_by(|a| a.0.cmp(&key)).ok()?;
        Some(&self.alone[i])
    }

    /// Ends the hold of the data tiles refused as too large that something could have
    /// changed: those in or around `tiles` (an invalidation of them), every one for `None`
    /// (an invalidation of a class or of all, another tier). They are asked for again when
    /// still needed, on their own.
    pub fn release_held(&mut self, tiles: Option<&[TileId]>) {
        for (t, until, _) in &mut self.alone {
            let t = TileId::from_packed(*t);
            if tiles.is_none_or(|c| c.iter().any(|&i| i.contains(t) || t.contains(i))) {
                *until = 0;
            }
        }
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
        self.queues.has_foreground()
    }

    /// Whether the breaker currently holds prefetch back (open, or half-open with its
    /// probe out).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Replaces the foreground queue with this round's foreground work (visible tiles
    /// that cannot be shown), in priority order. Work for tiles no longer listed is
    /// dropped; retry state of a tile is kept across rounds.
    pub fn set_foreground(&mut self, works: Vec<Work>) {
        self.queues.set(Kind::Foreground, works);
    }

    /// Replaces the prefetch queue with this round's prefetch (and refresh) work.
    pub fn set_prefetch(&mut self, works: Vec<Work>) {
        self.queues.set(Kind::Prefetch, works);
    }

    /// Adds prefetch work behind this round's (tiles already queued are skipped).
    pub fn extend_prefetch(&mut self, works: Vec<Work>) {
        self.queues.extend_prefetch(works);
    }

    /// Queues ids asked for directly (not through a tile) as foreground work. An id already
    /// in flight is not asked for twice, but the request it went out in (a tile's refresh by
    /// id, say) notes it as asked for directly: if that request is retried or sent again,
    /// the id goes back with the ids asked for directly, which no new round replaces, so the
    /// caller waiting for it is answered even when the tile's work is dropped meanwhile.
    pub fn request_ids<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        // One body for every caller's iterator type (the wasm carries it once).
        let ids: Vec<&str> = ids.into_iter().collect();
        self.queue_ids(&ids);
    }

    fn queue_ids(&mut self, ids: &[&str]) {
        let (ids_in_flight, in_flight) = (&self.ids_in_flight, &mut self.in_flight);
        self.queues.add_ids(ids.iter().copied(), |id| {
            note_on_request(ids_in_flight, in_flight, id)
        });
    }

    /// Notes `id` as asked for directly on the request it is out in, if any.
    fn note_asked_directly(&mut self, id: &str) {
        note_on_request(&self.ids_in_flight, &mut self.in_flight, id);
    }

    /// The next request to send, asking at tier `access`, if any may go out now. Call until
    /// it returns `None`. `needed(work)` lets the caller drop queued work that became
    /// unnecessary (e.g. the tile was filled by another response).
    pub fn poll(
        &mut self,
        now_ms: u64,
        access: Access,
        needed: impl FnMut(&Work) -> bool,
    ) -> Option<Transmit> {
        self.poll_with_empty(now_ms, access, needed, None)
    }

    /// [`poll`](Self::poll), where `empty(tile)`, when given, says a data tile is known to
    /// hold no items (outside the data's extent): it counts towards a coarse tile's share,
    /// and a coarse tile asked for with part of its block queued may cover it, since no item
    /// can come twice from it.
    pub fn poll_with_empty(
        &mut self,
        now_ms: u64,
        access: Access,
        mut needed: impl FnMut(&Work) -> bool,
        empty: Option<&dyn Fn(TileId) -> bool>,
    ) -> Option<Transmit> {
        if self.in_flight.len() >= self.config.max_in_flight {
            return None;
        }
        if now_ms >= self.coalesce_lowered_until {
            self.coalesce_levels = self.config.coalesce_levels;
        }
        if let Some(out) = self.take(Kind::Foreground, now_ms, access, &mut needed, empty) {
            return Some(out);
        }
        // Prefetch never takes the last free slot, so foreground can always start at once
        // (with a single slot, prefetch waits while foreground work is queued: ids, or a
        // tile backing off, not one held as too large, which waits for a tile TTL).
        let free = self.config.max_in_flight - self.in_flight.len();
        let q = &self.queues;
        if (self.config.max_in_flight > 1 && free <= 1)
            || (free == 1
                && (!q.loose_ids.is_empty()
                    || q.foreground
                        .iter()
                        .any(|w| !matches!(w, Work::Tile(t) if self.held(*t, now_ms)))))
        {
            return None;
        }
        if !self.breaker.allows_prefetch(now_ms) {
            return None;
        }
        let out = self.take(Kind::Prefetch, now_ms, access, &mut needed, empty)?;
        self.breaker.sent_prefetch(out.id);
        Some(out)
    }

    /// Builds one request of `kind` from the queue, or `None` when nothing is ready.
    fn take(
        &mut self,
        kind: Kind,
        now_ms: u64,
        access: Access,
        needed: &mut impl FnMut(&Work) -> bool,
        empty: Option<&dyn Fn(TileId) -> bool>,
    ) -> Option<Transmit> {
        let queue = std::mem::take(self.queues.of(kind));
        let (mut tiles, mut ids, mut works, mut keep): (
            Vec<TileId>,
            Vec<String>,
            Vec<Work>,
            Vec<Work>,
        ) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // The data tiles' works noted as too large, to go out on their own.
        let mut lone: Vec<Work> = Vec::new();
        let mut attempt = 0;
        // Data tiles gathered per request: room for `max_tiles` coarse tiles' worth.
        let tile_cap = self
            .config
            .max_tiles
            .saturating_mul(1 << (2 * self.coalesce_levels as usize))
            .min(4096)
            .max(self.config.max_tiles);
        for w in queue {
            let tile = w.tile();
            if self.is_tile_in_flight(tile) || !needed(&w) {
                continue; // already coming, or no longer needed: drop
            }
            let fits = match &w {
                Work::Tile(_) => tiles.len() + lone.len() < tile_cap,
                Work::Ids { ids: wi, .. } => {
                    ids.len() + wi.len() <= self.config.max_ids || ids.is_empty()
                }
            };
            let held = matches!(w, Work::Tile(_)) && self.held(tile, now_ms);
            if !fits || held || !self.backoff.ready(tile, now_ms) {
                keep.push(w);
                continue;
            }
            attempt = attempt.max(self.backoff.get(tile).map_or(0, |b| b.attempt));
            match &w {
                // Noted as too large: on its own (below).
                Work::Tile(t) if self.noted(*t, now_ms) => {
                    lone.push(w);
                    continue;
                }
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
            works.push(w);
        }
        // Coalesce complete groups into coarse tiles; what does not fit in `max_tiles`
        // request tiles goes back to the front of the queue.
        // `tiles` holds the data tiles of the `Work::Tile`s in `works`, in the same order.
        // A block asked for as a coarse tile while only part of it is queued brings its
        // other data tiles too: only when none of them is in flight or held already
        // (`needed` says no), or their items would come twice (unless it holds none:
        // `empty`), and none is backing off,
        // or the coarse tile would ask for it before its delay is over (a view larger than
        // the cache would loop, each answer evicting another visible tile).
        let this = &*self;
        let queued = if this.config.coalesce_min_share < 100 || empty.is_some() {
            TileSet::new(tiles.iter().copied())
        } else {
            TileSet::default()
        };
        let data_zoom = tiles.first().map(|t| t.z());
        // A data tile the server left out as too large (noted) goes out on its own, as the
        // server asks ("request finer tiles"), after the others (`lone`), and no coarse tile
        // holds it (the one refused or a partly queued one).
        let (mut request_tiles, mut group_of) = coalesce(
            &tiles,
            this.coalesce_levels,
            this.config.coalesce_min_share,
            |block| {
                block
                    .descendants(data_zoom.unwrap_or(block.z()))
                    .is_ok_and(|below| {
                        below.into_iter().all(|d| {
                            !this.noted(d, now_ms)
                                && (queued.contains(d)
                                    || empty.is_some_and(|empty| empty(d))
                                    || (!this.is_tile_in_flight(d)
                                        && this.backoff.ready(d, now_ms)
                                        && needed(&Work::Tile(d))))
                        })
                    })
            },
            |block| {
                let Some(empty) = empty else { return 0 };
                block
                    .descendants(data_zoom.unwrap_or(block.z()))
                    .map_or(0, |below| {
                        below
                            .into_iter()
                            .filter(|&d| !queued.contains(d) && empty(d))
                            .count()
                    })
            },
        );
        for w in lone {
            group_of.push(request_tiles.len());
            request_tiles.push(w.tile());
            works.push(w);
        }
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
        *self.queues.of(kind) = keep;
        let mut loose = Vec::new();
        if kind == Kind::Foreground {
            let mut rest = Vec::new();
            for l in std::mem::take(&mut self.queues.loose_ids) {
                if self.is_id_in_flight(&l.id) {
                    // Out in another request (a prefetch's refresh by id): noted there as
                    // asked for directly, so its retry, re-send or cancel queues it again.
                    self.note_asked_directly(&l.id);
                    continue;
                }
                if ids.contains(&l.id) {
                    // Asked for directly and in a tile's work taken above (a retried refresh
                    // by id): sent once, and still noted as asked for directly.
                    loose.push(l.id);
                    continue;
                }
                if l.not_before_ms > now_ms || ids.len() >= self.config.max_ids {
                    rest.push(l);
                    continue;
                }
                attempt = attempt.max(l.attempt);
                ids.push(l.id.clone());
                loose.push(l.id);
            }
            self.queues.loose_ids = rest;
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
        // A coarse tile asked for with part of its block queued
        // (`coalesce_min_share` < 100) brings the rest of the block too: all of it is in
        // flight, so no other request asks for those tiles meanwhile.
        let mut covered: Vec<TileId> = works.iter().map(Work::tile).collect();
        let data_zoom = covered.iter().map(|t| t.z()).max().unwrap_or(0);
        let coarsest = tiles.iter().map(|t| data_zoom.saturating_sub(t.z())).max();
        if self.config.coalesce_min_share < 100 {
            for r in tiles.iter().filter(|r| r.z() < data_zoom) {
                covered.extend(r.descendants(data_zoom).unwrap_or_default());
            }
        }
        self.in_flight.push(InFlight {
            tiles: TileSet::new(covered),
            request: Finished {
                id,
                kind,
                works,
                loose_ids: loose,
                sent_at_ms: now_ms,
                attempt,
            },
            deadline_ms: now_ms.saturating_add(self.config.timeout_ms),
            coarsest: coarsest.unwrap_or(0),
        });
        Some(Transmit {
            id,
            kind,
            request: BatchRequest { tiles, ids, access },
            attempt,
            timeout_ms: self.config.timeout_ms,
        })
    }

    /// Stops tracking request `id`; what it was for, if it was tracked.
    fn finish(&mut self, id: RequestId) -> Option<Finished> {
        let i = self.in_flight.iter().position(|f| f.request.id == id)?;
        let f = self.in_flight.remove(i).request;
        self.ids_in_flight.retain(|_, r| *r != id);
        self.breaker.ended(id);
        Some(f)
    }

    /// The request answered. Closes the breaker. Returns what it was for, or `None` if it
    /// was no longer tracked (cancelled).
    pub fn on_success(&mut self, id: RequestId) -> Option<Finished> {
        self.on_answer(id, |_| true, None, 0).map(|(f, ..)| f)
    }

    /// The request answered, but `listed(tile)` says whether the answer covers each tile it
    /// asked for. Closes the breaker (the backend is up). Tiles the answer left out (a
    /// server bug or a cut-short answer) back off like a failed request's tiles, with the
    /// same growing delay, so a visible tile queued again is not asked for in a tight loop;
    /// they are returned with what the request was for. `None` if it was no longer tracked.
    ///
    /// `left_out` is given for a partial answer: the code of its `error` and `answered(id)`,
    /// whether an id asked for is in its `items` or `missing`.
    ///
    /// - [`ErrorCode::ResponseFull`]: it left out what did not fit in it. When it answered
    ///   something the request asked (a tile, an id), what it left out (the tiles, the ids
    ///   asked for directly) goes back to the front of its queues as the same attempt, to go
    ///   out at once in a later request, with no backoff, none is returned and the last
    ///   value is `true`: each such round answers something more, so it cannot loop. One
    ///   that answered nothing is handled as any answer leaving tiles out.
    /// - Any other code: what it left out failed as a whole answer with that code
    ///   (`Failure::left_out`: its status) would have. The server (or the edge, for its
    ///   origin) shed load ([`ErrorCode::Overloaded`], [`ErrorCode::RateLimited`],
    ///   [`ErrorCode::UpstreamTimeout`]: 503, 429, 504) or its origin failed
    ///   ([`ErrorCode::UpstreamError`], 502): that counts towards the breaker instead of
    ///   closing it, and the tiles it left out back off as a failed attempt's would (the
    ///   exponent at least the attempt's), so the client slows down as it would for a
    ///   whole refusal. A tile's refresh by id ([`Work::Ids`]) whose ids it left out
    ///   failed so too: its tile backs off with them. Within `retries`, they (such a
    ///   refresh with only the ids it left out) and the ids asked for directly that it
    ///   left out are queued again as the next attempt after that backoff (the last value
    ///   is `true`), as a failed request's work is; past them they are dropped. A code
    ///   whose failure is not retried ([`ErrorCode::PayloadTooLarge`], 413: a tile or item too
    ///   large to serve; [`ErrorCode::BadRequest`]) gives them up at once, the tiles backing
    ///   off as a given-up request's do. What it answered succeeded: those tiles back off
    ///   no more. (A `200` carries no `Retry-After`.)
    /// - Data tiles left out as [`ErrorCode::PayloadTooLarge`] the first time are no
    ///   failure: not held back, not returned, and noted for a tile TTL
    ///   ([`hold_too_large_for`](Self::hold_too_large_for); at most 4096 such tiles are
    ///   remembered), so asked for again meanwhile (the client queues the tiles it still
    ///   needs after each answer) each goes out on its own, and within no coarse tile
    ///   (the rest of a request coalesces as usual, in coarse tiles that hold no noted
    ///   tile). One may have gone out within a coarse request tile that the server refused
    ///   ("request finer tiles"), which was the client's choice and says nothing against
    ///   the tiles or the backend. Once the note lapses, the server is asked for the coarse
    ///   tile again. Refused on its own (while noted), a tile fails as above, and is held:
    ///   not asked for again for a tile TTL, as the server and the edge hold it (nothing of
    ///   it could be had, and each ask would be a request, and a full read of a dense tile
    ///   behind it, every 5 to 10 s for as long as it is in view), unless
    ///   [`release_held`](Self::release_held) ends the hold first; it stays noted a tile TTL
    ///   past the hold, so it is asked for on its own first. So is the one data tile of a
    ///   request refused whole with a 413 ([`on_failure`](Self::on_failure)).
    pub fn on_answer(
        &mut self,
        id: RequestId,
        mut listed: impl FnMut(TileId) -> bool,
        left_out: Option<LeftOut<'_>>,
        now_ms: u64,
    ) -> Option<(Finished, Vec<TileId>, bool)> {
        let f = self.finish(id)?;
        let mut unanswered = Vec::new();
        for w in &f.works {
            match w {
                Work::Tile(t) if !listed(*t) => unanswered.push(*t),
                _ => {}
            }
        }
        Some(self.answered(f, unanswered, left_out, now_ms))
    }

    /// Notes data tile `t` refused as too large to serve; returns whether it is held. One
    /// that went out on its own (`alone`, or noted since an earlier refusal) is held for
    /// `hold_ms`, and noted for `hold_ms` past that: a failure. Another is no failure yet
    /// (it may have been refused within a coarse tile): noted for `hold_ms`, to go out on its
    /// own meanwhile. Lapsed notes are forgotten here.
    fn too_large(&mut self, t: TileId, alone: bool, now_ms: u64) -> bool {
        let until = now_ms.saturating_add(self.hold_ms);
        self.alone.retain(|a| a.2 > now_ms);
        let key = t.to_u64();
        let hold = self.hold_ms;
        let note = |held: bool| match held {
            true => (key, until, until.saturating_add(hold)),
            false => (key, 0, until),
        };
        match self.alone.binary_search_by(|a| a.0.cmp(&key)) {
            Ok(i) => {
                self.alone[i] = note(true);
                true
            }
            Err(mut i) => {
                if self.alone.len() >= MAX_ALONE {
                    self.alone.clear();
                    i = 0;
                }
                self.alone.insert(i, note(alone));
                alone
            }
        }
    }

    /// [`on_answer`](Self::on_answer) once the tiles it left out are known (not generic:
    /// one copy in the wasm).
    fn answered(
        &mut self,
        f: Finished,
        mut unanswered: Vec<TileId>,
        left_out: Option<LeftOut<'_>>,
        now_ms: u64,
    ) -> (Finished, Vec<TileId>, bool) {
        // Data tiles too large to serve ("request finer tiles") that have not gone out on
        // their own yet are no failure: one asked for within a coarse tile (coalesced) may
        // fit alone. They go out on their own for a tile TTL, when asked for again.
        if left_out.is_some_and(|l| l.0 == ErrorCode::PayloadTooLarge) {
            unanswered.retain(|&t| self.too_large(t, false, now_ms));
        }
        let full = left_out
            .filter(|l| l.0 == ErrorCode::ResponseFull)
            .map(|l| l.1);
        // Left out for another reason than room, a tile's refresh by id whose ids it left
        // out failed as a tile it left out did: its tile backs off, and the ids it left out
        // go out again with the tiles (not at once by the next round, in a loop while the
        // server sheds load, nor dropped); those it answered are not asked again.
        let failed = left_out.filter(|l| l.0 != ErrorCode::ResponseFull);
        let (mut again, mut progress, mut held) = (Vec::new(), false, unanswered.clone());
        for w in &f.works {
            let ids_left = match (w, failed) {
                (Work::Ids { ids, .. }, Some((_, answered))) => ids.iter().any(|i| !answered(i)),
                _ => false,
            };
            match w {
                Work::Tile(t) if unanswered.contains(t) => again.push(w.clone()),
                Work::Ids { tile, ids } if ids_left => {
                    let mut ids = ids.clone();
                    if let Some((_, answered)) = failed {
                        ids.retain(|i| !answered(i));
                    }
                    again.push(Work::Ids { tile: *tile, ids });
                    held.push(*tile);
                }
                _ => {
                    progress |= match (w, full) {
                        (Work::Ids { ids, .. }, Some(answered)) => ids.iter().any(|i| answered(i)),
                        _ => true,
                    };
                    self.backoff.forget(w.tile());
                }
            }
        }
        // Left out for another reason than room (an `error` is there only when something is
        // left out), what it left out failed as a whole answer with this code would have:
        // the backend's trouble (shed load, a failed origin) counts towards the breaker.
        let failure = left_out.and_then(|l| Failure::left_out(l.0));
        if !failure.as_ref().is_some_and(Failure::is_backend_trouble) {
            self.breaker.on_success();
        } else if self.breaker.on_failure(now_ms) {
            self.stats.breaker_opened += 1;
        }
        // What it left out goes out again: at once when it did not fit and something was
        // answered; else as a failed attempt's work (that whole answer's), after its
        // backoff and within the retries (the tiles, the ids of refreshes by id and the
        // ids asked for directly) when that failure is retried, or not at all (a tile too
        // large to serve).
        let next = f.attempt + 1;
        let retry = match (left_out, &failure) {
            (Some((_, answered)), _) if full.is_some() => (progress
                || f.loose_ids.iter().any(|i| answered(i)))
            .then_some((answered, f.attempt, 0)),
            (Some((_, answered)), Some(failure)) => {
                let retry = failure.is_retryable() && next <= self.config.retries;
                let attempt = if retry { next } else { 0 };
                let at_ms = (self.backoff).hold_back(&held, attempt, next, None, now_ms);
                retry.then_some((answered, next, at_ms))
            }
            _ => None,
        };
        if let Some((answered, attempt, at_ms)) = retry {
            let mut loose_ids = f.loose_ids.clone();
            loose_ids.retain(|i| !answered(i));
            let rest = Finished {
                id: f.id,
                kind: f.kind,
                works: again,
                loose_ids,
                sent_at_ms: f.sent_at_ms,
                attempt: f.attempt,
            };
            self.queues.requeue(&rest, attempt, at_ms);
            // Failed, the tiles are reported (retried); what did not fit is no error.
            let reported = if failure.is_some() {
                unanswered
            } else {
                Vec::new()
            };
            return (f, reported, true);
        }
        if failure.is_none() && !unanswered.is_empty() {
            self.back_off(&unanswered, 0, now_ms);
        }
        (f, unanswered, false)
    }

    /// Holds these tiles back as if their request had failed: not requested again before
    /// a backoff that grows with each call (and each failure) until a request for them
    /// succeeds. For tiles an answer came back for that still cannot be shown (e.g. the
    /// view holds more than the cache may keep), so they are not asked for in a tight loop.
    /// `at_least` sets a floor on the failure count the delay is computed from, for callers
    /// that track a streak across tiles. Returns when they may go out again.
    pub fn back_off(&mut self, tiles: &[TileId], at_least: u32, now_ms: u64) -> u64 {
        self.backoff.hold_back(tiles, 0, at_least, None, now_ms)
    }

    /// The request ended in a way the caller has dealt with and that says nothing about the
    /// backend or the work (a 403 that told the client a lower tier to ask at): its work goes
    /// back to the front of its queues as the same attempt, to go out again at once. No
    /// failure is counted, the breaker and the tiles' backoff are unchanged. Returns what it
    /// was for, or `None` if it was no longer tracked.
    pub fn send_again(&mut self, id: RequestId) -> Option<Finished> {
        let f = self.finish(id)?;
        self.queues.requeue(&f, f.attempt, 0);
        Some(f)
    }

    /// The request failed. Retryable failures within the retry limit requeue the work
    /// with a backoff; everything else drops it.
    ///
    /// A `400` for a request that asked for coarse tiles is taken as a server that does
    /// not accept them, or not as many data tiles as they cover (a tilewarm server or edge
    /// with a `--max-data-tiles` / `max_data_tiles` below 1024, e.g. 256, the default
    /// before 2026-12-06; coarse tiles holding more items than it answers at once): from
    /// then on requests are coalesced to at most one zoom below the refused one's coarsest
    /// tile, and the work goes out again at once, not counted as a retry (the failure is
    /// still reported). Each such `400` lowers the level, so it happens at most
    /// `coalesce_levels` times; one for a request of data tiles only, or one that asked for
    /// ids too (the ids may be what was refused: a server's smaller `--max-ids`), is the
    /// failure it is. The level stays lowered for a tile TTL (as a tile held as too large,
    /// [`hold_too_large_for`](Self::hold_too_large_for)) from the last such `400`, then
    /// goes back to the configured one: a server upgraded meanwhile, or a `400` a proxy
    /// gave for another reason, does not cost the page's requests for the rest of its
    /// life; a server that still refuses costs one refused request a tile TTL a level.
    pub fn on_failure(&mut self, id: RequestId, failure: &Failure, now_ms: u64) -> FailureOutcome {
        let coarsest = (self.in_flight.iter())
            .find(|f| f.request.id == id)
            .map_or(0, |f| f.coarsest);
        let Some(f) = self.finish(id) else {
            return FailureOutcome::Unknown;
        };
        if matches!(failure, Failure::Aborted) {
            return FailureOutcome::GaveUp(f);
        }
        let tiles_only =
            f.loose_ids.is_empty() && f.works.iter().all(|w| matches!(w, Work::Tile(_)));
        if matches!(failure, Failure::Http { status: 400, .. }) && coarsest > 0 && tiles_only {
            self.stats.failures += 1;
            self.coalesce_levels = self.coalesce_levels.min(coarsest - 1);
            self.coalesce_lowered_until = now_ms.saturating_add(self.hold_ms);
            self.queues.requeue(&f, f.attempt, now_ms);
            return FailureOutcome::Retrying {
                at_ms: now_ms,
                request: f,
            };
        }
        // A 413 for one data tile asked for on its own: that tile is too large to serve.
        if let (Failure::Http { status: 413, .. }, [Work::Tile(t)], []) =
            (failure, &f.works[..], &f.loose_ids[..])
        {
            self.too_large(*t, true, now_ms);
        }
        self.stats.failures += 1;
        if failure.is_backend_trouble() && self.breaker.on_failure(now_ms) {
            self.stats.breaker_opened += 1;
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
        let at_ms = self
            .backoff
            .hold_back(&tiles, attempt, next_attempt, retry_after_ms, now_ms);
        if give_up {
            self.stats.gave_up += 1;
            return FailureOutcome::GaveUp(f);
        }
        self.queues.requeue(&f, next_attempt, at_ms);
        FailureOutcome::Retrying { at_ms, request: f }
    }

    /// In-flight prefetch requests none of whose tiles is still wanted. They stop being
    /// tracked; the shell should abort them (a late answer is then ignored). Ids asked for
    /// directly while one was out ([`request_ids`](Self::request_ids)) are queued again.
    pub fn cancel_unwanted(&mut self, mut wanted: impl FnMut(TileId) -> bool) -> Vec<RequestId> {
        let mut doomed = Vec::new();
        for InFlight { request: f, .. } in &self.in_flight {
            if f.kind == Kind::Prefetch && !f.works.iter().any(|w| wanted(w.tile())) {
                doomed.push(f.id);
            }
        }
        for id in &doomed {
            if let Some(f) = self.finish(*id) {
                let ids: Vec<&str> = f.loose_ids.iter().map(String::as_str).collect();
                self.queue_ids(&ids);
            }
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
        let q = &self.queues;
        for w in q.foreground.iter().chain(q.prefetch.iter()) {
            if let Some(b) = self.backoff.get(w.tile()) {
                consider(b.not_before_ms);
            }
        }
        // The end of a hold (the tile may not be queued any more: a wake-up for nothing).
        for &(_, until, _) in &self.alone {
            consider(until);
        }
        for l in &q.loose_ids {
            consider(l.not_before_ms);
        }
        if let Some(until_ms) = self.breaker.reopens_at_ms() {
            if !q.prefetch.is_empty() {
                consider(until_ms);
            }
        }
        for f in &self.in_flight {
            consider(f.deadline_ms);
        }
        next
    }
}

/// Notes `id` as asked for directly (a `get()`'s) on the request in flight carrying it, so
/// that request's retry, re-send or cancel queues it again with the ids no new round
/// replaces; whether it is out at all.
fn note_on_request(
    ids_in_flight: &HashMap<String, RequestId>,
    in_flight: &mut [InFlight],
    id: &str,
) -> bool {
    let Some(&request) = ids_in_flight.get(id) else {
        return false;
    };
    if let Some(f) = in_flight.iter_mut().find(|f| f.request.id == request) {
        if !f.request.loose_ids.iter().any(|l| l == id) {
            f.request.loose_ids.push(id.to_owned());
        }
    }
    true
}
