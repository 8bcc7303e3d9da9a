//! Every option of the npm package's `TileCache`, once: its JavaScript path, how it is
//! checked, where a number lands in the core's [`ClientConfig`] (whose `Default` is the
//! option's default), and, for the generator only, its doc and TypeScript type.
//!
//! The npm package's bindings (`src/wasm/`, feature `wasm`) check its options against this
//! table (`config.rs`), and their generator (`codegen.rs`) writes from it the option names
//! `js/cache.js` accepts, the numbers' order `Engine::new` takes them in, the
//! `TileCacheOptions` declarations and the option table of `js/README.md`. Rust shells that
//! take the same options (tilewarm-web) set them through [`set_number`] and
//! [`set_class_ttls`], so their ranges and messages are the npm package's. A new option is
//! one entry here.
//!
//! The ranges are the core's where the core has one (its config checks, the protocol's
//! [`Limits`](crate::protocol::Limits)); where the core only asks for "at least 1", the
//! upper bound is the boundary's own, so every accepted number converts exactly (the tests
//! below check both).

use crate::client::ClientConfig;
use crate::planner::DEFAULT_ALIGN_LEVELS;
use crate::util::HashMap;

/// The range of a number: `lo..=hi` (whole numbers), an integer or not, and how the allowed
/// values are named in messages (`{what} in {lo}..={hi}`).
pub(crate) struct Range {
    pub lo: f64,
    pub hi: f64,
    pub integer: bool,
    pub what: &'static str,
}

impl Range {
    /// What is allowed, as a message says it: `an integer in 1..=64`.
    pub fn allowed(&self) -> String {
        format!("{} in {}..={}", self.what, self.lo as i64, self.hi as i64)
    }

    /// Whether `n` is in range (NaN is not; an infinity is not an integer).
    pub fn contains(&self, n: f64) -> bool {
        n >= self.lo && n <= self.hi && (!self.integer || n.fract() == 0.0)
    }
}

const fn int(lo: f64, hi: f64) -> Range {
    Range {
        lo,
        hi,
        integer: true,
        what: "an integer",
    }
}

const fn real(lo: f64, hi: f64) -> Range {
    Range {
        lo,
        hi,
        integer: false,
        what: "a number",
    }
}

const fn seconds(lo: f64) -> Range {
    Range {
        lo,
        hi: MAX_TTL_S,
        integer: true,
        what: "an integer number of seconds",
    }
}

/// Longest TTL accepted, in seconds: the protocol's `Limits::max_ttl_s` (30 days).
pub(crate) const MAX_TTL_S: f64 = 2_592_000.0;

/// The range of every `ttl.byClass` value.
pub(crate) const CLASS_TTL: Range = seconds(1.0);

/// What an `access` must be, as messages say it.
pub const ACCESS_ALLOWED: &str = "one of \"public\", \"registered\", \"verified\", \"agent\"";

/// A numeric option, in the units it names (seconds, ms): `set` writes a checked value
/// (exactly: the range bounds it); `get` reads it back, which gives the default from
/// `ClientConfig::default()` (for the generator and the tests only).
pub(crate) struct Num {
    pub range: Range,
    pub set: fn(&mut ClientConfig, f64),
    #[cfg(test)]
    pub get: fn(&ClientConfig) -> f64,
}

/// How an option is checked.
pub(crate) enum Check {
    /// A number, checked in wasm.
    Number(Num),
    /// `ttl.byClass`: class names and seconds, each checked against [`CLASS_TTL`].
    PerClass,
    /// `access`: a tier name.
    Access,
    /// `tileSize`: 256 or 512, the map's tile size, which sets the units of the viewport's
    /// zoom and of `minZoom` ([`super::config::tile_size`]).
    TileSize,
    /// Checked by the JS shell only (`endpoint`, `headers`, `auth`, `fetch`, `now`).
    Shell,
}

/// One option. `doc` says what it does, with `{allowed}` for the range; a number's default
/// is read from the core, a shell option's is `default` (`None`: required).
pub(crate) struct Opt {
    pub path: &'static str,
    pub check: Check,
    #[cfg(all(test, feature = "wasm"))]
    pub doc: &'static str,
    #[cfg(all(test, feature = "wasm"))]
    pub ts: &'static str,
    #[cfg(all(test, feature = "wasm"))]
    pub default: Option<&'static str>,
}

const fn number(
    path: &'static str,
    range: Range,
    _get: fn(&ClientConfig) -> f64,
    set: fn(&mut ClientConfig, f64),
    _doc: &'static str,
) -> Opt {
    Opt {
        path,
        check: Check::Number(Num {
            range,
            set,
            #[cfg(test)]
            get: _get,
        }),
        #[cfg(all(test, feature = "wasm"))]
        doc: _doc,
        #[cfg(all(test, feature = "wasm"))]
        ts: "number",
        #[cfg(all(test, feature = "wasm"))]
        default: None,
    }
}

const fn other(
    path: &'static str,
    check: Check,
    _ts: &'static str,
    _default: Option<&'static str>,
    _doc: &'static str,
) -> Opt {
    Opt {
        path,
        check,
        #[cfg(all(test, feature = "wasm"))]
        doc: _doc,
        #[cfg(all(test, feature = "wasm"))]
        ts: _ts,
        #[cfg(all(test, feature = "wasm"))]
        default: _default,
    }
}

/// Every option, in the order the docs list them; a group (`ttl.`, `prefetch.`, `batch.`)
/// is an object option at its first member's place. The numbers go to `Engine::new` in
/// this order.
pub(crate) const OPTIONS: [Opt; 32] = [
    other(
        "endpoint",
        Check::Shell,
        "string",
        None,
        "Absolute URL of the batch endpoint (POST, JSON).",
    ),
    number(
        "tileZoom",
        int(0.0, 24.0),
        |c| c.cache.tile_zoom as f64,
        |c, v| *c = std::mem::take(c).with_tile_zoom(v as u8),
        "Zoom of the data tiles: {allowed}.",
    ),
    other(
        "tileSize",
        Check::TileSize,
        "256 | 512",
        None,
        "The map's tile size in pixels, which sets the units of the viewport's `zoom` and of \
         `minZoom`: {allowed} (256: Leaflet, OpenLayers; 512: MapLibre and deck.gl, whose \
         zoom is then passed as it is).",
    ),
    number(
        "minZoom",
        real(0.0, 30.0),
        |c| c.planner.min_zoom,
        |c, v| c.planner.min_zoom = v,
        "Below this map zoom nothing is fetched (unless `prefetch.warmBelowMinZoom` is \
         set): {allowed}, in the units `tileSize` sets.",
    ),
    number(
        "maxVisibleTiles",
        int(1.0, 4096.0),
        |c| c.planner.max_visible_tiles as f64,
        |c, v| c.planner.max_visible_tiles = v as usize,
        "Most data tiles a view may cover: {allowed}. A wider view is `tooWide`: nothing is \
         fetched for it and the cached items in it are still returned.",
    ),
    number(
        "bounds.west",
        real(-180.0, 180.0),
        |c| c.cache.bounds.west,
        |c, v| c.cache.bounds.west = v,
        "The data's extent, like a map source's `bounds`: a data tile entirely outside it \
         holds no items, so it is never asked for and a view over it is complete. West \
         edge: {allowed} (west above east crosses the antimeridian). The default, the \
         whole world, leaves every tile to the backend, and takes the extent a server \
         declares with its answers (`x-tilewarm-bounds`, its `--bounds`).",
    ),
    number(
        "bounds.south",
        real(-90.0, 90.0),
        |c| c.cache.bounds.south,
        |c, v| c.cache.bounds.south = v,
        "South edge of the data's extent: {allowed}, not above `bounds.north`.",
    ),
    number(
        "bounds.east",
        real(-180.0, 180.0),
        |c| c.cache.bounds.east,
        |c, v| c.cache.bounds.east = v,
        "East edge of the data's extent: {allowed}.",
    ),
    number(
        "bounds.north",
        real(-90.0, 90.0),
        |c| c.cache.bounds.north,
        |c, v| c.cache.bounds.north = v,
        "North edge of the data's extent: {allowed}.",
    ),
    number(
        "maxItems",
        int(1.0, 1e7),
        |c| c.cache.max_items as f64,
        |c, v| c.cache.max_items = v as usize,
        "Most items held: {allowed}. Prefetch stays within it and `maxBytes`: a round asks for no more tiles than the cache can hold beside the view, at the items per tile the answers have shown.",
    ),
    number(
        "maxBytes",
        int(1.0, 2_147_483_647.0),
        |c| c.cache.max_bytes as f64,
        |c, v| c.cache.max_bytes = v as usize,
        "Most bytes held; each item is charged its id, class and `data` as JSON, plus 96: {allowed}.",
    ),
    number(
        "ttl.default",
        seconds(1.0),
        |c| (c.cache.default_ttl_ms / 1000) as f64,
        |c, v| c.cache.default_ttl_ms = v as u64 * 1000,
        "Seconds an item is fresh when neither the response nor its class says: {allowed}.",
    ),
    other(
        "ttl.byClass",
        Check::PerClass,
        "Record<string, number>",
        None,
        "Seconds an item is fresh, per item class, each {allowed}; replaces the default table.",
    ),
    number(
        "ttl.staleWhileRevalidate",
        seconds(0.0),
        |c| (c.cache.stale_while_revalidate_ms / 1000) as f64,
        |c, v| c.cache.stale_while_revalidate_ms = v as u64 * 1000,
        "Seconds after expiry an item may still be shown, flagged `stale`, while it is \
         refetched: {allowed}.",
    ),
    number(
        "prefetch.ring",
        int(0.0, 8.0),
        |c| c.planner.ring as f64,
        |c, v| c.planner.ring = v as u32,
        "Ring of neighbour tiles fetched around the view: {allowed}.",
    ),
    number(
        "prefetch.lookaheadMs",
        int(0.0, 60_000.0),
        |c| c.planner.lookahead_ms as f64,
        |c, v| c.planner.lookahead_ms = v as u64,
        "How far ahead motion is extrapolated, in ms: {allowed} (0 = off, e.g. 1500 on). \
         Off by default: the view's neighbourhood (`prefetch.viewRing`) already holds where \
         a pan of up to a view lands, and on the simulator's traces the look-ahead cost more \
         requests for no more complete views; turn it on where users move further between \
         pauses.",
    ),
    number(
        "prefetch.maxTilesPerRound",
        int(0.0, 4096.0),
        |c| c.planner.max_tiles_per_round as f64,
        |c, v| c.planner.max_tiles_per_round = v as usize,
        "Prefetch tiles per round, at least: {allowed}.",
    ),
    number(
        "prefetch.viewRing",
        real(0.0, 4.0),
        |c| c.planner.view_ring,
        |c, v| c.planner.view_ring = v,
        "Neighbourhood of the view, in view sizes (1 = the 8 neighbouring views): {allowed} \
         (0 = off).",
    ),
    number(
        "prefetch.budgetPerVisible",
        real(0.0, 64.0),
        |c| c.planner.budget_per_visible,
        |c, v| c.planner.budget_per_visible = v,
        "The per-round budget grows to this many prefetch tiles per visible tile: {allowed}.",
    ),
    number(
        "prefetch.warmBelowMinZoom",
        real(0.0, 4.0),
        |c| c.planner.warm_below_min_zoom,
        |c, v| c.planner.warm_below_min_zoom = v,
        "A view at most this many zoom levels below `minZoom` that is not zooming out \
         prefetches the data tiles under it, centre first (the next step there is a zoom \
         in): {allowed} (0 = off). Off by default: over dense data a user resting just \
         below `minZoom` prefetches up to thousands of data tiles that may never be looked \
         at. Where sessions start just below `minZoom` it makes nearly every later view \
         ready for more requests (docs/BENCHMARKS.md measures 1).",
    ),
    number(
        "batch.maxTiles",
        int(1.0, 64.0),
        |c| c.batch.max_tiles as f64,
        |c, v| c.batch.max_tiles = v as usize,
        "Tiles per request: {allowed} (the protocol's limit per request).",
    ),
    number(
        "batch.maxIds",
        int(1.0, 1000.0),
        |c| c.batch.max_ids as f64,
        |c, v| c.batch.max_ids = v as usize,
        "Ids per request: {allowed} (the protocol's limit per request).",
    ),
    number(
        "batch.maxInFlight",
        int(1.0, 64.0),
        |c| c.batch.max_in_flight as f64,
        |c, v| c.batch.max_in_flight = v as usize,
        "Requests out at once: {allowed}; prefetch never takes the last slot.",
    ),
    number(
        "batch.timeoutMs",
        int(1.0, 600_000.0),
        |c| c.batch.timeout_ms as f64,
        |c, v| c.batch.timeout_ms = v as u64,
        "Time a request may take, in ms: {allowed}.",
    ),
    number(
        "batch.retries",
        int(0.0, 10.0),
        |c| c.batch.retries as f64,
        |c, v| c.batch.retries = v as u32,
        "Retries after the first attempt: {allowed}, with exponential backoff and jitter; \
         `Retry-After` is honoured.",
    ),
    number(
        "batch.coalesceLevels",
        int(0.0, 4.0),
        |c| c.batch.coalesce_levels as f64,
        |c, v| {
            c.batch.coalesce_levels = v as u8;
            c.planner.align_levels = (v as u8).min(DEFAULT_ALIGN_LEVELS);
        },
        "Ask for a tile up to this many zooms coarser when its data tiles are missing \
         (`batch.coalesceMinShare`): {allowed} (0 = off); the server must accept that zoom \
         (a tilewarm server's default `--split-levels` is 3; in front of one older than \
         2026-12-06, whose default was 2, set 2). Prefetch areas are widened to \
         whole tiles of that zoom, or of 2 zooms up when it is coarser, so they go out as \
         coarse tiles. A server that refuses a request of coarse tiles (and no ids) with \
         a 400 (it allows fewer data tiles a request than they cover) is asked one zoom \
         finer at once, and no coarser for a tile TTL (then this level again).",
    ),
    number(
        "batch.coalesceMinShare",
        int(1.0, 100.0),
        |c| c.batch.coalesce_min_share as f64,
        |c, v| c.batch.coalesce_min_share = v as u8,
        "Percent of a coarse tile's data tiles that must be queued for it to be asked for: \
         {allowed} (100 = all). Below 100 its answer brings the block's other data tiles \
         too, and it is asked for only when none of them is cached, in flight or backing \
         off: fewer requests for at most those tiles' items.",
    ),
    other(
        "access",
        Check::Access,
        "Access",
        None,
        "The caller's tier: {allowed}.",
    ),
    other(
        "headers",
        Check::Shell,
        "Record<string, string> | Headers",
        Some("{}"),
        "Extra request headers (e.g. `Authorization`).",
    ),
    other(
        "auth",
        Check::Shell,
        "{ token: () => string | Promise<string> }",
        Some("none"),
        "Bearer-token credentials: `token()` is called for every request (so tokens refresh) \
         and sent as `Authorization: Bearer <token>`; after a 401 it is called once more and \
         the request retried, then the failure goes to `onError` as `ERR_UNAUTHORIZED` and is \
         retried with backoff. The token never appears in errors or logs.",
    ),
    other(
        "fetch",
        Check::Shell,
        "(input: string, init: RequestInit) => Promise<Response>",
        Some("globalThis.fetch"),
        "The fetch to use (tests, auth wrappers).",
    ),
    other(
        "now",
        Check::Shell,
        "() => number",
        Some("Date.now"),
        "The clock, in ms (TTLs and backoff use it). A clock that steps back (NTP, a user fixing it) counts as no time passing: no wait or TTL lasts longer for it (but for the time between the calls either side of the step). A number no clock gives (NaN, Infinity, negative) counts as the last good one.",
    ),
];

/// The numeric options, in the order `Engine::new` takes their values.
pub(crate) fn numbers() -> impl Iterator<Item = (&'static str, &'static Num)> {
    OPTIONS.iter().filter_map(|o| match &o.check {
        Check::Number(num) => Some((o.path, num)),
        _ => None,
    })
}

/// What `tileSize` must be, as messages say it (`tileSize must be 256 or 512, got 300`).
pub const TILE_SIZE_ALLOWED: &str = "256 or 512";

/// The zoom levels a map's `tileSize` adds to its zooms (a viewport's, `minZoom`) to make
/// them the core's 256-px XYZ zooms: 0 for 256 (Leaflet's, OpenLayers' zoom), 1 for 512
/// (MapLibre's, Mapbox GL's, deck.gl's); `None` for any other size. Add it with
/// [`core_zoom`]. Every shell reads `tileSize` through these two.
///
/// ```
/// use tilewarm::client::options::{core_zoom, zoom_offset};
///
/// assert_eq!(zoom_offset(512.0), Some(1.0));
/// assert_eq!(zoom_offset(300.0), None);
/// assert_eq!(core_zoom(14.5, 1.0), 15.5);
/// assert_eq!(core_zoom(30.0, 1.0), 30.0); // at most MAX_VIEW_ZOOM
/// ```
pub fn zoom_offset(tile_size: f64) -> Option<f64> {
    if tile_size == 256.0 {
        Some(0.0)
    } else if tile_size == 512.0 {
        Some(1.0)
    } else {
        None
    }
}

/// A zoom in a map's units (a viewport's, `minZoom`) as the core's: plus the map's
/// [`zoom_offset`], at most [`MAX_VIEW_ZOOM`](crate::planner::MAX_VIEW_ZOOM).
pub fn core_zoom(zoom: f64, offset: f64) -> f64 {
    (zoom + offset).min(crate::planner::MAX_VIEW_ZOOM)
}

/// Why [`set_number`] or [`set_class_ttls`] refused a value. Its message is the npm
/// package's: `batch.maxTiles must be an integer in 1..=64, got 65`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionError {
    /// The value is outside the option's range, or not an integer where one is asked for.
    #[error("{path} must be {allowed}, got {value}")]
    OutOfRange {
        /// The option's JavaScript path (`batch.maxTiles`, `ttl.byClass.sold`).
        path: String,
        /// What is allowed (`an integer in 1..=64`).
        allowed: String,
        value: f64,
    },
    /// No numeric option has this path.
    #[error("{path} is not a numeric option of TileCache")]
    Unknown { path: String },
}

/// Sets the numeric option `path` (the npm package's name: `tileZoom`, `batch.maxTiles`,
/// `prefetch.budgetPerVisible`, ...; seconds for `ttl.*`, as there) in `config`, after
/// checking `value` against its range. Nothing is changed when it is refused.
///
/// ```
/// use tilewarm::client::{options, ClientConfig};
///
/// let mut c = ClientConfig::default();
/// options::set_number(&mut c, "batch.coalesceLevels", 0.0).unwrap();
/// assert_eq!(c.batch.coalesce_levels, 0);
/// let e = options::set_number(&mut c, "batch.maxTiles", 65.0).unwrap_err();
/// assert_eq!(e.to_string(), "batch.maxTiles must be an integer in 1..=64, got 65");
/// ```
pub fn set_number(config: &mut ClientConfig, path: &str, value: f64) -> Result<(), OptionError> {
    let Some((_, num)) = numbers().find(|(p, _)| *p == path) else {
        return Err(OptionError::Unknown { path: path.into() });
    };
    if !num.range.contains(value) {
        return Err(OptionError::OutOfRange {
            path: path.into(),
            allowed: num.range.allowed(),
            value,
        });
    }
    (num.set)(config, value);
    Ok(())
}

/// What the numeric option at `path` (its JavaScript path, `batch.maxTiles`) must be, as
/// messages say it (`an integer in 1..=64`); `ttl.byClass.<class>` is one; `None` for a
/// path that is no numeric option. For shells that read options themselves and refuse a
/// value of another type with the npm package's message (`batch.maxTiles must be an
/// integer in 1..=64, got "8"`).
pub fn number_allowed(path: &str) -> Option<String> {
    if path.starts_with("ttl.byClass.") {
        return Some(CLASS_TTL.allowed());
    }
    numbers()
        .find(|(p, _)| *p == path)
        .map(|(_, n)| n.range.allowed())
}

/// Sets `ttl.byClass`: seconds an item is fresh, per class, replacing the default table,
/// each checked as the npm package checks it (`ttl.byClass.sold must be ...`). Nothing is
/// changed when one is refused.
pub fn set_class_ttls<'a>(
    config: &mut ClientConfig,
    classes: impl IntoIterator<Item = (&'a str, f64)>,
) -> Result<(), OptionError> {
    let mut table = HashMap::default();
    for (class, secs) in classes {
        if !CLASS_TTL.contains(secs) {
            return Err(OptionError::OutOfRange {
                path: format!("ttl.byClass.{class}"),
                allowed: CLASS_TTL.allowed(),
                value: secs,
            });
        }
        table.insert(class.to_owned(), secs as u64 * 1000);
    }
    config.cache.class_ttl_ms = table;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::client::Client;
    use crate::planner::MAX_VIEW_ZOOM;
    use crate::protocol::Limits;
    use crate::tile::MAX_ZOOM;

    fn num(path: &str) -> &'static Num {
        numbers().find(|(p, _)| *p == path).expect(path).1
    }

    fn range(path: &str) -> &'static Range {
        &num(path).range
    }

    /// Every value an option accepts is one the core accepts, lands in the config exactly,
    /// and reads back the same: the JS can never pass the core something it refuses.
    #[test]
    fn every_accepted_value_is_accepted_by_the_core() {
        for (path, num) in numbers() {
            let r = &num.range;
            let default = (num.get)(&ClientConfig::default());
            assert!(
                r.contains(default),
                "{path}: default {default} out of its range"
            );
            let mid = if r.integer {
                ((r.lo + r.hi) / 2.0).floor()
            } else {
                (r.lo + r.hi) / 2.0
            };
            for v in [r.lo, mid, r.hi] {
                let mut c = ClientConfig::default();
                (num.set)(&mut c, v);
                assert_eq!((num.get)(&c), v, "{path} = {v} does not read back");
                if let Err(e) = Client::<()>::new(c) {
                    panic!("{path} = {v} is accepted in JS but the core refuses it: {e}");
                }
            }
        }
    }

    /// Options whose upper bound is the boundary's own, tighter than the core's check, and
    /// why. Every other option's bounds are exactly the core's.
    const TIGHTER: [(&str, &str); 6] = [
        ("maxItems", "the core asks for at least 1"),
        (
            "maxBytes",
            "the core asks for at least 1; 2^31 - 1 fits any wasm32 size exactly",
        ),
        (
            "ttl.default",
            "the core asks for at least 1 ms; the protocol's longest TTL",
        ),
        (
            "ttl.staleWhileRevalidate",
            "the core has no bound; the protocol's longest TTL",
        ),
        (
            "batch.maxTiles",
            "the batcher takes up to 1024; a request may hold the protocol's Limits::max_tiles",
        ),
        (
            "batch.maxIds",
            "the batcher takes up to 100000; a request may hold the protocol's Limits::max_ids",
        ),
    ];

    /// Just past each bound, the core refuses the value too, unless the option is listed in
    /// [`TIGHTER`]; where the bound comes from the protocol, it is the protocol's.
    #[test]
    fn bounds_are_the_cores() {
        for (path, num) in numbers() {
            let r = &num.range;
            let step = if r.integer { 1.0 } else { 0.5 };
            let refused = |v: f64| {
                let mut c = ClientConfig::default();
                (num.set)(&mut c, v);
                Client::<()>::new(c).is_err()
            };
            let tighter = TIGHTER.iter().any(|(p, _)| *p == path);
            assert_eq!(
                refused(r.hi + step),
                !tighter,
                "{path}: the core's upper bound is not {} (list it in TIGHTER, or use the core's)",
                r.hi
            );
            // Below 0 nothing converts into the core's unsigned fields.
            if r.lo >= 1.0 || !r.integer {
                assert!(
                    refused(r.lo - step),
                    "{path}: the core accepts {}",
                    r.lo - step
                );
            }
        }
        let limits = Limits::default();
        assert_eq!(range("tileZoom").hi, MAX_ZOOM as f64);
        assert_eq!(range("minZoom").hi, MAX_VIEW_ZOOM);
        // A request with more tiles or ids than the protocol allows is refused by a server
        // with the default limits, and the client checks answers against the same limits.
        assert_eq!(range("batch.maxTiles").hi, limits.max_tiles as f64);
        assert_eq!(range("batch.maxIds").hi, limits.max_ids as f64);
        assert_eq!(MAX_TTL_S, limits.max_ttl_s as f64);
        assert_eq!(range("ttl.default").hi, MAX_TTL_S);
        let tiers: Vec<String> = Access::ALL
            .iter()
            .map(|a| format!("{:?}", a.as_str()))
            .collect();
        let n = tiers.len();
        let expected = format!("one of {}, {}", tiers[..n - 1].join(", "), tiers[n - 1]);
        assert_eq!(ACCESS_ALLOWED, expected);
    }

    /// The setters for Rust shells: every numeric option by its JS path, checked against
    /// the same range, refused with the npm package's message and nothing changed.
    #[test]
    fn number_allowed_names_what_each_numeric_option_takes() {
        for (path, num) in numbers() {
            assert_eq!(number_allowed(path), Some(num.range.allowed()), "{path}");
        }
        assert_eq!(
            number_allowed("ttl.byClass.sold").as_deref(),
            Some("an integer number of seconds in 1..=2592000")
        );
        for other in [
            "endpoint",
            "access",
            "tileSize",
            "ttl.byClass",
            "batch",
            "nope",
        ] {
            assert_eq!(number_allowed(other), None, "{other}");
        }
    }

    #[test]
    fn set_number_checks_and_sets_by_js_path() {
        for (path, num) in numbers() {
            let mut c = ClientConfig::default();
            set_number(&mut c, path, num.range.hi).unwrap();
            assert_eq!((num.get)(&c), num.range.hi, "{path}");
            let before = c.clone();
            let e = set_number(&mut c, path, num.range.hi + 1.0).unwrap_err();
            let allowed = num.range.allowed();
            let got = format!("{}", num.range.hi + 1.0);
            assert_eq!(
                e.to_string(),
                format!("{path} must be {allowed}, got {got}")
            );
            assert!(set_number(&mut c, path, f64::NAN).is_err(), "{path}");
            let same = (c.cache == before.cache, c.planner == before.planner);
            assert_eq!(
                same,
                (true, true),
                "{path}: a refused value changed the config"
            );
            assert_eq!(
                c.batch, before.batch,
                "{path}: a refused value changed the config"
            );
        }
        let mut c = ClientConfig::default();
        set_number(&mut c, "batch.coalesceLevels", 1.0).unwrap();
        assert_eq!((c.batch.coalesce_levels, c.planner.align_levels), (1, 1));
        // Coarser than the default alignment, the areas stay aligned to it.
        set_number(&mut c, "batch.coalesceLevels", 4.0).unwrap();
        assert_eq!((c.batch.coalesce_levels, c.planner.align_levels), (4, 2));
        let e = set_number(&mut c, "batch.maxTiles", 1.5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "batch.maxTiles must be an integer in 1..=64, got 1.5"
        );
        let e = set_number(&mut c, "batch.maxtiles", 1.0).unwrap_err();
        assert_eq!(
            e,
            OptionError::Unknown {
                path: "batch.maxtiles".into()
            }
        );
    }

    #[test]
    fn set_class_ttls_replaces_the_table_or_changes_nothing() {
        let mut c = ClientConfig::default();
        set_class_ttls(&mut c, [("sold", 2.0)]).unwrap();
        assert_eq!(c.cache.class_ttl_ms.len(), 1);
        assert_eq!(c.cache.class_ttl_ms["sold"], 2000);
        let e = set_class_ttls(&mut c, [("a", 5.0), ("b", 0.0)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ttl.byClass.b must be an integer number of seconds in 1..=2592000, got 0"
        );
        assert_eq!(c.cache.class_ttl_ms.len(), 1);
    }

    #[test]
    fn paths_are_unique_and_grouped() {
        let mut seen: Vec<&str> = Vec::new();
        for o in &OPTIONS {
            assert!(!seen.contains(&o.path), "{} twice", o.path);
            // A group's members are listed together.
            if let Some((group, _)) = o.path.split_once('.') {
                let prev = seen.last().and_then(|p| p.split_once('.')).map(|(g, _)| g);
                let started = seen.iter().any(|p| p.starts_with(&format!("{group}.")));
                assert!(
                    !started || prev == Some(group),
                    "{} is apart from its group",
                    o.path
                );
            }
            seen.push(o.path);
        }
    }
}
