//! The batch planner: turns planned [`Work`](crate::planner::Work) into batch requests and
//! keeps track of them.
//!
//! - Requests hold at most `max_tiles` tiles and `max_ids` ids; foreground work goes out
//!   before prefetch work; a tile or id already in flight is never requested twice
//!   ([`queue`](self) and [`Batcher::poll`]).
//! - At most `max_in_flight` requests are out at once, and prefetch never takes the last
//!   free slot, so a foreground request can always start at once (with a single slot,
//!   prefetch waits while foreground work is queued, but not for a tile held as too large).
//! - A failed request is retried with exponential backoff and equal jitter (a uniform delay
//!   in `[d/2, d]`, so a retry never comes sooner than half the backoff), up to `retries`
//!   times (a `429 Retry-After` is honoured); client errors (4xx) are not retried. The
//!   delay grows with a tile's failures in a row across rounds, so a visible tile queued
//!   again after its request gave up backs off further each round, up to `backoff_max_ms`
//!   (`backoff.rs`).
//! - A circuit breaker suspends **prefetch only** after `breaker_threshold` consecutive
//!   failures, and lets one prefetch through as a probe after a cool-down that doubles
//!   while the backend keeps failing. Foreground requests are never held back by it: a
//!   slow backend must not stall the page any more than it has to (`breaker.rs`). What a
//!   partial answer leaves out is the failure a whole answer with its `error` code is:
//!   one that sheds load or says the origin failed (`overloaded`, `rate_limited`,
//!   `upstream_timeout`, `upstream_error`) counts as such a failure, and the tiles it left
//!   out back off and are retried as a failed request's; one too large to serve
//!   (`payload_too_large`) is given up at once ([`Batcher::on_answer`]), but for a data
//!   tile refused the first time (it may have gone out within a coarse tile): it goes out
//!   on its own, in no coarse tile, for a tile TTL, the rest of its requests coalescing as
//!   usual; and a data tile refused so on its own (or by a whole 413) is held: not asked
//!   for again for a tile TTL, unless released ([`Batcher::release_held`]: an
//!   invalidation covers it, the tier changed).
//!
//! Sans-IO: the caller sends [`Transmit`] requests however it likes and reports back with
//! [`Batcher::on_success`] / [`Batcher::on_failure`]; time is always an argument.
//!
//! Files: `config.rs` (settings), `request.rs` (what goes out, how it fails, what it was
//! for), `queue.rs` (the queues of work), `coalesce.rs` (data tiles into coarser request
//! tiles), `backoff.rs`, `breaker.rs`, and `batcher.rs`, the [`Batcher`] that ties them.

mod backoff;
mod batcher;
mod breaker;
mod coalesce;
mod config;
mod queue;
mod request;
#[cfg(test)]
mod tests;

pub use batcher::{BatchStats, Batcher, DEFAULT_TOO_LARGE_HOLD_MS};
pub use coalesce::coalesce;
pub use config::{BatchConfig, BatchConfigError};
pub use request::{Failure, FailureOutcome, Finished, Transmit};

/// Identifies one request while it is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Whether a request serves what the user sees now, or what they may see next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Foreground,
    Prefetch,
}
