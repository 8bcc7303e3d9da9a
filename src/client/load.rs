//! Tiles a host asks for itself (a map library that tiles its own layers: deck.gl's
//! `TileLayer`, OpenLayers' tile strategy, Leaflet's `GridLayer`), and destinations known in
//! advance (a `flyTo`, a route, a search result).
//!
//! - [`Client::load_tile`] reads a host tile from the cache when its data tiles can be
//!   shown, and otherwise makes them "loading" until the host releases them or a request
//!   for them fails for good: those that cannot be shown are queued as foreground work
//!   across viewports, and all of them are protected from eviction one step below the
//!   visible tiles, so one answered early is still there when the last one comes, and
//!   none pushes out the view's items.
//! - [`Client::prefetch`] queues data tiles as prefetch work that stays queued across
//!   viewports ("destinations") until they are fetched, behind the planner's own.

use super::Client;
use crate::cache::CacheItem;
use crate::planner::Work;
use crate::tile::TileId;
use crate::util::HashSet;

/// Most data tiles remembered as destinations; older ones are dropped first.
pub const MAX_DESTINATIONS: usize = 4096;

/// A host tile covers more data tiles than a view may (`max_visible_tiles`): ask for finer
/// tiles, or use a lower data zoom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "tile {tile} covers {count} data tiles at zoom {tile_zoom}, more than max_visible_tiles \
     ({max}): ask for tiles at zoom {min_z} or finer"
)]
pub struct TooManyDataTiles {
    pub tile: TileId,
    pub count: u64,
    pub tile_zoom: u8,
    pub max: usize,
    /// The coarsest host zoom within the limit.
    pub min_z: u8,
}

impl<P> Client<P> {
    /// The data tiles that hold what host tile `tile` shows: its data-zoom ancestor when it
    /// is at the data zoom or finer, else its descendants at the data zoom, at most
    /// `max_visible_tiles` of them.
    pub fn data_tiles_of(&self, tile: TileId) -> Result<Vec<TileId>, TooManyDataTiles> {
        let config = self.planner.config();
        let (z, max) = (config.tile_zoom, config.max_visible_tiles);
        if tile.z() >= z {
            return Ok(tile.ancestor(z).into_iter().collect());
        }
        let levels = u32::from(z - tile.z());
        let count = 1u64 << (2 * levels);
        // The coarsest zoom whose tiles hold at most `max` data tiles (4^levels <= max).
        let fit = (usize::BITS - 1 - max.leading_zeros()) / 2;
        let err = TooManyDataTiles {
            tile,
            count,
            tile_zoom: z,
            max,
            min_z: z.saturating_sub(fit as u8),
        };
        if count > max as u64 {
            return Err(err);
        }
        tile.descendants(z).map_err(|_| err)
    }

    /// A host tile, read from the cache if every data tile it needs can be shown: then
    /// `sink(item, stale)` gets its items (those inside `tile` when it is finer than the
    /// data zoom) and the result is `true`; data tiles read stale (or partly expired within
    /// the stale-while-revalidate window) are queued for a refresh behind the prefetch, as
    /// the view's are, once until their read changes with time (one answered stale, with a
    /// ttl of 0, is not refetched on each read). Otherwise nothing is read and, when `queue`,
    /// its data tiles become loading ([`Client::loading_tiles`]) until
    /// [`Client::release_tiles`] drops them or a request for them fails for good: those
    /// that cannot be shown are queued as foreground work (call [`Client::poll_request`]
    /// after), and are queued again whenever they cannot be shown (dropped by an
    /// invalidation, expired); all of them are protected from eviction one step below the
    /// visible tiles (their answers never evict the view's items). A loading tile that an
    /// answer evicts or cannot keep all the same (the loads and the view need more than the
    /// cache holds) is given up with an error, and the view stays as it was.
    /// So a host that waits for a tile reads it again after each answer (with `queue`
    /// false) and releases its data tiles once it has read it or given up on it. A read
    /// data tile is reported changed once what was read turns stale or expires
    /// ([`Client::take_changed_tiles`]), and [`Client::next_wakeup`] wakes for it.
    pub fn load_tile(
        &mut self,
        tile: TileId,
        queue: bool,
        now_ms: u64,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> Result<bool, TooManyDataTiles> {
        let now_ms = self.clock.read(now_ms);
        let mut queued = false;
        let read = self.load_deferred(tile, queue, now_ms, &mut queued, sink);
        if queued {
            self.protect();
            self.refresh_foreground(now_ms);
        }
        read
    }

    /// [`Client::load_tile`] but for what follows a change of the loading tiles: `queued`
    /// is set when they changed, and the caller calls [`Client::loading_changed`] once,
    /// after a call's every tile (a shell's `loadTiles` of many tiles). Once per tile,
    /// protecting the loading tiles and queueing them again is linear in them: a
    /// `loadTiles` of N tiles was quadratic (1,000 tiles took 159 ms, 4,000 8.7 s in a
    /// browser page's wasm).
    pub fn load_tile_deferred(
        &mut self,
        tile: TileId,
        queue: bool,
        now_ms: u64,
        queued: &mut bool,
        sink: impl FnMut(&CacheItem<P>, bool),
    ) -> Result<bool, TooManyDataTiles> {
        let now_ms = self.clock.read(now_ms);
        self.load_deferred(tile, queue, now_ms, queued, sink)
    }

    /// [`load_tile_deferred`](Self::load_tile_deferred) at a time read already.
    fn load_deferred(
        &mut self,
        tile: TileId,
        queue: bool,
        now_ms: u64,
        queued: &mut bool,
        mut sink: impl FnMut(&CacheItem<P>, bool),
    ) -> Result<bool, TooManyDataTiles> {
        self.changed();
        let data = self.data_tiles_of(tile)?;
        let access = self.access;
        let waiting: Vec<TileId> = data
            .iter()
            .copied()
            .filter(|&t| !self.cache.tile_freshness(t, access, now_ms).is_showable())
            .collect();
        if !waiting.is_empty() {
            if queue {
                // All of them: one that can be shown now must still be there when the
                // others come.
                for t in data {
                    if !self.loading.contains(&t) {
                        self.loading.push(t);
                    }
                }
                *queued = true;
            }
            return Ok(false);
        }
        let finer = tile.z() > self.cache.config().tile_zoom;
        let mut refresh = Vec::new();
        for t in data {
            let mut until = u64::MAX;
            let state = self.cache.read_tile_until(
                t,
                access,
                now_ms,
                None,
                &mut until,
                |item, _, stale| {
                    if !finer || tile.contains(item.point_tile()) {
                        sink(item, stale);
                    }
                },
            );
            // Shown stale: refetched meanwhile, as the view's stale tiles are; once per
            // change of its read with time, not on each read (see `hold`).
            if !self.hold(t, until, now_ms) && !self.batcher.is_tile_in_flight(t) {
                refresh.extend(Work::from_state(t, state));
            }
        }
        self.batcher.extend_prefetch(refresh);
        Ok(true)
    }

    /// After [`Client::load_tile_deferred`] changed the loading tiles (set its `queued`):
    /// they are protected from eviction, and those that cannot be shown queued as
    /// foreground work. Nothing may be answered or evicted in between.
    pub fn loading_changed(&mut self, now_ms: u64) {
        let now_ms = self.clock.read(now_ms);
        self.protect();
        self.refresh_foreground(now_ms);
    }

    /// Data tiles made loading by [`Client::load_tile`] that nobody waits for any more (the
    /// host read its tile, gave up on it, or the load was aborted): they are no longer
    /// queued or protected, unless visible. A request already out is not aborted; its
    /// answer is cached.
    pub fn release_tiles(&mut self, tiles: &[TileId], now_ms: u64) {
        let now_ms = self.clock.read(now_ms);
        self.changed();
        self.loading.retain(|t| !tiles.contains(t));
        self.protect();
        self.refresh_foreground(now_ms);
    }

    /// Data tiles made loading by [`Client::load_tile`] and not released or given up yet
    /// (shown or not).
    pub fn loading_tiles(&self) -> &[TileId] {
        &self.loading
    }

    /// Queues data tiles (at the data zoom; others are skipped) as prefetch work for a
    /// known destination. Unlike [`Client::warm`], they stay queued across viewports, behind
    /// the planner's prefetch, until fetched (at most [`MAX_DESTINATIONS`], oldest dropped
    /// first), and an in-flight request for them is never cancelled as unwanted. Returns
    /// how many were not fresh (queued now or already), each counted once however often
    /// `tiles` holds it. Linear in `tiles`: a route's tiles, or a list with repeats (the data
    /// tiles of overlapping coarse tiles), are looked up in sets, not in the queue (a list of
    /// 100,000 data tiles took 16 s in a browser page's wasm that way).
    pub fn prefetch(&mut self, tiles: &[TileId], now_ms: u64) -> usize {
        let now_ms = self.clock.read(now_ms);
        self.changed();
        let tile_zoom = self.cache.config().tile_zoom;
        let access = self.access;
        let mut queued: HashSet<TileId> = self.destinations.iter().copied().collect();
        let mut seen = HashSet::default();
        let mut n = 0;
        for &t in tiles {
            if t.z() != tile_zoom
                || !seen.insert(t)
                || self.cache.tile_freshness(t, access, now_ms).is_showable()
            {
                continue;
            }
            n += 1;
            if queued.insert(t) {
                self.destinations.push(t);
            }
        }
        let over = self.destinations.len().saturating_sub(MAX_DESTINATIONS);
        self.destinations.drain(..over);
        self.warm_destinations(now_ms);
        n
    }

    /// Foreground work for the loading tiles that cannot be shown and are not in flight,
    /// after `works`. Those that can be shown stay loading (a later answer or an
    /// invalidation may take them away before the host reads them).
    pub(super) fn with_loading(&self, mut works: Vec<Work>, now_ms: u64) -> Vec<Work> {
        for &t in &self.loading {
            let st = self.cache.tile_freshness(t, self.access, now_ms);
            if !st.is_showable() && !self.batcher.is_tile_in_flight(t) {
                works.extend(Work::from_state(t, st));
            }
        }
        works
    }

    /// The loading tiles that can be shown now.
    pub(super) fn showable_loading(&self, now_ms: u64) -> Vec<TileId> {
        (self.loading.iter().copied())
            .filter(|&t| {
                self.cache
                    .tile_freshness(t, self.access, now_ms)
                    .is_showable()
            })
            .collect()
    }

    /// Queues the destinations that are not fetched yet behind the prefetch queue; the
    /// fetched ones are forgotten.
    pub(super) fn warm_destinations(&mut self, now_ms: u64) {
        if self.destinations.is_empty() {
            return;
        }
        let (cache, access) = (&self.cache, self.access);
        self.destinations
            .retain(|&t| !cache.tile_freshness(t, access, now_ms).is_showable());
        let tiles = std::mem::take(&mut self.destinations);
        self.warm_at(&tiles, now_ms);
        self.destinations = tiles;
    }

    /// Forgets the loading tiles a request that gave up was for (its tiles may be coarser
    /// than the data zoom, standing for the data tiles inside them).
    pub(super) fn give_up_loading(&mut self, tiles: &[TileId]) {
        let before = self.loading.len();
        self.loading
            .retain(|&t| !tiles.iter().any(|&r| r.contains(t) || t.contains(r)));
        if self.loading.len() != before {
            self.protect();
        }
        self.destinations
            .retain(|&t| !tiles.iter().any(|&r| r.contains(t) || t.contains(r)));
    }
}
