//! The origin: the core's in-memory [`Origin`] over a data set, made to behave like the
//! expensive valuation API it stands in for — every call waits `--origin-latency-ms` and is
//! counted.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tilewarm::access::Access;
use tilewarm::dataset::{load_path, synthetic_city, DatasetError};
use tilewarm::origin::{Origin, OriginError};
use tilewarm::protocol::{BatchRequest, BatchResponse, RawData};

use crate::config::Config;
use crate::metrics::Metrics;

/// Who is calling the origin, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallSource {
    Request,
    Warmup,
}

/// The origin with its latency and call counting.
pub struct OriginService {
    origin: Origin<RawData>,
    latency: Duration,
    /// Extra latency injected by the soak test's fault hook (`--fault-origin-stall-ms`).
    stall_ms: AtomicU64,
    tile_ttl_s: u32,
    metrics: Arc<Metrics>,
}

/// Loading the data set failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Dataset(#[from] DatasetError),
    #[error("data set: {0}")]
    Origin(#[from] OriginError),
}

impl OriginService {
    /// Loads `--data`, or generates the synthetic city.
    pub fn load(config: &Config, metrics: Arc<Metrics>) -> Result<OriginService, LoadError> {
        let items = match &config.data {
            Some(path) => load_path(path)?,
            None => synthetic_city(config.seed, config.synthetic_homes),
        };
        Ok(OriginService {
            origin: Origin::new(items)?,
            latency: Duration::from_millis(config.origin_latency_ms),
            stall_ms: AtomicU64::new(0),
            tile_ttl_s: config.tile_ttl_s as u32,
            metrics,
        })
    }

    /// The indexed data set (for counting, demos and tests; not an origin call).
    pub fn index(&self) -> &Origin<RawData> {
        &self.origin
    }

    /// One origin call: waits the configured latency, then answers `request` at the caller's
    /// tier. The server always asks at [`Access::Agent`] so that the answer can be cached
    /// for every tier.
    pub async fn fetch(
        &self,
        request: &BatchRequest,
        source: CallSource,
    ) -> BatchResponse<RawData> {
        match source {
            CallSource::Request => self.metrics.origin_calls_request.fetch_add(1, Relaxed),
            CallSource::Warmup => self.metrics.origin_calls_warmup.fetch_add(1, Relaxed),
        };
        let latency = self.latency + Duration::from_millis(self.stall_ms.load(Relaxed));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let response = self.origin.answer(request, Some(self.tile_ttl_s));
        self.metrics
            .origin_items
            .fetch_add(response.items.len() as u64, Relaxed);
        response
    }

    /// [`fetch`](Self::fetch), given up after `timeout_ms` (`--origin-timeout-ms`; 0 waits as
    /// long as the origin takes): `None` when the origin has not answered by then. The
    /// request path and warm-up both call the origin through this.
    pub async fn fetch_within(
        &self,
        request: &BatchRequest,
        source: CallSource,
        timeout_ms: u64,
    ) -> Option<BatchResponse<RawData>> {
        let fetch = self.fetch(request, source);
        match timeout_ms {
            0 => Some(fetch.await),
            ms => tokio::time::timeout(Duration::from_millis(ms), fetch)
                .await
                .ok(),
        }
    }

    /// Sets the injected extra latency of every origin call (the fault hook); 0 clears it.
    pub fn set_stall_ms(&self, ms: u64) {
        self.stall_ms.store(ms, Relaxed);
    }

    /// The injected extra latency, in ms.
    pub fn stall_ms(&self) -> u64 {
        self.stall_ms.load(Relaxed)
    }

    /// Items inside `tile` visible at `access`, from the index (free: no origin call).
    pub fn count_in(&self, tile: tilewarm::tile::TileId, access: Access) -> usize {
        self.origin.count_in(tile, access)
    }
}
