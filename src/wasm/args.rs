//! Checks of the values that arrive from JavaScript, and the tile functions built on them.
//!
//! Nothing here touches wasm-bindgen: a JS value is first described as a [`Value`], so these
//! checks run (and are tested) on the host with `cargo test --features wasm`. Every error
//! names the argument, shows the value and says what is allowed; nothing here panics on
//! input — numbers arrive as `f64` and are checked for integer-ness and range before any
//! conversion.

use crate::{cover_range, Bbox, TileError, TileId, MAX_ZOOM};

/// The most tiles `tilesForBbox` returns; a larger cover is an error, found before allocating.
pub(crate) const MAX_BBOX_TILES: u64 = 4096;

/// The widest ring `neighbourTiles` accepts: (2·31 + 1)² − 1 = 3968 tiles, under
/// [`MAX_BBOX_TILES`].
pub(crate) const MAX_RING: u32 = 31;

/// A JavaScript value as these checks see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `typeof v === "number"`.
    Number(f64),
    /// `typeof v === "string"`.
    Text(String),
    /// Anything else, already described for a message: `undefined`, `null`, `true`,
    /// `a bigint`, `an array`, `an object`, ...
    Other(String),
}

/// Which JavaScript error class to throw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The value has the wrong type (or a string is not a tile): `TypeError`.
    Type,
    /// The value has the right type but is out of range: `RangeError`.
    Range,
}

/// The `code` property of a thrown error.
pub(crate) mod code {
    /// An argument of the wrong JavaScript type.
    pub const INVALID_ARG_TYPE: &str = "ERR_INVALID_ARG_TYPE";
    /// A number that is not an integer, not finite, or outside the allowed range.
    pub const OUT_OF_RANGE: &str = "ERR_OUT_OF_RANGE";
    /// A string that is not a tile `z/x/y`, or names a tile that does not exist.
    pub const INVALID_TILE: &str = "ERR_INVALID_TILE";
    /// A request for more tiles than one call may return.
    pub const TOO_MANY_TILES: &str = "ERR_TOO_MANY_TILES";
    /// A value of the right type that is not one of the allowed ones (an access tier).
    pub const INVALID_ARG_VALUE: &str = "ERR_INVALID_ARG_VALUE";
}

/// An error to throw into JavaScript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArgError {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

impl ArgError {
    fn range(code: &'static str, message: String) -> ArgError {
        ArgError {
            kind: Kind::Range,
            code,
            message,
        }
    }
    fn type_(code: &'static str, message: String) -> ArgError {
        ArgError {
            kind: Kind::Type,
            code,
            message,
        }
    }
}

/// A number the way JavaScript prints it, for the common cases (no 300-digit expansions):
/// [`crate::Num`], with JavaScript's names for the infinities.
fn show_number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        crate::Num(v).to_string()
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => show_number(*n),
        Value::Text(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!(
                "{}… (a string of {} characters)",
                crate::Quoted(&head),
                s.chars().count()
            )
        }
        Value::Text(s) => crate::Quoted(s).to_string(),
        Value::Other(d) => d.clone(),
    }
}

fn number(name: &str, v: &Value) -> Result<f64, ArgError> {
    match v {
        Value::Number(n) => Ok(*n),
        _ => Err(ArgError::type_(
            code::INVALID_ARG_TYPE,
            format!("{name} must be a number, got {}", show(v)),
        )),
    }
}

/// An integer in `lo..=hi`; `note` is added to the message after the range.
fn integer(name: &str, v: &Value, lo: u32, hi: u32, note: &str) -> Result<u32, ArgError> {
    let n = number(name, v)?;
    // NaN and ±Infinity fail these comparisons (fract of infinity is NaN).
    if n.fract() == 0.0 && n >= lo as f64 && n <= hi as f64 {
        Ok(n as u32)
    } else {
        Err(ArgError::range(
            code::OUT_OF_RANGE,
            format!(
                "{name} must be an integer in {lo}..={hi}{note}, got {}",
                show_number(n)
            ),
        ))
    }
}

fn zoom(name: &str, v: &Value) -> Result<u8, ArgError> {
    // In range 0..=24, so the narrowing cannot truncate.
    Ok(integer(name, v, 0, MAX_ZOOM as u32, "")? as u8)
}

fn longitude(name: &str, v: &Value) -> Result<f64, ArgError> {
    let n = number(name, v)?;
    if n.is_finite() {
        Ok(n)
    } else {
        Err(ArgError::range(
            code::OUT_OF_RANGE,
            format!(
                "{name} must be a finite number (a longitude; any value wraps), got {}",
                show_number(n)
            ),
        ))
    }
}

fn latitude(name: &str, v: &Value) -> Result<f64, ArgError> {
    let n = number(name, v)?;
    if (-90.0..=90.0).contains(&n) {
        Ok(n)
    } else {
        Err(ArgError::range(
            code::OUT_OF_RANGE,
            format!(
                "{name} must be a latitude in -90..=90, got {}",
                show_number(n)
            ),
        ))
    }
}

fn tile(name: &str, v: &Value) -> Result<TileId, ArgError> {
    let Value::Text(s) = v else {
        return Err(ArgError::type_(
            code::INVALID_ARG_TYPE,
            format!("{name} must be a tile string \"z/x/y\", got {}", show(v)),
        ));
    };
    s.parse().map_err(|e| core_error(name, e))
}

/// A core error, prefixed with the argument it came from. The checks above run first, so
/// in practice only tile parsing reaches this.
fn core_error(name: &str, e: TileError) -> ArgError {
    let message = format!("{name}: {e}");
    match e {
        TileError::Parse { .. } => ArgError::type_(code::INVALID_TILE, message),
        TileError::ZoomOutOfRange(_) | TileError::CoordOutOfRange { .. } => {
            ArgError::range(code::INVALID_TILE, message)
        }
        TileError::TooManyTiles { .. } => ArgError::range(code::TOO_MANY_TILES, message),
        _ => ArgError::range(code::OUT_OF_RANGE, message),
    }
}

/// `tileForPoint(lon, lat, z)`.
pub(crate) fn tile_for_point(lon: &Value, lat: &Value, z: &Value) -> Result<String, ArgError> {
    let (lon, lat, z) = (longitude("lon", lon)?, latitude("lat", lat)?, zoom("z", z)?);
    TileId::from_lon_lat(lon, lat, z)
        .map(|t| t.to_string())
        .map_err(|e| core_error("point", e))
}

/// `tilesForBbox(west, south, east, north, z)`.
pub(crate) fn tiles_for_bbox(
    west: &Value,
    south: &Value,
    east: &Value,
    north: &Value,
    z: &Value,
) -> Result<Vec<String>, ArgError> {
    let west = longitude("west", west)?;
    let south = latitude("south", south)?;
    let east = longitude("east", east)?;
    let north = latitude("north", north)?;
    let z = zoom("z", z)?;
    if south > north {
        return Err(ArgError::range(
            code::OUT_OF_RANGE,
            format!(
                "south must not be greater than north, got south {} and north {}",
                show_number(south),
                show_number(north)
            ),
        ));
    }
    let bbox = Bbox::new(west, south, east, north).map_err(|e| core_error("bbox", e))?;
    let range = cover_range(&bbox, z).map_err(|e| core_error("bbox", e))?;
    if range.count() > MAX_BBOX_TILES {
        return Err(ArgError::range(
            code::TOO_MANY_TILES,
            format!(
                "the bbox covers {} tiles at z {z}, more than the maximum of {MAX_BBOX_TILES}; \
                 use a smaller bbox or a lower z",
                range.count()
            ),
        ));
    }
    Ok(range.tiles().map(|t| t.to_string()).collect())
}

/// `neighbourTiles(tile, ring)`.
pub(crate) fn neighbour_tiles(t: &Value, ring: &Value) -> Result<Vec<String>, ArgError> {
    let t = tile("tile", t)?;
    let ring = integer("ring", ring, 0, MAX_RING, "")?;
    let tiles = t.neighbours(ring).map_err(|e| core_error("ring", e))?;
    Ok(tiles.into_iter().map(|t| t.to_string()).collect())
}

/// `parentTile(tile, z)`.
pub(crate) fn parent_tile(t: &Value, z: &Value) -> Result<String, ArgError> {
    let t = tile("tile", t)?;
    let note = format!(" (at most the zoom of tile {t})");
    let z = integer("z", z, 0, t.z() as u32, &note)?;
    // z <= t.z() <= 24 was checked, so neither the narrowing nor `ancestor` can fail.
    t.ancestor(z as u8)
        .map(|a| a.to_string())
        .map_err(|e| core_error("z", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: f64) -> Value {
        Value::Number(v)
    }
    fn s(v: &str) -> Value {
        Value::Text(v.into())
    }

    #[test]
    fn reference_values() {
        assert_eq!(
            tile_for_point(&n(-122.3321), &n(47.6062), &n(14.0)).unwrap(),
            "14/2624/5721"
        );
        assert_eq!(
            parent_tile(&s("14/2624/5721"), &n(12.0)).unwrap(),
            "12/656/1430"
        );
        assert_eq!(neighbour_tiles(&s("3/4/0"), &n(1.0)).unwrap().len(), 5);
    }

    #[test]
    fn messages_name_argument_value_and_range() {
        let e = tile_for_point(&n(0.0), &n(0.0), &n(31.0)).unwrap_err();
        assert_eq!(e.message, "z must be an integer in 0..=24, got 31");
        assert_eq!((e.kind, e.code), (Kind::Range, code::OUT_OF_RANGE));

        let e = tile_for_point(&n(0.0), &n(0.0), &n(1.5)).unwrap_err();
        assert_eq!(e.message, "z must be an integer in 0..=24, got 1.5");

        let e = tile_for_point(&n(f64::INFINITY), &n(0.0), &n(1.0)).unwrap_err();
        assert!(
            e.message.starts_with("lon must be a finite number"),
            "{}",
            e.message
        );
        assert!(e.message.ends_with("got Infinity"), "{}", e.message);

        let e = tile_for_point(&n(0.0), &s("0"), &n(1.0)).unwrap_err();
        assert_eq!(e.message, "lat must be a number, got \"0\"");
        assert_eq!((e.kind, e.code), (Kind::Type, code::INVALID_ARG_TYPE));

        let e = tile_for_point(&n(0.0), &n(1e300), &n(1.0)).unwrap_err();
        assert_eq!(e.message, "lat must be a latitude in -90..=90, got 1e300");

        let e = parent_tile(&s("14/2624/5721"), &n(15.0)).unwrap_err();
        assert_eq!(
            e.message,
            "z must be an integer in 0..=14 (at most the zoom of tile 14/2624/5721), got 15"
        );

        let e = parent_tile(&s("3/8/0"), &n(1.0)).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Range, code::INVALID_TILE));
        assert!(
            e.message.starts_with("tile: tile 3/8/0 does not exist"),
            "{}",
            e.message
        );

        let e = neighbour_tiles(&Value::Other("undefined".into()), &n(1.0)).unwrap_err();
        assert_eq!(
            e.message,
            "tile must be a tile string \"z/x/y\", got undefined"
        );

        let e = neighbour_tiles(&s("1/2"), &n(1.0)).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Type, code::INVALID_TILE));
    }

    #[test]
    fn bbox_is_bounded_and_checked() {
        let world = tiles_for_bbox(&n(-180.0), &n(-85.0), &n(180.0), &n(85.0), &n(6.0));
        assert_eq!(world.unwrap().len(), 4096);
        let e = tiles_for_bbox(&n(-180.0), &n(-85.0), &n(180.0), &n(85.0), &n(7.0)).unwrap_err();
        assert_eq!(e.code, code::TOO_MANY_TILES);
        assert!(e.message.contains("16384 tiles at z 7"), "{}", e.message);
        let e = tiles_for_bbox(&n(0.0), &n(10.0), &n(1.0), &n(-10.0), &n(3.0)).unwrap_err();
        assert_eq!(
            e.message,
            "south must not be greater than north, got south 10 and north -10"
        );
    }

    #[test]
    fn no_input_panics() {
        let odd = [
            n(f64::NAN),
            n(f64::INFINITY),
            n(f64::NEG_INFINITY),
            n(-0.0),
            n(1e308),
            n(-1e308),
            n(4294967296.0),
            n(f64::MIN_POSITIVE),
            s(""),
            s("99999999999/1/1"),
            s(&"9".repeat(10_000)),
            Value::Other("null".into()),
        ];
        for a in &odd {
            for b in &odd {
                let _ = tile_for_point(a, b, a);
                let _ = tiles_for_bbox(a, b, a, b, b);
                let _ = neighbour_tiles(a, b);
                let _ = parent_tile(a, b);
            }
        }
    }
}
