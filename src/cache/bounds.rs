//! The data's extent ([`CacheConfig::bounds`](super::CacheConfig::bounds)): a data tile
//! entirely outside it holds no items, which the cache knows without asking, as a map
//! library knows from a source's `bounds` (TileJSON, MapLibre) or a layer's `extent`
//! (deck.gl, OpenLayers) not to request tiles there.
//!
//! Such a tile is fresh and empty for every tier and for ever: no view waits for it, the
//! planner has no work for it, and a coarse request tile may cover it (no item can come
//! twice from a tile that holds none). A tile whose list the backend answered with items
//! anyway (bounds set too tight) is the index's like any other.

use super::{CacheError, HashSet};
use crate::tile::{tiles_per_axis, Bbox, CoverRange, TileId};

/// The whole world: the default, under which every tile may hold items.
pub const WORLD: Bbox = Bbox {
    west: -180.0,
    south: -90.0,
    east: 180.0,
    north: 90.0,
};

/// What a bound must be, as the config check says it.
const LONGITUDE: &str = "a longitude in -180..=180";
/// What a latitude bound must be.
const LATITUDE: &str = "a latitude in -90..=90, south not above north";

/// Most data tiles outside the extent that [`DataBounds`] remembers the backend listed items
/// in; one more and the extent is not the data's: it is set aside.
pub(super) const MAX_LISTED_OUTSIDE: usize = 4096;

/// The data tiles that touch the data's extent, at the cache's data zoom (`range`; `None`
/// when that is every tile), and the tiles outside it where the backend listed items
/// anyway (`listed`: the extent was declared too tight). A tile stays in `listed` while
/// there is an extent, whatever happens to its list (expired, invalidated, dropped with a
/// tier, trimmed from the index): it is asked for again like any tile inside. The set grows
/// only with the tiles outside the extent the backend answered with items, and at most to
/// [`MAX_LISTED_OUTSIDE`]: past that the extent is set aside (`set_aside`) for the cache's
/// life, as if none was declared, since the data plainly lies outside it.
#[derive(Debug, Clone)]
pub(super) struct DataBounds {
    range: Option<CoverRange>,
    listed: HashSet<TileId>,
    set_aside: bool,
}

impl DataBounds {
    /// The bounds of a checked config (see [`check`]) at data zoom `z` ([`extent_range`]).
    pub(super) fn new(bounds: &Bbox, z: u8) -> DataBounds {
        DataBounds {
            range: extent_range(bounds, z),
            listed: HashSet::default(),
            set_aside: false,
        }
    }

    /// Takes `bounds` (checked) as the extent at data zoom `z`, keeping the tiles listed with
    /// items; whether the extent changed.
    pub(super) fn set_extent(&mut self, bounds: &Bbox, z: u8) -> bool {
        let range = extent_range(bounds, z).filter(|_| !self.set_aside);
        let changed = range != self.range;
        self.range = range;
        if range.is_none() {
            self.listed = HashSet::default();
        }
        changed
    }

    /// Whether some data tile lies outside the extent.
    pub(super) fn excludes_any(&self) -> bool {
        self.range.is_some()
    }

    /// Whether data tile `tile` (at the data zoom) lies entirely outside the extent and the
    /// backend never listed items there.
    #[inline]
    pub(super) fn excludes(&self, tile: TileId) -> bool {
        self.range.is_some_and(|r| !r.contains(tile)) && !self.listed.contains(&tile)
    }

    /// The backend listed items in data tile `tile`: if it lies outside the extent, it
    /// holds items after all (see the type's docs).
    pub(super) fn listed_with_items(&mut self, tile: TileId) {
        if self.range.is_some_and(|r| !r.contains(tile))
            && self.listed.insert(tile)
            && self.listed.len() > MAX_LISTED_OUTSIDE
        {
            self.range = None;
            self.listed = HashSet::default();
            self.set_aside = true;
        }
    }
}

/// The data tiles at zoom `z` from the one the north-west corner of checked `bounds` falls
/// in to the one its south-east corner falls in, placed as items are
/// ([`TileId::from_lon_lat`]): a tile that only touches the box's east or south edge is
/// inside, since it holds the items on that edge (a view's cover leaves it out). `None`
/// when that is every tile.
fn extent_range(bounds: &Bbox, z: u8) -> Option<CoverRange> {
    let corners = (
        TileId::from_lon_lat(bounds.west, bounds.north, z),
        TileId::from_lon_lat(bounds.east, bounds.south, z),
    );
    let (Ok(nw), Ok(se)) = corners else {
        return None;
    };
    let n = tiles_per_axis(z);
    // A box within one tile's width of the whole way round may have both corners in one
    // column (longitude 180 is -180's column): it covers them all.
    let (x0, nx) = if bounds.width() / 360.0 * f64::from(n) >= f64::from(n - 1) {
        (0, n)
    } else {
        (nw.x(), (se.x() + n - nw.x()) % n + 1)
    };
    let range = CoverRange {
        z,
        x0,
        nx,
        y0: nw.y(),
        ny: se.y() - nw.y() + 1,
    };
    let every = range.count() == u64::from(n) * u64::from(n);
    (!every).then_some(range)
}

/// [`check`] as the cache's error.
pub(super) fn check_extent(b: &Bbox) -> Result<(), CacheError> {
    check(b).map_err(|(field, value, allowed)| CacheError::InvalidBounds {
        field,
        value,
        allowed,
    })
}

/// Checks a configured extent: the name of the bad field and what it must be.
pub(super) fn check(b: &Bbox) -> Result<(), (&'static str, f64, &'static str)> {
    for (field, v) in [("bounds.west", b.west), ("bounds.east", b.east)] {
        if !(-180.0..=180.0).contains(&v) {
            return Err((field, v, LONGITUDE));
        }
    }
    for (field, v) in [("bounds.south", b.south), ("bounds.north", b.north)] {
        if !(-90.0..=90.0).contains(&v) {
            return Err((field, v, LATITUDE));
        }
    }
    if b.south > b.north {
        return Err(("bounds.south", b.south, LATITUDE));
    }
    Ok(())
}

/// Reads an extent written `west,south,east,north` in degrees, TileJSON's `bounds` order:
/// how a server's `--bounds` is given and how its batch answers declare it (the
/// `x-tilewarm-bounds` header, see [`ItemCache::adopt_bounds`](super::ItemCache::adopt_bounds)).
/// Checked as [`CacheConfig::bounds`](super::CacheConfig::bounds) is.
///
/// ```
/// use tilewarm::cache::parse_bounds;
/// let b = parse_bounds("-122.52,47.15,-121.31,47.78").unwrap();
/// assert_eq!((b.west, b.north), (-122.52, 47.78));
/// assert_eq!(
///     parse_bounds("1,2,3").unwrap_err(),
///     "bounds must be four numbers west,south,east,north in degrees, got \"1,2,3\""
/// );
/// ```
pub fn parse_bounds(text: &str) -> Result<Bbox, String> {
    let numbers: Result<Vec<f64>, _> = text.split(',').map(|x| x.trim().parse()).collect();
    let [west, south, east, north] = numbers.unwrap_or_default()[..] else {
        return Err(format!(
            "bounds must be four numbers west,south,east,north in degrees, got {text:?}"
        ));
    };
    let b = Bbox {
        west,
        south,
        east,
        north,
    };
    check(&b)
        .map_err(|(field, value, allowed)| format!("{field} must be {allowed}, got {value}"))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(west: f64, south: f64, east: f64, north: f64) -> Bbox {
        Bbox {
            west,
            south,
            east,
            north,
        }
    }

    #[test]
    fn the_world_excludes_nothing() {
        assert_eq!(extent_range(&WORLD, 14), None);
        assert_eq!(extent_range(&WORLD, 0), None);
        assert!(!DataBounds::new(&WORLD, 14).excludes_any());
        let t = TileId::from_lon_lat(179.9, -85.0, 14).unwrap();
        assert!(!DataBounds::new(&WORLD, 14).excludes(t));
    }

    #[test]
    fn tiles_touching_the_extent_are_inside() {
        // King County's homes.
        let b = DataBounds::new(&bbox(-122.519, 47.1559, -121.315, 47.7776), 14);
        let seattle = TileId::from_lon_lat(-122.3321, 47.6062, 14).unwrap();
        assert!(!b.excludes(seattle));
        // The corners' own tiles are inside; one tile further is outside.
        let nw = TileId::from_lon_lat(-122.519, 47.7776, 14).unwrap();
        assert!(!b.excludes(nw));
        let west = TileId::new(14, nw.x() - 1, nw.y()).unwrap();
        let north = TileId::new(14, nw.x(), nw.y() - 1).unwrap();
        assert!(b.excludes(west) && b.excludes(north));
        let paris = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
        assert!(b.excludes(paris));
    }

    #[test]
    fn a_tile_on_the_east_or_south_edge_holds_the_items_there() {
        // At zoom 14 the meridian 0 and the equator are tile edges: an item on them lies
        // in the tile east of / south of the line.
        let b = DataBounds::new(&bbox(-10.0, 0.0, 0.0, 50.0), 14);
        for (lon, lat) in [(0.0, 45.0), (-5.0, 0.0), (0.0, 0.0)] {
            let t = TileId::from_lon_lat(lon, lat, 14).unwrap();
            assert!(!b.excludes(t), "{lon} {lat}: {t}");
            // One tile further east or south is outside.
            let (east, south) = (t.offset(1, 0).unwrap(), t.offset(0, 1).unwrap());
            assert!(b.excludes(east) || lon != 0.0, "{east}");
            assert!(b.excludes(south) || lat != 0.0, "{south}");
        }
        // Nearly the whole way round, both corners in column 0: every column.
        for (w, e) in [(-179.99, 180.0), (10.01, 10.0), (-180.0, 179.999_999)] {
            let b = DataBounds::new(&bbox(w, -60.0, e, 75.0), 14);
            for lon in [-179.995, -90.0, 0.0, 10.005, 90.0, 179.9999] {
                let t = TileId::from_lon_lat(lon, 0.0, 14).unwrap();
                assert!(!b.excludes(t), "{w}..{e}: {lon}");
            }
        }
        // Longitude 180 is -180's tile: an extent up to it holds the first column.
        let b = DataBounds::new(&bbox(170.0, -10.0, 180.0, 10.0), 14);
        let t = TileId::from_lon_lat(180.0, 0.0, 14).unwrap();
        assert_eq!(t.x(), 0);
        assert!(!b.excludes(t));
        assert!(b.excludes(TileId::new(14, 1, t.y()).unwrap()));
    }

    #[test]
    fn an_extent_across_the_antimeridian_wraps() {
        // Fiji: west 177, east -178.
        let b = DataBounds::new(&bbox(177.0, -19.0, -178.0, -16.0), 10);
        for lon in [177.5, 179.9, -179.9, -178.5] {
            let t = TileId::from_lon_lat(lon, -17.5, 10).unwrap();
            assert!(!b.excludes(t), "{lon}");
        }
        let t = TileId::from_lon_lat(170.0, -17.5, 10).unwrap();
        assert!(b.excludes(t));
    }

    #[test]
    fn parse_reads_four_checked_numbers() {
        assert_eq!(
            parse_bounds(" 177, -19 ,-178,-16"),
            Ok(bbox(177.0, -19.0, -178.0, -16.0))
        );
        for bad in ["", "1,2,3,x", "1,2,3,4,5", "NaN,0,1,1"] {
            assert!(parse_bounds(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_bounds("0,2,1,1"),
            Err("bounds.south must be a latitude in -90..=90, south not above north, got 2".into())
        );
        assert_eq!(
            parse_bounds("190,0,1,1"),
            Err("bounds.west must be a longitude in -180..=180, got 190".into())
        );
    }

    #[test]
    fn check_names_the_bad_bound() {
        assert_eq!(check(&WORLD), Ok(()));
        assert_eq!(
            check(&bbox(-181.0, 0.0, 0.0, 1.0)),
            Err(("bounds.west", -181.0, LONGITUDE))
        );
        assert_eq!(
            check(&bbox(0.0, 0.0, f64::NAN, 1.0)).map_err(|e| e.0),
            Err("bounds.east")
        );
        assert_eq!(
            check(&bbox(0.0, -91.0, 1.0, 1.0)),
            Err(("bounds.south", -91.0, LATITUDE))
        );
        assert_eq!(
            check(&bbox(0.0, 2.0, 1.0, 1.0)),
            Err(("bounds.south", 2.0, LATITUDE))
        );
    }
}
