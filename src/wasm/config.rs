//! Checks of the `TileCache` options and viewports that arrive from JavaScript.
//!
//! Like [`super::args`], nothing here touches wasm-bindgen, so `cargo test --features wasm`
//! covers it, and errors are [`ArgError`]s: the message's text names the option by its
//! JavaScript path (`batch.maxTiles`, `ttl.byClass.active`, `west`) and says what is
//! allowed, and the JS glue writes in the value it passed. Keeping number formatting out of
//! these paths keeps it out of the hot ones too.

use super::args::{ArgError, Value, LATITUDE, LONGITUDE};
use super::boundary::{Code, ErrorClass};
use crate::access::Access;
pub(crate) use crate::client::options::TILE_SIZE_ALLOWED;
use crate::client::options::{core_zoom, numbers, zoom_offset, Range, ACCESS_ALLOWED, CLASS_TTL};
use crate::client::ClientConfig;
use crate::planner::{Viewport, MAX_VIEW_ZOOM};

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
/// public) and a jitter seed. `None` for `classes` keeps the default class TTLs. For a
/// map of 256-px tiles; the tests use it.
#[cfg(test)]
pub(crate) fn client_config(
    values: &[Value],
    classes: Option<&[(String, Value)]>,
    tier: &Value,
    seed: u64,
) -> Result<ClientConfig, ArgError> {
    client_config_sized(values, classes, tier, &Value::Undefined, seed)
}

/// [`client_config`] for a map of `tileSize` `size` (see [`tile_size`]): `minZoom` is in
/// its units, and the core gets it in 256-px terms (at most `MAX_VIEW_ZOOM`).
pub(crate) fn client_config_sized(
    values: &[Value],
    classes: Option<&[(String, Value)]>,
    tier: &Value,
    size: &Value,
    seed: u64,
) -> Result<ClientConfig, ArgError> {
    let offset = tile_size(size)?;
    let mut c = ClientConfig::default();
    let mut values = values.iter();
    for (path, num) in numbers() {
        let v = values.next().unwrap_or(&Value::Undefined);
        if let Some(n) = number(path, &num.range, v)? {
            (num.set)(&mut c, n);
        }
    }
    c.batch.seed = seed;
    // Each bound is in range; together, the box must not be upside down.
    if c.cache.bounds.south > c.cache.bounds.north {
        return Err(ArgError::south_above_north("bounds.south", "bounds.north"));
    }
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
    c.planner.min_zoom = core_zoom(c.planner.min_zoom, offset);
    Ok(c)
}

/// How many zoom levels to add to the caller's zooms ([`zoom_offset`]: 256 adds 0, 512
/// adds 1), so the core sees 256-px XYZ zooms; `undefined` is 256.
pub(crate) fn tile_size(v: &Value) -> Result<f64, ArgError> {
    match v {
        Value::Undefined => Ok(0.0),
        Value::Number(n) => zoom_offset(*n).ok_or_else(|| {
            ArgError::must(
                ErrorClass::Range,
                Code::OutOfRange,
                "tileSize",
                TILE_SIZE_ALLOWED,
            )
        }),
        _ => Err(ArgError::must(
            ErrorClass::Type,
            Code::InvalidArgType,
            "tileSize",
            TILE_SIZE_ALLOWED,
        )),
    }
}

/// What a viewport's zoom must be (`0..=MAX_VIEW_ZOOM`; a test checks the text).
const VIEW_ZOOM: &str = "a number in 0..=30";

/// A checked viewport, its zoom turned into 256-px terms by adding `offset` (from
/// [`tile_size`]; at most `MAX_VIEW_ZOOM`). A view too wide to fetch is not refused: the
/// core makes it a state.
pub(crate) fn viewport(v: &[Value; 5], offset: f64) -> Result<Viewport, ArgError> {
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
    let zoom = core_zoom(zoom, offset);
    // Checked above: finite longitudes, latitudes in -90..=90 with south <= north, a zoom
    // in 0..=30, which is all `Viewport::new` asks.
    Viewport::new(west, south, east, north, zoom).map_err(|_| ArgError {
        kind: ErrorClass::Range,
        code: Code::OutOfRange,
        parts: vec!["the viewport is not valid".into()],
    })
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
    fn bounds_land_in_the_cache_and_must_not_be_upside_down() {
        let undef = Value::Undefined;
        let mut values = unset();
        let c = client_config(&values, None, &undef, 0).unwrap();
        assert_eq!(c.cache.bounds, crate::cache::WORLD);
        for (path, v) in [
            ("bounds.west", -122.5),
            ("bounds.south", 47.1),
            ("bounds.east", -121.3),
            ("bounds.north", 47.8),
        ] {
            values[at(path)] = Value::Number(v);
        }
        let c = client_config(&values, None, &undef, 0).unwrap();
        assert_eq!(
            c.cache.bounds,
            crate::tile::Bbox::new(-122.5, 47.1, -121.3, 47.8).unwrap()
        );
        values[at("bounds.south")] = Value::Number(48.0);
        let e = client_config(&values, None, &undef, 0).unwrap_err();
        assert_eq!(e.kind, ErrorClass::Range);
        assert_eq!(
            e.parts,
            [
                "bounds.south must not be greater than bounds.north, got bounds.south ",
                "bounds.south",
                " and bounds.north ",
                "bounds.north"
            ]
        );
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
        assert!(viewport(&ok, 0.0).is_ok());
        let e = viewport(&[n(0.0), n(10.0), n(1.0), n(-10.0), n(3.0)], 0.0);
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
        // The whole world at any zoom is a viewport: too wide to fetch is the core's state.
        let world = [n(-180.0), n(-85.0), n(180.0), n(85.0), n(30.0)];
        assert_eq!(viewport(&world, 1.0).unwrap().zoom, MAX_VIEW_ZOOM);
        let e = viewport(&[n(f64::NAN), n(0.0), n(1.0), n(1.0), n(3.0)], 0.0);
        assert_eq!(e.unwrap_err().parts[1], "west");
    }

    #[test]
    fn tile_size_sets_the_zoom_units() {
        let n = Value::Number;
        assert_eq!(tile_size(&Value::Undefined).unwrap(), 0.0);
        assert_eq!(tile_size(&n(256.0)).unwrap(), 0.0);
        assert_eq!(tile_size(&n(512.0)).unwrap(), 1.0);
        let e = tile_size(&n(300.0)).unwrap_err();
        assert_eq!(
            (e.kind, e.parts.clone()),
            (
                ErrorClass::Range,
                vec![
                    "tileSize must be 256 or 512, got ".to_string(),
                    "tileSize".to_string()
                ]
            )
        );
        let e = tile_size(&Value::Text("512".into())).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgType);
        // A MapLibre zoom 13.5 is 14.5 in 256-px terms; minZoom moves with it.
        let view = [n(-122.4), n(47.5), n(-122.3), n(47.7), n(13.5)];
        assert_eq!(viewport(&view, 1.0).unwrap().zoom, 14.5);
        let mut values = unset();
        values[at("minZoom")] = n(11.0);
        let c = client_config_sized(&values, None, &Value::Undefined, &n(512.0), 0).unwrap();
        assert_eq!(c.planner.min_zoom, 12.0);
        let c = client_config_sized(&unset(), None, &Value::Undefined, &n(512.0), 0).unwrap();
        assert_eq!(
            c.planner.min_zoom,
            ClientConfig::default().planner.min_zoom + 1.0
        );
        values[at("maxVisibleTiles")] = n(64.0);
        let c = client_config(&values, None, &Value::Undefined, 0).unwrap();
        assert_eq!(c.planner.max_visible_tiles, 64);
    }
}
