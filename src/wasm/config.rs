//! Checks of the `TileCache` options and viewports that arrive from JavaScript.
//!
//! Like [`super::args`], nothing here touches wasm-bindgen, so `cargo test --features wasm`
//! covers it, and errors are [`ArgError`]s: the message's text names the option by its
//! JavaScript path (`batch.maxTiles`, `ttl.byClass.active`, `west`) and says what is
//! allowed, and the JS glue writes in the value it passed. Keeping number formatting out of
//! these paths keeps it out of the hot ones too.

use super::args::{code, ArgError, Kind, Value, LATITUDE, LONGITUDE};
use crate::access::Access;
use crate::client::ClientConfig;
use crate::planner::Viewport;
use crate::tile::{cover_range, Bbox, MAX_ZOOM};

/// One numeric option: its JS path, range, whether it must be an integer, and how a value
/// is described when it is wrong.
pub(crate) struct Spec {
    pub path: &'static str,
    pub lo: f64,
    pub hi: f64,
    pub integer: bool,
    pub allowed: &'static str,
}

const fn int(path: &'static str, lo: f64, hi: f64, allowed: &'static str) -> Spec {
    Spec {
        path,
        lo,
        hi,
        integer: true,
        allowed,
    }
}

/// Longest TTL accepted, in seconds (30 days, the protocol's bound).
const MAX_TTL_S: f64 = 2_592_000.0;

/// The numeric options, in the order the JS glue passes their values. `undefined` means
/// the default (from [`ClientConfig::default`]); the JS option table in `js/README.md`
/// lists the same ranges.
pub(crate) const SPECS: [Spec; 17] = [
    int("tileZoom", 0.0, 24.0, "an integer in 0..=24"),
    Spec {
        path: "minZoom",
        lo: 0.0,
        hi: 30.0,
        integer: false,
        allowed: "a number in 0..=30",
    },
    int("maxItems", 1.0, 1e7, "an integer in 1..=10000000"),
    int(
        "maxBytes",
        1.0,
        2147483647.0,
        "an integer in 1..=2147483647",
    ),
    int(
        "ttl.default",
        1.0,
        MAX_TTL_S,
        "an integer number of seconds in 1..=2592000",
    ),
    int(
        "ttl.staleWhileRevalidate",
        0.0,
        MAX_TTL_S,
        "an integer number of seconds in 0..=2592000",
    ),
    int("prefetch.ring", 0.0, 8.0, "an integer in 0..=8"),
    int(
        "prefetch.lookaheadMs",
        0.0,
        60000.0,
        "an integer in 0..=60000",
    ),
    int(
        "prefetch.maxTilesPerRound",
        0.0,
        4096.0,
        "an integer in 0..=4096",
    ),
    int("batch.maxTiles", 1.0, 64.0, "an integer in 1..=64"),
    int("batch.maxIds", 1.0, 1000.0, "an integer in 1..=1000"),
    int("batch.maxInFlight", 1.0, 64.0, "an integer in 1..=64"),
    int("batch.timeoutMs", 1.0, 600000.0, "an integer in 1..=600000"),
    int("batch.retries", 0.0, 10.0, "an integer in 0..=10"),
    Spec {
        path: "prefetch.viewRing",
        lo: 0.0,
        hi: 4.0,
        integer: false,
        allowed: "a number in 0..=4",
    },
    Spec {
        path: "prefetch.budgetPerVisible",
        lo: 0.0,
        hi: 64.0,
        integer: false,
        allowed: "a number in 0..=64",
    },
    int("batch.coalesceLevels", 0.0, 4.0, "an integer in 0..=4"),
];

/// The range of every `ttl.byClass` value.
const CLASS_TTL: Spec = int(
    "ttl.byClass",
    1.0,
    MAX_TTL_S,
    "an integer number of seconds in 1..=2592000",
);

const ACCESS_ALLOWED: &str = "one of \"public\", \"registered\", \"verified\", \"agent\"";

/// A checked number, or `None` for `undefined` (use the default).
fn number(path: &str, spec: &Spec, v: &Value) -> Result<Option<f64>, ArgError> {
    let n = match v {
        Value::Number(n) => *n,
        Value::Undefined => return Ok(None),
        _ => {
            return Err(ArgError::must(
                Kind::Type,
                code::INVALID_ARG_TYPE,
                path,
                spec.allowed,
            ))
        }
    };
    // NaN fails both comparisons; fract of an infinity is NaN.
    if n >= spec.lo && n <= spec.hi && (!spec.integer || n.fract() == 0.0) {
        Ok(Some(n))
    } else {
        Err(ArgError::must(
            Kind::Range,
            code::OUT_OF_RANGE,
            path,
            spec.allowed,
        ))
    }
}

/// An access tier from a JS value.
pub(crate) fn access(path: &str, v: &Value) -> Result<Access, ArgError> {
    match v {
        Value::Text(s) => s
            .parse()
            .map_err(|_| ArgError::must(Kind::Type, code::INVALID_ARG_VALUE, path, ACCESS_ALLOWED)),
        _ => Err(ArgError::must(
            Kind::Type,
            code::INVALID_ARG_TYPE,
            path,
            ACCESS_ALLOWED,
        )),
    }
}

/// The client configuration from the values of [`SPECS`] (in order), the `ttl.byClass`
/// entries (name, value), the access tier (`undefined` = public) and a jitter seed.
/// `None` for `classes` keeps the default class TTLs.
pub(crate) fn client_config(
    values: &[Value],
    classes: Option<&[(String, Value)]>,
    tier: &Value,
    seed: u64,
) -> Result<ClientConfig, ArgError> {
    let undefined = Value::Undefined;
    let mut got = [None; SPECS.len()];
    for (i, spec) in SPECS.iter().enumerate() {
        let v = values.get(i).unwrap_or(&undefined);
        got[i] = number(spec.path, spec, v)?;
    }
    let mut c = ClientConfig::default();
    let or = |i: usize, d: f64| got[i].unwrap_or(d);
    // Every value is range-checked above, so each conversion below is exact.
    let tile_zoom = or(0, c.cache.tile_zoom as f64) as u8;
    c = c.with_tile_zoom(tile_zoom);
    c.planner.min_zoom = or(1, c.planner.min_zoom);
    c.cache.max_items = or(2, c.cache.max_items as f64) as usize;
    c.cache.max_bytes = or(3, c.cache.max_bytes as f64) as usize;
    c.cache.default_ttl_ms = or(4, (c.cache.default_ttl_ms / 1000) as f64) as u64 * 1000;
    c.cache.stale_while_revalidate_ms = or(5, 0.0) as u64 * 1000;
    c.planner.ring = or(6, c.planner.ring as f64) as u32;
    c.planner.lookahead_ms = or(7, c.planner.lookahead_ms as f64) as u64;
    c.planner.max_tiles_per_round = or(8, c.planner.max_tiles_per_round as f64) as usize;
    c.batch.max_tiles = or(9, c.batch.max_tiles as f64) as usize;
    c.batch.max_ids = or(10, c.batch.max_ids as f64) as usize;
    c.batch.max_in_flight = or(11, c.batch.max_in_flight as f64) as usize;
    c.batch.timeout_ms = or(12, c.batch.timeout_ms as f64) as u64;
    c.batch.retries = or(13, c.batch.retries as f64) as u32;
    c.planner.view_ring = or(14, c.planner.view_ring);
    c.planner.budget_per_visible = or(15, c.planner.budget_per_visible);
    c.batch.coalesce_levels = or(16, c.batch.coalesce_levels as f64) as u8;
    c.batch.seed = seed;
    if let Some(classes) = classes {
        c.cache.class_ttl_ms.clear();
        for (name, v) in classes {
            let path = format!("ttl.byClass.{name}");
            match number(&path, &CLASS_TTL, v)? {
                Some(s) => c.cache.class_ttl_ms.insert(name.clone(), s as u64 * 1000),
                None => None,
            };
        }
    }
    if *tier != Value::Undefined {
        c.access = access("access", tier)?;
    }
    Ok(c)
}

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
        kind: Kind::Range,
        code: code::TOO_MANY_TILES,
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
            _ => "a number in 0..=30",
        };
        let Value::Number(x) = v[i] else {
            return Err(ArgError::must(
                Kind::Type,
                code::INVALID_ARG_TYPE,
                name,
                allowed,
            ));
        };
        let ok = match i {
            0 | 2 => x.is_finite(),
            1 | 3 => (-90.0..=90.0).contains(&x),
            _ => (0.0..=30.0).contains(&x),
        };
        if !ok {
            return Err(ArgError::must(
                Kind::Range,
                code::OUT_OF_RANGE,
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
            kind: Kind::Range,
            code: code::OUT_OF_RANGE,
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

    #[test]
    fn defaults_match_the_core() {
        let values: Vec<Value> = SPECS.iter().map(|_| Value::Undefined).collect();
        let c = client_config(&values, None, &Value::Undefined, 7).unwrap();
        let d = ClientConfig::default();
        assert_eq!(c.cache, d.cache);
        assert_eq!(c.planner, d.planner);
        assert_eq!(c.batch.max_tiles, d.batch.max_tiles);
        assert_eq!(c.batch.seed, 7);
        assert_eq!(c.access, Access::Public);
    }

    #[test]
    fn errors_name_the_field() {
        let undef = Value::Undefined;
        let mut values: Vec<Value> = SPECS.iter().map(|_| Value::Undefined).collect();
        values[0] = Value::Number(31.0);
        let e = client_config(&values, None, &undef, 0).unwrap_err();
        assert_eq!(e.kind, Kind::Range);
        assert_eq!(
            e.parts,
            ["tileZoom must be an integer in 0..=24, got ", "tileZoom"]
        );
        values[0] = Value::Text("14".into());
        let e = client_config(&values, None, &undef, 0).unwrap_err();
        assert_eq!((e.parts[1].as_str(), e.kind), ("tileZoom", Kind::Type));
        values[0] = Value::Undefined;
        values[9] = Value::Number(65.0);
        let e = client_config(&values, None, &undef, 0).unwrap_err();
        assert_eq!(e.parts[1], "batch.maxTiles");
        values[9] = Value::Undefined;
        let classes = [("sold".to_string(), Value::Number(0.0))];
        let e = client_config(&values, Some(&classes), &undef, 0).unwrap_err();
        assert_eq!(e.parts[1], "ttl.byClass.sold");
        let e = client_config(&values, None, &Value::Text("admin".into()), 0).unwrap_err();
        assert_eq!(
            (e.parts[1].as_str(), e.code),
            ("access", code::INVALID_ARG_VALUE)
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
        assert_eq!(e.code, code::TOO_MANY_TILES);
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
