//! What can go wrong in a cache call, and the id check every insert goes through.

use super::{MAX_CLASSES, MAX_ID_BYTES, MAX_SPLIT_LEVELS};
use crate::tile::TileId;
use crate::util::Quoted;

/// What went wrong in a cache call. Every message names the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A [`CacheConfig`](super::CacheConfig) field is out of range.
    #[error("cache config {field} must be {allowed}, got {value}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
    /// A bound of [`CacheConfig::bounds`](super::CacheConfig::bounds) is out of range (its
    /// own variant so that the value stays a number until the message is written).
    #[error("cache config {field} must be {allowed}, got {value}")]
    InvalidBounds {
        field: &'static str,
        value: f64,
        allowed: &'static str,
    },
    /// A membership tile is finer than the cache's data zoom.
    #[error(
        "tile {tile} is finer than the cache's data zoom {tile_zoom}: \
         membership tiles must have zoom {}..={tile_zoom}",
        .tile_zoom.saturating_sub(MAX_SPLIT_LEVELS)
    )]
    TooFine { tile: TileId, tile_zoom: u8 },
    /// A membership tile is more than [`MAX_SPLIT_LEVELS`] levels coarser than the data zoom.
    #[error(
        "tile {tile} is more than {MAX_SPLIT_LEVELS} zoom levels coarser than the cache's \
         data zoom {tile_zoom}: membership tiles must have zoom {}..={tile_zoom}",
        .tile_zoom.saturating_sub(MAX_SPLIT_LEVELS)
    )]
    TooCoarse { tile: TileId, tile_zoom: u8 },
    /// An item id or item field is invalid.
    #[error("invalid item {}: {reason}", Quoted(id))]
    InvalidItem { id: String, reason: String },
    /// A single item is bigger than the whole cache.
    #[error(
        "item {} is {size_bytes} bytes, more than the cache's max_bytes of {max_bytes}",
        Quoted(id)
    )]
    ItemTooLarge {
        id: String,
        size_bytes: usize,
        max_bytes: usize,
    },
    /// The item's class would be one more than [`MAX_CLASSES`] distinct classes held at
    /// once. The item is not cached (nothing changed); the cache's other items are not
    /// touched, and once no held item has one of the classes held, another class can be.
    #[error(
        "item {} has class {}, and {MAX_CLASSES} other classes are cached: a cache holds \
         items of at most {MAX_CLASSES} distinct classes at once",
        Quoted(id),
        Quoted(class)
    )]
    TooManyClasses { id: String, class: String },
}

pub(super) fn short(id: &str) -> String {
    id.chars().take(64).collect()
}

pub(super) fn check_id(id: &str) -> Result<(), CacheError> {
    if id.is_empty() {
        return Err(CacheError::InvalidItem {
            id: String::new(),
            reason: "the id must not be empty".into(),
        });
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CacheError::InvalidItem {
            id: short(id),
            reason: format!(
                "the id is {} bytes long, at most {MAX_ID_BYTES} are allowed",
                id.len()
            ),
        });
    }
    Ok(())
}
