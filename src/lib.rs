//! tilewarm: a tile-aware LRU cache with per-class TTLs, a motion-aware prefetch planner
//! and a batch fetcher for map pages — as a sans-IO core shared by the browser package,
//! the edge worker, the server and the simulator.
//!
//! The core takes time as `now_ms` and hands requests out as values; it does no I/O.
//! See `ARCHITECTURE.md` for the map of the code.

mod access;
mod tile;
#[cfg(feature = "wasm")]
mod wasm;

pub use access::{Access, UnknownAccess};
pub use tile::{
    cover, cover_range, project, ring_around, tiles_per_axis, unproject, wrap_lon, Bbox,
    CoverRange, TileError, TileId, TilePoint, MAX_LATITUDE, MAX_TILES_PER_CALL, MAX_ZOOM,
};
