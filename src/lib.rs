//! tilewarm: a tile-aware LRU cache with per-class TTLs, a prefetch planner (the view's
//! neighbourhood, and a motion look-ahead as an option) and a batch fetcher for map pages —
//! as a sans-IO core shared by the browser package,
//! the edge worker, the server and the simulator.
//!
//! The core takes time as `now_ms` and hands requests out as values; it does no I/O.
//! See `ARCHITECTURE.md` for the map of the code and the glossary.
//!
//! # The public API, by module
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`tile`] | Web Mercator tile math: [`TileId`], `Bbox`, `cover`, `project`, rings |
//! | [`access`] | the access tiers, [`Access`] |
//! | [`cache`] | `ItemCache`, the tile-aware item cache, and its config, items and counters |
//! | [`planner`] | `Planner`: what to fetch for a `Viewport`, and what to prefetch |
//! | [`batch`] | `Batcher`: planned work into batch requests, retries, backoff, breaker |
//! | [`client`] | [`Client`]: cache + planner + batcher as one sans-IO state machine |
//! | [`clock`] | `Clock`: a wall clock read as monotonic time (the server's in-process tier) |
//! | [`protocol`] | the wire format: `BatchRequest`, `BatchResponse`, error bodies, decoders |
//! | [`origin`] | `Origin`: an in-memory backend answering batch requests |
//! | [`proxy`] | `Proxy`: the caching batch proxy behind the edge worker |
//! | `dataset` | data-set loaders (feature `data`) |
//!
//! The types nearly every user names are also at the root: [`TileId`], [`Access`],
//! [`Client`] and [`ClientConfig`].
//!
//! ```
//! use tilewarm::planner::Viewport;
//! use tilewarm::client::{Client, ClientConfig};
//!
//! let mut client: Client<String> = Client::new(ClientConfig::default()).unwrap();
//! let view = Viewport::new(-122.36, 47.59, -122.31, 47.62, 14.5).unwrap();
//! let shown = client.set_viewport(view, 0, |_item, _stale| {});
//! assert!(!shown.complete); // an empty cache: the view's tiles are being fetched
//! let first = client.poll_request(0).unwrap();
//! assert!(!first.request.tiles.is_empty());
//! ```

pub mod access;
pub mod batch;
pub mod cache;
pub mod client;
pub mod clock;
#[cfg(feature = "data")]
pub mod dataset;
#[cfg(feature = "edge")]
mod edge;
pub mod origin;
pub mod planner;
pub mod protocol;
pub mod proxy;
mod size_tricks;
pub mod tile;
mod util;
#[cfg(feature = "wasm")]
mod wasm;

pub use access::Access;
pub use client::{Client, ClientConfig};
pub use tile::TileId;
