//! The in-memory backend: the core's [`Origin`] over `--data` (a King County CSV or JSON
//! lines) or the synthetic city. The default: nothing to install, counts are free.

use tilewarm::dataset::{load_path, synthetic_city};
use tilewarm::origin::Origin;
use tilewarm::protocol::{BatchRequest, BatchResponse, RawData};
use tilewarm::{Access, TileId};

use super::{ItemCount, LoadError, OriginBackend, OriginFailure, OriginFuture};
use crate::config::Config;

/// The data set, indexed.
pub struct MemoryOrigin {
    origin: Origin<RawData>,
    tile_ttl_s: u32,
    source: String,
}

impl MemoryOrigin {
    /// Loads `--data`, or generates the synthetic city.
    pub fn load(config: &Config) -> Result<MemoryOrigin, LoadError> {
        let (items, source) = match &config.data {
            Some(path) => (load_path(path)?, path.display().to_string()),
            None => (
                synthetic_city(config.seed, config.synthetic_homes),
                format!(
                    "synthetic city (seed {}, {} homes)",
                    config.seed, config.synthetic_homes
                ),
            ),
        };
        Ok(MemoryOrigin::new(
            Origin::new(items)?,
            config.tile_ttl_s,
            source,
        ))
    }

    /// Over an origin built elsewhere.
    pub fn new(origin: Origin<RawData>, tile_ttl_s: u64, source: String) -> MemoryOrigin {
        MemoryOrigin {
            origin,
            tile_ttl_s: tile_ttl_s.min(u32::MAX as u64) as u32,
            source,
        }
    }
}

impl OriginBackend for MemoryOrigin {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        Box::pin(async move { Ok(self.origin.answer(request, Some(self.tile_ttl_s))) })
    }

    fn count_up_to<'a>(
        &'a self,
        tiles: &'a [TileId],
        access: Access,
        _limit: usize,
    ) -> OriginFuture<'a, Result<ItemCount, OriginFailure>> {
        let n = tiles.iter().map(|&t| self.origin.count_in(t, access)).sum();
        Box::pin(async move { Ok(ItemCount::Exact(n)) })
    }

    fn index(&self) -> Option<&Origin<RawData>> {
        Some(&self.origin)
    }

    fn describe(&self) -> String {
        format!("memory: {} items from {}", self.origin.len(), self.source)
    }
}
