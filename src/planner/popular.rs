//! Where earlier sessions looked: prefetch limited to the tiles a map's users view.
//!
//! The view neighbourhood prefetches every way the user might go. Where a map's users all
//! look at the same parts of it (the city centre, not the mountains; the areas a task is
//! about), most of what it fetches elsewhere is never seen. [`ViewCounts`] counts, over
//! earlier sessions, how many had each data tile in view; [`ViewCounts::popular`] gives the
//! tiles that at least a share of them viewed, the estimated chance that a session views
//! the tile. Given to the planner ([`Planner::set_popular`](super::Planner::set_popular)),
//! prefetch asks only for those; the visible tiles are always asked for.
//!
//! Off unless set. It pays where interest is shared and costs views where it is not (on
//! the simulator's synthetic sessions, which go everywhere, it completed fewer views, sent
//! more foreground requests and fetched as many items): docs/BENCHMARKS.md, "Where earlier
//! sessions looked".

use std::collections::HashMap;

use super::PlannerError;
use crate::tile::{TileId, TileSet, MAX_ZOOM};

/// Tiles that prefetch is limited to: data tiles, or coarser tiles that stand for every
/// data tile under them. Each is kept once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PopularTiles {
    /// The listed tiles (the crate's sorted tile set, whose code the wasm has already).
    tiles: TileSet,
    /// Bit `z` set when a tile of zoom `z` is listed.
    zooms: u32,
}

impl PopularTiles {
    /// The set of these tiles (duplicates are kept once).
    pub fn new(tiles: impl IntoIterator<Item = TileId>) -> PopularTiles {
        let tiles = TileSet::new(tiles);
        let zooms = tiles.iter().fold(0, |zooms, t| zooms | 1 << t.z());
        PopularTiles { tiles, zooms }
    }

    /// Whether `tile` is listed or lies under a listed tile.
    pub fn contains(&self, tile: TileId) -> bool {
        let mut t = Some(tile);
        while let Some(at) = t {
            if self.zooms & (1 << at.z()) != 0 && self.tiles.contains(at) {
                return true;
            }
            t = at.parent();
        }
        false
    }

    /// How many tiles are listed.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The listed tiles, in packed order.
    pub fn iter(&self) -> impl Iterator<Item = TileId> + '_ {
        self.tiles.iter()
    }

    /// The same tiles in a shorter list: wherever all four children of a tile are listed,
    /// the tile instead, up to zoom 0. A list to hand over (`setPopularTiles`), not one
    /// that answers [`contains`](Self::contains) differently for a tile as fine as the
    /// finest listed (the data tiles); a tile whose children were merged is listed itself.
    pub fn compact(&self) -> PopularTiles {
        let mut tiles: Vec<TileId> = self.iter().collect();
        for z in (1..=MAX_ZOOM).rev() {
            if self.zooms >> z == 0 {
                continue;
            }
            let mut parents: HashMap<TileId, u8> = HashMap::new();
            for t in tiles.iter().filter(|t| t.z() == z) {
                if let Some(p) = t.parent() {
                    *parents.entry(p).or_default() += 1;
                }
            }
            let full = |t: &TileId| parents.get(t).is_some_and(|&n| n == 4);
            tiles.retain(|t| t.z() != z || !t.parent().as_ref().is_some_and(full));
            tiles.extend(parents.iter().filter(|(_, &n)| n == 4).map(|(&p, _)| p));
            // A parent may have been listed already: kept twice, it would count as two of
            // its own parent's children, and three listed ones would then stand for four.
            tiles.sort_unstable();
            tiles.dedup();
        }
        PopularTiles::new(tiles)
    }

    /// The zoom of the finest listed tile; `None` when none is listed.
    pub fn max_zoom(&self) -> Option<u8> {
        (self.zooms != 0).then(|| (31 - self.zooms.leading_zeros()) as u8)
    }
}

/// A list of popular tiles ([`Planner::set_popular`](super::Planner::set_popular)) with a
/// tile finer than the data tiles: it was made for another data zoom.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "popular tiles must be data tiles (zoom {tile_zoom}) or coarser ones, got one at zoom {zoom}"
)]
pub struct PopularTooFine {
    /// The zoom of the finest tile listed.
    pub zoom: u8,
    /// The data zoom.
    pub tile_zoom: u8,
}

/// How many sessions had each data tile in view: what [`popular`](Self::popular) is
/// worked out from.
#[derive(Clone, Debug, Default)]
pub struct ViewCounts {
    sessions: u32,
    counts: HashMap<u64, u32>,
}

impl ViewCounts {
    /// No sessions yet.
    pub fn new() -> ViewCounts {
        ViewCounts::default()
    }

    /// Adds one session: every tile it had in view, each counted once however often it was
    /// (the planner's [`visible_tiles`](super::Planner::visible_tiles) of each viewport).
    pub fn add_session(&mut self, tiles: impl IntoIterator<Item = TileId>) {
        let mut seen: Vec<u64> = tiles.into_iter().map(TileId::to_u64).collect();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            let n = self.counts.entry(t).or_default();
            *n = n.saturating_add(1);
        }
        self.sessions = self.sessions.saturating_add(1);
    }

    /// Sessions added.
    pub fn sessions(&self) -> u32 {
        self.sessions
    }

    /// How many sessions had `tile` in view.
    pub fn count(&self, tile: TileId) -> u32 {
        self.counts.get(&tile.to_u64()).copied().unwrap_or(0)
    }

    /// The tiles that at least `min_share` of the sessions had in view; `min_share` is a
    /// number in (0, 1]. With no sessions there are none.
    pub fn popular(&self, min_share: f64) -> Result<PopularTiles, PlannerError> {
        if !(min_share > 0.0 && min_share <= 1.0) {
            return Err(PlannerError::InvalidConfig {
                field: "popular min_share",
                value: crate::util::Num(min_share).to_string(),
                allowed: "a number above 0 and at most 1",
            });
        }
        let sessions = f64::from(self.sessions);
        Ok(PopularTiles::new(
            self.counts
                .iter()
                .filter(|&(_, &c)| c > 0 && f64::from(c) / sessions >= min_share)
                .map(|(&t, _)| TileId::from_packed(t)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TileId {
        s.parse().unwrap()
    }

    #[test]
    fn a_listed_tile_covers_itself_and_the_data_tiles_under_it() {
        let p = PopularTiles::new([t("14/100/200"), t("12/30/40"), t("14/100/200")]);
        assert_eq!(p.len(), 2);
        assert!(p.contains(t("14/100/200")));
        assert!(!p.contains(t("14/101/200")));
        // 12/30/40 covers 14/120..124/160..164.
        assert!(p.contains(t("14/120/160")));
        assert!(p.contains(t("14/123/163")));
        assert!(!p.contains(t("14/124/163")));
        // A coarser tile over a listed one is not itself listed.
        assert!(!p.contains(t("13/50/100")));
        assert!(!PopularTiles::default().contains(t("0/0/0")));
    }

    #[test]
    fn compact_merges_four_siblings_into_their_parent_and_covers_the_same_tiles() {
        // All 16 zoom-14 tiles under 12/30/40, plus three of one zoom-13 tile's four children
        // elsewhere and one lone tile.
        let mut tiles: Vec<TileId> = t("12/30/40").descendants(14).unwrap();
        tiles.extend(t("13/10/10").children().unwrap().into_iter().take(3));
        tiles.push(t("14/0/0"));
        let p = PopularTiles::new(tiles.clone());
        let c = p.compact();
        let mut listed: Vec<String> = c.iter().map(|t| t.to_string()).collect();
        listed.sort();
        assert_eq!(
            listed,
            ["12/30/40", "14/0/0", "14/20/20", "14/20/21", "14/21/20"]
        );
        for z14 in tiles {
            assert!(c.contains(z14), "{z14}");
        }
        assert!(!c.contains(t("14/21/21")));
        // The whole world's four children at zoom 1 are the root.
        let root = PopularTiles::new(TileId::ROOT.children().unwrap()).compact();
        assert_eq!(root.iter().collect::<Vec<_>>(), [TileId::ROOT]);
    }

    #[test]
    fn compact_never_merges_a_parent_listed_beside_its_children_into_a_wider_tile() {
        // 14/0/0 listed, and its four children too: merged, they are 14/0/0 again, which
        // must count once among the children of 13/0/0, two of which are listed.
        let p = PopularTiles::new(
            [
                "14/0/0", "15/0/0", "15/1/0", "15/0/1", "15/1/1", "14/1/0", "14/0/1",
            ]
            .map(t),
        );
        let c = p.compact();
        assert!(
            !c.contains(t("14/1/1")),
            "{:?}",
            c.iter().collect::<Vec<_>>()
        );
        assert_eq!(c.len(), 3);
        // A compacted list merged with another and compacted again (day 1's list, then day
        // 2's four children of one of its tiles).
        let mut day2: Vec<TileId> = ["13/0/0", "13/1/0", "13/0/1"].map(t).to_vec();
        day2.extend(t("13/0/0").children().unwrap());
        let c = PopularTiles::new(day2).compact();
        assert!(!c.contains(t("14/2/2")) && !c.contains(t("13/1/1")));
        assert!(c.contains(t("14/0/0")) && c.contains(t("14/3/1")));
    }

    proptest::proptest! {
        /// A compacted list covers exactly the tiles the list covered, as fine as the
        /// finest it may list (zoom 15) or finer, under one zoom-12 tile, whatever mix of
        /// finer zooms is listed (the zoom-12 tile itself would cover everything).
        #[test]
        fn compact_covers_exactly_what_the_list_covers(
            listed in proptest::collection::vec((13u8..=15, 0u32..8, 0u32..8), 0..24),
        ) {
            let tiles: Vec<TileId> = listed
                .into_iter()
                .filter_map(|(z, x, y)| {
                    let side = 1u32 << (z - 12);
                    TileId::new(z, x % side, y % side).ok()
                })
                .collect();
            let p = PopularTiles::new(tiles);
            let c = p.compact();
            proptest::prop_assert!(c.len() <= p.len());
            for z in 15u8..=16 {
                let side = 1u32 << (z - 12);
                for x in 0..side {
                    for y in 0..side {
                        let tile = TileId::new(z, x, y).unwrap();
                        proptest::prop_assert_eq!(c.contains(tile), p.contains(tile), "{}", tile);
                    }
                }
            }
        }
    }

    #[test]
    fn the_finest_zoom_listed_is_known() {
        let p = PopularTiles::new([t("14/1/1"), t("16/5/5"), t("0/0/0")]);
        assert_eq!(p.max_zoom(), Some(16));
        assert_eq!(PopularTiles::new([t("0/0/0")]).max_zoom(), Some(0));
        assert_eq!(PopularTiles::default().max_zoom(), None);
    }

    #[test]
    fn popular_tiles_are_those_a_share_of_the_sessions_viewed() {
        let mut v = ViewCounts::new();
        let (a, b, c) = (t("14/1/1"), t("14/1/2"), t("14/1/3"));
        // Viewed twice in one session: counted once.
        v.add_session([a, b, a]);
        v.add_session([a]);
        v.add_session([a, c]);
        v.add_session([a, b]);
        assert_eq!(
            (v.sessions(), v.count(a), v.count(b), v.count(c)),
            (4, 4, 2, 1)
        );
        let tiles = |share| v.popular(share).unwrap().iter().collect::<Vec<_>>();
        assert_eq!(tiles(1.0), [a]);
        assert_eq!(tiles(0.5), [a, b]);
        assert_eq!(tiles(0.25), [a, b, c]);
        assert_eq!(tiles(0.01), [a, b, c]);
        assert!(ViewCounts::new().popular(0.5).unwrap().is_empty());
    }

    #[test]
    fn the_share_is_compared_as_a_share_not_a_rounded_count() {
        // 0.28 x 25 is 7.000000000000001 in f64: a tile 7 of 25 sessions viewed (28%) is
        // popular at 0.28.
        let mut v = ViewCounts::new();
        let a = t("14/1/1");
        for i in 0..25 {
            v.add_session(if i < 7 { vec![a] } else { vec![] });
        }
        assert!(v.popular(0.28).unwrap().contains(a));
        assert!(!v.popular(0.29).unwrap().contains(a));
    }

    #[test]
    fn the_root_tile_covers_every_tile() {
        let p = PopularTiles::new([TileId::ROOT]);
        for s in ["0/0/0", "1/1/0", "14/2624/5721", "24/16777215/0"] {
            assert!(p.contains(t(s)), "{s}");
        }
    }

    #[test]
    fn a_share_outside_0_to_1_is_refused() {
        let v = ViewCounts::new();
        for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let e = v.popular(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "planner config popular min_share must be a number above 0 and at most 1, got "
                ),
                "{e}"
            );
        }
    }
}
