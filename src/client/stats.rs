//! The client's counters.

use crate::batch::BatchStats;
use crate::cache::CacheStats;

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
