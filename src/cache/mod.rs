//! The tile-aware item cache: an LRU of items bounded by count and bytes, with per-class TTLs,
//! stale-while-revalidate, access tiers, and a tile index that remembers which items the
//! backend listed for each data tile.
//!
//! Time comes in as `now_ms`; nothing here reads a clock, sleeps or does I/O.
//!
//! [`ItemCache`] is defined here; its parts live beside it: `config.rs` ([`CacheConfig`]),
//! `items.rs` (the item LRU with visible-item protection), `store.rs` (the items' slots
//! and recency list it works on), `key.rs` (an id as the cache holds it), `list.rs` (a tile's
//! list of ids, by slot while held), `tiles.rs` (the tile index and
//! [`TileFreshness`]), `bounds.rs` (the data's extent, outside which tiles hold no items),
//! `invalidate.rs` (removal on purpose and expiry), `stats.rs`
//! ([`CacheStats`]) and `error.rs` ([`CacheError`]).
//!
//! ```
//! use tilewarm::access::Access;
//! use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache, TileFreshness};
//! use tilewarm::tile::TileId;
//!
//! let mut cache: ItemCache<&str> = ItemCache::new(CacheConfig::default()).unwrap();
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
//! assert_eq!(cache.tile_freshness(tile, Access::Public, 1_000), TileFreshness::Fresh);
//! let mut shown = Vec::new();
//! cache.read_tile(tile, Access::Public, 1_000, |item, class, _stale| {
//!     shown.push((*item.payload(), class.to_owned()))
//! });
//! assert_eq!(shown, [("payload", "active".to_owned())]);
//! ```

mod bounds;
mod classes;
mod config;
mod error;
mod invalidate;
mod items;
mod key;
mod list;
mod stats;
mod store;
#[cfg(test)]
mod tests;
mod tiles;

pub use bounds::{parse_bounds, WORLD};
pub use classes::MAX_CLASSES;
pub use config::{CacheConfig, MAX_ID_BYTES, MAX_SPLIT_LEVELS};
pub use error::CacheError;
pub use invalidate::Invalidate;
pub use items::{
    item_size_bytes, CacheItem, InsertOutcome, ItemMeta, Lookup, Priority, ITEM_OVERHEAD_BYTES,
};
pub use stats::CacheStats;
#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub(crate) use store::slot_bytes;
pub use tiles::{Refresh, TileFreshness};

use bounds::DataBounds;
use std::fmt;
use store::ItemStore;

use lru::LruCache;

use crate::tile::TileId;
use crate::util::{HashMap, HashSet};
use error::{check_id, short};
use items::{Load, Protection};
use tiles::TileEntry;

/// Where an item or a tile list is in its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    Fresh,
    Stale,
    Gone,
}

/// Fresh for `now < expires`, stale for `expires <= now < expires + swr`, gone after.
fn expiry(expires_at_ms: u64, swr_ms: u64, now_ms: u64) -> Expiry {
    if now_ms < expires_at_ms {
        Expiry::Fresh
    } else if now_ms < expires_at_ms.saturating_add(swr_ms) {
        Expiry::Stale
    } else {
        Expiry::Gone
    }
}

/// When an entry that expires at `expires_at_ms` next changes between fresh, stale and gone,
/// seen at `now_ms` (`u64::MAX`: never, it is gone).
fn next_change(expires_at_ms: u64, swr_ms: u64, now_ms: u64) -> u64 {
    match expiry(expires_at_ms, swr_ms, now_ms) {
        Expiry::Fresh => expires_at_ms,
        Expiry::Stale => expires_at_ms.saturating_add(swr_ms),
        Expiry::Gone => u64::MAX,
    }
}

/// A tile-aware LRU cache of items with payloads `P`.
///
/// # Capacity and eviction
/// Items are bounded by count (`max_items`) and by the sum of their `size_bytes`
/// (`max_bytes`); neither is exceeded after any call. Eviction is least-recently-used:
/// [`get`](Self::get) and [`read_tile`](Self::read_tile) refresh recency,
/// [`peek`](Self::peek) and [`tile_freshness`](Self::tile_freshness) do not.
///
/// # Protected items
/// Items are protected at two levels, by their data tile: those of the
/// [`set_visible`](Self::set_visible) tiles (on screen) above those of the
/// [`set_loading`](Self::set_loading) tiles that are not visible (what a host waits for),
/// above the rest. Eviction takes the least protected level present first: unprotected
/// items, then loading ones, then visible ones. Which levels an insert may evict depends
/// on its [`Priority`]: a [`Priority::Prefetch`] insert only unprotected items; a
/// [`Priority::Loading`] one loading items too, never visible ones; a
/// [`Priority::Visible`] one visible items too, as a last resort, since capacity is a hard
/// limit. So a load never pushes out the view, however long the view has been at rest:
/// the load's own items go instead (or the insert is refused), and its tiles cannot be
/// shown, which fails the load in the client.
///
/// All items live in one LRU list; the cache also keeps, per data tile, how many items and
/// bytes are positioned there, so the protected totals of each level are known in O(1)
/// per change and O(visible + loading tiles) per `set_visible` or `set_loading`. To evict
/// from a level, it looks at the LRU tail: an item of that level there is evicted; a more
/// protected one is promoted to most-recent and skipped. Each such item is passed at most
/// once before the next one of the level is found, and after promotion it sits at the
/// head, so eviction is amortised O(1) with no rescans. The cost is that protected items
/// are treated as just used — which they are: they are on screen or waited for. Because
/// the totals are known, an insert that could only fit by evicting items it may not evict
/// is detected before anything is touched and refused with nothing changed.
///
/// The tile index (bounded by `max_tiles`) works the same way with one level: entries of
/// visible and loading tiles are the last to go.
pub struct ItemCache<P> {
    config: CacheConfig,
    /// `config.bounds` at the data zoom.
    bounds: DataBounds,
    items: ItemStore<P>,
    bytes: usize,
    tiles: LruCache<TileId, TileEntry>,
    visible: HashSet<TileId>,
    /// Items and bytes positioned in each data tile that has any.
    load: HashMap<TileId, Load>,
    /// Data tiles a host loads ([`ItemCache::set_loading`]); those also visible count as visible.
    loading: HashSet<TileId>,
    /// Items and bytes positioned in visible tiles.
    protected: Load,
    /// Items and bytes positioned in loading tiles that are not visible.
    loading_protected: Load,
    stats: CacheStats,
    /// Bumped by every change to what a read can return (see [`ItemCache::generation`]).
    generation: u64,
    /// The items' class names, by the index each item keeps (see [`classes`]).
    classes: classes::Classes,
}

impl<P> fmt::Debug for ItemCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemCache")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .field("visible_tiles", &self.visible.len())
            .finish_non_exhaustive()
    }
}

impl<P> ItemCache<P> {
    /// An empty cache; the config is checked with [`CacheConfig::validate`].
    ///
    /// ```
    /// use tilewarm::cache::{CacheConfig, ItemCache};
    /// let cache: ItemCache<()> = ItemCache::new(CacheConfig::default()).unwrap();
    /// assert!(cache.is_empty());
    /// let bad = CacheConfig { tile_zoom: 25, ..CacheConfig::default() };
    /// assert!(ItemCache::<()>::new(bad).is_err());
    /// ```
    pub fn new(config: CacheConfig) -> Result<Self, CacheError> {
        config.validate()?;
        Ok(ItemCache {
            bounds: DataBounds::new(&config.bounds, config.tile_zoom),
            config,
            items: ItemStore::default(),
            bytes: 0,
            tiles: LruCache::unbounded(),
            visible: HashSet::new(),
            load: HashMap::new(),
            loading: HashSet::new(),
            protected: Load::default(),
            loading_protected: Load::default(),
            stats: CacheStats::default(),
            generation: 0,
            classes: classes::Classes::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn swr(&self) -> u64 {
        self.config.stale_while_revalidate_ms
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

    /// How many data tiles of `items_per_tile` items of `bytes_per_item` bytes each the
    /// cache can hold at once, by its limits (`max_items`, `max_bytes`, `max_tiles`). A
    /// figure that is not a positive number (0, negative, NaN) limits nothing: the others
    /// still do. The planning round keeps its prefetch within it
    /// ([`Client`](crate::client::Client)).
    ///
    /// ```
    /// use tilewarm::cache::{CacheConfig, ItemCache};
    /// let config = CacheConfig { max_items: 100, max_bytes: 10_000, ..CacheConfig::default() };
    /// let cache: ItemCache<()> = ItemCache::new(config).unwrap();
    /// assert_eq!(cache.tiles_that_fit(4.0, 50.0), 25); // max_items
    /// assert_eq!(cache.tiles_that_fit(4.0, 500.0), 5); // max_bytes
    /// assert_eq!(cache.tiles_that_fit(0.0, 500.0), 65_536); // max_tiles
    /// assert_eq!(cache.tiles_that_fit(f64::NAN, f64::NAN), 65_536);
    /// ```
    pub fn tiles_that_fit(&self, items_per_tile: f64, bytes_per_item: f64) -> usize {
        let c = &self.config;
        // `max` turns NaN and negatives into 0, a limit over 0 is infinite, and the cast
        // back saturates: a limit over a tiny density is no limit.
        let (items, bytes) = (items_per_tile.max(0.0), bytes_per_item.max(0.0));
        let by_items = c.max_items as f64 / items;
        let by_bytes = c.max_bytes as f64 / (items * bytes);
        (by_items.min(by_bytes) as usize).min(c.max_tiles)
    }

    /// A number that changes whenever an item or a tile list is added, replaced or removed
    /// (reads that drop an expired item included), or the data's extent changes
    /// ([`adopt_bounds`](Self::adopt_bounds)), and only then: while it and the clock's
    /// position before [`read_tile_until`](Self::read_tile_until)'s time are unchanged, a
    /// read returns what it returned before. Lookups, recency and the visible set do not
    /// change it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks a change for [`generation`](Self::generation).
    fn changed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Counts lookups as if a read had been repeated: the client's fast path hands back the
    /// previous view, which a repeated read would have counted again.
    pub(crate) fn count_repeated(&mut self, hits: u64, stale_hits: u64, misses: u64) {
        self.stats.hits += hits;
        self.stats.stale_hits += stale_hits;
        self.stats.misses += misses;
    }

    /// Whether an item with this id is held, whatever its tier or expiry.
    pub fn contains(&self, id: &str) -> bool {
        self.items.contains(id)
    }
}
