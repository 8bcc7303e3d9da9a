//! An in-memory origin: answers batch requests from a set of items.
//!
//! Items are kept sorted by their Morton (Z-order) code at zoom 24, the same order as
//! quadkeys. Every tile, at any zoom, is then one contiguous range of that order, so
//! "the items of tile z/x/y" is two binary searches whatever the zoom — which is what the
//! protocol needs ("tiles may be requested at any zoom from `min_zoom` to 24; a coarser
//! tile returns all its items").
//!
//! The server's origin, the simulator's backend and the tests use it. It applies the
//! protocol's access rule: an item above the caller's tier is left out of both lists and
//! reported as missing when asked for by id.

use crate::util::HashMap;

use crate::access::Access;
use crate::protocol::{BatchRequest, BatchResponse, Item, TileList};
use crate::tile::{project, Bbox, TileError, TileId, MAX_ZOOM};

/// One item of the origin's data set: the protocol's [`Item`], as the origin answers it.
pub type OriginItem<D> = Item<D>;

/// Interleaves the bits of x and y (each < 2^24): y bits odd, x bits even, the quadkey order.
fn morton(x: u32, y: u32) -> u64 {
    fn spread(v: u32) -> u64 {
        let mut v = v as u64 & 0xFF_FFFF;
        v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF;
        v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF;
        v = (v | (v << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
        v = (v | (v << 2)) & 0x3333_3333_3333_3333;
        v = (v | (v << 1)) & 0x5555_5555_5555_5555;
        v
    }
    spread(x) | (spread(y) << 1)
}

/// The half-open Morton range of all zoom-24 positions inside `tile`.
fn tile_range(tile: TileId) -> (u64, u64) {
    let shift = 2 * (MAX_ZOOM - tile.z()) as u32;
    let base = morton(tile.x(), tile.y());
    (base << shift, (base + 1) << shift)
}

/// Items indexed for tile and id look-ups. Build it once; queries do not allocate beyond
/// their answer.
#[derive(Clone, Debug)]
pub struct Origin<D> {
    items: Vec<OriginItem<D>>,
    /// (morton code at z24, index into items), sorted.
    order: Vec<(u64, u32)>,
    by_id: HashMap<String, u32>,
}

impl<D: Clone> Origin<D> {
    /// Indexes `items`. Items with invalid coordinates are an error naming the item; a
    /// repeated id keeps the last occurrence (a home sold twice is one home).
    pub fn new(items: Vec<OriginItem<D>>) -> Result<Origin<D>, OriginError> {
        let mut by_id: HashMap<String, u32> = HashMap::with_capacity(items.len());
        let mut kept: Vec<OriginItem<D>> = Vec::with_capacity(items.len());
        for item in items {
            if let Err(e) = project(item.lon, item.lat, MAX_ZOOM) {
                return Err(OriginError::BadItem {
                    id: item.id.clone(),
                    source: e,
                });
            }
            match by_id.get(&item.id) {
                Some(&i) => kept[i as usize] = item,
                None => {
                    if kept.len() >= u32::MAX as usize {
                        return Err(OriginError::TooMany);
                    }
                    by_id.insert(item.id.clone(), kept.len() as u32);
                    kept.push(item);
                }
            }
        }
        let mut order: Vec<(u64, u32)> = kept
            .iter()
            .enumerate()
            .map(|(i, it)| {
                // Validated above.
                let t = TileId::from_lon_lat(it.lon, it.lat, MAX_ZOOM).unwrap_or(TileId::ROOT);
                (morton(t.x(), t.y()), i as u32)
            })
            .collect();
        order.sort_unstable();
        Ok(Origin {
            items: kept,
            order,
            by_id,
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All items, in no particular order.
    pub fn items(&self) -> &[OriginItem<D>] {
        &self.items
    }

    /// The smallest box holding every item, west to east in plain longitude order (data
    /// across the antimeridian needs its box given by hand); `None` when there are none. What
    /// a server would declare as its data's extent.
    ///
    /// ```
    /// use tilewarm::origin::{Origin, OriginItem};
    /// use tilewarm::Access;
    /// let home = |id: &str, lon: f64, lat: f64| OriginItem {
    ///     id: id.into(), lon, lat, class: "active".into(), access: Access::Public, ttl: None, data: (),
    /// };
    /// let homes = Origin::new(vec![home("a", -122.3, 47.6), home("b", -121.9, 47.4)]).unwrap();
    /// let b = homes.extent().unwrap();
    /// assert_eq!((b.west, b.south, b.east, b.north), (-122.3, 47.4, -121.9, 47.6));
    /// assert!(Origin::<()>::new(Vec::new()).unwrap().extent().is_none());
    /// ```
    pub fn extent(&self) -> Option<Bbox> {
        let first = self.items.first()?;
        let mut b = Bbox {
            west: first.lon,
            south: first.lat,
            east: first.lon,
            north: first.lat,
        };
        for it in &self.items {
            b.west = b.west.min(it.lon);
            b.east = b.east.max(it.lon);
            b.south = b.south.min(it.lat);
            b.north = b.north.max(it.lat);
        }
        Some(b)
    }

    /// An item by id, whatever its tier.
    pub fn get(&self, id: &str) -> Option<&OriginItem<D>> {
        self.by_id.get(id).map(|&i| &self.items[i as usize])
    }

    /// The items inside `tile` (any zoom) that a caller at `access` may see.
    pub fn tile_items(
        &self,
        tile: TileId,
        access: Access,
    ) -> impl Iterator<Item = &OriginItem<D>> + '_ {
        let (lo, hi) = tile_range(tile);
        let start = self.order.partition_point(|&(m, _)| m < lo);
        let end = self.order.partition_point(|&(m, _)| m < hi);
        self.order[start..end]
            .iter()
            .map(move |&(_, i)| &self.items[i as usize])
            .filter(move |it| access.can_see(it.access))
    }

    /// Number of items inside `tile` visible at `access`.
    pub fn count_in(&self, tile: TileId, access: Access) -> usize {
        self.tile_items(tile, access).count()
    }

    /// Answers a batch request: every requested tile with its id list, the items of all
    /// tiles and ids (each once), unknown or forbidden ids in `missing`. `tile_ttl` is the
    /// membership TTL to report (seconds).
    pub fn answer(&self, request: &BatchRequest, tile_ttl: Option<u32>) -> BatchResponse<D> {
        let mut seen: HashMap<&str, ()> = HashMap::new();
        let mut items = Vec::new();
        let mut tiles = Vec::with_capacity(request.tiles.len());
        for &t in &request.tiles {
            let mut ids = Vec::new();
            for it in self.tile_items(t, request.access) {
                ids.push(it.id.clone());
                if seen.insert(&it.id, ()).is_none() {
                    items.push(it.clone());
                }
            }
            tiles.push(TileList {
                tile: t,
                ids,
                ttl: tile_ttl,
            });
        }
        let mut missing = Vec::new();
        for id in &request.ids {
            match self.get(id) {
                Some(it) if request.access.can_see(it.access) => {
                    if seen.insert(&it.id, ()).is_none() {
                        items.push(it.clone());
                    }
                }
                _ => missing.push(id.clone()),
            }
        }
        BatchResponse {
            access: None,
            tiles,
            items,
            missing,
            left_out: None,
        }
    }

    /// Data tiles at zoom `z` that hold at least one item, with their counts (for
    /// benchmarks and demos).
    pub fn occupied_tiles(&self, z: u8) -> Vec<(TileId, usize)> {
        let z = z.min(MAX_ZOOM);
        let mut counts: HashMap<TileId, usize> = HashMap::new();
        let shift = 2 * (MAX_ZOOM - z) as u32;
        for &(m, _) in &self.order {
            let code = m >> shift;
            let (x, y) = unmorton(code);
            if let Ok(t) = TileId::new(z, x, y) {
                *counts.entry(t).or_default() += 1;
            }
        }
        let mut v: Vec<(TileId, usize)> = counts.into_iter().collect();
        v.sort();
        v
    }
}

fn unmorton(code: u64) -> (u32, u32) {
    fn squash(mut v: u64) -> u32 {
        v &= 0x5555_5555_5555_5555;
        v = (v | (v >> 1)) & 0x3333_3333_3333_3333;
        v = (v | (v >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
        v = (v | (v >> 4)) & 0x00FF_00FF_00FF_00FF;
        v = (v | (v >> 8)) & 0x0000_FFFF_0000_FFFF;
        v = (v | (v >> 16)) & 0x0000_0000_FFFF_FFFF;
        v as u32
    }
    (squash(code), squash(code >> 1))
}

/// Building an origin failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// An item's coordinates are unusable.
    #[error("item {id:?}: {source}")]
    BadItem { id: String, source: TileError },
    /// More than 2^32 - 1 items.
    #[error("an origin holds at most 4294967295 items")]
    TooMany,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, lon: f64, lat: f64, access: Access) -> OriginItem<u32> {
        OriginItem {
            id: id.into(),
            lon,
            lat,
            class: "active".into(),
            access,
            ttl: None,
            data: 7,
        }
    }

    #[test]
    fn morton_round_trip_and_order_matches_quadkey() {
        for (x, y) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (12345, 678),
            ((1 << 24) - 1, (1 << 24) - 1),
        ] {
            assert_eq!(unmorton(morton(x, y)), (x, y));
        }
        let a = TileId::new(3, 3, 5).unwrap();
        let b = TileId::new(3, 4, 5).unwrap();
        assert_eq!(
            morton(a.x(), a.y()) < morton(b.x(), b.y()),
            a.quadkey() < b.quadkey()
        );
    }

    #[test]
    fn tiles_at_any_zoom_and_access() {
        let o = Origin::new(vec![
            item("a", -122.3321, 47.6062, Access::Public),
            item("b", -122.3322, 47.6063, Access::Agent),
            item("c", 2.35, 48.85, Access::Public),
        ])
        .unwrap();
        let t14 = TileId::from_lon_lat(-122.3321, 47.6062, 14).unwrap();
        let ids = |t: TileId, a: Access| -> Vec<String> {
            o.tile_items(t, a).map(|i| i.id.clone()).collect()
        };
        assert_eq!(ids(t14, Access::Public), vec!["a"]);
        assert_eq!(ids(t14, Access::Agent).len(), 2);
        assert_eq!(ids(t14.ancestor(5).unwrap(), Access::Agent).len(), 2);
        assert_eq!(ids(TileId::ROOT, Access::Public).len(), 2);
        let req = BatchRequest {
            tiles: vec![t14, TileId::new(14, 0, 0).unwrap()],
            ids: vec!["b".into(), "c".into(), "zzz".into(), "a".into()],
            access: Access::Public,
        };
        let r = o.answer(&req, Some(60));
        assert_eq!(r.tiles.len(), 2);
        assert_eq!(r.tiles[0].ids, vec!["a"]);
        assert!(r.tiles[1].ids.is_empty());
        let got: Vec<&str> = r.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(got, vec!["a", "c"], "each item once, forbidden b left out");
        assert_eq!(r.missing, vec!["b", "zzz"]);
    }

    #[test]
    fn duplicate_ids_keep_last_and_bad_items_fail() {
        let o = Origin::new(vec![
            item("a", 0.0, 0.0, Access::Public),
            item("a", 10.0, 10.0, Access::Public),
        ])
        .unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o.get("a").unwrap().lon, 10.0);
        let e = Origin::new(vec![item("x", f64::NAN, 0.0, Access::Public)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "item \"x\": longitude must be a finite number, got NaN"
        );
    }

    #[test]
    fn occupied_tiles_counts() {
        let o = Origin::new(vec![
            item("a", -122.3321, 47.6062, Access::Public),
            item("b", -122.3322, 47.6063, Access::Agent),
            item("c", 2.35, 48.85, Access::Public),
        ])
        .unwrap();
        let occ = o.occupied_tiles(14);
        assert_eq!(occ.len(), 2);
        assert_eq!(occ.iter().map(|(_, n)| n).sum::<usize>(), 3);
    }
}
