//! Taking items and tile lists out of the cache on purpose: by id, tile, class or tier,
//! and once they expired beyond the stale-while-revalidate window.

use super::classes::Classes;
use super::key::ItemKey;

use super::{expiry, CacheItem, Expiry, HashSet, ItemCache, Load, TileEntry};
use crate::access::Access;
use crate::tile::TileId;

/// What to invalidate.
#[derive(Clone, Copy, Debug)]
pub enum Invalidate<'a> {
    /// These items; tiles listing them become `Partial`.
    Ids(&'a [&'a str]),
    /// These tiles' lists and the items they list. A tile finer than the data zoom stands for
    /// its data-zoom ancestor; a coarser one for every held data tile inside it.
    Tiles(&'a [TileId]),
    /// Every item of this class.
    Class(&'a str),
    /// Everything (the visible set is kept).
    All,
}

impl<P> ItemCache<P> {
    /// Drop every item with access above `tier`, every tile list fetched above it, and the
    /// dropped ids from the remaining lists (used when the user's tier is lowered, e.g.
    /// logout): afterwards nothing above `tier` is in memory. Returns the items dropped.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Agent, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert_eq!(cache.drop_above(Access::Public), 1);
    /// assert!(cache.is_empty());
    /// ```
    pub fn drop_above(&mut self, tier: Access) -> usize {
        self.changed();
        let doomed = self.remove_items_where(&|item| item.access() > tier);
        self.drop_lists_where(&|_, e| e.fetched_at > tier);
        if !doomed.is_empty() {
            self.strip_from_lists(&doomed.iter().map(|id| &**id).collect());
        }
        doomed.len()
    }

    /// The backend says these ids do not exist (or are not visible to the caller): remove
    /// the items and take the ids out of every tile list, so no tile waits for them.
    /// Returns the items removed.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache, TileFreshness};
    /// use tilewarm::tile::TileId;
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// cache.insert_tile(t, &["a", "gone"], None, Access::Public, 0).unwrap();
    /// assert!(!cache.tile_freshness(t, Access::Public, 0).is_showable());
    /// assert_eq!(cache.forget_ids(&["gone"]), 0);
    /// assert_eq!(cache.tile_freshness(t, Access::Public, 0), TileFreshness::Fresh);
    /// ```
    pub fn forget_ids(&mut self, ids: &[&str]) -> usize {
        let removed = self.remove_ids(ids);
        self.strip_from_lists(&ids.iter().copied().collect());
        removed
    }

    /// Takes `ids`, none of them held (their items removed first), out of every list.
    pub(super) fn strip_from_lists(&mut self, ids: &HashSet<&str>) {
        self.changed();
        if ids.is_empty() {
            return;
        }
        for (_, e) in self.tiles.iter_mut() {
            // A list names an id whose item is not held by its key: one with no keys names
            // none of them (most lists, whose items are all held, are passed over so).
            if !e.ids.has_keys() {
                continue;
            }
            let key_of = |s| self.items.item(s).map(|i| &i.id);
            e.ids.retain(&key_of, &mut |k| !ids.contains(&**k));
        }
    }

    /// Remove items or tile lists; returns the items removed (not counted as evictions or
    /// expirations). See [`Invalidate`] for what each variant covers.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, Invalidate, ItemMeta, Priority, Refresh, ItemCache, TileFreshness};
    /// use tilewarm::tile::TileId;
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// for id in ["a", "b", "c"] {
    ///     cache.insert(id, meta.clone(), (), 0, Priority::Visible).unwrap();
    /// }
    /// let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// cache.insert_tile(t, &["a", "b", "c"], None, Access::Public, 0).unwrap();
    /// assert_eq!(cache.invalidate(Invalidate::Ids(&["b"])), 1);
    /// assert_eq!(cache.tile_freshness(t, Access::Public, 0), TileFreshness::Partial(Refresh::Ids(vec!["b".into()])));
    /// assert_eq!(cache.invalidate(Invalidate::Tiles(&[t])), 2);
    /// assert_eq!(cache.tile_freshness(t, Access::Public, 0), TileFreshness::Unknown);
    /// ```
    pub fn invalidate(&mut self, what: Invalidate<'_>) -> usize {
        self.changed();
        match what {
            Invalidate::Ids(ids) => self.remove_ids(ids),
            Invalidate::Tiles(tiles) => {
                let dz = self.config.tile_zoom;
                let mut targets = Vec::new();
                for &t in tiles {
                    if t.z() >= dz {
                        targets.extend(t.ancestor(dz).ok());
                    } else {
                        targets.extend(self.tiles_where(&|held, _| t.contains(held)));
                    }
                }
                let mut removed = 0;
                for t in targets {
                    if let Some(e) = self.tiles.pop(&t) {
                        let keys: Vec<ItemKey> = {
                            let key_of = |s| self.items.item(s).map(|i| &i.id);
                            e.ids.keys(&key_of).flatten().cloned().collect()
                        };
                        for key in keys {
                            if self.remove_item(&key).is_some() {
                                removed += 1;
                            }
                        }
                    }
                }
                removed
            }
            Invalidate::Class(class) => match self.classes.find(class) {
                // Held items of `class` have its index, and no others do (`classes.rs`).
                Some(index) => self
                    .remove_items_where(&|item| item.place.class() == index)
                    .len(),
                None => 0,
            },
            Invalidate::All => {
                let n = self.items.len();
                self.items.clear();
                self.classes = Classes::default();
                self.tiles.clear();
                self.load.clear();
                self.bytes = 0;
                self.protected = Load::default();
                self.loading_protected = Load::default();
                n
            }
        }
    }

    /// Remove the items and tile lists expired beyond the stale-while-revalidate window,
    /// counting the items in `expirations`. Returns the items removed.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: Some(100), size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert_eq!(cache.purge_expired(99), 0);
    /// assert_eq!(cache.purge_expired(100), 1);
    /// assert_eq!(cache.stats().expirations, 1);
    /// ```
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        self.changed();
        let swr = self.swr();
        let gone = |expires_at_ms| expiry(expires_at_ms, swr, now_ms) == Expiry::Gone;
        let removed = self
            .remove_items_where(&|item| gone(item.expires_at_ms()))
            .len();
        self.stats.expirations += removed as u64;
        self.drop_lists_where(&|_, e| gone(e.expires_at_ms));
        removed
    }

    /// Removes every item `doomed` picks; returns their ids. (`&dyn`: the bulk removals
    /// share one copy of this in the wasm.)
    pub(super) fn remove_items_where(
        &mut self,
        doomed: &dyn Fn(&CacheItem<P>) -> bool,
    ) -> Vec<ItemKey> {
        let mut ids = Vec::new();
        for (id, item) in self.items.iter() {
            if doomed(item) {
                ids.push(id.clone());
            }
        }
        for id in &ids {
            self.remove_item(id);
        }
        ids
    }

    /// The held data tiles whose entries `pick` picks.
    pub(super) fn tiles_where(&self, pick: &dyn Fn(TileId, &TileEntry) -> bool) -> Vec<TileId> {
        let mut tiles = Vec::new();
        for (&t, e) in self.tiles.iter() {
            if pick(t, e) {
                tiles.push(t);
            }
        }
        tiles
    }

    /// Drops the tile lists `pick` picks (their items stay).
    pub(super) fn drop_lists_where(&mut self, pick: &dyn Fn(TileId, &TileEntry) -> bool) {
        self.changed();
        for t in self.tiles_where(pick) {
            self.tiles.pop(&t);
        }
    }
}
