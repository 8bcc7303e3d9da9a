//! The cache's limits and lifetimes: [`CacheConfig`] with its defaults and checks.

use std::fmt;

use super::bounds::{self, WORLD};
use super::{CacheError, HashMap};
use crate::tile::{Bbox, MAX_ZOOM};
use crate::util::Quoted;

/// Longest item id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// How many zoom levels coarser than the data zoom a membership tile may be. A tile that
/// much coarser splits onto `4^8 = 65_536` data tiles.
pub const MAX_SPLIT_LEVELS: u8 = 8;

/// Cache limits and lifetimes. Every field has a documented default; [`validate`]
/// (called by [`ItemCache::new`](super::ItemCache::new)) checks the ranges.
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
    /// The data's extent: a data tile entirely outside it holds no items, so it is never
    /// asked for and a view over it is complete (see `cache/bounds.rs`). Default
    /// [`WORLD`](super::WORLD) (every tile may hold items); longitudes in -180..=180 (`west >
    /// east` crosses the antimeridian), latitudes in -90..=90 with `south <= north`.
    pub bounds: Bbox,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            tile_zoom: 14,
            max_items: 50_000,
            max_bytes: 32 * 1024 * 1024,
            max_tiles: 65_536,
            default_ttl_ms: 300_000,
            class_ttl_ms: HashMap::from([
                ("active".to_string(), 300_000),
                ("off_market".to_string(), 14_400_000),
            ]),
            tile_ttl_ms: None,
            stale_while_revalidate_ms: 0,
            bounds: WORLD,
        }
    }
}

impl CacheConfig {
    /// Checks every field; the error names the field, its value and the allowed range.
    ///
    /// ```
    /// use tilewarm::cache::CacheConfig;
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
        let zero = self
            .class_ttl_ms
            .iter()
            .filter(|(_, &ttl)| ttl == 0)
            .map(|(class, _)| class.as_str())
            .min();
        if let Some(class) = zero {
            let class: String = class.chars().take(64).collect();
            return Err(bad(
                "class_ttl_ms",
                format!("{}: 0", Quoted(&class)),
                "a map of class to a TTL of at least 1",
            ));
        }
        if self.tile_ttl_ms == Some(0) {
            return Err(bad("tile_ttl_ms", "Some(0)", "None or at least 1"));
        }
        bounds::check_extent(&self.bounds)
    }

    /// The TTL of an item: the server's, else its class's, else `default_ttl_ms`.
    ///
    /// ```
    /// use tilewarm::cache::CacheConfig;
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
    pub(super) fn tile_ttl(&self, server_ttl_ms: Option<u64>) -> u64 {
        server_ttl_ms
            .or(self.tile_ttl_ms)
            .unwrap_or(self.default_ttl_ms)
    }
}
