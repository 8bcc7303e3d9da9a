//! Checks of the values that arrive from JavaScript, and the tile functions built on them.
//!
//! Nothing here touches wasm-bindgen: a JS value is first described as a [`Value`], so these
//! checks run (and are tested) on the host with `cargo test --features wasm`. Nothing here
//! panics on input: numbers arrive as `f64` and are checked for integer-ness and range
//! before any conversion.
//!
//! Errors are not formatted here: an [`ArgError`] is the message's text with the names of
//! the arguments whose values it shows, and the JS glue (`thrown` in `js/cache.js`) writes
//! the values in as JavaScript shows them. So the texts live here once, and no JS value is
//! described or formatted in wasm.

use super::boundary::{Code, ErrorClass};
use crate::tile::{cover_range, Bbox, TileError, TileId, MAX_ZOOM};

/// The most tiles `tilesForBbox` returns; a larger cover is an error, found before allocating.
pub(crate) const MAX_BBOX_TILES: u64 = 4096;

/// The widest ring `neighbourTiles` accepts: (2·31 + 1)² − 1 = 3968 tiles, under
/// [`MAX_BBOX_TILES`].
pub(crate) const MAX_RING: u32 = 31;

/// What a longitude must be.
pub(crate) const LONGITUDE: &str = "a finite number (a longitude; any value wraps)";
/// What a latitude must be.
pub(crate) const LATITUDE: &str = "a latitude in -90..=90";

/// A JavaScript value as these checks see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `typeof v === "number"`.
    Number(f64),
    /// `typeof v === "string"`.
    Text(String),
    /// `undefined` (an option left out).
    Undefined,
    /// Anything else: `null`, a boolean, a bigint, an object, ...
    Other,
}

/// An error to throw into JavaScript. Its message is `parts` joined, where every odd part
/// is the name of an argument (or option path) and stands for that argument's value: for
/// `["z must be an integer in 0..=24, got ", "z"]` and `z = 31` the message is
/// `z must be an integer in 0..=24, got 31`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArgError {
    pub kind: ErrorClass,
    pub code: Code,
    pub parts: Vec<String>,
}

impl ArgError {
    /// `{south} must not be greater than {north}, got {south} … and {north} …`: a box upside
    /// down, its two latitudes named by their paths.
    pub fn south_above_north(south: &str, north: &str) -> ArgError {
        ArgError {
            kind: ErrorClass::Range,
            code: Code::OutOfRange,
            parts: vec![
                format!("{south} must not be greater than {north}, got {south} "),
                south.to_owned(),
                format!(" and {north} "),
                north.to_owned(),
            ],
        }
    }

    /// `{name} must be {allowed}, got {name's value}`.
    pub fn must(kind: ErrorClass, code: Code, name: &str, allowed: &str) -> ArgError {
        ArgError {
            kind,
            code,
            parts: vec![format!("{name} must be {allowed}, got "), name.to_owned()],
        }
    }

    /// A message that shows no argument's value.
    pub(crate) fn text(kind: ErrorClass, code: Code, message: String) -> ArgError {
        ArgError {
            kind,
            code,
            parts: vec![message],
        }
    }
}

fn number(name: &str, v: &Value) -> Result<f64, ArgError> {
    match v {
        Value::Number(n) => Ok(*n),
        _ => Err(ArgError::must(
            ErrorClass::Type,
            Code::InvalidArgType,
            name,
            "a number",
        )),
    }
}

/// `n` if it is an integer in `0..=hi`.
fn whole(n: f64, hi: u32) -> Option<u32> {
    // NaN and ±Infinity fail these comparisons (fract of infinity is NaN).
    (n.fract() == 0.0 && n >= 0.0 && n <= hi as f64).then_some(n as u32)
}

/// An integer in `0..=hi`.
fn integer(name: &str, v: &Value, hi: u32) -> Result<u32, ArgError> {
    whole(number(name, v)?, hi).ok_or_else(|| {
        let allowed = format!("an integer in 0..={hi}");
        ArgError::must(ErrorClass::Range, Code::OutOfRange, name, &allowed)
    })
}

fn zoom(name: &str, v: &Value) -> Result<u8, ArgError> {
    // In range 0..=MAX_ZOOM (24), so the narrowing cannot truncate.
    Ok(integer(name, v, MAX_ZOOM as u32)? as u8)
}

fn longitude(name: &str, v: &Value) -> Result<f64, ArgError> {
    let n = number(name, v)?;
    if n.is_finite() {
        Ok(n)
    } else {
        Err(ArgError::must(
            ErrorClass::Range,
            Code::OutOfRange,
            name,
            LONGITUDE,
        ))
    }
}

fn latitude(name: &str, v: &Value) -> Result<f64, ArgError> {
    let n = number(name, v)?;
    if (-90.0..=90.0).contains(&n) {
        Ok(n)
    } else {
        Err(ArgError::must(
            ErrorClass::Range,
            Code::OutOfRange,
            name,
            LATITUDE,
        ))
    }
}

fn tile(name: &str, v: &Value) -> Result<TileId, ArgError> {
    let Value::Text(s) = v else {
        return Err(ArgError::must(
            ErrorClass::Type,
            Code::InvalidArgType,
            name,
            "a tile string \"z/x/y\"",
        ));
    };
    s.parse().map_err(|e| core_error(name, e))
}

/// A core error, prefixed with the argument it came from; the core's message is the text.
/// The checks above run first, so in practice only tile parsing reaches this (and the
/// engine's tile lists, `tiles[i]`).
pub(crate) fn core_error(name: &str, e: TileError) -> ArgError {
    let message = format!("{name}: {e}");
    match e {
        TileError::Parse { .. } => ArgError::text(ErrorClass::Type, Code::InvalidTile, message),
        TileError::ZoomOutOfRange(_) | TileError::CoordOutOfRange { .. } => {
            ArgError::text(ErrorClass::Range, Code::InvalidTile, message)
        }
        TileError::TooManyTiles { .. } => {
            ArgError::text(ErrorClass::Range, Code::TooManyTiles, message)
        }
        _ => ArgError::text(ErrorClass::Range, Code::OutOfRange, message),
    }
}

/// A tile as it crosses to JavaScript: its packed id ([`TileId::to_u64`], below 2^53, so an
/// `f64` holds it exactly), which `js/api.js` writes as `z/x/y`.
pub(crate) fn packed(t: TileId) -> f64 {
    t.to_u64() as f64
}

/// `tileForPoint(lon, lat, z)`.
pub(crate) fn tile_for_point(lon: &Value, lat: &Value, z: &Value) -> Result<f64, ArgError> {
    let (lon, lat, z) = (longitude("lon", lon)?, latitude("lat", lat)?, zoom("z", z)?);
    TileId::from_lon_lat(lon, lat, z)
        .map(packed)
        .map_err(|e| core_error("point", e))
}

/// `tilesForBbox(west, south, east, north, z)`.
pub(crate) fn tiles_for_bbox(
    west: &Value,
    south: &Value,
    east: &Value,
    north: &Value,
    z: &Value,
) -> Result<Vec<f64>, ArgError> {
    let west = longitude("west", west)?;
    let south = latitude("south", south)?;
    let east = longitude("east", east)?;
    let north = latitude("north", north)?;
    let z = zoom("z", z)?;
    if south > north {
        return Err(ArgError::south_above_north("south", "north"));
    }
    let bbox = Bbox::new(west, south, east, north).map_err(|e| core_error("bbox", e))?;
    let range = cover_range(&bbox, z).map_err(|e| core_error("bbox", e))?;
    if range.count() > MAX_BBOX_TILES {
        return Err(ArgError {
            kind: ErrorClass::Range,
            code: Code::TooManyTiles,
            parts: vec![
                format!("the bbox covers {} tiles at z ", range.count()),
                "z".into(),
                format!(
                    ", more than the maximum of {MAX_BBOX_TILES}; use a smaller bbox or a lower z"
                ),
            ],
        });
    }
    // At most MAX_BBOX_TILES, checked above.
    let mut ids = Vec::with_capacity(range.count() as usize);
    ids.extend(range.tiles().map(packed));
    Ok(ids)
}

/// `neighbourTiles(tile, ring)`.
pub(crate) fn neighbour_tiles(t: &Value, ring: &Value) -> Result<Vec<f64>, ArgError> {
    let t = tile("tile", t)?;
    let ring = integer("ring", ring, MAX_RING)?;
    let tiles = t.neighbours(ring).map_err(|e| core_error("ring", e))?;
    Ok(tiles.into_iter().map(packed).collect())
}

/// `parentTile(tile, z)`.
pub(crate) fn parent_tile(t: &Value, z: &Value) -> Result<f64, ArgError> {
    let t = tile("tile", t)?;
    let z = whole(number("z", z)?, t.z() as u32).ok_or_else(|| {
        let allowed = format!("an integer in 0..={} (at most the zoom of tile {t})", t.z());
        ArgError::must(ErrorClass::Range, Code::OutOfRange, "z", &allowed)
    })?;
    // z <= t.z() <= 24 was checked, so neither the narrowing nor `ancestor` can fail.
    t.ancestor(z as u8)
        .map(packed)
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
    /// A packed id as `z/x/y`, as `js/api.js` writes it.
    fn name(p: f64) -> String {
        TileId::from_u64(p as u64).unwrap().to_string()
    }
    /// The message `thrown` in `js/cache.js` writes, with `shown` as the arguments' values.
    fn message(e: &ArgError, shown: &[(&str, &str)]) -> String {
        let value = |arg: &str| shown.iter().find(|(a, _)| *a == arg).expect(arg).1;
        let odd = |i: usize, p: &str| {
            if i % 2 == 1 {
                value(p).to_owned()
            } else {
                p.to_owned()
            }
        };
        e.parts.iter().enumerate().map(|(i, p)| odd(i, p)).collect()
    }

    #[test]
    fn reference_values() {
        let t = tile_for_point(&n(-122.3321), &n(47.6062), &n(14.0)).unwrap();
        assert_eq!(name(t), "14/2624/5721");
        let p = parent_tile(&s("14/2624/5721"), &n(12.0)).unwrap();
        assert_eq!(name(p), "12/656/1430");
        let ring = neighbour_tiles(&s("3/4/0"), &n(1.0)).unwrap();
        let names: Vec<String> = ring.into_iter().map(name).collect();
        assert_eq!(names, ["3/3/0", "3/5/0", "3/3/1", "3/4/1", "3/5/1"]);
        let cover = tiles_for_bbox(&n(170.0), &n(-10.0), &n(-170.0), &n(10.0), &n(4.0));
        let names: Vec<String> = cover.unwrap().into_iter().map(name).collect();
        assert_eq!(names, ["4/15/7", "4/0/7", "4/15/8", "4/0/8"]);
    }

    #[test]
    fn messages_name_argument_value_and_range() {
        let e = tile_for_point(&n(0.0), &n(0.0), &n(31.0)).unwrap_err();
        assert_eq!(
            message(&e, &[("z", "31")]),
            "z must be an integer in 0..=24, got 31"
        );
        assert_eq!((e.kind, e.code), (ErrorClass::Range, Code::OutOfRange));

        let e = tile_for_point(&n(0.0), &n(0.0), &n(1.5)).unwrap_err();
        assert_eq!(e.parts, ["z must be an integer in 0..=24, got ", "z"]);

        let e = tile_for_point(&n(f64::INFINITY), &n(0.0), &n(1.0)).unwrap_err();
        assert_eq!(
            message(&e, &[("lon", "Infinity")]),
            "lon must be a finite number (a longitude; any value wraps), got Infinity"
        );

        let e = tile_for_point(&n(0.0), &s("0"), &n(1.0)).unwrap_err();
        assert_eq!(e.parts, ["lat must be a number, got ", "lat"]);
        assert_eq!((e.kind, e.code), (ErrorClass::Type, Code::InvalidArgType));

        let e = tile_for_point(&n(0.0), &n(1e300), &n(1.0)).unwrap_err();
        assert_eq!(e.parts, ["lat must be a latitude in -90..=90, got ", "lat"]);

        let e = parent_tile(&s("14/2624/5721"), &n(15.0)).unwrap_err();
        assert_eq!(
            message(&e, &[("z", "15")]),
            "z must be an integer in 0..=14 (at most the zoom of tile 14/2624/5721), got 15"
        );

        let e = parent_tile(&s("3/8/0"), &n(1.0)).unwrap_err();
        assert_eq!((e.kind, e.code), (ErrorClass::Range, Code::InvalidTile));
        assert_eq!(
            e.parts,
            ["tile: tile 3/8/0 does not exist: x and y must be below 2^3 = 8"]
        );

        let e = neighbour_tiles(&Value::Undefined, &n(1.0)).unwrap_err();
        assert_eq!(
            message(&e, &[("tile", "undefined")]),
            "tile must be a tile string \"z/x/y\", got undefined"
        );

        let e = neighbour_tiles(&s("1/2"), &n(1.0)).unwrap_err();
        assert_eq!((e.kind, e.code), (ErrorClass::Type, Code::InvalidTile));
        assert_eq!(
            e.parts,
            ["tile: invalid tile \"1/2\": expected z/x/y, three integers separated by '/'"]
        );
    }

    #[test]
    fn bbox_is_bounded_and_checked() {
        let world = tiles_for_bbox(&n(-180.0), &n(-85.0), &n(180.0), &n(85.0), &n(6.0));
        assert_eq!(world.unwrap().len(), 4096);
        let e = tiles_for_bbox(&n(-180.0), &n(-85.0), &n(180.0), &n(85.0), &n(7.0)).unwrap_err();
        assert_eq!(e.code, Code::TooManyTiles);
        assert_eq!(
            message(&e, &[("z", "7")]),
            "the bbox covers 16384 tiles at z 7, more than the maximum of 4096; \
             use a smaller bbox or a lower z"
        );
        let e = tiles_for_bbox(&n(0.0), &n(10.0), &n(1.0), &n(-10.0), &n(3.0)).unwrap_err();
        assert_eq!(
            message(&e, &[("south", "10"), ("north", "-10")]),
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
            Value::Undefined,
            Value::Other,
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
