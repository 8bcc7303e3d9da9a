//! Checks of the `TileCache` options and viewports that arrive from JavaScript.
//!
//! Like [`super::args`], nothing here touches wasm-bindgen, so `cargo test --features wasm`
//! covers it, and errors are [`ArgError`]s: the message's text names the option by its
//! JavaScript path (`batch.maxTiles`, `ttl.byClass.active`, `west`) and says what is
//! allowed, and the JS glue writes in the value it passed. Keeping number formatting out of
//! these paths keeps it out of the hot ones too.

use super::args::{ArgError, Value, LATITUDE, LONGITUDE};
use super::boundary::{Code, ErrorClass};
use super::options::{numbers, Range, ACCESS_ALLOWED, CLASS_TTL};
use crate::access::Access;
use crate::client::ClientConfig;
use crate::planner::{Viewport, MAX_VIEW_ZOOM};
use crate::tile::{cover_range, Bbox, MAX_ZOOM};

/// A checked number, or `None` for `undefined` (use the default).
fn number(path: &str, range: &Range, v: &Value) -> Result<Option<f64>, ArgError> {
    match v {
        Value::Number(n) if range.contains(*n) => Ok(Some(*n)),
        Value::Number(_) => Err(ArgError::must(
            ErrorClass::Range,
            Code::OutOfRange,
            path,
            &range.allowed(),
        )),
        Value::Undefined => Ok(None),
        _ => Err(ArgError::must(
            ErrorClass::Type,
            Code::InvalidArgType,
            path,
            &range.allowed(),
        )),
    }
}

/// An access tier from a JS value.
pub(crate) fn access(path: &str, v: &Value) -> Result<Access, ArgError> {
    match v {
        Value::Text(s) => s.parse().map_err(|_| {
            ArgError::must(
                ErrorClass::Type,
                Code::InvalidArgValue,
                path,
                ACCESS_ALLOWED,
            )
        }),
        _ => Err(ArgError::must(
            ErrorClass::Type,
            Code::InvalidArgType,
            path,
            ACCESS_ALLOWED,
        )),
    }
}

/// The client configuration from the values of the numeric options (in the order of
/// [`numbers`]), the `ttl.byClass` entries (name, value), the access tier (`undefined` =
/// public) and a jitter seed. `None` for `classes` keeps the default class TTLs.
pub(crate) fn client_config(
    values: &[Value],
    classes: Option<&[(String, Value)]>,
    tier: &Value,
    seed: u64,
) -> Result<ClientConfig, ArgError> {
    let mut c = ClientConfig::default();
    let mut values = values.iter();
    for (path, num) in numbers() {
        let v = values.next().unwrap_or(&Value::Undefined);
        if let Some(n) = number(path, &num.range, v)? {
            (num.set)(&mut c, n);
        }
    }
    c.batch.seed = seed;
    if let Some(classes) = classes {
        c.cache.class_ttl_ms.clear();
        for (name, v) in classes {
            let path = format!("ttl.byClass.{name}");
            if let Some(s) = number(&path, &CLASS_TTL, v)? {
                c.cache.class_ttl_ms.insert(name.clone(), s as u64 * 1000);
            }
        }
    }
    if *tier != Value::Undefined {
        c.access = access("access", tier)?;
    }
    Ok(c)
}

/// What a viewport's zoom must be (`0..=MAX_VIEW_ZOOM`; a test checks the text).
const VIEW_ZOOM: &str = "a number in 0..=30";

/// The error for a viewport that covers more than `max_tiles` data tiles at `tile_zoom`.
pub(crate) fn too_wide(tile_zoom: u8, max_tiles: usize) -> ArgError {
    let mut parts = vec![format!(
        "viewport covers more than {max_tiles} data tiles at tileZoom {tile_zoom} (west "
    )];
    for part in [
        "west",
        ", south ",
        "south",
        ", east ",
        "east",
        ", north ",
        "north",
        ", zoom ",
        "zoom",
        "); zoom in, or raise minZoom so nothing is fetched at this zoom",
    ] {
        parts.push(part.into());
    }
    ArgError {
        kind: ErrorClass::Range,
        code: Code::TooManyTiles,
        parts,
    }
}

/// A checked viewport. `tile_zoom`, `min_zoom` and `max_tiles` are the client's, so a view
/// that covers too many data tiles is refused here, before the core sees it.
pub(crate) fn viewport(
    v: &[Value; 5],
    tile_zoom: u8,
    min_zoom: f64,
    max_tiles: usize,
) -> Result<Viewport, ArgError> {
    let names = ["west", "south", "east", "north", "zoom"];
    let mut n = [0.0; 5];
    for (i, name) in names.iter().enumerate() {
        let allowed = match i {
            0 | 2 => LONGITUDE,
            1 | 3 => LATITUDE,
            _ => VIEW_ZOOM,
        };
        let Value::Number(x) = v[i] else {
            return Err(ArgError::must(
                ErrorClass::Type,
                Code::InvalidArgType,
                name,
                allowed,
            ));
        };
        let ok = match i {
            0 | 2 => x.is_finite(),
            1 | 3 => (-90.0..=90.0).contains(&x),
            _ => (0.0..=MAX_VIEW_ZOOM).contains(&x),
        };
        if !ok {
            return Err(ArgError::must(
                ErrorClass::Range,
                Code::OutOfRange,
                name,
                allowed,
            ));
        }
        n[i] = x;
    }
    let [west, south, east, north, zoom] = n;
    if south > north {
        let parts = [
            "south must be at most north, got ",
            "south",
            " (north is ",
            "north",
            ")",
        ];
        return Err(ArgError {
            kind: ErrorClass::Range,
            code: Code::OutOfRange,
            parts: parts.map(String::from).to_vec(),
        });
    }
    let too_wide = || too_wide(tile_zoom, max_tiles);
    let bbox = Bbox::new(west, south, east, north).map_err(|_| too_wide())?;
    if zoom >= min_zoom && tile_zoom <= MAX_ZOOM {
        let count = cover_range(&bbox, tile_zoom)
            .map_err(|_| too_wide())?
            .count();
        if count > max_tiles as u64 {
            return Err(too_wide());
        }
    }
    Viewport::new(west, south, east, north, zoom).map_err(|_| too_wide())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unset() -> Vec<Value> {
        numbers().map(|_| Value::Undefined).collect()
    }

    /// The position of an option's value in the list `client_config` takes.
    fn at(path: &str) -> usize {
        numbers().position(|(p, _)| p == path).expect(path)
    }

    #[test]
    fn defaults_match_the_core() {
        let c = client_config(&unset(), None, &Value::Undefined, 7).unwrap();
        let d = ClientConfig::default();
        assert_eq!(c.cache, d.cache);
        assert_eq!(c.planner, d.planner);
        assert_eq!(c.batch, crate::batch::BatchConfig { seed: 7, ..d.batch });
        assert_eq!(c.access, Access::Public);
    }

    #[test]
    fn values_land_in_their_fields() {
        let mut values = unset();
        values[at("tileZoom")] = Value::Number(16.0);
        values[at("ttl.default")] = Value::Number(60.0);
        values[at("ttl.staleWhileRevalidate")] = Value::Number(30.0);
        values[at("prefetch.viewRing")] = Value::Number(0.5);
        values[at("batch.maxTiles")] = Value::Number(64.0);
        values[at("batch.coalesceLevels")] = Value::Number(0.0);
        let classes = [("sold".to_string(), Value::Number(2.0))];
        let tier = Value::Text("agent".into());
        let c = client_config(&values, Some(&classes), &tier, 0).unwrap();
        assert_eq!((c.cache.tile_zoom, c.planner.tile_zoom), (16, 16));
        assert_eq!(c.cache.default_ttl_ms, 60_000);
        assert_eq!(c.cache.stale_while_revalidate_ms, 30_000);
        assert_eq!(c.planner.view_ring, 0.5);
        assert_eq!((c.batch.max_tiles, c.batch.coalesce_levels), (64, 0));
        assert_eq!(c.cache.class_ttl_ms.len(), 1);
        assert_eq!(c.cache.class_ttl_ms["sold"], 2000);
        assert_eq!(c.access, Access::Agent);
    }

    #[test]
    fn errors_name_the_field() {
        let undef = Value::Undefined;
        let mut values = unset();
        values[0] = Value::Number(31.0);
        let e = client_config(&values, None, &undef, 0).unwrap_err();
        assert_eq!(e.kind, ErrorClass::Range);
        assert_eq!(
            e.parts,
            ["tileZoom must be an integer in 0..=24, got ", "tileZoom"]
        );
        values[0] = Value::Text("14".into());
        let e = client_config(&values, None, &undef, 0).unwrap_err();
        assert_eq!(
            (e.parts[1].as_str(), e.kind),
            ("tileZoom", ErrorClass::Type)
        );
        values[0] = Value::Undefined;
        values[at("batch.maxTiles")] = Value::Number(65.0);
        let e = client_config(&values, None, &undef, 0).unwrap_err();
        assert_eq!(
            e.parts,
            [
                "batch.maxTiles must be an integer in 1..=64, got ",
                "batch.maxTiles"
            ]
        );
        values[at("batch.maxTiles")] = Value::Undefined;
        let classes = [("sold".to_string(), Value::Number(0.0))];
        let e = client_config(&values, Some(&classes), &undef, 0).unwrap_err();
        assert_eq!(e.parts[1], "ttl.byClass.sold");
        let e = client_config(&values, None, &Value::Text("admin".into()), 0).unwrap_err();
        assert_eq!(
            (e.parts[1].as_str(), e.code),
            ("access", Code::InvalidArgValue)
        );
    }

    #[test]
    fn view_zoom_names_the_cores_bound() {
        assert_eq!(
            VIEW_ZOOM,
            format!("a number in 0..={}", MAX_VIEW_ZOOM as u32)
        );
    }

    #[test]
    fn viewports_are_checked() {
        let n = Value::Number;
        let ok = [n(-122.4), n(47.5), n(-122.3), n(47.7), n(14.0)];
        assert!(viewport(&ok, 14, 12.0, 1024).is_ok());
        let e = viewport(&[n(0.0), n(10.0), n(1.0), n(-10.0), n(3.0)], 14, 12.0, 1024);
        assert_eq!(
            e.unwrap_err().parts,
            [
                "south must be at most north, got ",
                "south",
                " (north is ",
                "north",
                ")"
            ]
        );
        let world = [n(-180.0), n(-85.0), n(180.0), n(85.0), n(14.0)];
        let e = viewport(&world, 14, 12.0, 1024).unwrap_err();
        assert_eq!(e.code, Code::TooManyTiles);
        assert_eq!(
            e.parts[0],
            "viewport covers more than 1024 data tiles at tileZoom 14 (west "
        );
        // Below minZoom nothing is fetched, so any box is fine.
        let world_low = [n(-180.0), n(-85.0), n(180.0), n(85.0), n(3.0)];
        assert!(viewport(&world_low, 14, 12.0, 1024).is_ok());
        let e = viewport(
            &[n(f64::NAN), n(0.0), n(1.0), n(1.0), n(3.0)],
            14,
            12.0,
            1024,
        );
        assert_eq!(e.unwrap_err().parts[1], "west");
    }
}
