//! The tile index: per data tile, the ids the backend listed, when the list stops being
//! fresh and the tier it was fetched at, in a second LRU bounded by `max_tiles` (visible
//! tiles last to go); and what a tile's list and items add up to for a caller
//! ([`TileFreshness`]).

use super::key::ItemKey;
use super::list::{Listing, Name, TileList};
use super::store::ItemStore;

use super::{
    check_id, expiry, next_change, CacheError, CacheItem, Expiry, HashMap, HashSet, ItemCache,
    Protection, MAX_SPLIT_LEVELS,
};
use crate::access::Access;
use crate::tile::{Bbox, TileId};

/// What to refetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The tile's list (and its items).
    Tile,
    /// Just these items.
    Ids(Vec<String>),
}

/// What the cache knows about a data tile, for one caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TileFreshness {
    /// Membership fresh; every listed item the caller may see present and fresh.
    Fresh,
    /// Showable, but the membership and/or some items are within the stale-while-revalidate
    /// window: `Tile` if the membership is stale, else the stale ids.
    Stale(Refresh),
    /// Not showable: the membership is known but some listed items are missing (evicted,
    /// expired beyond the window, never arrived). `Ids(missing)`, or `Tile` when the
    /// membership is stale, when more than half of the list is missing, when the list
    /// came from a coarser tile whose split was uncertain, or when it was fetched at a tier
    /// below the caller's (it may lack items the caller may see).
    Partial(Refresh),
    /// Never fetched, expired beyond the window, dropped from the tile index, or not a
    /// data-zoom tile.
    Unknown,
}

impl TileFreshness {
    /// Whether the tile can be shown now (`Fresh` or `Stale`).
    pub fn is_showable(&self) -> bool {
        matches!(self, TileFreshness::Fresh | TileFreshness::Stale(_))
    }
}

/// Per data tile: the backend's list of ids, when it stops being fresh, and the tier of the
/// request that produced it.
#[derive(Debug, Clone)]
pub(super) struct TileEntry {
    pub(super) ids: TileList,
    pub(super) expires_at_ms: u64,
    pub(super) fetched_at: Access,
    /// False when the list came from a coarser tile one of whose listed items had no known
    /// position: this tile may be missing ids.
    pub(super) complete: bool,
}

impl<P> ItemCache<P> {
    /// Record a tile's membership: the ids the backend listed for it, inserted after the
    /// items of the same response.
    ///
    /// `tile` is at the data zoom or up to [`MAX_SPLIT_LEVELS`] coarser. A coarser tile's list
    /// is split onto every one of its data-zoom descendants by each item's position, so
    /// descendants with no items are recorded as known-empty. If a listed id is not in the
    /// cache its position is unknown, and no descendant is complete: each is then
    /// `Partial(Refresh::Tile)`. (A data-zoom tile records its list as given, and is
    /// `Partial` while an id is missing.) A listed item positioned outside a coarse tile is
    /// left out of the split.
    ///
    /// Membership expires at `now_ms + ttl_ms.unwrap_or(tile_ttl)`. `fetched_at` is the tier
    /// of the request; listed items held at a higher tier are left out of the list (a list
    /// fetched at that tier cannot contain them). Duplicate ids count once. A new list
    /// replaces the old one. If the split makes the index exceed `max_tiles`, the least
    /// recently used entries go, visible and loading tiles last, then the new empty descendants
    /// first.
    ///
    /// Errors (nothing changed): a tile finer than the data zoom ([`CacheError::TooFine`]),
    /// too coarse ([`CacheError::TooCoarse`]), an invalid id ([`CacheError::InvalidItem`]).
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemCache, TileFreshness};
    /// use tilewarm::tile::TileId;
    /// let mut cache: ItemCache<()> = ItemCache::new(CacheConfig::default()).unwrap();
    /// let z12: TileId = "12/656/1430".parse().unwrap();
    /// cache.insert_tile(z12, &[], None, Access::Public, 0).unwrap();
    /// // All 16 data tiles inside are known to be empty.
    /// let z14: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(cache.tile_freshness(z14, Access::Public, 0), TileFreshness::Fresh);
    /// assert!(cache.insert_tile("15/0/0".parse().unwrap(), &[], None, Access::Public, 0).is_err());
    /// ```
    pub fn insert_tile(
        &mut self,
        tile: TileId,
        ids: &[&str],
        ttl_ms: Option<u64>,
        fetched_at: Access,
        now_ms: u64,
    ) -> Result<(), CacheError> {
        self.changed();
        let dz = self.config.tile_zoom;
        if tile.z() > dz {
            return Err(CacheError::TooFine {
                tile,
                tile_zoom: dz,
            });
        }
        if dz - tile.z() > MAX_SPLIT_LEVELS {
            return Err(CacheError::TooCoarse {
                tile,
                tile_zoom: dz,
            });
        }
        for id in ids {
            check_id(id)?;
        }
        self.forget_unlisted(tile, ids, fetched_at);
        let expires_at_ms = now_ms.saturating_add(self.config.tile_ttl(ttl_ms));

        // Each distinct id once, with its data tile when held (None: position unknown). A
        // held item is listed by its slot: only its own tile's list keeps it (below).
        let mut seen = HashSet::with_capacity(ids.len());
        let mut listed: Vec<(Listing, Option<TileId>)> = Vec::with_capacity(ids.len());
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            let held = self.items.find(id);
            match held.and_then(|slot| Some((slot, self.items.item(slot)?))) {
                Some((slot, item)) if fetched_at.can_see(item.access()) => {
                    listed.push((Listing::held(slot, &item.id), Some(item.tile())));
                }
                Some(_) => {}
                None => listed.push((Listing::Key(ItemKey::new(id)), None)),
            }
        }

        if tile.z() == dz {
            // An item held at another tile's position is not this tile's (a server listing
            // it twice would have it shown twice); one not held yet is checked when read.
            listed.retain(|&(_, t)| t.is_none_or(|t| t == tile));
            if !listed.is_empty() {
                self.bounds.listed_with_items(tile);
            }
            // A vector of its own, as long as the list: `collect` would keep `listed`'s
            // buffer (several times as large) for as long as the list is held.
            let ids = TileList::new(listed.into_iter().map(|(id, _)| id), &key_of(&self.items));
            let entry = TileEntry {
                ids,
                expires_at_ms,
                fetched_at,
                complete: true,
            };
            self.tiles.put(tile, entry);
            self.trim_tiles();
            return Ok(());
        }

        let descendants = tile.descendants(dz).map_err(|_| CacheError::TooCoarse {
            tile,
            tile_zoom: dz,
        })?;
        let complete = listed.iter().all(|(_, t)| t.is_some());
        let mut by_tile: HashMap<TileId, Vec<Listing>> = HashMap::new();
        for (id, t) in listed {
            if let Some(t) = t.filter(|&t| tile.contains(t)) {
                by_tile.entry(t).or_default().push(id);
            }
        }
        let mut filled = Vec::with_capacity(by_tile.len());
        for d in descendants {
            match by_tile.remove(&d) {
                Some(ids) => filled.push((d, ids)),
                None => {
                    self.tiles.put(
                        d,
                        TileEntry {
                            ids: TileList::default(),
                            expires_at_ms,
                            fetched_at,
                            complete,
                        },
                    );
                }
            }
        }
        for (d, ids) in filled {
            // Held as long as the list: without the slack of its pushes.
            let ids = TileList::new(ids.into_iter(), &key_of(&self.items));
            self.bounds.listed_with_items(d);
            self.tiles.put(
                d,
                TileEntry {
                    ids,
                    expires_at_ms,
                    fetched_at,
                    complete,
                },
            );
        }
        self.trim_tiles();
        Ok(())
    }

    /// Before `tile`'s list (`ids`, fetched at `fetched_at`) replaces what is held for its
    /// data tiles: removes the held items an earlier list of theirs named, lying there,
    /// that a list fetched at `fetched_at` may name and this one does not. The backend
    /// moved, deleted or raised them above that tier since; kept, their copies would be
    /// served by id (a `get`, an edge's id requests) until their own TTL ran out.
    fn forget_unlisted(&mut self, tile: TileId, ids: &[&str], fetched_at: Access) {
        // A data tile is its own only descendant.
        let data = tile.descendants(self.config.tile_zoom).unwrap_or_default();
        let mut listed: Option<HashSet<&str>> = None;
        let mut gone: Vec<String> = Vec::new();
        for d in data {
            let Some(e) = self.tiles.peek(&d) else {
                continue;
            };
            for i in 0..e.ids.len() {
                // A slot names an item lying in the list's tile; a key, one that does not,
                // or is not held.
                let Some(Name::Slot(slot)) = e.ids.name(i) else {
                    continue;
                };
                let Some(item) = self.items.item(slot) else {
                    continue;
                };
                let listed = listed.get_or_insert_with(|| ids.iter().copied().collect());
                if fetched_at.can_see(item.access()) && !listed.contains(&*item.id) {
                    gone.push(item.id.to_string());
                }
            }
        }
        if !gone.is_empty() {
            // Out of every list too: another tile's may still name one by its key (it lay
            // there before it was pushed out and came back elsewhere), and would wait for it.
            let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
            self.forget_ids(&gone);
        }
    }

    /// Drops least-recently-used tile entries beyond `max_tiles`, visible and loading
    /// tiles last.
    pub(super) fn trim_tiles(&mut self) {
        self.changed();
        if self.tiles.len() <= self.config.max_tiles {
            return;
        }
        let kept =
            (self.visible.iter()).chain(self.loading.iter().filter(|&t| !self.visible.contains(t)));
        let mut visible_held = kept.filter(|&t| self.tiles.contains(t)).count();
        // Each visible or loading entry is promoted at most once before another one is at
        // the tail; the bound only guards against a broken count.
        let mut budget = 2 * self.tiles.len() + 1;
        while self.tiles.len() > self.config.max_tiles {
            let Some((&t, _)) = self.tiles.peek_lru() else {
                break;
            };
            let is_visible = self.protection(t) != Protection::None;
            if is_visible && visible_held < self.tiles.len() && budget > 0 {
                budget -= 1;
                self.tiles.promote(&t);
            } else {
                self.tiles.pop_lru();
                if is_visible {
                    visible_held = visible_held.saturating_sub(1);
                }
            }
        }
    }

    /// Classifies a held tile entry for `caller`, lowering `until` to the first time the
    /// result could change with no change to the cache.
    fn classify(
        &self,
        tile: TileId,
        e: &TileEntry,
        caller: Access,
        now_ms: u64,
        until: &mut u64,
    ) -> TileFreshness {
        let swr = self.swr();
        let membership_stale = match expiry(e.expires_at_ms, swr, now_ms) {
            Expiry::Gone => return TileFreshness::Unknown,
            f => f == Expiry::Stale,
        };
        *until = (*until).min(next_change(e.expires_at_ms, swr, now_ms));
        // An incomplete list is refetched whole, but its items' changes still bound `until`
        // (a read shows them).
        let mut missing = Vec::new();
        let mut stale = Vec::new();
        // An id the list names by a slot that holds nothing: never, while the cache keeps
        // the lists' invariant (`list.rs`); its id unknown, the tile is fetched whole.
        let mut lost = false;
        for i in 0..e.ids.len() {
            let found = match e.ids.name(i) {
                Some(Name::Slot(slot)) => self.items.item(slot),
                Some(Name::Key(key)) => match self.items.peek(key) {
                    None => {
                        missing.push(key.to_string());
                        continue;
                    }
                    found => found,
                },
                None => None,
            };
            match found {
                None => lost = true,
                // Not shown to this caller, or not here (it lies in another tile), so it
                // cannot leave a hole.
                Some(item) if !caller.can_see(item.access()) || !item.place.lies_in(tile) => {}
                Some(item) => match expiry(item.expires_at_ms(), swr, now_ms) {
                    Expiry::Fresh => *until = (*until).min(item.expires_at_ms()),
                    Expiry::Stale => {
                        *until = (*until).min(item.expires_at_ms().saturating_add(swr));
                        stale.push(item.id.to_string());
                    }
                    Expiry::Gone => missing.push(item.id.to_string()),
                },
            }
        }
        if !e.complete || e.fetched_at < caller || lost {
            // A list fetched at a lower tier may lack items the caller may see: it is
            // fetched again whole, and what it lists is shown meanwhile (after a sign-in the
            // public items stay on the map while the new tier's lists load).
            TileFreshness::Partial(Refresh::Tile)
        } else if !missing.is_empty() {
            if membership_stale || missing.len() * 2 > e.ids.len() {
                TileFreshness::Partial(Refresh::Tile)
            } else {
                TileFreshness::Partial(Refresh::Ids(missing))
            }
        } else if membership_stale {
            TileFreshness::Stale(Refresh::Tile)
        } else if !stale.is_empty() {
            TileFreshness::Stale(Refresh::Ids(stale))
        } else {
            TileFreshness::Fresh
        }
    }

    /// The state of a data-zoom tile for a caller at tier `caller`. A list fetched at a tier
    /// below the caller's is `Partial(Refresh::Tile)` (it may lack items the caller may see;
    /// what it lists is shown while it is fetched again); listed items
    /// above the caller's tier are ignored; a listed id that is not held counts as missing
    /// whatever its tier. Does not touch LRU order or counters. A tile at another zoom is
    /// `Unknown`; one [outside the bounds](Self::outside_bounds) is `Fresh`.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, Refresh, ItemCache, TileFreshness};
    /// use tilewarm::tile::TileId;
    /// let mut cache: ItemCache<()> = ItemCache::new(CacheConfig::default()).unwrap();
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(cache.tile_freshness(t, Access::Public, 0), TileFreshness::Unknown);
    /// cache.insert_tile(t, &["gone", "a", "b"], None, Access::Public, 0).unwrap();
    /// // None of the three items is held: more than half missing, refetch the tile.
    /// assert_eq!(cache.tile_freshness(t, Access::Public, 0), TileFreshness::Partial(Refresh::Tile));
    /// assert_eq!(cache.tile_freshness(t, Access::Agent, 0), TileFreshness::Partial(Refresh::Tile));
    /// ```
    pub fn tile_freshness(&self, tile: TileId, caller: Access, now_ms: u64) -> TileFreshness {
        let mut until = u64::MAX;
        self.tile_freshness_until(tile, caller, now_ms, &mut until)
    }

    /// [`tile_freshness`](Self::tile_freshness), which also lowers `until` to the first
    /// time after `now_ms` the state could change with no change to the cache
    /// ([`generation`](Self::generation)): a fresh tile stays fresh before it.
    pub fn tile_freshness_until(
        &self,
        tile: TileId,
        caller: Access,
        now_ms: u64,
        until: &mut u64,
    ) -> TileFreshness {
        if tile.z() != self.config.tile_zoom {
            return TileFreshness::Unknown;
        }
        let entry = self.tiles.peek(&tile);
        if self.holds_nothing(tile, || entry) {
            return TileFreshness::Fresh;
        }
        match entry {
            Some(e) => self.classify(tile, e, caller, now_ms, until),
            None => TileFreshness::Unknown,
        }
    }

    /// Whether `tile`'s list names any of `ids` (items it lists may have been pushed out
    /// since: the list still names them).
    pub(crate) fn lists_any(&self, tile: TileId, ids: &HashSet<&str>) -> bool {
        let key_of = key_of(&self.items);
        (self.tiles.peek(&tile))
            .is_some_and(|e| e.ids.keys(&key_of).flatten().any(|k| ids.contains(&**k)))
    }

    /// [`outside_bounds`](Self::outside_bounds) for a data-zoom tile and its index entry,
    /// which is looked up only for a tile outside the extent (the batcher asks this of every
    /// data tile of a candidate block).
    fn holds_nothing<'a>(
        &'a self,
        tile: TileId,
        entry: impl FnOnce() -> Option<&'a TileEntry>,
    ) -> bool {
        self.bounds.excludes(tile) && entry().is_none_or(|e| e.ids.is_empty() && e.complete)
    }

    /// Whether the data's extent ([`CacheConfig::bounds`](super::CacheConfig::bounds), or the
    /// one adopted) leaves out any data tile.
    pub fn has_bounds(&self) -> bool {
        self.bounds.excludes_any()
    }

    /// Takes `bounds` as the data's extent, as a backend declares it (a server's `--bounds`,
    /// sent with its answers), when the config declares none (leaves
    /// [`CacheConfig::bounds`](super::CacheConfig::bounds) the whole world): the page's own
    /// declaration wins. `None`: the backend declares none, and every tile may hold items
    /// again. A later call replaces the extent adopted before, wider or narrower. Returns
    /// whether the extent changed; a bad box is refused with nothing changed
    /// ([`CacheError::InvalidBounds`]).
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{parse_bounds, CacheConfig, ItemCache, TileFreshness};
    /// use tilewarm::tile::TileId;
    /// let mut cache: ItemCache<()> = ItemCache::new(CacheConfig::default()).unwrap();
    /// let paris = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// assert_eq!(cache.tile_freshness(paris, Access::Public, 0), TileFreshness::Unknown);
    /// let king_county = parse_bounds("-122.52,47.15,-121.31,47.78").unwrap();
    /// assert_eq!(cache.adopt_bounds(Some(&king_county)), Ok(true));
    /// assert_eq!(cache.tile_freshness(paris, Access::Public, 0), TileFreshness::Fresh);
    /// assert_eq!(cache.adopt_bounds(None), Ok(true));
    /// assert_eq!(cache.tile_freshness(paris, Access::Public, 0), TileFreshness::Unknown);
    /// ```
    pub fn adopt_bounds(&mut self, bounds: Option<&Bbox>) -> Result<bool, CacheError> {
        let bounds = bounds.unwrap_or(&super::WORLD);
        super::bounds::check_extent(bounds)?;
        if self.config.bounds != super::WORLD {
            return Ok(false);
        }
        if !self.bounds.set_extent(bounds, self.config.tile_zoom) {
            return Ok(false);
        }
        // Lists held with items outside the new extent: it was declared too tight there.
        for (&t, e) in self.tiles.iter() {
            if !e.ids.is_empty() {
                self.bounds.listed_with_items(t);
            }
        }
        self.changed();
        Ok(true)
    }

    /// Whether data tile `tile` lies outside the data's extent
    /// ([`CacheConfig::bounds`](super::CacheConfig::bounds), or the one adopted), the backend
    /// never listed items there, and the index holds no incomplete list for it: it holds no
    /// items, known without asking, so it is [`Fresh`](TileFreshness::Fresh) for every tier
    /// and for ever. Does not touch LRU order or counters.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemCache, TileFreshness};
    /// use tilewarm::tile::{Bbox, TileId};
    /// // King County's homes.
    /// let bounds = Bbox::new(-122.52, 47.15, -121.31, 47.78).unwrap();
    /// let cache: ItemCache<()> = ItemCache::new(CacheConfig { bounds, ..CacheConfig::default() }).unwrap();
    /// let paris = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// let seattle = TileId::from_lon_lat(-122.33, 47.61, 14).unwrap();
    /// assert!(cache.outside_bounds(paris) && !cache.outside_bounds(seattle));
    /// assert_eq!(cache.tile_freshness(paris, Access::Public, 0), TileFreshness::Fresh);
    /// assert_eq!(cache.tile_freshness(seattle, Access::Public, 0), TileFreshness::Unknown);
    /// ```
    pub fn outside_bounds(&self, tile: TileId) -> bool {
        tile.z() == self.config.tile_zoom && self.holds_nothing(tile, || self.tiles.peek(&tile))
    }

    /// When the membership of data-zoom tile `tile` stops being fresh, if the tile index
    /// holds it (fresh or not, whatever the tier it was fetched at). Does not touch LRU order
    /// or counters. A server uses it to report the remaining lifetime of a cached list.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemCache};
    /// use tilewarm::tile::TileId;
    /// let mut cache: ItemCache<()> = ItemCache::new(CacheConfig::default()).unwrap();
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(cache.tile_expires_at_ms(t), None);
    /// cache.insert_tile(t, &[], Some(60_000), Access::Agent, 1_000).unwrap();
    /// assert_eq!(cache.tile_expires_at_ms(t), Some(61_000));
    /// ```
    pub fn tile_expires_at_ms(&self, tile: TileId) -> Option<u64> {
        self.tiles.peek(&tile).map(|e| e.expires_at_ms)
    }

    /// The tier a data tile's list was fetched at ([`insert_tile`](Self::insert_tile)'s
    /// `fetched_at`), if the tile index holds one (fresh or not): the list is the whole tile
    /// for callers at that tier or below. Does not touch LRU order or counters.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemCache};
    /// use tilewarm::tile::TileId;
    /// let mut cache: ItemCache<()> = ItemCache::new(CacheConfig::default()).unwrap();
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(cache.tile_fetched_at(t), None);
    /// cache.insert_tile(t, &[], None, Access::Registered, 0).unwrap();
    /// assert_eq!(cache.tile_fetched_at(t), Some(Access::Registered));
    /// ```
    pub fn tile_fetched_at(&self, tile: TileId) -> Option<Access> {
        self.tiles.peek(&tile).map(|e| e.fetched_at)
    }

    /// The data tiles the tile index holds (fresh or not), in no particular order. Does not
    /// touch LRU order or counters. The client reads the cached part of a view too wide to
    /// fetch with it.
    pub fn cached_tiles(&self) -> impl Iterator<Item = TileId> + '_ {
        self.tiles.iter().map(|(t, _)| *t)
    }

    /// Read a visible tile: calls `sink(item, class, stale)` (the item, its class's name, and
    /// whether it is stale) for each listed item that is held and
    /// showable (fresh, or stale within the window) and that `caller` may see, in list
    /// order. Counts a hit or stale hit for each of those and a miss for each listed id that
    /// is absent or expired beyond the window (such an item is removed and counted in
    /// `expirations`); refreshes the recency of the tile and the items shown. Returns the
    /// tile's state as [`tile_freshness`](Self::tile_freshness) would have before the call; an
    /// `Unknown` tile shows and counts nothing.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache, TileFreshness};
    /// use tilewarm::tile::TileId;
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Agent, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("agent-only", meta, 'x', 0, Priority::Visible).unwrap();
    /// let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// cache.insert_tile(t, &["agent-only"], None, Access::Agent, 0).unwrap();
    /// let mut n = 0;
    /// assert_eq!(cache.read_tile(t, Access::Agent, 0, |_, _, _| n += 1), TileFreshness::Fresh);
    /// assert_eq!(cache.read_tile(t, Access::Public, 0, |_, _, _| n += 1), TileFreshness::Fresh);
    /// assert_eq!(n, 1); // the public caller saw nothing
    /// ```
    pub fn read_tile(
        &mut self,
        tile: TileId,
        caller: Access,
        now_ms: u64,
        sink: impl FnMut(&CacheItem<P>, &str, bool),
    ) -> TileFreshness {
        let mut until = u64::MAX;
        self.read_tile_until(tile, caller, now_ms, None, &mut until, sink)
    }

    /// [`read_tile`](Self::read_tile), which also lowers `until` to the first time after
    /// `now_ms` at which the same read could return something else with no change to the
    /// cache ([`generation`](Self::generation)): the tile list or a shown item turning stale
    /// or expiring beyond the window. `fresh_until`: the caller found the tile fresh with
    /// [`tile_freshness_until`](Self::tile_freshness_until) at this generation, and that
    /// time, so it is not classified again.
    pub fn read_tile_until(
        &mut self,
        tile: TileId,
        caller: Access,
        now_ms: u64,
        fresh_until: Option<u64>,
        until: &mut u64,
        mut sink: impl FnMut(&CacheItem<P>, &str, bool),
    ) -> TileFreshness {
        // The state covers the list and every item the caller may see: their next change
        // bounds the read's. (Unknown stays unknown until the cache changes.)
        // A tile known fresh is not classified: the read itself bounds `until` exactly, by
        // the list's expiry and each shown item's (`t`, the planner's bound, may be earlier:
        // the first change of any tile of its round).
        let known = matches!(fresh_until, Some(t) if now_ms < t);
        let state = if known {
            TileFreshness::Fresh
        } else {
            self.tile_freshness_until(tile, caller, now_ms, until)
        };
        if matches!(state, TileFreshness::Unknown) {
            return state;
        }
        let swr = self.swr();
        // One lookup per listed id (which also refreshes its recency); the ones expired
        // beyond the window are removed after the pass.
        let (tiles, items, stats) = (&mut self.tiles, &mut self.items, &mut self.stats);
        let classes = &self.classes;
        let Some(e) = tiles.get_mut(&tile) else {
            return state;
        };
        if known {
            *until = (*until).min(next_change(e.expires_at_ms, swr, now_ms));
        }
        let mut gone = Vec::new();
        // Ids named by their keys whose items lie here are named by their slots from now on.
        let mut held_again = false;
        for i in 0..e.ids.len() {
            let Some(item) = use_listed(items, &mut e.ids, i, tile, &mut held_again) else {
                stats.misses += 1;
                continue;
            };
            // Items the caller may not see, or that lie in another tile (listed here by
            // mistake, or moved since), are not shown here, so they count for nothing.
            if !caller.can_see(item.access()) || !item.place.lies_in(tile) {
                continue;
            }
            match expiry(item.expires_at_ms(), swr, now_ms) {
                Expiry::Gone => gone.push(item.id.clone()),
                f => {
                    if known {
                        *until = (*until).min(next_change(item.expires_at_ms(), swr, now_ms));
                    }
                    let stale = f == Expiry::Stale;
                    if stale {
                        stats.stale_hits += 1;
                    } else {
                        stats.hits += 1;
                    }
                    sink(item, classes.name(item.place.class()), stale);
                }
            }
        }
        if held_again {
            e.ids.compact();
        }
        for id in gone {
            self.remove_item(&id);
            self.stats.expirations += 1;
            self.stats.misses += 1;
        }
        state
    }

    /// Moves a listed id from its old tile's list to its new tile's list.
    pub(super) fn move_listing(&mut self, id: &ItemKey, from: TileId, to: TileId, access: Access) {
        self.changed();
        let mut was_listed = false;
        if let Some(e) = self.tiles.peek_mut(&from) {
            let before = e.ids.len();
            e.ids.retain(&key_of(&self.items), &mut |x| x != id);
            was_listed = e.ids.len() != before;
        }
        if !was_listed {
            return;
        }
        if let Some(e) = self.tiles.peek_mut(&to) {
            if e.complete && e.fetched_at.can_see(access) && !e.ids.names(&key_of(&self.items), id)
            {
                e.ids.push(id.clone());
            }
        }
        // The item now lies in `to`, outside the extent or not.
        self.bounds.listed_with_items(to);
    }

    /// Checks every tile list against what the cache promises of it (`list.rs`).
    #[cfg(test)]
    pub(crate) fn check_lists(&self) -> Result<(), String> {
        for (&t, e) in self.tiles.iter() {
            e.ids.check(t, &self.items)?;
        }
        Ok(())
    }
}

/// The id of the item in a slot of `items`, for the list calls that read ids.
fn key_of<'a, P>(items: &'a ItemStore<P>) -> impl Fn(u32) -> Option<&'a ItemKey> + 'a {
    move |slot| items.item(slot).map(|item| &item.id)
}

/// The item the `i`th id of `tile`'s list names, made the most recently used. An id named
/// by its key whose item lies in `tile` is named by its slot from now on (`held_again` set:
/// the list's unused keys are then dropped). Not inlined: one copy per payload type,
/// whatever the read's sink.
#[inline(never)]
fn use_listed<'a, P>(
    items: &'a mut ItemStore<P>,
    list: &mut TileList,
    i: usize,
    tile: TileId,
    held_again: &mut bool,
) -> Option<&'a CacheItem<P>> {
    match list.name(i)? {
        Name::Slot(slot) => items.promote(slot),
        Name::Key(key) => {
            let (slot, item) = items.get_found(key)?;
            if item.place.lies_in(tile) {
                list.hold(i, slot);
                *held_again = true;
            }
            Some(item)
        }
    }
}
