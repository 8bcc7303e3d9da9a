//! The npm package's tile functions (`tileForPoint`, `tilesForBbox`, `neighbourTiles`,
//! `parentTile`), for a Rust map layer that picks the tiles it hands to
//! [`TileCache::load_tiles`](crate::TileCache::load_tiles): the core's
//! ([`tilewarm::tile`]), with this crate's [`Error`]. Host-compiled.

use tilewarm::tile::{cover, Bbox, TileError};
use tilewarm::TileId;

use crate::error::{Error, ErrorCode};

/// Most tiles [`tiles_for_bbox`] gives, as the npm package's `tilesForBbox`.
pub const MAX_BBOX_TILES: usize = 4096;

fn error(e: TileError) -> Error {
    let code = match e {
        TileError::TooManyTiles { .. } => ErrorCode::TooManyTiles,
        TileError::Parse { .. } => ErrorCode::InvalidTile,
        TileError::InvertedBbox { .. }
        | TileError::ZoomOutOfRange(_)
        | TileError::CoordOutOfRange { .. }
        | TileError::NotFinite { .. }
        | TileError::LatitudeOutOfRange { .. }
        | TileError::AncestorZoom { .. } => ErrorCode::OutOfRange,
        _ => ErrorCode::InvalidArgValue,
    };
    Error::new(code, e.to_string())
}

/// The tile at zoom `z` (0..=24) that contains a point. Longitude wraps (180 and -180 are
/// the same meridian); latitude clamps to the Web Mercator limit of ±85.0511.
///
/// ```
/// assert_eq!(tilewarm_web::tile_for_point(-122.3321, 47.6062, 14).unwrap().to_string(), "14/2624/5721");
/// ```
pub fn tile_for_point(lon: f64, lat: f64, z: u8) -> Result<TileId, Error> {
    TileId::from_lon_lat(lon, lat, z).map_err(error)
}

/// Every tile at zoom `z` that intersects a box, row by row from the north, each row west
/// to east; `west > east` crosses the antimeridian. At most 4096 tiles (`TooManyTiles`).
pub fn tiles_for_bbox(
    west: f64,
    south: f64,
    east: f64,
    north: f64,
    z: u8,
) -> Result<Vec<TileId>, Error> {
    let b = Bbox::new(west, south, east, north).map_err(error)?;
    cover(&b, z, MAX_BBOX_TILES).map_err(error)
}

/// The tiles within `ring` tiles of `tile` (Chebyshev distance), `tile` itself excluded: 8
/// for ring 1, 24 for ring 2. Columns wrap around the antimeridian; rows past the poles are
/// left out; each tile appears once.
pub fn neighbour_tiles(tile: TileId, ring: u32) -> Result<Vec<TileId>, Error> {
    tile.neighbours(ring).map_err(error)
}

/// The tile at zoom `z` (at most the zoom of `tile`) that contains `tile`.
///
/// ```
/// let t: tilewarm_web::TileId = "14/2624/5721".parse().unwrap();
/// assert_eq!(tilewarm_web::parent_tile(t, 12).unwrap().to_string(), "12/656/1430");
/// ```
pub fn parent_tile(tile: TileId, z: u8) -> Result<TileId, Error> {
    tile.ancestor(z).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_npm_packages_tile_functions_with_its_errors() {
        let t = tile_for_point(-122.3321, 47.6062, 14).unwrap();
        assert_eq!(t.to_string(), "14/2624/5721");
        assert_eq!(parent_tile(t, 12).unwrap().to_string(), "12/656/1430");
        assert_eq!(neighbour_tiles(t, 1).unwrap().len(), 8);
        let b = t.bounds();
        let inside = tiles_for_bbox(
            b.west + 1e-6,
            b.south + 1e-6,
            b.east - 1e-6,
            b.north - 1e-6,
            14,
        );
        assert_eq!(inside.unwrap(), [t]);
        let e = tile_for_point(0.0, 0.0, 25).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(e.message.contains("0..=24"), "{e}");
        let e = tile_for_point(f64::NAN, 0.0, 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        let e = tiles_for_bbox(-180.0, -85.0, 180.0, 85.0, 14).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyTiles);
        let e = parent_tile(t, 15).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
    }
}
