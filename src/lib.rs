//! tilewarm: a tile-aware LRU cache with per-class TTLs, a motion-aware prefetch planner
//! and a batch fetcher for map pages — as a sans-IO core shared by the browser package,
//! the edge worker, the server and the simulator.
//!
//! The core takes time as `now_ms` and hands requests out as values; it does no I/O.
//! See `ARCHITECTURE.md` for the map of the code.

mod access;
mod batch;
mod cache;
mod client;
#[cfg(feature = "data")]
pub mod dataset;
mod origin;
mod planner;
pub mod protocol;
mod tile;
#[cfg(feature = "wasm")]
mod wasm;

/// The core's hash map (also in public fields such as [`CacheConfig::class_ttl_ms`]):
/// hashbrown with its default hasher (foldhash), the table and hasher the `lru` crate already
/// brings, so the wasm build carries one of each instead of adding std's SipHash. Iteration
/// order is unspecified, as with std's; wherever order matters the core sorts.
pub type HashMap<K, V> = hashbrown::HashMap<K, V>;
/// The core's hash set; see [`HashMap`].
pub type HashSet<T> = hashbrown::HashSet<T>;

/// Sorts `(u64, u64)` keys ascending. Every sort on the core's paths goes through this
/// one instantiation (ids as `(id, 0)`, scores as `(bits, tile)`), so the wasm carries a
/// single copy of the sort code.
#[inline(never)]
pub(crate) fn sort_pairs(v: &mut [(u64, u64)]) {
    v.sort_unstable();
}

pub use access::{Access, UnknownAccess};
pub use batch::{
    BatchConfig, BatchConfigError, BatchStats, Batcher, Failure, FailureOutcome, Finished, Kind,
    Outgoing, RequestId,
};
pub use cache::{
    CacheConfig, CacheError, CacheItem, CacheStats, InsertOutcome, Invalidate, ItemMeta, Lookup,
    Priority, Refresh, TileCache, TileState, MAX_ID_BYTES, MAX_SPLIT_LEVELS,
};
pub use client::{
    Client, ClientConfig, ClientError, ClientStats, Event, FetchError, Payload, Send, TileStatus,
    ViewOutcome,
};
pub use origin::{Origin, OriginError, OriginItem};
pub use planner::{Plan, Planner, PlannerConfig, PlannerError, Viewport, Work, MAX_VIEW_ZOOM};
pub use protocol::{
    decode_error, decode_request, decode_response, validate_item_fields, BatchRequest,
    BatchResponse, ErrorBody, ErrorCode, Item, Limits, ProtocolError, RawData, TileList,
};
pub use tile::{
    cover, cover_range, project, ring_around, tiles_per_axis, unproject, wrap_lon, Bbox,
    CoverRange, TileError, TileId, TilePoint, MAX_LATITUDE, MAX_TILES_PER_CALL, MAX_ZOOM,
};
