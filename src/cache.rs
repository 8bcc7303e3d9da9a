//! The tile-aware item cache: an LRU of items bounded by count and bytes, with per-class TTLs,
//! stale-while-revalidate, access tiers, and a tile index that remembers which items the
//! backend listed for each data tile.
//!
//! Time comes in as `now_ms`; nothing here reads a clock, sleeps or does I/O.
//!
//! ```
//! use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache, TileId, TileState};
//!
//! let mut cache: TileCache<&str> = TileCache::new(CacheConfig::default()).unwrap();
//! let meta = ItemMeta {
//!     lon: -122.3321,
//!     lat: 47.6062,
//!     class: "active".into(),
//!     access: Access::Public,
//!     ttl_ms: None,
//!     size_bytes: 100,
//! };
//! cache.insert("home-1", meta, "payload", 0, Priority::Visible).unwrap();
//! let tile = TileId::from_lon_lat(-122.3321, 47.6062, 14).unwrap();
//! cache.insert_tile(tile, &["home-1"], None, Access::Public, 0).unwrap();
//!
//! assert_eq!(cache.tile_state(tile, Access::Public, 1_000), TileState::Fresh);
//! let mut shown = Vec::new();
//! cache.read_tile(tile, Access::Public, 1_000, |item, _stale| shown.push(*item.payload()));
//! assert_eq!(shown, ["payload"]);
//! ```

use crate::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use lru::LruCache;

use crate::access::Access;
use crate::tile::{TileId, MAX_ZOOM};

/// Longest item id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// How many zoom levels coarser than the data zoom a membership tile may be. A tile that
/// much coarser splits onto `4^8 = 65_536` data tiles.
pub const MAX_SPLIT_LEVELS: u8 = 8;

/// What went wrong in a cache call. Every message names the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A [`CacheConfig`] field is out of range.
    #[error("cache config {field} must be {allowed}, got {value}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
    /// A membership tile is finer than the cache's data zoom.
    #[error(
        "tile {tile} is finer than the cache's data zoom {tile_zoom}: \
         membership tiles must have zoom {}..={tile_zoom}",
        .tile_zoom.saturating_sub(MAX_SPLIT_LEVELS)
    )]
    TooFine { tile: TileId, tile_zoom: u8 },
    /// A membership tile is more than [`MAX_SPLIT_LEVELS`] levels coarser than the data zoom.
    #[error(
        "tile {tile} is more than {MAX_SPLIT_LEVELS} zoom levels coarser than the cache's \
         data zoom {tile_zoom}: membership tiles must have zoom {}..={tile_zoom}",
        .tile_zoom.saturating_sub(MAX_SPLIT_LEVELS)
    )]
    TooCoarse { tile: TileId, tile_zoom: u8 },
    /// An item id or item field is invalid.
    #[error("invalid item {}: {reason}", crate::Quoted(id))]
    InvalidItem { id: String, reason: String },
    /// A single item is bigger than the whole cache.
    #[error(
        "item {} is {size_bytes} bytes, more than the cache's max_bytes of {max_bytes}",
        crate::Quoted(id)
    )]
    ItemTooLarge {
        id: String,
        size_bytes: usize,
        max_bytes: usize,
    },
}

/// Cache limits and lifetimes. Every field has a documented default; [`validate`]
/// (called by [`TileCache::new`]) checks the ranges.
///
/// [`validate`]: CacheConfig::validate
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Zoom of the data tiles the tile index is kept at. Default 14; at most 24.
    pub tile_zoom: u8,
    /// Most items held. Default 50 000; at least 1.
    pub max_items: usize,
    /// Most bytes held, summed over the items' `size_bytes`. Default 32 MiB; at least 1.
    pub max_bytes: usize,
    /// Most tile-index entries held (least recently used go first). Default 65 536; at least 1.
    pub max_tiles: usize,
    /// Item TTL when neither the response nor the class gives one. Default 300 000 (5 min); at least 1.
    pub default_ttl_ms: u64,
    /// TTL per item class. Default `active` 300 000 (5 min), `off_market` 14 400 000 (4 h);
    /// every value at least 1.
    pub class_ttl_ms: HashMap<String, u64>,
    /// Membership TTL of a tile list when the response gives none; `None` (the default)
    /// means `default_ttl_ms`. At least 1 when set.
    pub tile_ttl_ms: Option<u64>,
    /// How long after expiry an item or tile list may still be shown, flagged stale, while
    /// it is refetched. Default 0 (off).
    pub stale_while_revalidate_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let mut class_ttl_ms = HashMap::new();
        class_ttl_ms.insert("active".to_string(), 300_000);
        class_ttl_ms.insert("off_market".to_string(), 14_400_000);
        CacheConfig {
            tile_zoom: 14,
            max_items: 50_000,
            max_bytes: 32 * 1024 * 1024,
            max_tiles: 65_536,
            default_ttl_ms: 300_000,
            class_ttl_ms,
            tile_ttl_ms: None,
            stale_while_revalidate_ms: 0,
        }
    }
}

impl CacheConfig {
    /// Checks every field; the error names the field, its value and the allowed range.
    ///
    /// ```
    /// use tilewarm::CacheConfig;
    /// let config = CacheConfig { max_items: 0, ..CacheConfig::default() };
    /// assert_eq!(
    ///     config.validate().unwrap_err().to_string(),
    ///     "cache config max_items must be at least 1, got 0"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), CacheError> {
        fn bad(field: &'static str, value: impl fmt::Display, allowed: &'static str) -> CacheError {
            CacheError::InvalidConfig {
                field,
                value: value.to_string(),
                allowed,
            }
        }
        if self.tile_zoom > MAX_ZOOM {
            return Err(bad("tile_zoom", self.tile_zoom, "an integer in 0..=24"));
        }
        if self.max_items == 0 {
            return Err(bad("max_items", 0, "at least 1"));
        }
        if self.max_bytes == 0 {
            return Err(bad("max_bytes", 0, "at least 1"));
        }
        if self.max_tiles == 0 {
            return Err(bad("max_tiles", 0, "at least 1"));
        }
        if self.default_ttl_ms == 0 {
            return Err(bad("default_ttl_ms", 0, "at least 1"));
        }
        // The smallest such class, so the error is the same on every run.
        let mut zero: Option<&str> = None;
        for (class, &ttl) in &self.class_ttl_ms {
            if ttl == 0 && zero.is_none_or(|z| class.as_str() < z) {
                zero = Some(class);
            }
        }
        if let Some(class) = zero {
            let class: String = class.chars().take(64).collect();
            return Err(bad(
                "class_ttl_ms",
                format!("{}: 0", crate::Quoted(&class)),
                "a map of class to a TTL of at least 1",
            ));
        }
        if self.tile_ttl_ms == Some(0) {
            return Err(bad("tile_ttl_ms", "Some(0)", "None or at least 1"));
        }
        Ok(())
    }

    /// The TTL of an item: the server's, else its class's, else `default_ttl_ms`.
    ///
    /// ```
    /// use tilewarm::CacheConfig;
    /// let c = CacheConfig::default();
    /// assert_eq!(c.ttl_for("off_market", None), 14_400_000);
    /// assert_eq!(c.ttl_for("off_market", Some(60_000)), 60_000);
    /// assert_eq!(c.ttl_for("sold", None), 300_000);
    /// ```
    pub fn ttl_for(&self, class: &str, server_ttl_ms: Option<u64>) -> u64 {
        server_ttl_ms
            .or_else(|| self.class_ttl_ms.get(class).copied())
            .unwrap_or(self.default_ttl_ms)
    }

    /// Membership TTL of a tile list when the response gives `server_ttl_ms`.
    fn tile_ttl(&self, server_ttl_ms: Option<u64>) -> u64 {
        server_ttl_ms
            .or(self.tile_ttl_ms)
            .unwrap_or(self.default_ttl_ms)
    }
}

/// What the backend says about an item, besides its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemMeta {
    /// Longitude, finite, in −180..=180.
    pub lon: f64,
    /// Latitude, finite, in −90..=90.
    pub lat: f64,
    /// Item class, keying [`CacheConfig::class_ttl_ms`].
    pub class: String,
    /// The lowest tier allowed to see the item.
    pub access: Access,
    /// TTL the server gave, overriding the class TTL.
    pub ttl_ms: Option<u64>,
    /// Size charged against [`CacheConfig::max_bytes`]; at most `max_bytes`.
    pub size_bytes: usize,
}

/// One cached item.
#[derive(Debug, Clone)]
pub struct CacheItem<P> {
    id: Arc<str>,
    lon: f64,
    lat: f64,
    class: String,
    access: Access,
    tile: TileId,
    expires_at_ms: u64,
    size_bytes: usize,
    payload: P,
}

impl<P> CacheItem<P> {
    /// The item's id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Longitude.
    pub fn lon(&self) -> f64 {
        self.lon
    }
    /// Latitude.
    pub fn lat(&self) -> f64 {
        self.lat
    }
    /// Class.
    pub fn class(&self) -> &str {
        &self.class
    }
    /// The lowest tier allowed to see it.
    pub fn access(&self) -> Access {
        self.access
    }
    /// The data-zoom tile its position falls in.
    pub fn tile(&self) -> TileId {
        self.tile
    }
    /// First millisecond at which it is no longer fresh.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
    /// Size charged against `max_bytes`.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }
    /// The payload.
    pub fn payload(&self) -> &P {
        &self.payload
    }
}

/// An item found by [`TileCache::get`] or [`TileCache::peek`]; `stale` when it has expired
/// but is within the stale-while-revalidate window (show it, refetch it).
#[derive(Debug)]
pub struct Lookup<'a, P> {
    pub item: &'a CacheItem<P>,
    pub stale: bool,
}

impl<P> Clone for Lookup<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Lookup<'_, P> {}

/// Why an item is inserted: for the viewport, or ahead of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Needed now: may evict protected (visible) items if nothing else is left.
    Visible,
    /// Wanted later: never evicts protected items; refused instead.
    Prefetch,
}

/// What an insert did to the rest of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Items evicted to make room.
    pub evicted: usize,
    /// A [`Priority::Prefetch`] insert was refused because only protected items could have
    /// made room. Nothing changed.
    pub rejected: bool,
}

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
pub enum TileState {
    /// Membership fresh; every listed item the caller may see present and fresh.
    Fresh,
    /// Showable, but the membership and/or some items are within the stale-while-revalidate
    /// window: `Tile` if the membership is stale, else the stale ids.
    Stale(Refresh),
    /// Not showable: the membership is known but some listed items are missing (evicted,
    /// expired beyond the window, never arrived). `Ids(missing)`, or `Tile` when the
    /// membership is stale, when more than half of the list is missing, or when the list
    /// came from a coarser tile whose split was uncertain.
    Partial(Refresh),
    /// Never fetched, expired beyond the window, dropped from the tile index, fetched at a
    /// tier below the caller's, or not a data-zoom tile.
    Unknown,
}

impl TileState {
    /// Whether the tile can be shown now (`Fresh` or `Stale`).
    pub fn is_showable(&self) -> bool {
        matches!(self, TileState::Fresh | TileState::Stale(_))
    }
}

/// Counters since the cache was made, and current sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a fresh item.
    pub hits: u64,
    /// Lookups that found nothing showable (absent, expired beyond the window, above the
    /// caller's tier). Each lookup counts in exactly one of `hits`, `stale_hits`, `misses`.
    pub misses: u64,
    /// Lookups that found a stale item within the window.
    pub stale_hits: u64,
    /// Items evicted for capacity.
    pub evictions: u64,
    /// Items removed because they expired beyond the window.
    pub expirations: u64,
    /// Prefetch inserts refused.
    pub rejected: u64,
    /// Items held.
    pub entries: usize,
    /// Bytes held.
    pub bytes: usize,
    /// Tile-index entries held.
    pub tiles: usize,
}

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

/// Per data tile: the backend's list of ids, when it stops being fresh, and the tier of the
/// request that produced it.
#[derive(Debug, Clone)]
struct TileEntry {
    ids: Vec<Arc<str>>,
    expires_at_ms: u64,
    fetched_at: Access,
    /// False when the list came from a coarser tile one of whose listed items had no known
    /// position: this tile may be missing ids.
    complete: bool,
}

/// Items and bytes positioned in some set of tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Load {
    items: usize,
    bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Freshness {
    Fresh,
    Stale,
    Gone,
}

/// Fresh for `now < expires`, stale for `expires <= now < expires + swr`, gone after.
fn freshness(expires_at_ms: u64, swr_ms: u64, now_ms: u64) -> Freshness {
    if now_ms < expires_at_ms {
        Freshness::Fresh
    } else if now_ms < expires_at_ms.saturating_add(swr_ms) {
        Freshness::Stale
    } else {
        Freshness::Gone
    }
}

fn short(id: &str) -> String {
    id.chars().take(64).collect()
}

fn check_id(id: &str) -> Result<(), CacheError> {
    if id.is_empty() {
        return Err(CacheError::InvalidItem {
            id: String::new(),
            reason: "the id must not be empty".into(),
        });
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CacheError::InvalidItem {
            id: short(id),
            reason: format!(
                "the id is {} bytes long, at most {MAX_ID_BYTES} are allowed",
                id.len()
            ),
        });
    }
    Ok(())
}

/// A tile-aware LRU cache of items with payloads `P`.
///
/// # Capacity and eviction
/// Items are bounded by count (`max_items`) and by the sum of their `size_bytes`
/// (`max_bytes`); neither is exceeded after any call. Eviction is least-recently-used:
/// [`get`](Self::get) and [`read_tile`](Self::read_tile) refresh recency,
/// [`peek`](Self::peek) and [`tile_state`](Self::tile_state) do not.
///
/// # Protected items
/// An item whose data tile is in the [`set_visible`](Self::set_visible) set is protected.
/// All items live in one LRU list; the cache also keeps, per data tile, how many items and
/// bytes are positioned there, so the protected totals are known in O(1) per change and
/// O(visible tiles) per `set_visible`. To evict, it looks at the LRU tail: an unprotected
/// item there is evicted; a protected one is promoted to most-recent and skipped. Each
/// protected item is passed at most once before the next unprotected item is found, and
/// after promotion it sits at the head, so eviction is amortised O(1) with no rescans. The
/// cost is that protected items are treated as just used — which they are: they are on
/// screen. Because the protected totals are known, an insert that could only fit by
/// evicting protected items is detected before anything is touched: a
/// [`Priority::Prefetch`] insert is then refused with nothing changed, and a
/// [`Priority::Visible`] insert evicts the least-recently-used items, protected ones
/// included, since capacity is a hard limit.
///
/// The tile index (bounded by `max_tiles`) works the same way: entries of visible tiles
/// are the last to go.
pub struct TileCache<P> {
    config: CacheConfig,
    items: LruCache<Arc<str>, CacheItem<P>>,
    bytes: usize,
    tiles: LruCache<TileId, TileEntry>,
    visible: HashSet<TileId>,
    /// Items and bytes positioned in each data tile that has any.
    load: HashMap<TileId, Load>,
    /// Items and bytes positioned in visible tiles.
    protected: Load,
    stats: CacheStats,
}

impl<P> fmt::Debug for TileCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TileCache")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .field("visible_tiles", &self.visible.len())
            .finish_non_exhaustive()
    }
}

impl<P> TileCache<P> {
    /// An empty cache; the config is checked with [`CacheConfig::validate`].
    ///
    /// ```
    /// use tilewarm::{CacheConfig, TileCache};
    /// let cache: TileCache<()> = TileCache::new(CacheConfig::default()).unwrap();
    /// assert!(cache.is_empty());
    /// let bad = CacheConfig { tile_zoom: 25, ..CacheConfig::default() };
    /// assert!(TileCache::<()>::new(bad).is_err());
    /// ```
    pub fn new(config: CacheConfig) -> Result<Self, CacheError> {
        config.validate()?;
        Ok(TileCache {
            config,
            items: LruCache::unbounded(),
            bytes: 0,
            tiles: LruCache::unbounded(),
            visible: HashSet::new(),
            load: HashMap::new(),
            protected: Load::default(),
            stats: CacheStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn swr(&self) -> u64 {
        self.config.stale_while_revalidate_ms
    }

    /// Whether one more item of `size` bytes would fit on top of `load`.
    fn fits(&self, load: Load, size: usize) -> bool {
        load.items < self.config.max_items
            && size <= self.config.max_bytes.saturating_sub(load.bytes)
    }

    fn held(&self) -> Load {
        Load {
            items: self.items.len(),
            bytes: self.bytes,
        }
    }

    fn account_add(&mut self, tile: TileId, size: usize) {
        let l = self.load.entry(tile).or_default();
        l.items += 1;
        l.bytes += size;
        self.bytes += size;
        if self.visible.contains(&tile) {
            self.protected.items += 1;
            self.protected.bytes += size;
        }
    }

    fn account_sub(&mut self, tile: TileId, size: usize) {
        if let Some(l) = self.load.get_mut(&tile) {
            l.items = l.items.saturating_sub(1);
            l.bytes = l.bytes.saturating_sub(size);
            if l.items == 0 {
                self.load.remove(&tile);
            }
        }
        self.bytes = self.bytes.saturating_sub(size);
        if self.visible.contains(&tile) {
            self.protected.items = self.protected.items.saturating_sub(1);
            self.protected.bytes = self.protected.bytes.saturating_sub(size);
        }
    }

    /// Removes an item and its accounting; the tile lists naming it then report it missing.
    fn remove_item(&mut self, id: &str) -> Option<CacheItem<P>> {
        let item = self.items.pop(id)?;
        self.account_sub(item.tile, item.size_bytes);
        Some(item)
    }

    /// Removes the given ids; returns how many were held.
    fn remove_ids(&mut self, ids: &[&str]) -> usize {
        let mut removed = 0;
        for id in ids {
            if self.remove_item(id).is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// Removes every item `doomed` picks; returns their ids. (`&dyn`: the bulk removals
    /// share one copy of this in the wasm.)
    fn remove_items_where(&mut self, doomed: &dyn Fn(&CacheItem<P>) -> bool) -> Vec<Arc<str>> {
        let mut ids = Vec::new();
        for (id, item) in self.items.iter() {
            if doomed(item) {
                ids.push(Arc::clone(id));
            }
        }
        for id in &ids {
            self.remove_item(id);
        }
        ids
    }

    /// The held data tiles whose entries `pick` picks.
    fn tiles_where(&self, pick: &dyn Fn(TileId, &TileEntry) -> bool) -> Vec<TileId> {
        let mut tiles = Vec::new();
        for (&t, e) in self.tiles.iter() {
            if pick(t, e) {
                tiles.push(t);
            }
        }
        tiles
    }

    /// Drops the tile lists `pick` picks (their items stay).
    fn drop_lists_where(&mut self, pick: &dyn Fn(TileId, &TileEntry) -> bool) {
        for t in self.tiles_where(pick) {
            self.tiles.pop(&t);
        }
    }

    /// Evicts one item: the least-recently-used unprotected one, or — only when
    /// `allow_protected` and nothing unprotected is left — the least-recently-used one.
    /// See the type docs for why this does not rescan.
    fn evict_one(&mut self, allow_protected: bool) -> bool {
        let unprotected = self.items.len().saturating_sub(self.protected.items);
        if unprotected == 0 {
            if !allow_protected {
                return false;
            }
            let Some((_, item)) = self.items.pop_lru() else {
                return false;
            };
            self.account_sub(item.tile, item.size_bytes);
            self.stats.evictions += 1;
            return true;
        }
        // At most `protected.items` promotions happen before an unprotected item is at
        // the tail; the bound only guards against a broken count.
        for _ in 0..=self.items.len() {
            let (key, protected) = match self.items.peek_lru() {
                Some((k, item)) => (Arc::clone(k), self.visible.contains(&item.tile)),
                None => return false,
            };
            if protected {
                self.items.promote(&*key);
            } else {
                self.remove_item(&key);
                self.stats.evictions += 1;
                return true;
            }
        }
        false
    }

    /// Insert or replace an item. It expires at `now_ms + config.ttl_for(class, meta.ttl_ms)`.
    ///
    /// Errors (nothing changed): an empty id or one longer than [`MAX_ID_BYTES`], a
    /// longitude or latitude that is not finite or out of range, `size_bytes > max_bytes`.
    ///
    /// Makes room by evicting least-recently-used items, unprotected ones first (see the
    /// type docs). A [`Priority::Prefetch`] insert that could only fit by evicting protected
    /// items is refused: `rejected: true`, counted in [`CacheStats::rejected`], nothing
    /// changed (a replaced item stays as it was).
    ///
    /// Replacing an item whose position moved to another data tile moves its id from the old
    /// tile's list to the new tile's (if that list is held, complete, and fetched at a tier
    /// that may see the item).
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache};
    /// let config = CacheConfig { max_items: 1, ..CacheConfig::default() };
    /// let mut cache = TileCache::new(config).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta.clone(), 1, 0, Priority::Visible).unwrap();
    /// let out = cache.insert("b", meta, 2, 0, Priority::Visible).unwrap();
    /// assert_eq!(out.evicted, 1);
    /// assert!(!cache.contains("a") && cache.contains("b"));
    /// ```
    pub fn insert(
        &mut self,
        id: &str,
        meta: ItemMeta,
        payload: P,
        now_ms: u64,
        priority: Priority,
    ) -> Result<InsertOutcome, CacheError> {
        check_id(id)?;
        let ItemMeta {
            lon,
            lat,
            class,
            access,
            ttl_ms,
            size_bytes,
        } = meta;
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(CacheError::InvalidItem {
                id: short(id),
                reason: format!(
                    "longitude must be a finite number in -180..=180, got {}",
                    crate::Num(lon)
                ),
            });
        }
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(CacheError::InvalidItem {
                id: short(id),
                reason: format!(
                    "latitude must be a finite number in -90..=90, got {}",
                    crate::Num(lat)
                ),
            });
        }
        if size_bytes > self.config.max_bytes {
            return Err(CacheError::ItemTooLarge {
                id: short(id),
                size_bytes,
                max_bytes: self.config.max_bytes,
            });
        }
        let tile = TileId::from_lon_lat(lon, lat, self.config.tile_zoom).map_err(|e| {
            CacheError::InvalidItem {
                id: short(id),
                reason: e.to_string(),
            }
        })?;
        let expires_at_ms = now_ms.saturating_add(self.config.ttl_for(&class, ttl_ms));

        // What is held once the old version (if any) is gone, in all and in protected items.
        let mut after = self.held();
        let mut protected_after = self.protected;
        if let Some(old) = self.items.peek(id) {
            after.items -= 1;
            after.bytes = after.bytes.saturating_sub(old.size_bytes);
            if self.visible.contains(&old.tile) {
                protected_after.items = protected_after.items.saturating_sub(1);
                protected_after.bytes = protected_after.bytes.saturating_sub(old.size_bytes);
            }
        }
        if priority == Priority::Prefetch
            && !self.fits(after, size_bytes)
            && !self.fits(protected_after, size_bytes)
        {
            self.stats.rejected += 1;
            return Ok(InsertOutcome {
                evicted: 0,
                rejected: true,
            });
        }

        // Committed: the insert will succeed.
        let old = self.remove_item(id);
        let mut evicted = 0;
        while !self.fits(self.held(), size_bytes) {
            if !self.evict_one(priority == Priority::Visible) {
                break;
            }
            evicted += 1;
        }
        if !self.fits(self.held(), size_bytes) {
            // Unreachable while the protected totals are right; refuse rather than overfill.
            self.stats.rejected += 1;
            return Ok(InsertOutcome {
                evicted,
                rejected: true,
            });
        }

        let key = match &old {
            Some(o) => Arc::clone(&o.id),
            None => Arc::from(id),
        };
        if let Some(old) = &old {
            if old.tile != tile {
                self.move_listing(&key, old.tile, tile, access);
            }
        }
        self.account_add(tile, size_bytes);
        self.items.put(
            Arc::clone(&key),
            CacheItem {
                id: key,
                lon,
                lat,
                class,
                access,
                tile,
                expires_at_ms,
                size_bytes,
                payload,
            },
        );
        Ok(InsertOutcome {
            evicted,
            rejected: false,
        })
    }

    /// Moves a listed id from its old tile's list to its new tile's list.
    fn move_listing(&mut self, id: &Arc<str>, from: TileId, to: TileId, access: Access) {
        let mut was_listed = false;
        if let Some(e) = self.tiles.peek_mut(&from) {
            let before = e.ids.len();
            e.ids.retain(|x| **x != **id);
            was_listed = e.ids.len() != before;
        }
        if !was_listed {
            return;
        }
        if let Some(e) = self.tiles.peek_mut(&to) {
            if e.complete && e.fetched_at.can_see(access) && !e.ids.iter().any(|x| **x == **id) {
                e.ids.push(Arc::clone(id));
            }
        }
    }

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
    /// recently used entries go, visible tiles last, then the new empty descendants first.
    ///
    /// Errors (nothing changed): a tile finer than the data zoom ([`CacheError::TooFine`]),
    /// too coarse ([`CacheError::TooCoarse`]), an invalid id ([`CacheError::InvalidItem`]).
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, TileCache, TileId, TileState};
    /// let mut cache: TileCache<()> = TileCache::new(CacheConfig::default()).unwrap();
    /// let z12: TileId = "12/656/1430".parse().unwrap();
    /// cache.insert_tile(z12, &[], None, Access::Public, 0).unwrap();
    /// // All 16 data tiles inside are known to be empty.
    /// let z14: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(cache.tile_state(z14, Access::Public, 0), TileState::Fresh);
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
        let expires_at_ms = now_ms.saturating_add(self.config.tile_ttl(ttl_ms));

        // Each distinct id once, with its data tile when held (None: position unknown).
        let mut seen = HashSet::with_capacity(ids.len());
        let mut listed: Vec<(Arc<str>, Option<TileId>)> = Vec::with_capacity(ids.len());
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            match self.items.peek(id) {
                Some(item) if fetched_at.can_see(item.access) => {
                    listed.push((Arc::clone(&item.id), Some(item.tile)));
                }
                Some(_) => {}
                None => listed.push((Arc::from(id), None)),
            }
        }

        if tile.z() == dz {
            let mut ids = Vec::with_capacity(listed.len());
            for (id, _) in listed {
                ids.push(id);
            }
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
        let mut by_tile: HashMap<TileId, Vec<Arc<str>>> = HashMap::new();
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
                            ids: Vec::new(),
                            expires_at_ms,
                            fetched_at,
                            complete,
                        },
                    );
                }
            }
        }
        for (d, ids) in filled {
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

    /// Drops least-recently-used tile entries beyond `max_tiles`, visible tiles last.
    fn trim_tiles(&mut self) {
        if self.tiles.len() <= self.config.max_tiles {
            return;
        }
        let mut visible_held = 0;
        for t in &self.visible {
            if self.tiles.contains(t) {
                visible_held += 1;
            }
        }
        // Each visible entry is promoted at most once before a non-visible one is at the
        // tail; the bound only guards against a broken count.
        let mut budget = 2 * self.tiles.len() + 1;
        while self.tiles.len() > self.config.max_tiles {
            let Some((&t, _)) = self.tiles.peek_lru() else {
                break;
            };
            let is_visible = self.visible.contains(&t);
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

    /// Classifies a held tile entry for `caller`.
    fn classify(&self, e: &TileEntry, caller: Access, now_ms: u64) -> TileState {
        if e.fetched_at < caller {
            return TileState::Unknown;
        }
        let swr = self.swr();
        let membership_stale = match freshness(e.expires_at_ms, swr, now_ms) {
            Freshness::Gone => return TileState::Unknown,
            f => f == Freshness::Stale,
        };
        if !e.complete {
            return TileState::Partial(Refresh::Tile);
        }
        let mut missing = Vec::new();
        let mut stale = Vec::new();
        for id in &e.ids {
            match self.items.peek(&**id) {
                None => missing.push(id.to_string()),
                // Not shown to this caller, so it cannot leave a hole.
                Some(item) if !caller.can_see(item.access) => {}
                Some(item) => match freshness(item.expires_at_ms, swr, now_ms) {
                    Freshness::Fresh => {}
                    Freshness::Stale => stale.push(id.to_string()),
                    Freshness::Gone => missing.push(id.to_string()),
                },
            }
        }
        if !missing.is_empty() {
            if membership_stale || missing.len() * 2 > e.ids.len() {
                TileState::Partial(Refresh::Tile)
            } else {
                TileState::Partial(Refresh::Ids(missing))
            }
        } else if membership_stale {
            TileState::Stale(Refresh::Tile)
        } else if !stale.is_empty() {
            TileState::Stale(Refresh::Ids(stale))
        } else {
            TileState::Fresh
        }
    }

    /// The state of a data-zoom tile for a caller at tier `caller`. A list fetched at a tier
    /// below the caller's is `Unknown` (it may lack items the caller may see); listed items
    /// above the caller's tier are ignored; a listed id that is not held counts as missing
    /// whatever its tier. Does not touch LRU order or counters. A tile at another zoom is
    /// `Unknown`.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, Refresh, TileCache, TileId, TileState};
    /// let mut cache: TileCache<()> = TileCache::new(CacheConfig::default()).unwrap();
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(cache.tile_state(t, Access::Public, 0), TileState::Unknown);
    /// cache.insert_tile(t, &["gone", "a", "b"], None, Access::Public, 0).unwrap();
    /// // None of the three items is held: more than half missing, refetch the tile.
    /// assert_eq!(cache.tile_state(t, Access::Public, 0), TileState::Partial(Refresh::Tile));
    /// assert_eq!(cache.tile_state(t, Access::Agent, 0), TileState::Unknown);
    /// ```
    pub fn tile_state(&self, tile: TileId, caller: Access, now_ms: u64) -> TileState {
        if tile.z() != self.config.tile_zoom {
            return TileState::Unknown;
        }
        match self.tiles.peek(&tile) {
            Some(e) => self.classify(e, caller, now_ms),
            None => TileState::Unknown,
        }
    }

    /// When the membership of data-zoom tile `tile` stops being fresh, if the tile index
    /// holds it (fresh or not, whatever the tier it was fetched at). Does not touch LRU order
    /// or counters. A server uses it to report the remaining lifetime of a cached list.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, TileCache, TileId};
    /// let mut cache: TileCache<()> = TileCache::new(CacheConfig::default()).unwrap();
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(cache.tile_expires_at_ms(t), None);
    /// cache.insert_tile(t, &[], Some(60_000), Access::Agent, 1_000).unwrap();
    /// assert_eq!(cache.tile_expires_at_ms(t), Some(61_000));
    /// ```
    pub fn tile_expires_at_ms(&self, tile: TileId) -> Option<u64> {
        self.tiles.peek(&tile).map(|e| e.expires_at_ms)
    }

    /// Read a visible tile: calls `sink(item, stale)` for each listed item that is held and
    /// showable (fresh, or stale within the window) and that `caller` may see, in list
    /// order. Counts a hit or stale hit for each of those and a miss for each listed id that
    /// is absent or expired beyond the window (such an item is removed and counted in
    /// `expirations`); refreshes the recency of the tile and the items shown. Returns the
    /// tile's state as [`tile_state`](Self::tile_state) would have before the call; an
    /// `Unknown` tile shows and counts nothing.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache, TileId, TileState};
    /// let mut cache = TileCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Agent, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("agent-only", meta, 'x', 0, Priority::Visible).unwrap();
    /// let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// cache.insert_tile(t, &["agent-only"], None, Access::Agent, 0).unwrap();
    /// let mut n = 0;
    /// assert_eq!(cache.read_tile(t, Access::Agent, 0, |_, _| n += 1), TileState::Fresh);
    /// assert_eq!(cache.read_tile(t, Access::Public, 0, |_, _| n += 1), TileState::Fresh);
    /// assert_eq!(n, 1); // the public caller saw nothing
    /// ```
    pub fn read_tile(
        &mut self,
        tile: TileId,
        caller: Access,
        now_ms: u64,
        mut sink: impl FnMut(&CacheItem<P>, bool),
    ) -> TileState {
        let state = self.tile_state(tile, caller, now_ms);
        if matches!(state, TileState::Unknown) {
            return state;
        }
        let ids = match self.tiles.get(&tile) {
            Some(e) => e.ids.clone(),
            None => return state,
        };
        for id in &ids {
            // Items the caller may not see are not shown, so they count for nothing.
            if let Some(stale) = self.count_lookup(id, caller, now_ms, false) {
                if let Some(item) = self.items.get(&**id) {
                    sink(item, stale);
                }
            }
        }
        state
    }

    /// Look up an item for `caller`, counting a hit, stale hit or miss and refreshing its
    /// recency. `None` when absent, above the caller's tier, or expired beyond the
    /// stale-while-revalidate window (such an item is removed and counted in `expirations`).
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache};
    /// let config = CacheConfig { stale_while_revalidate_ms: 1_000, ..CacheConfig::default() };
    /// let mut cache = TileCache::new(config).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: Some(500), size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert!(!cache.get("a", Access::Public, 499).unwrap().stale);
    /// assert!(cache.get("a", Access::Public, 500).unwrap().stale);
    /// assert!(cache.get("a", Access::Public, 1_500).is_none());
    /// assert!(!cache.contains("a"));
    /// ```
    pub fn get(&mut self, id: &str, caller: Access, now_ms: u64) -> Option<Lookup<'_, P>> {
        let stale = self.count_lookup(id, caller, now_ms, true)?;
        self.items.get(id).map(|item| Lookup { item, stale })
    }

    /// One lookup of `id` for `caller`, counted: `Some(stale)` for a hit or stale hit, else
    /// `None` and a miss (absent, or expired beyond the window: then it is removed and
    /// counted in `expirations`, or above the caller's tier). With `hidden_counts` false an
    /// item above the caller's tier is passed over instead: not counted, not removed.
    /// Does not touch LRU order.
    #[inline]
    fn count_lookup(
        &mut self,
        id: &str,
        caller: Access,
        now_ms: u64,
        hidden_counts: bool,
    ) -> Option<bool> {
        let (access, expires) = match self.items.peek(id) {
            Some(item) => (item.access, item.expires_at_ms),
            None => {
                self.stats.misses += 1;
                return None;
            }
        };
        let seen = caller.can_see(access);
        if !seen && !hidden_counts {
            return None;
        }
        let f = freshness(expires, self.swr(), now_ms);
        if f == Freshness::Gone {
            self.remove_item(id);
            self.stats.expirations += 1;
            self.stats.misses += 1;
            return None;
        }
        if !seen {
            self.stats.misses += 1;
            return None;
        }
        let stale = f == Freshness::Stale;
        if stale {
            self.stats.stale_hits += 1;
        } else {
            self.stats.hits += 1;
        }
        Some(stale)
    }

    /// Like [`get`](Self::get) without counting, reordering or removing anything.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache};
    /// let mut cache = TileCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Verified, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert!(cache.peek("a", Access::Public, 0).is_none());
    /// assert!(cache.peek("a", Access::Agent, 0).is_some());
    /// assert_eq!(cache.stats().hits, 0);
    /// ```
    pub fn peek(&self, id: &str, caller: Access, now_ms: u64) -> Option<Lookup<'_, P>> {
        let item = self.items.peek(id)?;
        if !caller.can_see(item.access) {
            return None;
        }
        match freshness(item.expires_at_ms, self.swr(), now_ms) {
            Freshness::Gone => None,
            f => Some(Lookup {
                item,
                stale: f == Freshness::Stale,
            }),
        }
    }

    /// Protect the items of these data-zoom tiles (what the user is looking at) from
    /// eviction by [`Priority::Prefetch`] inserts, and their tile-index entries from being
    /// trimmed first. Replaces the previous set; tiles at other zooms are ignored.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache, TileId};
    /// let config = CacheConfig { max_items: 1, ..CacheConfig::default() };
    /// let mut cache = TileCache::new(config).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("seen", meta.clone(), (), 0, Priority::Visible).unwrap();
    /// cache.set_visible(&[TileId::from_lon_lat(2.35, 48.85, 14).unwrap()]);
    /// let out = cache.insert("ahead", meta, (), 0, Priority::Prefetch).unwrap();
    /// assert!(out.rejected);
    /// assert!(cache.contains("seen"));
    /// ```
    pub fn set_visible(&mut self, tiles: &[TileId]) {
        let dz = self.config.tile_zoom;
        self.visible.clear();
        for &t in tiles {
            if t.z() == dz {
                self.visible.insert(t);
            }
        }
        let mut protected = Load::default();
        for t in &self.visible {
            if let Some(l) = self.load.get(t) {
                protected.items += l.items;
                protected.bytes += l.bytes;
            }
        }
        self.protected = protected;
    }

    /// Drop every item with access above `tier`, every tile list fetched above it, and the
    /// dropped ids from the remaining lists (used when the user's tier is lowered, e.g.
    /// logout): afterwards nothing above `tier` is in memory. Returns the items dropped.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache};
    /// let mut cache = TileCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Agent, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert_eq!(cache.drop_above(Access::Public), 1);
    /// assert!(cache.is_empty());
    /// ```
    pub fn drop_above(&mut self, tier: Access) -> usize {
        let doomed = self.remove_items_where(&|item| item.access > tier);
        self.drop_lists_where(&|_, e| e.fetched_at > tier);
        if !doomed.is_empty() {
            let mut ids = HashSet::with_capacity(doomed.len());
            for id in &doomed {
                ids.insert(&**id);
            }
            self.strip_from_lists(&ids);
        }
        doomed.len()
    }

    /// The backend says these ids do not exist (or are not visible to the caller): remove
    /// the items and take the ids out of every tile list, so no tile waits for them.
    /// Returns the items removed.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache, TileId, TileState};
    /// let mut cache = TileCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// cache.insert_tile(t, &["a", "gone"], None, Access::Public, 0).unwrap();
    /// assert!(!cache.tile_state(t, Access::Public, 0).is_showable());
    /// assert_eq!(cache.forget_ids(&["gone"]), 0);
    /// assert_eq!(cache.tile_state(t, Access::Public, 0), TileState::Fresh);
    /// ```
    pub fn forget_ids(&mut self, ids: &[&str]) -> usize {
        let removed = self.remove_ids(ids);
        let mut set = HashSet::with_capacity(ids.len());
        for &id in ids {
            set.insert(id);
        }
        self.strip_from_lists(&set);
        removed
    }

    fn strip_from_lists(&mut self, ids: &HashSet<&str>) {
        if ids.is_empty() {
            return;
        }
        for (_, e) in self.tiles.iter_mut() {
            e.ids.retain(|id| !ids.contains(&**id));
        }
    }

    /// Remove items or tile lists; returns the items removed (not counted as evictions or
    /// expirations). See [`Invalidate`] for what each variant covers.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, Invalidate, ItemMeta, Priority, Refresh, TileCache, TileId, TileState};
    /// let mut cache = TileCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// for id in ["a", "b", "c"] {
    ///     cache.insert(id, meta.clone(), (), 0, Priority::Visible).unwrap();
    /// }
    /// let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
    /// cache.insert_tile(t, &["a", "b", "c"], None, Access::Public, 0).unwrap();
    /// assert_eq!(cache.invalidate(Invalidate::Ids(&["b"])), 1);
    /// assert_eq!(cache.tile_state(t, Access::Public, 0), TileState::Partial(Refresh::Ids(vec!["b".into()])));
    /// assert_eq!(cache.invalidate(Invalidate::Tiles(&[t])), 2);
    /// assert_eq!(cache.tile_state(t, Access::Public, 0), TileState::Unknown);
    /// ```
    pub fn invalidate(&mut self, what: Invalidate<'_>) -> usize {
        match what {
            Invalidate::Ids(ids) => self.remove_ids(ids),
            Invalidate::Tiles(tiles) => {
                let dz = self.config.tile_zoom;
                let mut targets = Vec::new();
                for &t in tiles {
                    if t.z() >= dz {
                        if let Ok(a) = t.ancestor(dz) {
                            targets.push(a);
                        }
                    } else {
                        targets.append(&mut self.tiles_where(&|held, _| t.contains(held)));
                    }
                }
                let mut removed = 0;
                for t in targets {
                    if let Some(e) = self.tiles.pop(&t) {
                        for id in &e.ids {
                            if self.remove_item(id).is_some() {
                                removed += 1;
                            }
                        }
                    }
                }
                removed
            }
            Invalidate::Class(class) => self.remove_items_where(&|item| item.class == class).len(),
            Invalidate::All => {
                let n = self.items.len();
                self.items.clear();
                self.tiles.clear();
                self.load.clear();
                self.bytes = 0;
                self.protected = Load::default();
                n
            }
        }
    }

    /// Remove the items and tile lists expired beyond the stale-while-revalidate window,
    /// counting the items in `expirations`. Returns the items removed.
    ///
    /// ```
    /// use tilewarm::{Access, CacheConfig, ItemMeta, Priority, TileCache};
    /// let mut cache = TileCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: Some(100), size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert_eq!(cache.purge_expired(99), 0);
    /// assert_eq!(cache.purge_expired(100), 1);
    /// assert_eq!(cache.stats().expirations, 1);
    /// ```
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        let swr = self.swr();
        let gone = |expires_at_ms| freshness(expires_at_ms, swr, now_ms) == Freshness::Gone;
        let removed = self
            .remove_items_where(&|item| gone(item.expires_at_ms))
            .len();
        self.stats.expirations += removed as u64;
        self.drop_lists_where(&|_, e| gone(e.expires_at_ms));
        removed
    }

    /// Counters and current sizes.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.items.len(),
            bytes: self.bytes,
            tiles: self.tiles.len(),
            ..self.stats
        }
    }

    /// Items held (expired ones included until they are removed).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sum of the held items' `size_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether an item with this id is held, whatever its tier or expiry.
    pub fn contains(&self, id: &str) -> bool {
        self.items.contains(id)
    }

    /// Whether the item is held and protected (its data tile is visible).
    pub fn is_protected(&self, id: &str) -> bool {
        self.items
            .peek(id)
            .is_some_and(|item| self.visible.contains(&item.tile))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tile::unproject;

    const Z: u8 = 14;

    fn tile(x: u32, y: u32) -> TileId {
        TileId::new(Z, 2600 + x, 5700 + y).unwrap()
    }

    /// An item positioned at the centre of `t`.
    fn meta_in(t: TileId, size_bytes: usize) -> ItemMeta {
        let (lon, lat) = unproject(t.centre(), t.z());
        ItemMeta {
            lon,
            lat,
            class: "active".into(),
            access: Access::Public,
            ttl_ms: None,
            size_bytes,
        }
    }

    fn small(max_items: usize, max_bytes: usize) -> TileCache<u32> {
        TileCache::new(CacheConfig {
            max_items,
            max_bytes,
            ..CacheConfig::default()
        })
        .unwrap()
    }

    fn put(c: &mut TileCache<u32>, id: &str, t: TileId, size: usize, p: Priority) -> InsertOutcome {
        c.insert(id, meta_in(t, size), 0, 0, p).unwrap()
    }

    fn ids(v: &[&str]) -> Refresh {
        Refresh::Ids(v.iter().map(|s| s.to_string()).collect())
    }

    fn held(c: &TileCache<u32>) -> Vec<String> {
        let mut v: Vec<String> = c.items.iter().map(|(k, _)| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn defaults_and_ttl_for() {
        let c = CacheConfig::default();
        assert_eq!(c.tile_zoom, 14);
        assert_eq!(c.max_items, 50_000);
        assert_eq!(c.max_bytes, 32 * 1024 * 1024);
        assert_eq!(c.max_tiles, 65_536);
        assert_eq!(c.default_ttl_ms, 300_000);
        assert_eq!(c.stale_while_revalidate_ms, 0);
        assert_eq!(c.ttl_for("active", None), 300_000);
        assert_eq!(c.ttl_for("off_market", None), 14_400_000);
        assert_eq!(c.ttl_for("unlisted", None), 300_000);
        assert_eq!(c.ttl_for("off_market", Some(7)), 7);
        assert_eq!(c.tile_ttl(None), 300_000);
        let c = CacheConfig {
            tile_ttl_ms: Some(9),
            ..c
        };
        assert_eq!(c.tile_ttl(None), 9);
        assert_eq!(c.tile_ttl(Some(3)), 3);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validate_names_field_value_and_range() {
        let base = CacheConfig::default;
        let msg = |c: CacheConfig| c.validate().unwrap_err().to_string();
        assert_eq!(
            msg(CacheConfig {
                max_items: 0,
                ..base()
            }),
            "cache config max_items must be at least 1, got 0"
        );
        assert_eq!(
            msg(CacheConfig {
                tile_zoom: 25,
                ..base()
            }),
            "cache config tile_zoom must be an integer in 0..=24, got 25"
        );
        assert_eq!(
            msg(CacheConfig {
                max_bytes: 0,
                ..base()
            }),
            "cache config max_bytes must be at least 1, got 0"
        );
        assert_eq!(
            msg(CacheConfig {
                max_tiles: 0,
                ..base()
            }),
            "cache config max_tiles must be at least 1, got 0"
        );
        assert_eq!(
            msg(CacheConfig {
                default_ttl_ms: 0,
                ..base()
            }),
            "cache config default_ttl_ms must be at least 1, got 0"
        );
        let mut c = base();
        c.class_ttl_ms.insert("sold".into(), 0);
        assert_eq!(
            msg(c),
            "cache config class_ttl_ms must be a map of class to a TTL of at least 1, got \"sold\": 0"
        );
        assert_eq!(
            msg(CacheConfig {
                tile_ttl_ms: Some(0),
                ..base()
            }),
            "cache config tile_ttl_ms must be None or at least 1, got Some(0)"
        );
        let e = TileCache::<()>::new(CacheConfig {
            max_tiles: 0,
            ..base()
        })
        .unwrap_err();
        assert!(matches!(
            e,
            CacheError::InvalidConfig {
                field: "max_tiles",
                ..
            }
        ));
    }

    #[test]
    fn expiry_is_exact_to_the_ms_without_swr() {
        let mut c = small(10, 1000);
        let mut m = meta_in(tile(0, 0), 1);
        m.ttl_ms = Some(500);
        c.insert("a", m, 1, 1_000, Priority::Visible).unwrap();
        assert_eq!(
            c.get("a", Access::Public, 1_000)
                .unwrap()
                .item
                .expires_at_ms(),
            1_500
        );
        assert!(!c.peek("a", Access::Public, 1_499).unwrap().stale);
        assert!(c.peek("a", Access::Public, 1_500).is_none());
        assert!(c.contains("a"), "peek removes nothing");
        assert!(c.get("a", Access::Public, 1_500).is_none());
        assert!(!c.contains("a"));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.expirations), (1, 1, 1));
        assert_eq!((s.entries, s.bytes), (0, 0));
    }

    #[test]
    fn stale_while_revalidate_window_is_exact() {
        let mut c: TileCache<u32> = TileCache::new(CacheConfig {
            stale_while_revalidate_ms: 100,
            ..CacheConfig::default()
        })
        .unwrap();
        let mut m = meta_in(tile(0, 0), 1);
        m.ttl_ms = Some(500);
        c.insert("a", m, 1, 1_000, Priority::Visible).unwrap();
        assert!(!c.get("a", Access::Public, 1_499).unwrap().stale);
        assert!(c.get("a", Access::Public, 1_500).unwrap().stale);
        assert!(c.get("a", Access::Public, 1_599).unwrap().stale);
        assert!(c.peek("a", Access::Public, 1_600).is_none());
        assert!(c.get("a", Access::Public, 1_600).is_none());
        let s = c.stats();
        assert_eq!(
            (s.hits, s.stale_hits, s.misses, s.expirations),
            (1, 2, 1, 1)
        );
    }

    #[test]
    fn class_ttls_default_to_5_min_and_4_h() {
        let mut c = small(10, 1000);
        let mut off = meta_in(tile(0, 0), 1);
        off.class = "off_market".into();
        let mut other = meta_in(tile(0, 0), 1);
        other.class = "pending".into();
        let mut server = meta_in(tile(0, 0), 1);
        server.class = "off_market".into();
        server.ttl_ms = Some(60_000);
        c.insert("act", meta_in(tile(0, 0), 1), 0, 0, Priority::Visible)
            .unwrap();
        c.insert("off", off, 0, 0, Priority::Visible).unwrap();
        c.insert("oth", other, 0, 0, Priority::Visible).unwrap();
        c.insert("srv", server, 0, 0, Priority::Visible).unwrap();
        let exp = |id| c.items.peek(id).unwrap().expires_at_ms();
        assert_eq!(exp("act"), 300_000);
        assert_eq!(exp("off"), 14_400_000);
        assert_eq!(exp("oth"), 300_000);
        assert_eq!(exp("srv"), 60_000);
        assert!(c.peek("act", Access::Public, 299_999).is_some());
        assert!(c.peek("act", Access::Public, 300_000).is_none());
        assert!(c.peek("off", Access::Public, 14_399_999).is_some());
        assert!(c.peek("off", Access::Public, 14_400_000).is_none());
    }

    #[test]
    fn invalid_items_are_errors_and_change_nothing() {
        let mut c = small(10, 100);
        put(&mut c, "keep", tile(0, 0), 5, Priority::Visible);
        let before = (c.len(), c.bytes(), c.stats());
        let t = tile(0, 0);
        let cases: Vec<(&str, ItemMeta, &str)> =
            vec![
            ("", meta_in(t, 1), "invalid item \"\": the id must not be empty"),
            (
                "x",
                ItemMeta {
                    lon: f64::NAN,
                    ..meta_in(t, 1)
                },
                "invalid item \"x\": longitude must be a finite number in -180..=180, got NaN",
            ),
            (
                "x",
                ItemMeta {
                    lon: 180.5,
                    ..meta_in(t, 1)
                },
                "invalid item \"x\": longitude must be a finite number in -180..=180, got 180.5",
            ),
            (
                "x",
                ItemMeta {
                    lat: -91.0,
                    ..meta_in(t, 1)
                },
                "invalid item \"x\": latitude must be a finite number in -90..=90, got -91",
            ),
            (
                "x",
                ItemMeta {
                    lat: f64::INFINITY,
                    ..meta_in(t, 1)
                },
                "invalid item \"x\": latitude must be a finite number in -90..=90, got inf",
            ),
            (
                "x",
                meta_in(t, 101),
                "item \"x\" is 101 bytes, more than the cache's max_bytes of 100",
            ),
        ];
        for (id, m, want) in cases {
            let e = c.insert(id, m, 9, 0, Priority::Visible).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        let long = "y".repeat(MAX_ID_BYTES + 1);
        let e = c
            .insert(&long, meta_in(t, 1), 9, 0, Priority::Visible)
            .unwrap_err();
        assert!(e.to_string().contains("257 bytes long, at most 256"), "{e}");
        assert!(c
            .insert(
                &"y".repeat(MAX_ID_BYTES),
                meta_in(t, 1),
                9,
                0,
                Priority::Visible
            )
            .is_ok());
        c.invalidate(Invalidate::Ids(&[&"y".repeat(MAX_ID_BYTES)]));
        // A failed replace leaves the old item alone.
        assert!(c
            .insert("keep", meta_in(t, 101), 9, 0, Priority::Visible)
            .is_err());
        assert_eq!((c.len(), c.bytes(), c.stats()), before);
        assert_eq!(
            *c.peek("keep", Access::Public, 0).unwrap().item.payload(),
            0
        );
    }

    #[test]
    fn an_item_of_exactly_max_bytes_fits_by_evicting_everything() {
        let mut c = small(10, 100);
        put(&mut c, "a", tile(0, 0), 30, Priority::Visible);
        put(&mut c, "b", tile(0, 0), 30, Priority::Visible);
        let out = put(&mut c, "big", tile(0, 0), 100, Priority::Visible);
        assert_eq!(
            out,
            InsertOutcome {
                evicted: 2,
                rejected: false
            }
        );
        assert_eq!((c.len(), c.bytes(), c.stats().evictions), (1, 100, 2));
    }

    #[test]
    fn count_capacity_evicts_least_recently_used() {
        let mut c = small(3, 1000);
        for id in ["a", "b", "c"] {
            put(&mut c, id, tile(0, 0), 1, Priority::Visible);
        }
        assert!(c.get("a", Access::Public, 0).is_some()); // b is now the LRU
        assert_eq!(
            put(&mut c, "d", tile(0, 0), 1, Priority::Visible).evicted,
            1
        );
        assert_eq!(held(&c), ["a", "c", "d"]);
        assert!(c.peek("c", Access::Public, 0).is_some()); // peek does not refresh c
        let _ = c.tile_state(tile(0, 0), Access::Public, 0);
        put(&mut c, "e", tile(0, 0), 1, Priority::Visible);
        assert_eq!(held(&c), ["a", "d", "e"]);
        assert_eq!(c.stats().evictions, 2);
    }

    #[test]
    fn byte_capacity_evicts_as_many_as_needed() {
        let mut c = small(100, 100);
        put(&mut c, "a", tile(0, 0), 40, Priority::Visible);
        put(&mut c, "b", tile(0, 0), 40, Priority::Visible);
        put(&mut c, "c", tile(0, 0), 20, Priority::Visible);
        assert_eq!(c.bytes(), 100);
        let out = put(&mut c, "d", tile(0, 0), 60, Priority::Visible);
        assert_eq!(out.evicted, 2);
        assert_eq!(held(&c), ["c", "d"]);
        assert_eq!(c.bytes(), 80);
    }

    #[test]
    fn replacing_updates_bytes_and_moves_between_tiles() {
        let (t1, t2) = (tile(0, 0), tile(1, 0));
        let mut c = small(10, 100);
        put(&mut c, "a", t1, 70, Priority::Visible);
        put(&mut c, "b", t1, 10, Priority::Visible);
        c.insert_tile(t1, &["a", "b"], None, Access::Public, 0)
            .unwrap();
        c.insert_tile(t2, &[], None, Access::Public, 0).unwrap();
        c.set_visible(&[t1]);
        assert!(c.is_protected("a"));
        // Replacing in place: 70 → 90 bytes fits without evicting b.
        let out = put(&mut c, "a", t1, 90, Priority::Visible);
        assert_eq!(out.evicted, 0);
        assert_eq!((c.len(), c.bytes()), (2, 100));
        // Moving a to t2: its listing moves too, and it is no longer protected.
        let out = put(&mut c, "a", t2, 20, Priority::Prefetch);
        assert_eq!(out, InsertOutcome::default());
        assert_eq!((c.len(), c.bytes()), (2, 30));
        assert_eq!(c.peek("a", Access::Public, 0).unwrap().item.tile(), t2);
        assert!(!c.is_protected("a") && c.is_protected("b"));
        assert_eq!(
            c.protected,
            Load {
                items: 1,
                bytes: 10
            }
        );
        assert_eq!(c.tiles.peek(&t1).unwrap().ids.len(), 1);
        let mut seen = Vec::new();
        c.read_tile(t2, Access::Public, 0, |it, _| {
            seen.push(it.id().to_string())
        });
        assert_eq!(seen, ["a"]);
        assert_eq!(c.tile_state(t1, Access::Public, 0), TileState::Fresh);
    }

    #[test]
    fn prefetch_never_evicts_what_is_visible() {
        let (v, o) = (tile(0, 0), tile(5, 5));
        let mut c = small(3, 1000);
        put(&mut c, "v1", v, 1, Priority::Visible);
        put(&mut c, "v2", v, 1, Priority::Visible);
        put(&mut c, "u1", o, 1, Priority::Prefetch);
        c.set_visible(&[v]);
        // v1 is least recently used, but protected: u1 goes instead.
        let out = put(&mut c, "p1", o, 1, Priority::Prefetch);
        assert_eq!(
            out,
            InsertOutcome {
                evicted: 1,
                rejected: false
            }
        );
        assert_eq!(held(&c), ["p1", "v1", "v2"]);
        // Then p1, again not the visible ones.
        put(&mut c, "p2", o, 1, Priority::Prefetch);
        assert_eq!(held(&c), ["p2", "v1", "v2"]);
        // Only protected items left: a prefetch is refused and nothing changes.
        c.set_visible(&[v, o]);
        let stats = c.stats();
        let out = put(&mut c, "p3", o, 1, Priority::Prefetch);
        assert_eq!(
            out,
            InsertOutcome {
                evicted: 0,
                rejected: true
            }
        );
        assert_eq!(held(&c), ["p2", "v1", "v2"]);
        assert_eq!(c.stats().rejected, stats.rejected + 1);
        assert_eq!(c.stats().evictions, stats.evictions);
        // A visible insert must fit: it evicts the least recently used protected item.
        // Order now (LRU first): v1, v2 (promoted while skipped), then p2 (inserted after).
        let out = put(&mut c, "n", v, 1, Priority::Visible);
        assert_eq!(
            out,
            InsertOutcome {
                evicted: 1,
                rejected: false
            }
        );
        assert_eq!(held(&c), ["n", "p2", "v2"]);
    }

    #[test]
    fn visible_insert_evicts_lru_protected_item_in_order() {
        let v = tile(0, 0);
        let mut c = small(2, 1000);
        put(&mut c, "v1", v, 1, Priority::Visible);
        put(&mut c, "v2", v, 1, Priority::Visible);
        c.set_visible(&[v]);
        c.get("v1", Access::Public, 0);
        put(&mut c, "v3", v, 1, Priority::Visible);
        assert_eq!(held(&c), ["v1", "v3"]);
    }

    #[test]
    fn prefetch_refused_when_unprotected_items_could_not_make_room() {
        let (v, o) = (tile(0, 0), tile(5, 5));
        let mut c = small(10, 100);
        put(&mut c, "v", v, 80, Priority::Visible);
        put(&mut c, "u", o, 10, Priority::Visible);
        c.set_visible(&[v]);
        // Freeing u gives 20 bytes, not 30: refuse without evicting u.
        let out = put(&mut c, "p", o, 30, Priority::Prefetch);
        assert!(out.rejected);
        assert_eq!(held(&c), ["u", "v"]);
        // 20 bytes is enough once u goes.
        let out = put(&mut c, "p", o, 20, Priority::Prefetch);
        assert_eq!(
            out,
            InsertOutcome {
                evicted: 1,
                rejected: false
            }
        );
        assert_eq!(held(&c), ["p", "v"]);
        // Replacing a protected item by prefetch counts its own bytes as freed.
        let out = put(&mut c, "v", v, 80, Priority::Prefetch);
        assert!(!out.rejected && out.evicted == 0);
    }

    #[test]
    fn tile_states_fresh_partial_and_unknown() {
        let t = tile(0, 0);
        let mut c = small(10, 1000);
        assert_eq!(c.tile_state(t, Access::Public, 0), TileState::Unknown);
        for id in ["a", "b", "c", "d"] {
            put(&mut c, id, t, 1, Priority::Visible);
        }
        c.insert_tile(t, &["a", "b", "c", "d"], Some(1_000), Access::Public, 0)
            .unwrap();
        assert_eq!(c.tile_state(t, Access::Public, 999), TileState::Fresh);
        assert!(c.tile_state(t, Access::Public, 0).is_showable());
        c.invalidate(Invalidate::Ids(&["b"]));
        assert_eq!(
            c.tile_state(t, Access::Public, 0),
            TileState::Partial(ids(&["b"]))
        );
        assert!(!c.tile_state(t, Access::Public, 0).is_showable());
        c.invalidate(Invalidate::Ids(&["d"]));
        // Exactly half missing: still the ids.
        assert_eq!(
            c.tile_state(t, Access::Public, 0),
            TileState::Partial(ids(&["b", "d"]))
        );
        c.invalidate(Invalidate::Ids(&["a"]));
        assert_eq!(
            c.tile_state(t, Access::Public, 0),
            TileState::Partial(Refresh::Tile)
        );
        // Membership expiry without a window: Unknown at exactly 1 000.
        assert_eq!(c.tile_state(t, Access::Public, 1_000), TileState::Unknown);
        // Other zooms are Unknown.
        assert_eq!(
            c.tile_state(t.parent().unwrap(), Access::Public, 0),
            TileState::Unknown
        );
    }

    #[test]
    fn evicted_or_expired_items_make_their_tile_partial() {
        let t = tile(0, 0);
        let mut c = small(2, 1000);
        put(&mut c, "a", t, 1, Priority::Visible);
        put(&mut c, "b", t, 1, Priority::Visible);
        let mut m = meta_in(t, 1);
        m.ttl_ms = Some(10);
        c.insert_tile(t, &["a", "b"], None, Access::Public, 0)
            .unwrap();
        assert_eq!(c.tile_state(t, Access::Public, 0), TileState::Fresh);
        put(&mut c, "x", tile(3, 3), 1, Priority::Visible);
        assert_eq!(
            c.tile_state(t, Access::Public, 0),
            TileState::Partial(ids(&["a"]))
        );
        c.insert("b", m, 0, 0, Priority::Visible).unwrap();
        assert_eq!(
            c.tile_state(t, Access::Public, 10),
            TileState::Partial(Refresh::Tile)
        );
    }

    #[test]
    fn tile_states_with_stale_while_revalidate() {
        let t = tile(0, 0);
        let mut c: TileCache<u32> = TileCache::new(CacheConfig {
            stale_while_revalidate_ms: 100,
            ..CacheConfig::default()
        })
        .unwrap();
        let mut short = meta_in(t, 1);
        short.ttl_ms = Some(500);
        c.insert("a", short.clone(), 0, 0, Priority::Visible)
            .unwrap();
        c.insert("b", meta_in(t, 1), 0, 0, Priority::Visible)
            .unwrap();
        c.insert_tile(t, &["a", "b"], Some(1_000), Access::Public, 0)
            .unwrap();
        assert_eq!(c.tile_state(t, Access::Public, 499), TileState::Fresh);
        assert_eq!(
            c.tile_state(t, Access::Public, 500),
            TileState::Stale(ids(&["a"]))
        );
        assert!(c.tile_state(t, Access::Public, 599).is_showable());
        assert_eq!(
            c.tile_state(t, Access::Public, 600),
            TileState::Partial(ids(&["a"]))
        );
        c.insert("a", short, 0, 600, Priority::Visible).unwrap(); // refetched
        assert_eq!(c.tile_state(t, Access::Public, 999), TileState::Fresh);
        assert_eq!(
            c.tile_state(t, Access::Public, 1_000),
            TileState::Stale(Refresh::Tile)
        );
        assert_eq!(
            c.tile_state(t, Access::Public, 1_099),
            TileState::Stale(Refresh::Tile)
        );
        assert_eq!(c.tile_state(t, Access::Public, 1_100), TileState::Unknown);
        // Membership stale and an item missing: refetch the tile, even for one id of two.
        c.invalidate(Invalidate::Ids(&["b"]));
        assert_eq!(
            c.tile_state(t, Access::Public, 1_050),
            TileState::Partial(Refresh::Tile)
        );
    }

    #[test]
    fn tile_lists_and_tiers() {
        let t = tile(0, 0);
        let mut c = small(10, 1000);
        put(&mut c, "pub", t, 1, Priority::Visible);
        let mut agent = meta_in(t, 1);
        agent.access = Access::Agent;
        c.insert("agt", agent, 0, 0, Priority::Visible).unwrap();
        // A verified list cannot contain the agent item: it is left out.
        c.insert_tile(t, &["pub", "agt", "pub"], None, Access::Verified, 0)
            .unwrap();
        assert_eq!(c.tiles.peek(&t).unwrap().ids.len(), 1);
        assert_eq!(c.tile_state(t, Access::Public, 0), TileState::Fresh);
        assert_eq!(c.tile_state(t, Access::Verified, 0), TileState::Fresh);
        assert_eq!(c.tile_state(t, Access::Agent, 0), TileState::Unknown);
        // An agent list: a public caller ignores the agent item, even when it is stale.
        c.insert_tile(t, &["pub", "agt"], None, Access::Agent, 0)
            .unwrap();
        assert_eq!(c.tile_state(t, Access::Agent, 0), TileState::Fresh);
        let mut seen = Vec::new();
        c.read_tile(t, Access::Public, 0, |it, _| seen.push(it.id().to_string()));
        assert_eq!(seen, ["pub"]);
        seen.clear();
        c.read_tile(t, Access::Agent, 0, |it, _| seen.push(it.id().to_string()));
        assert_eq!(seen, ["pub", "agt"]);
        assert_eq!(c.stats().hits, 3);
    }

    #[test]
    fn tile_index_is_bounded_and_keeps_visible_tiles() {
        let mut c: TileCache<u32> = TileCache::new(CacheConfig {
            max_tiles: 2,
            ..CacheConfig::default()
        })
        .unwrap();
        let (a, b, d) = (tile(0, 0), tile(1, 0), tile(2, 0));
        c.insert_tile(a, &[], None, Access::Public, 0).unwrap();
        c.insert_tile(b, &[], None, Access::Public, 0).unwrap();
        c.insert_tile(d, &[], None, Access::Public, 0).unwrap();
        assert_eq!(c.tile_state(a, Access::Public, 0), TileState::Unknown);
        assert_eq!(c.stats().tiles, 2);
        // Reading b makes d the least recently used tile entry...
        c.read_tile(b, Access::Public, 0, |_, _| {});
        c.insert_tile(a, &[], None, Access::Public, 0).unwrap();
        assert_eq!(c.tile_state(d, Access::Public, 0), TileState::Unknown);
        assert_eq!(c.tile_state(b, Access::Public, 0), TileState::Fresh);
        // ...but a visible entry outlives a less recent invisible one.
        c.set_visible(&[b]);
        c.insert_tile(d, &[], None, Access::Public, 0).unwrap();
        assert_eq!(c.tile_state(b, Access::Public, 0), TileState::Fresh);
        assert_eq!(c.tile_state(a, Access::Public, 0), TileState::Unknown);
        assert_eq!(c.stats().tiles, 2);
    }

    #[test]
    fn coarse_tiles_split_onto_data_tiles_by_position() {
        let z12 = tile(0, 0).ancestor(12).unwrap();
        let kids = z12.descendants(Z).unwrap();
        assert_eq!(kids.len(), 16);
        let (k0, k5) = (kids[0], kids[5]);
        let outside = tile(40, 40);
        let mut c = small(10, 1000);
        put(&mut c, "a", k0, 1, Priority::Visible);
        put(&mut c, "b", k5, 1, Priority::Visible);
        put(&mut c, "c", k5, 1, Priority::Visible);
        put(&mut c, "far", outside, 1, Priority::Visible);
        c.insert_tile(z12, &["a", "b", "c", "far"], None, Access::Public, 0)
            .unwrap();
        assert_eq!(c.stats().tiles, 16);
        let listed = |c: &TileCache<u32>, t: TileId| -> Vec<String> {
            c.tiles
                .peek(&t)
                .unwrap()
                .ids
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        assert_eq!(listed(&c, k0), ["a"]);
        assert_eq!(listed(&c, k5), ["b", "c"]);
        assert_eq!(listed(&c, kids[15]), Vec::<String>::new());
        assert_eq!(c.tile_state(outside, Access::Public, 0), TileState::Unknown);
        for k in &kids {
            assert_eq!(c.tile_state(*k, Access::Public, 0), TileState::Fresh);
        }
        // A listed id that is not held: no descendant is complete.
        c.insert_tile(z12, &["a", "lost"], None, Access::Public, 0)
            .unwrap();
        for k in &kids {
            assert_eq!(
                c.tile_state(*k, Access::Public, 0),
                TileState::Partial(Refresh::Tile)
            );
        }
        // A data-zoom tile records its list as given.
        c.insert_tile(k0, &["a", "lost"], None, Access::Public, 0)
            .unwrap();
        assert_eq!(
            c.tile_state(k0, Access::Public, 0),
            TileState::Partial(ids(&["lost"]))
        );
    }

    #[test]
    fn membership_zoom_limits() {
        let mut c = small(10, 1000);
        let fine = TileId::new(15, 0, 0).unwrap();
        let e = c
            .insert_tile(fine, &[], None, Access::Public, 0)
            .unwrap_err();
        assert_eq!(
            e,
            CacheError::TooFine {
                tile: fine,
                tile_zoom: 14
            }
        );
        assert_eq!(
            e.to_string(),
            "tile 15/0/0 is finer than the cache's data zoom 14: membership tiles must have zoom 6..=14"
        );
        let coarse = TileId::new(5, 0, 0).unwrap();
        let e = c
            .insert_tile(coarse, &[], None, Access::Public, 0)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "tile 5/0/0 is more than 8 zoom levels coarser than the cache's data zoom 14: \
             membership tiles must have zoom 6..=14"
        );
        let e = c
            .insert_tile(tile(0, 0), &["ok", ""], None, Access::Public, 0)
            .unwrap_err();
        assert!(matches!(e, CacheError::InvalidItem { .. }));
        assert_eq!(c.stats().tiles, 0, "errors change nothing");
        // Exactly 8 levels: 65 536 data tiles, all known-empty.
        c.insert_tile(TileId::new(6, 0, 0).unwrap(), &[], None, Access::Public, 0)
            .unwrap();
        assert_eq!(c.stats().tiles, 65_536);
        assert_eq!(
            c.tile_state(TileId::new(14, 255, 255).unwrap(), Access::Public, 0),
            TileState::Fresh
        );
    }

    #[test]
    fn membership_ttl_defaults_and_overrides() {
        let t = tile(0, 0);
        let mut c: TileCache<u32> = TileCache::new(CacheConfig {
            tile_ttl_ms: Some(2_000),
            ..CacheConfig::default()
        })
        .unwrap();
        c.insert_tile(t, &[], None, Access::Public, 100).unwrap();
        assert_eq!(c.tile_state(t, Access::Public, 2_099), TileState::Fresh);
        assert_eq!(c.tile_state(t, Access::Public, 2_100), TileState::Unknown);
        c.insert_tile(t, &[], Some(50), Access::Public, 100)
            .unwrap();
        assert_eq!(c.tile_state(t, Access::Public, 149), TileState::Fresh);
        assert_eq!(c.tile_state(t, Access::Public, 150), TileState::Unknown);
        let mut d = small(10, 10);
        d.insert_tile(t, &[], None, Access::Public, 0).unwrap();
        assert_eq!(d.tile_state(t, Access::Public, 299_999), TileState::Fresh);
        assert_eq!(d.tile_state(t, Access::Public, 300_000), TileState::Unknown);
    }

    #[test]
    fn read_tile_counts_flags_and_refreshes() {
        let t = tile(0, 0);
        let mut c: TileCache<u32> = TileCache::new(CacheConfig {
            max_items: 3,
            stale_while_revalidate_ms: 100,
            ..CacheConfig::default()
        })
        .unwrap();
        let with_ttl = |ttl| ItemMeta {
            ttl_ms: Some(ttl),
            ..meta_in(t, 1)
        };
        c.insert("old", with_ttl(10), 1, 0, Priority::Visible)
            .unwrap();
        c.insert("stale", with_ttl(150), 2, 0, Priority::Visible)
            .unwrap();
        c.insert("fresh", with_ttl(1_000), 3, 0, Priority::Visible)
            .unwrap();
        c.insert_tile(
            t,
            &["fresh", "stale", "old", "never"],
            None,
            Access::Public,
            0,
        )
        .unwrap();
        let mut seen = Vec::new();
        let state = c.read_tile(t, Access::Public, 200, |it, stale| {
            seen.push((*it.payload(), stale))
        });
        assert_eq!(state, TileState::Partial(ids(&["old", "never"])));
        assert_eq!(seen, [(3, false), (2, true)]);
        let s = c.stats();
        assert_eq!(
            (s.hits, s.stale_hits, s.misses, s.expirations),
            (1, 1, 2, 1)
        );
        assert!(!c.contains("old"));
        // Recency: the read touched "fresh" then "stale"; a get on "stale" after x keeps
        // "fresh" the LRU, so y (the fourth item) evicts it.
        put(&mut c, "x", tile(3, 3), 1, Priority::Visible);
        c.get("stale", Access::Public, 200);
        put(&mut c, "y", tile(3, 3), 1, Priority::Visible);
        assert!(!c.contains("fresh") && c.contains("stale"));
        // An unknown tile shows and counts nothing.
        let before = c.stats();
        let state = c.read_tile(tile(9, 9), Access::Public, 0, |_, _| {
            panic!("nothing to show")
        });
        assert_eq!(state, TileState::Unknown);
        assert_eq!(c.stats(), before);
    }

    #[test]
    fn read_tile_refreshes_item_recency() {
        let t = tile(0, 0);
        let mut c = small(3, 1000);
        put(&mut c, "a", t, 1, Priority::Visible);
        put(&mut c, "b", tile(1, 1), 1, Priority::Visible);
        put(&mut c, "c", tile(1, 1), 1, Priority::Visible);
        c.insert_tile(t, &["a"], None, Access::Public, 0).unwrap();
        c.read_tile(t, Access::Public, 0, |_, _| {});
        put(&mut c, "d", tile(1, 1), 1, Priority::Visible);
        assert_eq!(held(&c), ["a", "c", "d"]);
    }

    #[test]
    fn get_above_tier_is_a_miss_without_reordering() {
        let mut c = small(2, 1000);
        let mut m = meta_in(tile(0, 0), 1);
        m.access = Access::Verified;
        c.insert("v", m, 0, 0, Priority::Visible).unwrap();
        put(&mut c, "p", tile(0, 0), 1, Priority::Visible);
        assert!(c.get("v", Access::Registered, 0).is_none());
        assert_eq!(c.stats().misses, 1);
        assert!(c.get("v", Access::Verified, 0).is_some());
        assert!(c.get("nope", Access::Agent, 0).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
    }

    #[test]
    fn drop_above_forgets_everything_above_the_tier() {
        let (t, u) = (tile(0, 0), tile(1, 0));
        let mut c = small(10, 1000);
        for (id, access) in [
            ("p", Access::Public),
            ("r", Access::Registered),
            ("a", Access::Agent),
        ] {
            let mut m = meta_in(t, 10);
            m.access = access;
            c.insert(id, m, 0, 0, Priority::Visible).unwrap();
        }
        c.insert_tile(t, &["p", "r", "a"], None, Access::Agent, 0)
            .unwrap();
        c.insert_tile(u, &["p", "r"], None, Access::Registered, 0)
            .unwrap();
        assert_eq!(c.drop_above(Access::Registered), 1);
        assert_eq!(held(&c), ["p", "r"]);
        assert_eq!(c.bytes(), 20);
        assert!(c.tiles.peek(&t).is_none(), "agent list dropped");
        assert_eq!(c.tile_state(u, Access::Registered, 0), TileState::Fresh);
        // A public-tier list that names an item reclassified to registered.
        c.insert_tile(t, &["p", "r"], None, Access::Public, 0)
            .unwrap();
        let mut m = meta_in(t, 10);
        m.access = Access::Registered;
        c.insert("p", m, 0, 0, Priority::Visible).unwrap();
        assert_eq!(c.drop_above(Access::Public), 2);
        assert!(c.is_empty());
        assert!(c.tiles.peek(&u).is_none());
        assert!(
            c.tiles.peek(&t).unwrap().ids.is_empty(),
            "ids stripped from lists"
        );
        assert_eq!(c.tile_state(t, Access::Public, 0), TileState::Fresh);
    }

    #[test]
    fn invalidate_variants() {
        let (t, u) = (tile(0, 0), tile(1, 0));
        let mut c = small(10, 1000);
        for id in ["a", "b"] {
            put(&mut c, id, t, 5, Priority::Visible);
        }
        for id in ["c", "d"] {
            put(&mut c, id, u, 5, Priority::Visible);
        }
        let mut off = meta_in(u, 5);
        off.class = "off_market".into();
        c.insert("e", off, 0, 0, Priority::Visible).unwrap();
        c.insert_tile(t, &["a", "b"], None, Access::Public, 0)
            .unwrap();
        c.insert_tile(u, &["c", "d", "e"], None, Access::Public, 0)
            .unwrap();

        assert_eq!(c.invalidate(Invalidate::Ids(&["a", "a", "zz"])), 1);
        assert_eq!(
            c.tile_state(t, Access::Public, 0),
            TileState::Partial(ids(&["a"]))
        );
        assert_eq!(c.invalidate(Invalidate::Class("off_market")), 1);
        assert_eq!(
            c.tile_state(u, Access::Public, 0),
            TileState::Partial(ids(&["e"]))
        );
        // A finer tile stands for its data tile.
        let finer = t.children().unwrap()[3];
        assert_eq!(c.invalidate(Invalidate::Tiles(&[finer])), 1);
        assert_eq!(c.tile_state(t, Access::Public, 0), TileState::Unknown);
        assert_eq!(held(&c), ["c", "d"]);
        // A coarser tile stands for the held data tiles inside it.
        assert_eq!(
            c.invalidate(Invalidate::Tiles(&[u.ancestor(10).unwrap()])),
            2
        );
        assert_eq!(c.tile_state(u, Access::Public, 0), TileState::Unknown);
        assert!(c.is_empty() && c.bytes() == 0);

        put(&mut c, "f", t, 5, Priority::Visible);
        c.insert_tile(t, &["f"], None, Access::Public, 0).unwrap();
        c.set_visible(&[t]);
        assert_eq!(c.invalidate(Invalidate::All), 1);
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.tiles), (0, 0, 0));
        assert_eq!(c.protected, Load::default());
        assert_eq!(s.evictions + s.expirations, 0, "invalidation is neither");
        // The visible set survives: a new item there is protected.
        put(&mut c, "g", t, 5, Priority::Visible);
        assert!(c.is_protected("g"));
    }

    #[test]
    fn purge_expired_removes_items_and_lists() {
        let t = tile(0, 0);
        let mut c: TileCache<u32> = TileCache::new(CacheConfig {
            stale_while_revalidate_ms: 10,
            ..CacheConfig::default()
        })
        .unwrap();
        let with_ttl = |ttl| ItemMeta {
            ttl_ms: Some(ttl),
            ..meta_in(t, 3)
        };
        c.insert("a", with_ttl(100), 0, 0, Priority::Visible)
            .unwrap();
        c.insert("b", with_ttl(200), 0, 0, Priority::Visible)
            .unwrap();
        c.insert_tile(t, &["a", "b"], Some(150), Access::Public, 0)
            .unwrap();
        assert_eq!(c.purge_expired(109), 0);
        assert_eq!(c.purge_expired(110), 1);
        assert_eq!(
            c.tile_state(t, Access::Public, 159),
            TileState::Partial(Refresh::Tile)
        );
        assert_eq!(c.purge_expired(160), 0);
        assert_eq!(c.stats().tiles, 0);
        assert_eq!(c.purge_expired(u64::MAX), 1);
        let s = c.stats();
        assert_eq!((s.expirations, s.entries, s.bytes), (2, 0, 0));
    }

    #[test]
    fn huge_times_and_ttls_saturate() {
        let mut c = small(10, 1000);
        let mut m = meta_in(tile(0, 0), 1);
        m.ttl_ms = Some(u64::MAX);
        c.insert("a", m, 0, u64::MAX - 1, Priority::Visible)
            .unwrap();
        assert!(c.get("a", Access::Public, u64::MAX - 1).is_some());
        c.insert_tile(tile(0, 0), &["a"], Some(u64::MAX), Access::Public, u64::MAX)
            .unwrap();
        assert_eq!(
            c.tile_state(tile(0, 0), Access::Public, u64::MAX),
            TileState::Unknown
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::tile::unproject;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    const Z: u8 = 4;
    /// Eight data tiles inside the zoom-2 tile 2/1/1.
    fn pos(i: u8) -> TileId {
        TileId::new(Z, 4 + u32::from(i % 4), 4 + u32::from((i / 4) % 2)).unwrap()
    }
    fn id(i: u8) -> String {
        format!("i{i}")
    }
    fn tier(i: u8) -> Access {
        Access::from_rank(i % 4).unwrap_or(Access::Agent)
    }
    fn meta(p: u8, size: usize, access: Access, class: &str, ttl: Option<u64>) -> ItemMeta {
        let (lon, lat) = unproject(pos(p).centre(), Z);
        ItemMeta {
            lon,
            lat,
            class: class.into(),
            access,
            ttl_ms: ttl,
            size_bytes: size,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert {
            id: u8,
            pos: u8,
            size: usize,
            prefetch: bool,
            access: u8,
            class: u8,
            ttl: Option<u64>,
        },
        Get {
            id: u8,
            caller: u8,
        },
        Peek {
            id: u8,
            caller: u8,
        },
        ReadTile {
            pos: u8,
            caller: u8,
        },
        InsertTile {
            zoom_up: u8,
            pos: u8,
            ids: Vec<u8>,
            ttl: Option<u64>,
            fetched_at: u8,
        },
        SetVisible(Vec<u8>),
        InvalidateIds(Vec<u8>),
        InvalidateTile(u8),
        InvalidateClass(u8),
        InvalidateAll,
        Purge,
        DropAbove(u8),
        Advance(u64),
    }

    const CLASSES: [&str; 3] = ["active", "off_market", "other"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..10, 0u8..8, 0usize..=25, any::<bool>(), 0u8..4, 0u8..3,
                  proptest::option::of(0u64..400))
                .prop_map(|(id, pos, size, prefetch, access, class, ttl)| Op::Insert {
                    id, pos, size, prefetch, access, class, ttl
                }),
            3 => (0u8..10, 0u8..4).prop_map(|(id, caller)| Op::Get { id, caller }),
            1 => (0u8..10, 0u8..4).prop_map(|(id, caller)| Op::Peek { id, caller }),
            2 => (0u8..8, 0u8..4).prop_map(|(pos, caller)| Op::ReadTile { pos, caller }),
            3 => (0u8..3, 0u8..8, proptest::collection::vec(0u8..10, 0..6),
                  proptest::option::of(0u64..400), 0u8..4)
                .prop_map(|(zoom_up, pos, ids, ttl, fetched_at)| Op::InsertTile {
                    zoom_up, pos, ids, ttl, fetched_at
                }),
            2 => proptest::collection::vec(0u8..8, 0..4).prop_map(Op::SetVisible),
            1 => proptest::collection::vec(0u8..10, 0..3).prop_map(Op::InvalidateIds),
            1 => (0u8..8).prop_map(Op::InvalidateTile),
            1 => (0u8..3).prop_map(Op::InvalidateClass),
            1 => Just(Op::InvalidateAll),
            1 => Just(Op::Purge),
            1 => (0u8..4).prop_map(Op::DropAbove),
            3 => (0u64..150).prop_map(Op::Advance),
        ]
    }

    fn config(swr: u64) -> CacheConfig {
        CacheConfig {
            tile_zoom: Z,
            max_items: 6,
            max_bytes: 60,
            max_tiles: 10,
            default_ttl_ms: 200,
            class_ttl_ms: HashMap::from([("active".into(), 300), ("off_market".into(), 1_000)]),
            tile_ttl_ms: None,
            stale_while_revalidate_ms: swr,
        }
    }

    /// Structural invariants that hold after every call.
    fn check_invariants(c: &TileCache<u32>, now: u64) -> Result<(), TestCaseError> {
        let cfg = c.config();
        prop_assert!(c.len() <= cfg.max_items);
        prop_assert!(c.bytes() <= cfg.max_bytes);
        let sum: usize = c.items.iter().map(|(_, it)| it.size_bytes).sum();
        prop_assert_eq!(sum, c.bytes());
        let s = c.stats();
        prop_assert_eq!(s.entries, c.len());
        prop_assert_eq!(s.bytes, c.bytes());
        prop_assert_eq!(s.tiles, c.tiles.len());
        prop_assert!(c.tiles.len() <= cfg.max_tiles);
        let mut load: HashMap<TileId, Load> = HashMap::new();
        for (k, it) in c.items.iter() {
            prop_assert_eq!(&**k, it.id());
            prop_assert_eq!(
                Ok(it.tile),
                TileId::from_lon_lat(it.lon, it.lat, cfg.tile_zoom)
            );
            let l = load.entry(it.tile).or_default();
            l.items += 1;
            l.bytes += it.size_bytes;
        }
        prop_assert_eq!(&load, &c.load);
        let mut protected = Load::default();
        for t in &c.visible {
            if let Some(l) = load.get(t) {
                protected.items += l.items;
                protected.bytes += l.bytes;
            }
        }
        prop_assert_eq!(protected, c.protected);
        // What a tile state promises is true.
        let swr = cfg.stale_while_revalidate_ms;
        for (t, e) in c.tiles.iter() {
            for caller in Access::ALL {
                let state = c.tile_state(*t, caller, now);
                if !state.is_showable() {
                    continue;
                }
                prop_assert!(e.fetched_at >= caller);
                prop_assert!(freshness(e.expires_at_ms, swr, now) != Freshness::Gone);
                for id in &e.ids {
                    let item = c.items.peek(&**id);
                    prop_assert!(item.is_some(), "{} shown {:?} without {}", t, state, id);
                    let Some(item) = item else { continue };
                    if !caller.can_see(item.access) {
                        continue;
                    }
                    let f = freshness(item.expires_at_ms, swr, now);
                    match &state {
                        TileState::Fresh => {
                            prop_assert_eq!(f, Freshness::Fresh);
                            prop_assert!(now < e.expires_at_ms);
                        }
                        _ => prop_assert!(f != Freshness::Gone),
                    }
                }
            }
        }
        Ok(())
    }

    fn snapshot(c: &TileCache<u32>) -> Vec<(String, usize, u32)> {
        c.items
            .iter()
            .map(|(k, it)| (k.to_string(), it.size_bytes, it.payload))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn invariants_hold_after_every_op(
            swr in prop_oneof![Just(0u64), Just(50u64)],
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut c: TileCache<u32> = TileCache::new(config(swr)).unwrap();
            let mut now = 0u64;
            for (n, op) in ops.into_iter().enumerate() {
                let n = n as u32;
                match op {
                    Op::Insert { id: i, pos: p, size, prefetch, access, class, ttl } => {
                        let key = id(i);
                        let priority = if prefetch { Priority::Prefetch } else { Priority::Visible };
                        let protected_before: Vec<String> = c.items.iter()
                            .filter(|(_, it)| c.visible.contains(&it.tile))
                            .map(|(k, _)| k.to_string())
                            .collect();
                        let before = snapshot(&c);
                        let stats = c.stats();
                        let m = meta(p, size, tier(access), CLASSES[class as usize % 3], ttl);
                        let out = c.insert(&key, m, n, now, priority).unwrap();
                        if out.rejected {
                            prop_assert!(prefetch);
                            prop_assert_eq!(snapshot(&c), before);
                            prop_assert_eq!(c.stats().rejected, stats.rejected + 1);
                        } else {
                            let got = c.peek(&key, Access::Agent, now).map(|l| *l.item.payload());
                            let expect_live = ttl != Some(0) || swr > 0;
                            prop_assert!(c.contains(&key));
                            if expect_live {
                                prop_assert_eq!(got, Some(n));
                            }
                        }
                        prop_assert_eq!(c.stats().evictions, stats.evictions + out.evicted as u64);
                        if prefetch {
                            for k in &protected_before {
                                prop_assert!(c.contains(k), "prefetch evicted protected {}", k);
                            }
                        }
                    }
                    Op::Get { id: i, caller } => {
                        let s = c.stats();
                        let found = c.get(&id(i), tier(caller), now).is_some();
                        let t = c.stats();
                        prop_assert_eq!(
                            t.hits + t.stale_hits + t.misses,
                            s.hits + s.stale_hits + s.misses + 1
                        );
                        prop_assert_eq!(found, t.misses == s.misses);
                    }
                    Op::Peek { id: i, caller } => {
                        let s = c.stats();
                        let order = snapshot(&c);
                        let _ = c.peek(&id(i), tier(caller), now);
                        prop_assert_eq!(c.stats(), s);
                        prop_assert_eq!(snapshot(&c), order);
                    }
                    Op::ReadTile { pos: p, caller } => {
                        let expect = c.tile_state(pos(p), tier(caller), now);
                        let mut shown = 0;
                        let got = c.read_tile(pos(p), tier(caller), now, |it, _| {
                            assert!(tier(caller).can_see(it.access()));
                            shown += 1;
                        });
                        prop_assert_eq!(got, expect);
                        let _ = shown;
                    }
                    Op::InsertTile { zoom_up, pos: p, ids, ttl, fetched_at } => {
                        let t = pos(p).ancestor(Z - zoom_up).unwrap();
                        let names: Vec<String> = ids.iter().map(|&i| id(i)).collect();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        c.insert_tile(t, &refs, ttl, tier(fetched_at), now).unwrap();
                    }
                    Op::SetVisible(ps) => {
                        let tiles: Vec<TileId> = ps.iter().map(|&p| pos(p)).collect();
                        c.set_visible(&tiles);
                    }
                    Op::InvalidateIds(is) => {
                        let names: Vec<String> = is.iter().map(|&i| id(i)).collect();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        let len = c.len();
                        let n = c.invalidate(Invalidate::Ids(&refs));
                        prop_assert_eq!(c.len(), len - n);
                        for r in &refs {
                            prop_assert!(!c.contains(r));
                        }
                    }
                    Op::InvalidateTile(p) => {
                        let len = c.len();
                        let n = c.invalidate(Invalidate::Tiles(&[pos(p)]));
                        prop_assert_eq!(c.len(), len - n);
                        prop_assert_eq!(c.tile_state(pos(p), Access::Public, now), TileState::Unknown);
                    }
                    Op::InvalidateClass(k) => {
                        let class = CLASSES[k as usize % 3];
                        c.invalidate(Invalidate::Class(class));
                        prop_assert!(c.items.iter().all(|(_, it)| it.class() != class));
                    }
                    Op::InvalidateAll => {
                        c.invalidate(Invalidate::All);
                        prop_assert!(c.is_empty());
                    }
                    Op::Purge => {
                        let len = c.len();
                        let n = c.purge_expired(now);
                        prop_assert_eq!(c.len(), len - n);
                        let all_live = c
                            .items
                            .iter()
                            .all(|(_, it)| freshness(it.expires_at_ms, swr, now) != Freshness::Gone);
                        prop_assert!(all_live);
                    }
                    Op::DropAbove(t) => {
                        let tier = tier(t);
                        c.drop_above(tier);
                        prop_assert!(c.items.iter().all(|(_, it)| it.access <= tier));
                        prop_assert!(c.tiles.iter().all(|(_, e)| e.fetched_at <= tier));
                    }
                    Op::Advance(dt) => now += dt,
                }
                check_invariants(&c, now)?;
            }
        }
    }

    /// Reference model: a plain list, least recently used first, evicting by the documented
    /// rule (skip-and-promote protected items; refuse a prefetch that only protected items
    /// could make room for).
    #[derive(Default)]
    struct Model {
        order: VecDeque<(String, TileId, usize)>,
        visible: HashSet<TileId>,
        /// The ids `pos(0)`'s tile list names, in list order. Replacing an item that moves
        /// out of that tile takes it off the list.
        listed0: Vec<String>,
    }

    impl Model {
        fn fits(cfg: &CacheConfig, items: usize, bytes: usize, size: usize) -> bool {
            items < cfg.max_items && bytes + size <= cfg.max_bytes
        }
        fn totals<'a>(it: impl Iterator<Item = &'a (String, TileId, usize)>) -> (usize, usize) {
            it.fold((0, 0), |(n, b), e| (n + 1, b + e.2))
        }
        fn insert(
            &mut self,
            cfg: &CacheConfig,
            id: &str,
            t: TileId,
            size: usize,
            p: Priority,
        ) -> InsertOutcome {
            let others = || self.order.iter().filter(|e| e.0 != id);
            let (n, b) = Self::totals(others());
            let (pn, pb) = Self::totals(others().filter(|e| self.visible.contains(&e.1)));
            if p == Priority::Prefetch
                && !Self::fits(cfg, n, b, size)
                && !Self::fits(cfg, pn, pb, size)
            {
                return InsertOutcome {
                    evicted: 0,
                    rejected: true,
                };
            }
            if self.order.iter().any(|e| e.0 == id && e.1 == pos(0)) && t != pos(0) {
                self.listed0.retain(|k| k != id);
            }
            self.order.retain(|e| e.0 != id);
            let mut evicted = 0;
            loop {
                let (n, b) = Self::totals(self.order.iter());
                if Self::fits(cfg, n, b, size) {
                    break;
                }
                if self.order.iter().any(|e| !self.visible.contains(&e.1)) {
                    while self
                        .order
                        .front()
                        .is_some_and(|e| self.visible.contains(&e.1))
                    {
                        let e = self.order.pop_front().unwrap();
                        self.order.push_back(e);
                    }
                }
                self.order.pop_front();
                evicted += 1;
            }
            self.order.push_back((id.to_string(), t, size));
            InsertOutcome {
                evicted,
                rejected: false,
            }
        }
        fn touch(&mut self, id: &str) {
            if let Some(i) = self.order.iter().position(|e| e.0 == id) {
                let e = self.order.remove(i).unwrap();
                self.order.push_back(e);
            }
        }
    }

    #[derive(Clone, Debug)]
    enum LruOp {
        Insert {
            id: u8,
            pos: u8,
            size: usize,
            prefetch: bool,
        },
        Get(u8),
        Peek(u8),
        ReadTile,
        SetVisible(Vec<u8>),
    }

    fn lru_op(with_visible: bool) -> impl Strategy<Value = LruOp> {
        let vis = if with_visible { 2 } else { 0 };
        prop_oneof![
            6 => (0u8..10, 0u8..8, 0usize..=20, any::<bool>())
                .prop_map(|(id, pos, size, prefetch)| LruOp::Insert { id, pos, size, prefetch }),
            3 => (0u8..10).prop_map(LruOp::Get),
            1 => (0u8..10).prop_map(LruOp::Peek),
            1 => Just(LruOp::ReadTile),
            vis => proptest::collection::vec(0u8..8, 0..4).prop_map(LruOp::SetVisible),
        ]
    }

    fn run_against_model(ops: Vec<LruOp>) -> Result<(), TestCaseError> {
        let cfg = CacheConfig {
            max_items: 5,
            max_bytes: 50,
            ..config(0)
        };
        let mut c: TileCache<u32> = TileCache::new(cfg.clone()).unwrap();
        let mut m = Model {
            listed0: (0..10).map(id).collect(),
            ..Model::default()
        };
        // Every id is listed in pos(0)'s tile, so reading it touches them in list order.
        let all: Vec<String> = (0..10).map(id).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        c.insert_tile(pos(0), &refs, None, Access::Agent, 0)
            .unwrap();
        for op in ops {
            match op {
                LruOp::Insert {
                    id: i,
                    pos: p,
                    size,
                    prefetch,
                } => {
                    let pr = if prefetch {
                        Priority::Prefetch
                    } else {
                        Priority::Visible
                    };
                    let got = c
                        .insert(
                            &id(i),
                            meta(p, size, Access::Public, "active", None),
                            0,
                            0,
                            pr,
                        )
                        .unwrap();
                    let want = m.insert(&cfg, &id(i), pos(p), size, pr);
                    prop_assert_eq!(got, want);
                }
                LruOp::Get(i) => {
                    c.get(&id(i), Access::Public, 0);
                    m.touch(&id(i));
                }
                LruOp::Peek(i) => {
                    c.peek(&id(i), Access::Public, 0);
                }
                LruOp::ReadTile => {
                    c.read_tile(pos(0), Access::Public, 0, |_, _| {});
                    for k in m.listed0.clone() {
                        m.touch(&k);
                    }
                }
                LruOp::SetVisible(ps) => {
                    let tiles: Vec<TileId> = ps.iter().map(|&p| pos(p)).collect();
                    c.set_visible(&tiles);
                    m.visible = tiles.into_iter().collect();
                }
            }
            // The cache iterates most recent first.
            let mut got: Vec<String> = c.items.iter().map(|(k, _)| k.to_string()).collect();
            got.reverse();
            let want: Vec<String> = m.order.iter().map(|e| e.0.clone()).collect();
            prop_assert_eq!(got, want);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// With no visible set, eviction is exactly least-recently-used.
        #[test]
        fn eviction_is_lru_without_visible_tiles(ops in proptest::collection::vec(lru_op(false), 1..60)) {
            run_against_model(ops)?;
        }

        /// With visible tiles, eviction follows the documented skip-and-promote rule.
        #[test]
        fn eviction_matches_model_with_visible_tiles(ops in proptest::collection::vec(lru_op(true), 1..60)) {
            run_against_model(ops)?;
        }
    }
}
