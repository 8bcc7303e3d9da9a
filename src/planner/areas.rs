//! The prefetch areas of one planning round, marked on the data tiles they cover.
//!
//! A round's candidates are the union of a few rectangles of data tiles: the ring around the
//! visible tiles, the neighbourhood, the steps of the pan look-ahead and the zoom targets.
//! They overlap heavily (the look-ahead's steps are mostly the same tiles), and a tile's
//! score depends only on the tile and on whether a look-ahead step covers it. So each area
//! only marks its tiles on a grid over the union, and the planner scores every marked tile
//! once afterwards: no hashing, no tile scored twice. A union too large for a grid (only
//! with extreme configs: huge views with a long look-ahead) is marked in hash sets instead.

use crate::tile::{tiles_per_axis, CoverRange, TileId};
use crate::util::HashSet;

/// Cells a grid may have; a larger union is marked in hash sets.
const MAX_GRID_CELLS: i64 = 1 << 20;

/// A rectangle of data tiles: columns `x0..=x1`, unwrapped (they may run past the
/// antimeridian, at most a world wide), rows `y0..=y1` inside the world; only its first
/// `max` tiles count, row by row from the north, each row west to east.
#[derive(Clone, Copy, Debug)]
pub(super) struct Area {
    x0: i64,
    x1: i64,
    y0: i64,
    y1: i64,
    max: usize,
    /// On the motion path: its tiles rank ahead of the others.
    ahead: bool,
}

impl Area {
    /// The data tiles at zoom `z` under a rectangle given by its centre and size in
    /// data-tile coordinates; `None` when none of its rows is inside the world.
    pub(super) fn under(
        z: u8,
        (cx, cy, w, h): (f64, f64, f64, f64),
        max: usize,
        ahead: bool,
    ) -> Option<Area> {
        let n = tiles_per_axis(z) as i64;
        let x0 = (cx - w / 2.0).floor() as i64;
        let x1 = ((cx + w / 2.0).ceil() as i64 - 1).max(x0);
        let y0 = (cy - h / 2.0).floor() as i64;
        let y1 = ((cy + h / 2.0).ceil() as i64 - 1).max(y0);
        Area {
            x0,
            x1: x1.min(x0 + n - 1),
            y0: y0.max(0),
            y1: y1.min(n - 1),
            max,
            ahead,
        }
        .nonempty()
    }

    /// The tiles within `k` tiles of a cover (the cover included), columns unwrapped near
    /// `near_x`: the ring of width `k` around the cover's tiles, with the cover itself.
    pub(super) fn around(cover: &CoverRange, k: u32, near_x: f64) -> Option<Area> {
        let n = tiles_per_axis(cover.z) as i64;
        let (k, nx) = (i64::from(k), i64::from(cover.nx));
        // The cover's columns in the frame of `near_x` (the planner's unwrapped centre).
        let mid = i64::from(cover.x0) as f64 + nx as f64 / 2.0;
        let x0 = i64::from(cover.x0) + n * ((near_x - mid) / n as f64).round() as i64 - k;
        let y0 = i64::from(cover.y0) - k;
        Area {
            x0,
            x1: (x0 + nx - 1 + 2 * k).min(x0 + n - 1),
            y0: y0.max(0),
            y1: (y0 + i64::from(cover.ny) - 1 + 2 * k).min(n - 1),
            max: usize::MAX,
            ahead: false,
        }
        .nonempty()
    }

    fn nonempty(self) -> Option<Area> {
        (self.y0 <= self.y1).then_some(self)
    }

    /// Calls `f(column, row)` for each tile that counts, in order.
    fn each(&self, mut f: impl FnMut(i64, i64)) {
        let mut left = self.max;
        for y in self.y0..=self.y1 {
            for x in self.x0..=self.x1 {
                if left == 0 {
                    return;
                }
                left -= 1;
                f(x, y);
            }
        }
    }
}

/// The areas of a round marked on their tiles: per tile, 0 (in no area), 1 (in an area),
/// 2 (in an area on the motion path).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Marks {
    z: u8,
    n: i64,
    /// The union's first column (unwrapped) and row, and its width (at most a world) and
    /// height.
    x0: i64,
    y0: i64,
    w: i64,
    h: i64,
    cells: Cells,
}

#[derive(Clone, Debug, PartialEq)]
enum Cells {
    Grid(Vec<u8>),
    /// The tiles in an area, and those of them on the motion path (the planner's own set
    /// type, so the wasm carries no other hash table).
    Sparse(HashSet<TileId>, HashSet<TileId>),
}

impl Marks {
    /// Marks the tiles of `areas`, all at zoom `z`.
    pub(super) fn new(z: u8, areas: &[Area]) -> Marks {
        Marks::with_max_cells(z, areas, MAX_GRID_CELLS)
    }

    fn with_max_cells(z: u8, areas: &[Area], max_cells: i64) -> Marks {
        let n = tiles_per_axis(z) as i64;
        let x0 = areas.iter().map(|a| a.x0).min().unwrap_or(0);
        let x1 = areas.iter().map(|a| a.x1).max().unwrap_or(-1);
        let y0 = areas.iter().map(|a| a.y0).min().unwrap_or(0);
        let y1 = areas.iter().map(|a| a.y1).max().unwrap_or(-1);
        let w = (x1 - x0 + 1).clamp(0, n);
        let h = (y1 - y0 + 1).max(0);
        let cells = if w.saturating_mul(h) <= max_cells {
            Cells::Grid(vec![0; (w * h) as usize])
        } else {
            Cells::Sparse(HashSet::new(), HashSet::new())
        };
        let mut marks = Marks {
            z,
            n,
            x0,
            y0,
            w,
            h,
            cells,
        };
        for a in areas {
            let mark = 1 + u8::from(a.ahead);
            a.each(|x, y| marks.mark(x, y, mark));
        }
        marks
    }

    fn mark(&mut self, x: i64, y: i64, mark: u8) {
        // Every area lies inside the union, so the column is in 0..w and the row in 0..h
        // (a union wider than the world wraps).
        let mut col = x - self.x0;
        if !(0..self.n).contains(&col) {
            col = col.rem_euclid(self.n);
        }
        let row = y - self.y0;
        match &mut self.cells {
            Cells::Grid(g) => {
                if let Some(c) = g.get_mut((row * self.w + col) as usize) {
                    *c = (*c).max(mark);
                }
            }
            Cells::Sparse(marked, ahead) => {
                if let Ok(t) = TileId::new(self.z, x.rem_euclid(self.n) as u32, y as u32) {
                    marked.insert(t);
                    if mark > 1 {
                        ahead.insert(t);
                    }
                }
            }
        }
    }

    /// The grid cell of `tile`, when it lies in the union (a sparse set marks only tiles
    /// that do).
    fn cell(&self, tile: TileId) -> Option<usize> {
        let (col, row) = (i64::from(tile.x()) - self.x0, i64::from(tile.y()) - self.y0);
        if tile.z() != self.z || !(0..self.h).contains(&row) {
            return None;
        }
        let col = col.rem_euclid(self.n);
        (col < self.w).then_some((row * self.w + col) as usize)
    }

    /// Whether an area covers `tile`.
    pub(super) fn contains(&self, tile: TileId) -> bool {
        match &self.cells {
            Cells::Grid(g) => self
                .cell(tile)
                .and_then(|i| g.get(i))
                .is_some_and(|&m| m > 0),
            Cells::Sparse(marked, _) => marked.contains(&tile),
        }
    }

    /// Unmarks the tiles for which `keep` is false: no area covers them any more.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(TileId) -> bool) {
        let mut dropped = Vec::new();
        self.each(|t, _| {
            if !keep(t) {
                dropped.push(t);
            }
        });
        for t in dropped {
            let cell = self.cell(t);
            match &mut self.cells {
                Cells::Grid(g) => {
                    if let Some(m) = cell.and_then(|i| g.get_mut(i)) {
                        *m = 0;
                    }
                }
                Cells::Sparse(marked, ahead) => {
                    marked.remove(&t);
                    ahead.remove(&t);
                }
            }
        }
    }

    /// Calls `f(tile, ahead)` for each marked tile, once each, in no order.
    pub(super) fn each(&self, mut f: impl FnMut(TileId, bool)) {
        let mut visit = |x: i64, y: i64, mark: u8| {
            if mark == 0 {
                return;
            }
            if let Ok(t) = TileId::new(self.z, x as u32, y as u32) {
                f(t, mark > 1);
            }
        };
        match &self.cells {
            Cells::Grid(g) => {
                // Row by row; a row's tiles run east from the union's first column, wrapping.
                let first = self.x0.rem_euclid(self.n);
                for (y, row) in (self.y0..).zip(g.chunks(self.w.max(1) as usize)) {
                    let mut x = first;
                    for &mark in row {
                        visit(x, y, mark);
                        x += 1;
                        if x == self.n {
                            x = 0;
                        }
                    }
                }
            }
            Cells::Sparse(marked, ahead) => {
                for &t in marked {
                    f(t, ahead.contains(&t));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn marked(marks: &Marks) -> Vec<(TileId, bool)> {
        let mut out = Vec::new();
        marks.each(|t, ahead| out.push((t, ahead)));
        out.sort_unstable();
        out
    }

    #[test]
    fn the_ring_wraps_and_stops_at_the_poles() {
        // A cover of 2 x 1 tiles at zoom 3 on the antimeridian's west side, in the top row.
        let cover = CoverRange {
            z: 3,
            x0: 7,
            nx: 2,
            y0: 0,
            ny: 1,
        };
        let ring = Area::around(&cover, 1, 7.9).unwrap();
        let tiles: Vec<(u32, u32)> = marked(&Marks::new(3, &[ring]))
            .into_iter()
            .map(|(t, _)| (t.x(), t.y()))
            .collect();
        assert_eq!(
            tiles,
            [
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (6, 0),
                (6, 1),
                (7, 0),
                (7, 1)
            ]
        );
    }

    #[test]
    fn an_area_counts_only_its_first_tiles_row_by_row() {
        let a = Area::under(14, (10.0, 10.0, 4.0, 4.0), 6, true).unwrap();
        let tiles: Vec<(u32, u32, bool)> = marked(&Marks::new(14, &[a]))
            .into_iter()
            .map(|(t, ahead)| (t.x(), t.y(), ahead))
            .collect();
        let mut want: Vec<(u32, u32, bool)> = [(8, 8), (9, 8), (10, 8), (11, 8), (8, 9), (9, 9)]
            .into_iter()
            .map(|(x, y)| (x, y, true))
            .collect();
        want.sort_unstable();
        assert_eq!(tiles, want);
        assert!(
            Area::under(14, (10.0, -5.0, 4.0, 4.0), 6, false).is_none(),
            "above the world"
        );
    }

    proptest! {
        /// The grid and the hash sets mark the same tiles, a tile ahead when any area on
        /// the motion path covers it.
        #[test]
        fn grid_and_sets_agree(
            rects in proptest::collection::vec(
                (-20.0f64..36.0, -4.0f64..20.0, 0.0f64..40.0, 0.0f64..12.0, 1usize..200, any::<bool>()),
                1..6,
            ),
            z in 2u8..6,
        ) {
            let areas: Vec<Area> = rects
                .into_iter()
                .filter_map(|(cx, cy, w, h, max, ahead)| Area::under(z, (cx, cy, w, h), max, ahead))
                .collect();
            let grid = Marks::with_max_cells(z, &areas, MAX_GRID_CELLS);
            let sets = Marks::with_max_cells(z, &areas, 0);
            prop_assert!(matches!(grid.cells, Cells::Grid(_)));
            prop_assert!(areas.is_empty() || matches!(sets.cells, Cells::Sparse(..)));
            prop_assert_eq!(marked(&grid), marked(&sets));
            // `contains` says the same for every tile of the world (and no to other zooms).
            let n = tiles_per_axis(z);
            let all: Vec<TileId> = marked(&grid).into_iter().map(|(t, _)| t).collect();
            for x in 0..n {
                for y in 0..n {
                    let t = TileId::new(z, x, y).unwrap();
                    let want = all.binary_search(&t).is_ok();
                    prop_assert_eq!(grid.contains(t), want, "grid {:?}", t);
                    prop_assert_eq!(sets.contains(t), want, "sets {:?}", t);
                }
            }
            let other = TileId::new(z + 1, 0, 0).unwrap();
            prop_assert!(!grid.contains(other) && !sets.contains(other));
            // `retain` unmarks exactly the tiles it is told to, alike in both.
            let keep = |t: TileId| (t.x() + t.y()) % 3 != 0;
            let (mut grid, mut sets) = (grid, sets);
            grid.retain(keep);
            sets.retain(keep);
            let kept: Vec<(TileId, bool)> = marked(&grid);
            prop_assert_eq!(&kept, &marked(&sets));
            let mut want = Vec::new();
            for x in 0..n {
                for y in 0..n {
                    let t = TileId::new(z, x, y).unwrap();
                    prop_assert_eq!(grid.contains(t), all.binary_search(&t).is_ok() && keep(t));
                    prop_assert_eq!(sets.contains(t), grid.contains(t));
                    if grid.contains(t) {
                        want.push(t);
                    }
                }
            }
            want.sort_unstable();
            prop_assert_eq!(kept.into_iter().map(|(t, _)| t).collect::<Vec<_>>(), want);
        }
    }
}
