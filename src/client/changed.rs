//! Which tiles' cached items changed ([`Client::take_changed_tiles`]): a host that draws
//! tiles itself from the cache (the map adapters' `loadTiles` tiles, outside the view too)
//! draws those again, and only those. The data tiles a host read are kept with when their
//! read next changes with time, for [`Client::next_wakeup`].

use super::Client;
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
    /// Whether a host tile at any zoom holds items that changed: it overlaps (holds, or
    /// lies in) one of the changed tiles; every tile for [`ChangedTiles::All`].
    ///
    /// ```
    /// use tilewarm::client::ChangedTiles;
    /// use tilewarm::TileId;
    /// let t = |s: &str| s.parse::<TileId>().unwrap();
    /// let changed = ChangedTiles::Tiles(vec![t("14/2624/5721")]);
    /// assert!(changed.touches(t("12/656/1430")) && changed.touches(t("16/10496/22884")));
    /// assert!(!changed.touches(t("14/2625/5721")));
    /// assert!(ChangedTiles::All.touches(t("3/1/1")));
    /// ```
    pub fn touches(&self, tile: TileId) -> bool {
        match self {
            ChangedTiles::Tiles(tiles) => {
                tiles.iter().any(|&c| c.contains(tile) || tile.contains(c))
            }
            ChangedTiles::All => true,
        }
    }

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

impl<P> Client<P> {
    /// The tiles whose cached items changed since the last call, for a shell whose host
    /// draws tiles from the cache itself ([`Client::load_tile`]), outside the view too: an
    /// answer that added, replaced, moved or deleted items or changed a tile list (a
    /// refresh, a prefetch, a host's load, a `get`), an invalidation, a tier change, and
    /// the tiles that read differently with time (items or a tile list turned stale or
    /// expired: [`Client::handle_timeout`]): the view's, and each data tile a host read
    /// with `load_tile`, once, when what it read first turns stale or expires (it is then
    /// forgotten: a host that still draws the tile reads it again, which counts it again;
    /// at most [`MAX_CHANGED_TILES`] are counted, the oldest read dropped first). Items pushed
    /// out to make room are not a change: the data is what it was (a read fetches them
    /// again), and reporting them would have a host that draws more than the cache holds
    /// fetch its tiles in turn for ever; a tile a host read still turns stale on time, and
    /// an invalidation by id of an item pushed out names the tiles a host read that list it.
    pub fn take_changed_tiles(&mut self) -> ChangedTiles {
        std::mem::take(&mut self.changed_tiles)
    }

    /// A host read data tile `tile`; its read could differ from `until` on with nothing else
    /// changed (`u64::MAX`: never). Returns whether its last read has not changed with time
    /// since: then a stale read now comes of an answer stale on arrival (a ttl of 0), or was
    /// refetched for that read already, and is not refetched again (in a loop, for a host
    /// that reads the tile again on each change).
    pub(super) fn hold(&mut self, tile: TileId, until: u64, now_ms: u64) -> bool {
        // In the order read: the first is the oldest, dropped when there are too many.
        let mut again = false;
        if let Some(i) = self.held.iter().position(|&(t, _)| t == tile) {
            again = now_ms < self.held.remove(i).1;
        }
        if until < u64::MAX {
            if self.held.len() >= MAX_CHANGED_TILES {
                self.held.remove(0);
            }
            self.held.push((tile, until));
        }
        again
    }

    /// Reports the tiles a host read that read differently at `now_ms`, and forgets them.
    pub(super) fn changed_with_time(&mut self, now_ms: u64) {
        for (t, until) in std::mem::take(&mut self.held) {
            if until <= now_ms {
                self.changed_tiles.add(t);
            } else {
                self.held.push((t, until));
            }
        }
    }
}
