//! Which tiles' cached items changed ([`Client::take_changed_tiles`]): a host that draws
//! tiles itself from the cache (the map adapters' `loadTiles` tiles, outside the view too)
//! draws those again, and only those.

use super::{Client, Payload};
use crate::tile::TileId;

/// Most tiles [`ChangedTiles::Tiles`] names; past it, [`ChangedTiles::All`].
pub const MAX_CHANGED_TILES: usize = 1024;

/// The tiles whose cached items changed ([`Client::take_changed_tiles`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangedTiles {
    /// These tiles (none when empty): data tiles, or tiles at another zoom (a coarse tile
    /// list, an invalidated tile) standing for the data tiles they overlap.
    Tiles(Vec<TileId>),
    /// Any tile may have: the tier changed, an invalidation by class or of everything, the
    /// data's extent changed, or more than [`MAX_CHANGED_TILES`] tiles changed.
    All,
}

impl Default for ChangedTiles {
    fn default() -> Self {
        ChangedTiles::Tiles(Vec::new())
    }
}

impl ChangedTiles {
    /// Notes that `tile`'s items changed.
    pub(super) fn add(&mut self, tile: TileId) {
        if let ChangedTiles::Tiles(tiles) = self {
            // An answer notes a tile per item, its items mostly grouped by tile: the last
            // one first. (A sort or a hash set here costs 0.3 to 0.5 KB of the page.)
            if tiles.last() == Some(&tile) || tiles.contains(&tile) {
                return;
            }
            if tiles.len() >= MAX_CHANGED_TILES {
                *self = ChangedTiles::All;
            } else {
                tiles.push(tile);
            }
        }
    }

    /// Notes that these tiles' items changed.
    pub(super) fn extend(&mut self, tiles: impl IntoIterator<Item = TileId>) {
        tiles.into_iter().for_each(|t| self.add(t));
    }

    /// Notes that the item `id` is about to change (replaced, moved or removed): its data
    /// tile, when the cache holds it.
    pub(super) fn add_item<P>(&mut self, cache: &crate::cache::ItemCache<P>, id: &str) {
        if let Some(tile) = cache.tile_of(id) {
            self.add(tile);
        }
    }
}

impl<P: Payload> Client<P> {
    /// The tiles whose cached items changed since the last call, for a shell whose host
    /// draws tiles from the cache itself ([`Client::load_tile`]), outside the view too: an
    /// answer that added, replaced, moved or deleted items or changed a tile list (a
    /// refresh, a prefetch, a host's load, a `get`), an invalidation, a tier change, and the
    /// view's tiles when the view reads differently with time (items turned stale or
    /// expired: [`Client::handle_timeout`]). Items pushed out to make room are not a change
    /// (the data is what it was; a read fetches them again). Tiles outside the view turning
    /// stale with time are not noticed: the client keeps no timer for them.
    pub fn take_changed_tiles(&mut self) -> ChangedTiles {
        std::mem::take(&mut self.changed_tiles)
    }
}
