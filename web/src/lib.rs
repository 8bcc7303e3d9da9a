//! tilewarm for Rust web front-ends (Leptos, Yew, Dioxus, plain wasm-bindgen apps): a
//! browser shell over the same sans-IO [`tilewarm::Client`] the npm package drives, with
//! requests on gloo-net, aborts on web-sys `AbortController`, wake-ups on gloo-timers and
//! options from Rust or from a JS object of the npm package's shape.
//!
//! ```ignore
//! let cache: TileCache = TileCache::new(&Options::new("https://example.com/v1/batch"))?;
//! let view = cache.set_viewport(-122.36, 47.59, -122.30, 47.63, 14.5)?; // synchronous
//! draw(&view.items);
//! cache.when_complete().await?;              // or: while let Some(u) = updates.next().await
//! draw(&cache.view().items);
//! ```
//!
//! [`TileCache`] compiles for wasm32 only (it is made of the browser's fetch, timers and
//! events), so these docs built for the host (`cargo doc -p tilewarm-web`) lack it, and
//! links to it show as text: `scripts/wasm-cargo.sh doc --no-deps -p tilewarm-web`
//! (or `cargo doc --target wasm32-unknown-unknown -p tilewarm-web`) builds them with it.
//!
//! Files: `options.rs` ([`Options`], host and wasm), `error.rs` ([`Error`]), `auth.rs`
//! ([`Auth`], the token callback), `updates.rs` ([`Updates`], the bounded stream of
//! `TileCache::updates`), `view.rs` ([`Item`], [`Shown`], [`View`], [`Update`]: what the
//! cache hands out, host and wasm, so code shared with a server build can name them),
//! `tiles.rs` (the npm package's tile functions: `tile_for_point`, `tiles_for_bbox`,
//! `neighbour_tiles`, `parent_tile`), `cache.rs` (`TileCache`, wasm32 only: everything that
//! touches the browser, `load_tiles` and `dispose` included), `body.rs` (an answer's body read with a cap, wasm32 only), `retry_after.rs`
//! (a `Retry-After` read as the npm package reads it). Tests: `tests/browser.rs` (wasm-bindgen-test in headless
//! Chromium against tilewarm-server, `make web-test`).

// `TileCache` and the futures crates are wasm32 only: a host build's docs (a server sharing
// the options and views) cannot link to them and show those links as text. `make
// doc-check` checks every link where the crate runs, on wasm32.
#![cfg_attr(not(target_arch = "wasm32"), allow(rustdoc::broken_intra_doc_links))]

mod auth;
#[cfg(target_arch = "wasm32")]
mod body;
#[cfg(target_arch = "wasm32")]
mod cache;
mod error;
mod options;
mod retry_after;
mod tiles;
// Its sending side is used by cache.rs only, in the browser; host builds test it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod updates;
mod view;

pub use auth::{Auth, TokenFuture};
#[cfg(target_arch = "wasm32")]
pub use cache::TileCache;
pub use error::{Error, ErrorCode};
pub use options::{
    BatchOptions, BoundsOptions, Checked, Credentials, Options, PrefetchOptions, TtlOptions,
};
pub use tiles::{neighbour_tiles, parent_tile, tile_for_point, tiles_for_bbox, MAX_BBOX_TILES};
// The core's types a caller of `TileCache` meets.
pub use tilewarm::batch::Kind;
pub use tilewarm::cache::Invalidate;
pub use tilewarm::client::{ChangedTiles, ClientStats, TileState, ViewTooLarge, MAX_CHANGED_TILES};
pub use tilewarm::{Access, TileId};
pub use updates::{Updates, MAX_QUEUED_UPDATES};
pub use view::{Item, Shown, TileLoad, Update, View};
