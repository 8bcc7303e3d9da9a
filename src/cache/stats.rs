//! The cache's counters.

use super::ItemCache;

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

impl<P> ItemCache<P> {
    /// Counters and current sizes.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.items.len(),
            bytes: self.bytes,
            tiles: self.tiles.len(),
            ..self.stats
        }
    }
}
