//! How many items a data tile holds and how large they are, as the answers have shown
//! them: what the planning round sizes its prefetch by, so that it asks for no more than
//! the cache can keep ([`ItemCache::tiles_that_fit`](crate::cache::ItemCache::tiles_that_fit)).

use crate::protocol::TileList;

/// The weight of what came before at each answer: a few answers move the estimate to a
/// new area's density.
const KEEP: f64 = 0.75;

/// Items per data tile over the answers' lists, and bytes per item over their items, the
/// recent answers weighing most.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Density {
    items: f64,
    tiles: f64,
    /// Bytes and count of the answers' items (`size_bytes` as the cache counts them).
    bytes: f64,
    sized: f64,
}

impl Density {
    /// Takes an answer's lists, at data zoom `z`: a coarser list's items spread over the
    /// data tiles under it.
    pub(super) fn observe(&mut self, lists: &[TileList], z: u8) {
        if lists.is_empty() {
            return;
        }
        let (mut items, mut tiles) = (0.0, 0.0);
        for l in lists {
            items += l.ids.len() as f64;
            let up = z.saturating_sub(l.tile.z()).min(24) as i32;
            tiles += 4f64.powi(up);
        }
        self.items = self.items * KEEP + items;
        self.tiles = self.tiles * KEEP + tiles;
    }

    /// Takes the items an answer brought: `count` of them, `bytes` in all.
    pub(super) fn observe_items(&mut self, count: usize, bytes: usize) {
        if count > 0 {
            self.bytes = self.bytes * KEEP + bytes as f64;
            self.sized = self.sized * KEEP + count as f64;
        }
    }

    /// Items per data tile; `None` before the first list.
    pub(super) fn per_tile(&self) -> Option<f64> {
        (self.tiles > 0.0).then(|| self.items / self.tiles)
    }

    /// Bytes per item; 0 before the first item (the item limit alone then applies).
    pub(super) fn per_item(&self) -> f64 {
        if self.sized > 0.0 {
            self.bytes / self.sized
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(tile: &str, n: usize) -> TileList {
        TileList {
            tile: tile.parse().unwrap(),
            ids: (0..n).map(|i| format!("i{i}")).collect(),
            ttl: None,
        }
    }

    #[test]
    fn a_coarse_list_spreads_over_its_data_tiles_and_recent_answers_weigh_most() {
        let mut d = Density::default();
        assert_eq!(d.per_tile(), None);
        d.observe(&[], 14);
        assert_eq!(d.per_tile(), None);
        // 32 items over the 16 data tiles under a zoom-12 tile, and one empty data tile.
        d.observe(&[list("12/656/1430", 32), list("14/2624/5721", 0)], 14);
        assert_eq!(d.per_tile(), Some(32.0 / 17.0));
        // A denser area: the estimate moves towards it.
        for _ in 0..20 {
            d.observe(&[list("14/2624/5721", 10)], 14);
        }
        let now = d.per_tile().unwrap();
        assert!(now > 9.0 && now < 10.0, "{now}");
    }

    #[test]
    fn item_size_is_the_answers_average_recent_ones_weighing_most() {
        let mut d = Density::default();
        assert_eq!(d.per_item(), 0.0);
        d.observe_items(0, 0);
        assert_eq!(d.per_item(), 0.0);
        d.observe_items(4, 400);
        assert_eq!(d.per_item(), 100.0);
        for _ in 0..20 {
            d.observe_items(2, 2000);
        }
        let now = d.per_item();
        assert!(now > 900.0 && now < 1000.0, "{now}");
    }
}
