//! Viewport cover: `Bbox::new` and `cover_range`/`cover` with arbitrary f64s (NaN,
//! infinities, huge, subnormal, map-like), arbitrary zooms (also above 24) and budgets.
//!
//! Properties, beyond not panicking:
//! - `Bbox::new` accepts exactly the boxes with finite coordinates, latitudes in -90..=90
//!   and south <= north; an accepted box is 0..=360 wide and its centre is on the map;
//! - a zoom above 24 is an error; otherwise the range lies on the map (x0, y0 + ny, nx
//!   within 2^z, at least one tile) and `cover` either refuses with the exact count when it
//!   exceeds the budget or lists exactly that many distinct tiles, each at the zoom and in
//!   the range;
//! - the tile under the box's north-west corner is in the cover, and so is the one under
//!   its centre unless the centre lies within float noise of a tile edge of the cover;
//! - the cover one zoom finer lies inside this one (each tile's parent is in the range).
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tilewarm::tile::{
    cover, cover_range, project, tiles_per_axis, Bbox, TileError, TileId, MAX_ZOOM,
};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Coord {
    /// Any bit pattern.
    Raw(f64),
    /// Map-like: millionths of a degree.
    Micro(i32),
    /// Whole degrees.
    Deg(i16),
}

impl Coord {
    fn value(self) -> f64 {
        match self {
            Coord::Raw(v) => v,
            Coord::Micro(m) => m as f64 / 1e6,
            Coord::Deg(d) => d as f64,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    west: Coord,
    south: Coord,
    east: Coord,
    north: Coord,
    z: u8,
    max_tiles: u16,
}

fuzz_target!(|input: Input| {
    let (w, s, e, n) = (
        input.west.value(),
        input.south.value(),
        input.east.value(),
        input.north.value(),
    );
    let valid = w.is_finite()
        && e.is_finite()
        && s.is_finite()
        && n.is_finite()
        && (-90.0..=90.0).contains(&s)
        && (-90.0..=90.0).contains(&n)
        && s <= n;
    let bbox = match Bbox::new(w, s, e, n) {
        Ok(b) => {
            assert!(valid, "accepted {w} {s} {e} {n}");
            b
        }
        Err(err) => {
            assert!(!valid, "refused {w} {s} {e} {n}: {err}");
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    let width = bbox.width();
    assert!((0.0..=360.0).contains(&width), "width {width}");
    let (clon, clat) = bbox.centre();
    assert!((-180.0..180.0).contains(&clon), "centre lon {clon}");
    assert!((s..=n).contains(&clat), "centre lat {clat}");

    let z = input.z;
    let range = match cover_range(&bbox, z) {
        Ok(r) => {
            assert!(z <= MAX_ZOOM);
            r
        }
        Err(err) => {
            assert!(z > MAX_ZOOM, "zoom {z} refused: {err}");
            assert_eq!(err, TileError::ZoomOutOfRange(z as u32));
            assert!(cover(&bbox, z, 1).is_err());
            return;
        }
    };
    let side = tiles_per_axis(z);
    assert_eq!(range.z, z);
    assert!(range.nx >= 1 && range.nx <= side, "{range:?}");
    assert!(
        range.ny >= 1 && range.y0 as u64 + range.ny as u64 <= side as u64,
        "{range:?}"
    );
    assert!(range.x0 < side, "{range:?}");
    if width >= 360.0 {
        assert_eq!((range.x0, range.nx), (0, side));
    }

    let max = input.max_tiles as usize;
    match cover(&bbox, z, max) {
        Ok(tiles) => {
            assert_eq!(tiles.len() as u64, range.count());
            assert!(tiles.len() <= max);
            let distinct: HashSet<TileId> = tiles.iter().copied().collect();
            assert_eq!(distinct.len(), tiles.len(), "a tile twice");
            assert!(tiles.iter().all(|&t| t.z() == z && range.contains(t)));
        }
        Err(err) => {
            assert!(range.count() > max as u64);
            assert_eq!(
                err,
                TileError::TooManyTiles {
                    count: range.count(),
                    max: max as u64
                }
            );
        }
    }

    for (what, lon, lat) in [("north-west corner", w, n), ("centre", clon, clat)] {
        let t = TileId::from_lon_lat(lon, lat, z).expect("a point of a valid box");
        if range.contains(t) {
            continue;
        }
        // The north-west corner goes through the very computations the range's first row
        // and column come from, so it is always in. The centre is computed separately and
        // may round onto the far side of a tile edge when the box lies within float noise
        // of it (a box 7e-15 degrees tall just north of the equator: its centre's y rounds
        // to exactly 8.0 at zoom 4 while its north edge stays at 7.999...): then the point
        // must be within 1e-9 tiles of an edge, and the tile next to it across that edge in
        // the range.
        let p = project(lon, lat, z).expect("a point of a valid box");
        let on_edge = |v: f64| (v - v.round()).abs() < 1e-9;
        let next_in_range = t
            .neighbours(1)
            .map(|ns| ns.into_iter().any(|nb| range.contains(nb)))
            .unwrap_or(false);
        assert!(
            what == "centre" && (on_edge(p.x) || on_edge(p.y)) && next_in_range,
            "{what} ({lon}, {lat}) is in {t}, not in {range:?} of {bbox:?}"
        );
    }

    if z < MAX_ZOOM {
        let finer = cover_range(&bbox, z + 1).expect("a zoom below 24");
        for t in finer.tiles().take(4096) {
            let p = t.parent().expect("a tile below zoom 0");
            assert!(
                range.contains(p),
                "{t} at zoom {} has parent {p} outside {range:?} of {bbox:?}",
                z + 1
            );
        }
    }
});
