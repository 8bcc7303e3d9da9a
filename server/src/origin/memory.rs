//! The in-memory backend: the core's [`Origin`] over `--data` (a King County CSV or JSON
//! lines) or the synthetic city. The default: nothing to install, counts are free.

use tilewarm::dataset::{load_path, synthetic_city};
use tilewarm::origin::Origin;
use tilewarm::protocol::{BatchRequest, BatchResponse, RawData};
use tilewarm::{Access, TileId};

use super::{ItemBound, ItemCount, LoadError, OriginBackend, OriginFailure, OriginFuture};
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

    /// Whether the requested tiles `bound` covers hold more than its limit at its tier,
    /// counted in the index before anything is copied and no further than `limit + 1`.
    fn exceeds(&self, request: &BatchRequest, bound: &ItemBound<'_>) -> bool {
        let mut left = bound.limit.saturating_add(1);
        for &t in request.tiles.iter().filter(|&&t| bound.covers(t)) {
            left -= self.origin.tile_items(t, bound.access).take(left).count();
            if left == 0 {
                return true;
            }
        }
        false
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
        bound: Option<ItemBound<'a>>,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        let over = bound.filter(|b| self.exceeds(request, b));
        Box::pin(async move {
            match over {
                Some(b) => Err(OriginFailure::TooManyItems { limit: b.limit }),
                None => Ok(self.origin.answer(request, Some(self.tile_ttl_s))),
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tilewarm::dataset::synthetic_city;

    /// The bound is the memory backend's own: it refuses before answering, at the bound's
    /// tier, and only over the bounded tiles.
    #[test]
    fn a_bounded_answer_over_the_limit_is_refused_before_it_is_built() {
        let o = Origin::new(synthetic_city(3, 2_000)).unwrap();
        let (t, _) = o
            .occupied_tiles(10)
            .into_iter()
            .max_by_key(|x| x.1)
            .unwrap();
        let public = o.count_in(t, Access::Public);
        let agent = o.count_in(t, Access::Agent);
        assert!(0 < public && public < agent, "{public} {agent}");
        let m = MemoryOrigin::new(o, 60, "test".into());
        let other = TileId::from_lon_lat(10.0, 10.0, 10).unwrap();
        let request = BatchRequest {
            tiles: vec![t, other],
            ids: Vec::new(),
            access: Access::Agent,
        };
        let answer = |tiles: &[TileId], access, limit| {
            let bound = ItemBound {
                tiles,
                access,
                limit,
            };
            block_on(m.answer(&request, Some(bound)))
        };
        assert_eq!(
            answer(&[t], Access::Public, public - 1).unwrap_err(),
            OriginFailure::TooManyItems { limit: public - 1 }
        );
        // At the limit, an answer (at the request's tier, so with every item).
        let r = answer(&[t], Access::Public, public).unwrap();
        assert_eq!(r.tiles[0].ids.len(), agent);
        // Only the bounded tiles count.
        assert!(answer(&[other], Access::Public, 0).is_ok());
    }

    /// Runs a future that never waits.
    fn block_on<T>(f: OriginFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }
}
