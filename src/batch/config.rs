//! Batch settings and their checks.

/// Batch settings. The defaults suit a browser talking to one batch endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Tiles per request, at most (default 16).
    pub max_tiles: usize,
    /// Ids per request, at most (default 200).
    pub max_ids: usize,
    /// Requests in flight at once, at most (default 4).
    pub max_in_flight: usize,
    /// Time a request may take before it counts as failed (default 3000 ms).
    pub timeout_ms: u64,
    /// Retries after the first attempt (default 2).
    pub retries: u32,
    /// First backoff delay (default 200 ms); doubles per attempt, with equal jitter
    /// (a uniform delay in `[d/2, d]`).
    pub backoff_base_ms: u64,
    /// Backoff delays never exceed this (default 10 000 ms).
    pub backoff_max_ms: u64,
    /// Consecutive failures that open the prefetch breaker (default 3).
    pub breaker_threshold: u32,
    /// First breaker cool-down before a probe (default 5000 ms); doubles per failed probe.
    pub breaker_cooldown_ms: u64,
    /// Longest breaker cool-down (default 60 000 ms).
    pub breaker_max_cooldown_ms: u64,
    /// Seed of the jitter generator (deterministic for tests and the simulator).
    pub seed: u64,
    /// Ask for a coarser tile instead of its data tiles when enough of them are queued
    /// (`coalesce_min_share`): up to this many zoom levels up (default 3: one zoom-11 tile
    /// for up to 64 zoom-14 tiles; 0 = off). Cuts requests when a zoomed-out view misses
    /// hundreds of tiles. The protocol answers a coarse tile with all its items; the
    /// server must accept `tile_zoom - coalesce_levels` (a tilewarm server's default
    /// `--split-levels 3` answers it through its cache) and a request of `max_tiles` such
    /// tiles (`--max-data-tiles`, 1024 by default: 16 tiles of 8x8).
    pub coalesce_levels: u8,
    /// A coarse tile is asked for when at least this share (percent) of its data tiles
    /// are queued (default 50: half of them; 1..=100, 100 = all). Below 100 the coarse
    /// tile's answer also brings the block's other data tiles; it is asked for only when
    /// none of those is cached fresh, in flight (so no item comes twice) or backing off
    /// (so none is asked for before its delay is over). Fewer request tiles (a view's edge
    /// blocks, a queue cut between two requests) for at most the items of the block's
    /// unqueued tiles. With prefetch on they are mostly tiles it would fetch anyway
    /// (docs/BENCHMARKS.md: 50 against 100 on the simulator's traces).
    pub coalesce_min_share: u8,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_tiles: 16,
            max_ids: 200,
            max_in_flight: 4,
            timeout_ms: 3000,
            retries: 2,
            backoff_base_ms: 200,
            backoff_max_ms: 10_000,
            breaker_threshold: 3,
            breaker_cooldown_ms: 5000,
            breaker_max_cooldown_ms: 60_000,
            seed: 0x5eed_7113_3a3d_0001,
            coalesce_levels: 3,
            coalesce_min_share: 50,
        }
    }
}

/// A batch configuration field out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch config {field} must be {allowed}, got {value}")]
pub struct BatchConfigError {
    pub field: &'static str,
    pub value: u64,
    pub allowed: &'static str,
}

impl BatchConfig {
    /// Checks every field; the error names the field, the value and the allowed range.
    pub fn validate(&self) -> Result<(), BatchConfigError> {
        // (field, lowest, highest, as the error says it), in the order of `values`.
        const RANGES: [(&str, u64, u64, &str); 11] = [
            ("max_tiles", 1, 1024, "in 1..=1024"),
            ("max_ids", 1, 100_000, "in 1..=100000"),
            ("max_in_flight", 1, 64, "in 1..=64"),
            ("timeout_ms", 1, 600_000, "in 1..=600000"),
            ("retries", 0, 10, "in 0..=10"),
            ("backoff_base_ms", 1, 600_000, "in 1..=600000"),
            ("backoff_max_ms", 1, 3_600_000, "in 1..=3600000"),
            ("breaker_threshold", 1, 1000, "in 1..=1000"),
            ("breaker_cooldown_ms", 1, 3_600_000, "in 1..=3600000"),
            ("coalesce_levels", 0, 4, "in 0..=4"),
            ("coalesce_min_share", 1, 100, "in 1..=100"),
        ];
        let values = [
            self.max_tiles as u64,
            self.max_ids as u64,
            self.max_in_flight as u64,
            self.timeout_ms,
            self.retries as u64,
            self.backoff_base_ms,
            self.backoff_max_ms,
            self.breaker_threshold as u64,
            self.breaker_cooldown_ms,
            self.coalesce_levels as u64,
            self.coalesce_min_share as u64,
        ];
        for (&(field, lo, hi, allowed), value) in RANGES.iter().zip(values) {
            if value < lo || value > hi {
                return Err(BatchConfigError {
                    field,
                    value,
                    allowed,
                });
            }
        }
        if self.breaker_max_cooldown_ms < self.breaker_cooldown_ms {
            return Err(BatchConfigError {
                field: "breaker_max_cooldown_ms",
                value: self.breaker_max_cooldown_ms,
                allowed: "at least breaker_cooldown_ms",
            });
        }
        Ok(())
    }
}
