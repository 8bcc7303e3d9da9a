//! What the client is made from ([`ClientConfig`]) and the errors a caller can cause.

use crate::access::Access;
use crate::batch::{BatchConfig, BatchConfigError};
use crate::cache::{CacheConfig, CacheError};
use crate::planner::{PlannerConfig, PlannerError};
use crate::protocol::Limits;

/// Everything the client needs to know. `cache.tile_zoom` and `planner.tile_zoom` must
/// agree ([`ClientConfig::with_tile_zoom`] sets both).
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    pub cache: CacheConfig,
    pub planner: PlannerConfig,
    pub batch: BatchConfig,
    pub limits: Limits,
    /// The caller's access tier (default public).
    pub access: Access,
}

impl ClientConfig {
    /// Sets the data zoom of both the cache and the planner.
    pub fn with_tile_zoom(mut self, z: u8) -> Self {
        self.cache.tile_zoom = z;
        self.planner.tile_zoom = z;
        self
    }
}

/// Why [`Client::new`](super::Client::new) refused a configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Planner(#[from] PlannerError),
    #[error(transparent)]
    Batch(#[from] BatchConfigError),
    /// The cache and the planner were configured with different data zooms.
    #[error("cache tile_zoom ({cache}) and planner tile_zoom ({planner}) must be equal")]
    ZoomMismatch { cache: u8, planner: u8 },
}

/// Why a viewport is too wide to fetch ([`ViewOutcome::too_wide`](super::ViewOutcome::too_wide)):
/// it covers more data tiles than the planner's `max_visible_tiles`. Nothing is fetched
/// for it then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "viewport covers more than max_visible_tiles ({max}) data tiles at zoom {tile_zoom}: \
     zoom in, or raise min_zoom so nothing is fetched at this zoom"
)]
pub struct ViewTooLarge {
    /// The planner's `max_visible_tiles`.
    pub max: usize,
    /// The data zoom.
    pub tile_zoom: u8,
}
