//! [`Options`]: how a [`TileCache`](crate::TileCache) is configured, from a Rust struct or,
//! through `TileCache::from_js`, from a JS object of the same shape as the npm package's
//! options (`{ endpoint, tileZoom, maxItems, ttl: { default }, batch: { timeoutMs }, ... }`).
//!
//! Every field but `endpoint` is optional; a missing one takes the core's default
//! ([`ClientConfig::default`]), which is the npm package's. Numbers are checked and set
//! through the npm package's own option table ([`tilewarm::client::options`]), so the Rust
//! shell, the npm package and the core cannot disagree on what is allowed or where it lands,
//! and the messages are the npm package's (`batch.maxTiles must be an integer in 1..=64,
//! got 65`).

use std::collections::BTreeMap;

use serde::Deserialize;
use tilewarm::access::Access;
use tilewarm::client::{options, ClientConfig};

use crate::error::{Error, ErrorCode};

/// A cache's options. Field names are the npm package's (camelCase in JS).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Options {
    /// The batch endpoint, an absolute `http(s)://` URL.
    pub endpoint: String,
    /// The data zoom of the cache and the planner (core default 14).
    pub tile_zoom: Option<u8>,
    /// The map's tile size in pixels, 256 (default) or 512: the units of
    /// `TileCache::set_viewport`'s zoom and of `min_zoom`. 256 for Leaflet and OpenLayers;
    /// 512 for MapLibre, Mapbox GL and deck.gl, whose zoom is then passed as it is.
    pub tile_size: Option<u32>,
    /// Below this map zoom nothing is fetched.
    pub min_zoom: Option<f64>,
    /// Most data tiles a view may cover (core default 1024): a wider one is
    /// [`View::too_wide`](crate::View::too_wide), nothing fetched for it.
    pub max_visible_tiles: Option<usize>,
    /// Most items cached.
    pub max_items: Option<usize>,
    /// Most bytes held: each item is charged its id, class and `data` as JSON, plus 96, as in
    /// the npm package.
    pub max_bytes: Option<usize>,
    /// The data's extent: data tiles outside it hold no items and are never asked for.
    #[serde(default)]
    pub bounds: BoundsOptions,
    /// How long items stay fresh ([`TtlOptions`]).
    #[serde(default)]
    pub ttl: TtlOptions,
    /// How far ahead the planner fetches ([`PrefetchOptions`]).
    #[serde(default)]
    pub prefetch: PrefetchOptions,
    /// How requests are made ([`BatchOptions`]).
    #[serde(default)]
    pub batch: BatchOptions,
    /// The caller's tier: `"public"` (default), `"registered"`, `"verified"` or `"agent"`.
    /// The server decides what a caller may see; this only says what to ask for.
    pub access: Option<String>,
    /// Extra request headers (`content-type` is always `application/json`). Names are HTTP
    /// tokens; values have no line breaks or NUL and no character above U+00FF (what a
    /// browser's `Headers` takes): anything else is refused by [`Options::check`], not by
    /// the browser in the middle of a request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whether the browser sends its cookies (and HTTP authentication, TLS client
    /// certificates) with the batch requests: the fetch `credentials` mode,
    /// `"same-origin"` by default, as the npm package's default `fetch`. An endpoint that
    /// authenticates by a cookie on another origin needs `"include"`, and its answers (the
    /// CORS preflight's too) must carry `Access-Control-Allow-Credentials: true` and name
    /// the page's origin in `Access-Control-Allow-Origin` (not `*`), or the browser fails
    /// every request.
    pub credentials: Option<Credentials>,
}

/// `credentials`: the fetch credentials mode of the batch requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Credentials {
    /// `"omit"`: never send cookies.
    Omit,
    /// `"same-origin"` (the default): cookies only to an endpoint of the page's origin.
    #[default]
    SameOrigin,
    /// `"include"`: cookies to any endpoint, another origin's too.
    Include,
}

impl Credentials {
    /// What `credentials` may be, as messages say it.
    pub const ALLOWED: &'static str = "one of \"omit\", \"same-origin\", \"include\"";

    /// Its name in fetch's `RequestInit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Credentials::Omit => "omit",
            Credentials::SameOrigin => "same-origin",
            Credentials::Include => "include",
        }
    }
}

impl std::str::FromStr for Credentials {
    type Err = Error;

    fn from_str(s: &str) -> Result<Credentials, Error> {
        match s {
            "omit" => Ok(Credentials::Omit),
            "same-origin" => Ok(Credentials::SameOrigin),
            "include" => Ok(Credentials::Include),
            _ => Err(Error::new(
                ErrorCode::InvalidArgValue,
                format!("credentials must be {}, got {s:?}", Credentials::ALLOWED),
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Credentials, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| serde::de::Error::custom(e.message))
    }
}

/// `bounds`: the data's extent, in degrees, as a map source's bounds (the core's
/// `CacheConfig::bounds`); an edge left out is the world's. Left out entirely, the extent a
/// server declares with its answers (`x-tilewarm-bounds`) is adopted.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BoundsOptions {
    pub west: Option<f64>,
    pub south: Option<f64>,
    pub east: Option<f64>,
    pub north: Option<f64>,
}

/// `ttl`: how long items stay fresh, in seconds.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TtlOptions {
    /// For items whose class has no TTL of its own and that carry none.
    pub default: Option<u64>,
    /// Per item class.
    pub by_class: Option<BTreeMap<String, u64>>,
    /// How long an expired item is still shown while it is fetched again.
    pub stale_while_revalidate: Option<u64>,
}

/// `prefetch`: how far ahead the planner fetches.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefetchOptions {
    /// Rings of data tiles around the view (0 = none).
    pub ring: Option<u32>,
    /// The neighbourhood of the view, in view sizes (0 = none). With `ring` and
    /// `lookaheadMs` 0 too, nothing is prefetched.
    pub view_ring: Option<f64>,
    /// How far ahead of the motion the planner looks, in ms (0..=60000, default 0: off;
    /// e.g. 1500 where users move further than a view between pauses).
    pub lookahead_ms: Option<u64>,
    /// Most tiles prefetched per viewport change, at least (core default 32).
    pub max_tiles_per_round: Option<usize>,
    /// The per-round budget grows to this many prefetch tiles per visible tile (0..=64,
    /// default 8).
    pub budget_per_visible: Option<f64>,
    /// A view at most this many zoom levels below `minZoom` that is not zooming out
    /// prefetches the data tiles under it, centre first (0..=4, default 0: off).
    pub warm_below_min_zoom: Option<f64>,
}

/// `batch`: how requests are made.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchOptions {
    /// Tiles per request (1..=64, the protocol's limit per request).
    pub max_tiles: Option<usize>,
    /// Ids per request (1..=1000, the protocol's limit per request).
    pub max_ids: Option<usize>,
    /// Requests out at once (1..=64); prefetch never takes the last slot.
    pub max_in_flight: Option<usize>,
    /// A request not answered within this many ms is aborted and retried.
    pub timeout_ms: Option<u64>,
    /// Retries after the first attempt (0..=10), with exponential backoff and jitter;
    /// `Retry-After` is honoured.
    pub retries: Option<u32>,
    /// Ask for a tile up to this many zooms coarser when enough of its data tiles are
    /// missing (`coalesceMinShare`); prefetch areas widen to whole tiles of that zoom, or
    /// of 2 zooms up when it is coarser (0..=4, default 3; 0 = off). The server must
    /// accept that zoom (a tilewarm server's default `--split-levels` is 3).
    pub coalesce_levels: Option<u32>,
    /// Percent of a coarse tile's data tiles that must be queued for it to be asked for
    /// (1..=100, default 50).
    pub coalesce_min_share: Option<u32>,
}

/// What the options say, checked: the core's config (its `batch.seed`, the retry jitter's,
/// drawn at random by each [`Options::check`]) and the shell's own settings.
#[derive(Clone, Debug)]
pub struct Checked {
    pub config: ClientConfig,
    /// The `tileSize` option (256 or 512).
    pub tile_size: u32,
    /// The zoom levels added to a viewport's zoom (and to `minZoom`, in `config`) so the
    /// core gets 256-px zooms: 0, or 1 for `tileSize` 512.
    pub zoom_offset: f64,
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub credentials: Credentials,
}

/// A seed for the batcher's retry jitter, drawn afresh for each cache, as the npm package
/// draws one from `Math.random`: with the core's fixed default every page would draw the
/// same jitter, and after an outage their retries would keep arriving together.
fn jitter_seed() -> u64 {
    #[cfg(target_arch = "wasm32")]
    let seed = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
    // Host builds (tests, a server build naming the options): std's per-process random
    // hash keys.
    #[cfg(not(target_arch = "wasm32"))]
    let seed = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0u8)
    };
    seed
}

/// A number the npm package's table refused: its message names the option, the value and
/// what is allowed (`batch.maxTiles must be an integer in 1..=64, got 65`).
pub(crate) fn out_of_range(e: options::OptionError) -> Error {
    Error::new(ErrorCode::OutOfRange, e.to_string())
}

/// A header the browser's `Headers.set` takes: the name an HTTP token (RFC 9110 5.6.2),
/// the value without NUL, CR or LF and with no character above U+00FF (a `ByteString`).
fn check_header(name: &str, value: &str) -> Result<(), Error> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(Error::new(
            ErrorCode::InvalidArgValue,
            format!(
                "headers: a header name must be letters, digits and !#$%&'*+-.^_`|~, got {name:?}"
            ),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| matches!(c, '\0' | '\r' | '\n') || c > '\u{ff}')
    {
        return Err(Error::new(
            ErrorCode::InvalidArgValue,
            format!(
                "headers.{name} must have no line break, NUL or character above U+00FF, got \
                 one with {c:?}"
            ),
        ));
    }
    Ok(())
}

/// A JSON value as the npm package's messages show a JS value: a number or a boolean as
/// is, a string quoted (cut at 40 characters), `null`, `an array`, `an object`.
fn show(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            let n = s.chars().count();
            format!("{head:?}… (a string of {n} characters)")
        }
        Value::String(s) => format!("{s:?}"),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// `{path} must be {allowed}, got {value}`: a value of the wrong type, as the npm package
/// says it.
fn wrong_type(path: &str, allowed: &str, got: &serde_json::Value) -> Error {
    Error::new(
        ErrorCode::InvalidArgType,
        format!("{path} must be {allowed}, got {}", show(got)),
    )
}

/// A number option's value (`path` its JS path): of the option table's type and range, as
/// the npm package checks it, so a string, a fraction for an integer or a number out of
/// range is its message, not serde's (which names neither the option nor what it takes).
fn check_number(path: &str, v: &serde_json::Value) -> Result<(), Error> {
    let Some(allowed) = options::number_allowed(path) else {
        return Ok(());
    };
    let Some(n) = v.as_f64() else {
        return Err(wrong_type(path, &allowed, v));
    };
    let scratch = &mut ClientConfig::default();
    match path.strip_prefix("ttl.byClass.") {
        Some(class) => options::set_class_ttls(scratch, [(class, n)]),
        None => options::set_number(scratch, path, n),
    }
    .map_err(out_of_range)
}

/// Every value of a JSON options object against the type the npm package takes for it;
/// unknown keys are left to serde (`deny_unknown_fields`: an error naming the key).
fn check_types(v: &serde_json::Value) -> Result<(), Error> {
    use serde_json::Value;
    let Value::Object(top) = v else {
        return Err(wrong_type("options", "an object", v));
    };
    for (key, val) in top {
        let text = |allowed: &str| match val {
            Value::String(_) => Ok(()),
            _ => Err(wrong_type(key, allowed, val)),
        };
        match key.as_str() {
            "endpoint" => text("an absolute http(s) URL")?,
            "access" => text(options::ACCESS_ALLOWED)?,
            // A string that is no mode is a value error, as `access`'s is (serde would
            // make it a type error, "options: ..."), whether from a config file or from JS.
            "credentials" => match val {
                Value::String(mode) => drop(mode.parse::<Credentials>()?),
                _ => text(Credentials::ALLOWED)?,
            },
            "tileSize" => match val.as_f64() {
                Some(n) if options::zoom_offset(n).is_some() => {}
                Some(_) => {
                    return Err(Error::new(
                        ErrorCode::OutOfRange,
                        format!(
                            "tileSize must be {}, got {}",
                            options::TILE_SIZE_ALLOWED,
                            show(val)
                        ),
                    ))
                }
                None => return Err(wrong_type(key, options::TILE_SIZE_ALLOWED, val)),
            },
            "headers" => {
                let Value::Object(h) = val else {
                    return Err(wrong_type(key, "an object of header names and values", val));
                };
                for (name, v) in h {
                    if !v.is_string() {
                        return Err(wrong_type(&format!("headers.{name}"), "a string", v));
                    }
                }
            }
            "ttl" | "prefetch" | "batch" | "bounds" => {
                let Value::Object(group) = val else {
                    return Err(wrong_type(key, "an object", val));
                };
                for (member, v) in group {
                    let path = format!("{key}.{member}");
                    if path != "ttl.byClass" {
                        check_number(&path, v)?;
                        continue;
                    }
                    let Value::Object(classes) = v else {
                        return Err(wrong_type(&path, "an object of class names and seconds", v));
                    };
                    for (class, secs) in classes {
                        check_number(&format!("ttl.byClass.{class}"), secs)?;
                    }
                }
            }
            _ => check_number(key, val)?,
        }
    }
    Ok(())
}

/// Numbers that are whole (up to 2^53) as integers: JavaScript has one number type, so
/// `8.0` is `8` for an integer option (serde takes no float for a count).
fn whole_numbers_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
            {
                *v = match f < 0.0 {
                    true => Value::from(f as i64),
                    false => Value::from(f as u64),
                };
            }
        }
        Value::Object(m) => m.values_mut().for_each(whole_numbers_as_integers),
        Value::Array(a) => a.iter_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

impl Options {
    /// Options from a JSON value of the npm package's shape (what
    /// `TileCache::from_js` reads a JS options object into; a config file), checked as the
    /// npm package checks its options: a value of the wrong type (a string where a number
    /// belongs, a number for `access`, a group that is not an object) or a number out of
    /// its option's range is an error naming the option and what it must be (`batch.maxTiles
    /// must be an integer in 1..=64, got "8"`), and a misspelt key one naming the key.
    pub fn from_json(mut v: serde_json::Value) -> Result<Options, Error> {
        check_types(&v)?;
        whole_numbers_as_integers(&mut v);
        serde_json::from_value(v)
            .map_err(|e| Error::new(ErrorCode::InvalidArgType, format!("options: {e}")))
    }

    /// Options with this endpoint and every other field at its default.
    pub fn new(endpoint: impl Into<String>) -> Options {
        Options {
            endpoint: endpoint.into(),
            ..Options::default()
        }
    }

    /// Checks the options; the errors name the field, what it was and what is allowed.
    pub fn check(&self) -> Result<Checked, Error> {
        let e = self.endpoint.as_str();
        let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
        if !scheme_ok || e.len() <= "https://".len() || e.chars().any(char::is_whitespace) {
            return Err(Error::new(
                ErrorCode::InvalidArgValue,
                format!("endpoint must be an absolute http(s) URL, got {e:?}"),
            ));
        }
        // Every number through the npm package's own table (`tilewarm::client::options`):
        // the same ranges, the same fields (`batch.coalesceLevels` sets the planner's
        // alignment too), the same messages.
        let mut c = ClientConfig::default();
        c.batch.seed = jitter_seed();
        let p = &self.prefetch;
        let b = &self.batch;
        let numbers = [
            ("tileZoom", self.tile_zoom.map(f64::from)),
            ("minZoom", self.min_zoom),
            ("maxVisibleTiles", self.max_visible_tiles.map(|n| n as f64)),
            ("bounds.west", self.bounds.west),
            ("bounds.south", self.bounds.south),
            ("bounds.east", self.bounds.east),
            ("bounds.north", self.bounds.north),
            ("maxItems", self.max_items.map(|n| n as f64)),
            ("maxBytes", self.max_bytes.map(|n| n as f64)),
            ("ttl.default", self.ttl.default.map(|s| s as f64)),
            (
                "ttl.staleWhileRevalidate",
                self.ttl.stale_while_revalidate.map(|s| s as f64),
            ),
            ("prefetch.ring", p.ring.map(f64::from)),
            ("prefetch.lookaheadMs", p.lookahead_ms.map(|n| n as f64)),
            (
                "prefetch.maxTilesPerRound",
                p.max_tiles_per_round.map(|n| n as f64),
            ),
            ("prefetch.viewRing", p.view_ring),
            ("prefetch.budgetPerVisible", p.budget_per_visible),
            ("prefetch.warmBelowMinZoom", p.warm_below_min_zoom),
            ("batch.maxTiles", b.max_tiles.map(|n| n as f64)),
            ("batch.maxIds", b.max_ids.map(|n| n as f64)),
            ("batch.maxInFlight", b.max_in_flight.map(|n| n as f64)),
            ("batch.timeoutMs", b.timeout_ms.map(|n| n as f64)),
            ("batch.retries", b.retries.map(f64::from)),
            ("batch.coalesceLevels", b.coalesce_levels.map(f64::from)),
            (
                "batch.coalesceMinShare",
                b.coalesce_min_share.map(f64::from),
            ),
        ];
        for (path, v) in numbers {
            if let Some(v) = v {
                options::set_number(&mut c, path, v).map_err(out_of_range)?;
            }
        }
        let tile_size = self.tile_size.unwrap_or(256);
        let zoom_offset = options::zoom_offset(f64::from(tile_size)).ok_or_else(|| {
            Error::new(
                ErrorCode::OutOfRange,
                format!(
                    "tileSize must be {}, got {tile_size}",
                    options::TILE_SIZE_ALLOWED
                ),
            )
        })?;
        // `minZoom` is in the map's units: the core's are 256-px ones.
        c.planner.min_zoom = options::core_zoom(c.planner.min_zoom, zoom_offset);
        if let Some(by) = &self.ttl.by_class {
            let classes = by.iter().map(|(class, &s)| (class.as_str(), s as f64));
            options::set_class_ttls(&mut c, classes).map_err(out_of_range)?;
        }
        if let Some(a) = &self.access {
            c.access = a.parse::<Access>().map_err(|_| {
                Error::new(
                    ErrorCode::InvalidArgValue,
                    format!("access must be {}, got {a:?}", options::ACCESS_ALLOWED),
                )
            })?;
        }
        // The core checks what the table cannot (`bounds.south` above `bounds.north`).
        tilewarm::client::Client::<()>::new(c.clone())
            .map_err(|e| Error::new(ErrorCode::OutOfRange, e.to_string()))?;
        for (k, v) in &self.headers {
            check_header(k, v)?;
        }
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.push(("content-type".into(), "application/json".into()));
        Ok(Checked {
            config: c,
            tile_size,
            zoom_offset,
            endpoint: self.endpoint.clone(),
            headers,
            credentials: self.credentials.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(j: &str) -> Result<Options, serde_json::Error> {
        serde_json::from_str(j)
    }

    #[test]
    fn js_shaped_options_land_in_the_core_config() {
        let o = from_json(
            r#"{"endpoint":"http://127.0.0.1:8080/v1/batch","tileZoom":13,"maxItems":500,
                "ttl":{"default":60,"byClass":{"active":30}},"prefetch":{"ring":2},
                "batch":{"timeoutMs":1500,"retries":1},"access":"registered",
                "bounds":{"west":-122.5,"south":47.1,"east":-121.3,"north":47.8},
                "headers":{"x-app":"demo","Content-Type":"text/plain"}}"#,
        )
        .unwrap();
        let c = o.check().unwrap();
        assert_eq!(c.config.cache.tile_zoom, 13);
        assert_eq!(c.config.planner.tile_zoom, 13);
        assert_eq!(c.config.cache.max_items, 500);
        assert_eq!(c.config.cache.default_ttl_ms, 60_000);
        assert_eq!(c.config.cache.class_ttl_ms.get("active"), Some(&30_000));
        assert_eq!(c.config.cache.class_ttl_ms.len(), 1);
        assert_eq!(c.config.planner.ring, 2);
        assert_eq!(c.config.batch.timeout_ms, 1500);
        assert_eq!(c.config.batch.retries, 1);
        assert_eq!(c.config.access, Access::Registered);
        let b = c.config.cache.bounds;
        assert_eq!(
            (b.west, b.south, b.east, b.north),
            (-122.5, 47.1, -121.3, 47.8)
        );
        assert_eq!(
            c.headers,
            vec![
                ("x-app".to_string(), "demo".to_string()),
                ("content-type".to_string(), "application/json".to_string())
            ]
        );
    }

    /// The option a view too wide to fetch asks to raise, as the npm package names it.
    #[test]
    fn max_visible_tiles_is_an_option() {
        let o = from_json(r#"{"endpoint":"http://h/","maxVisibleTiles":2048}"#).unwrap();
        assert_eq!(o.check().unwrap().config.planner.max_visible_tiles, 2048);
        let o = from_json(r#"{"endpoint":"http://h/","maxVisibleTiles":5000}"#).unwrap();
        let e = o.check().unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert_eq!(
            e.message,
            "maxVisibleTiles must be an integer in 1..=4096, got 5000"
        );
    }

    /// A request of more tiles or ids than the protocol's limits is refused by a server
    /// with the default limits (400 for every request): the npm package's ranges, which
    /// are the protocol's, are the shell's too, with its messages.
    #[test]
    fn batch_sizes_beyond_the_protocols_limits_are_refused() {
        for (j, says) in [
            (
                r#"{"maxTiles":65}"#,
                "batch.maxTiles must be an integer in 1..=64, got 65",
            ),
            (
                r#"{"maxIds":1001}"#,
                "batch.maxIds must be an integer in 1..=1000, got 1001",
            ),
        ] {
            let o = from_json(&format!(r#"{{"endpoint":"http://h/","batch":{j}}}"#)).unwrap();
            let e = o.check().unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (ErrorCode::OutOfRange, says));
        }
        let o = from_json(r#"{"endpoint":"http://h/","batch":{"maxTiles":64,"maxIds":1000}}"#);
        let c = o.unwrap().check().unwrap().config;
        assert_eq!((c.batch.max_tiles, c.batch.max_ids), (64, 1000));
    }

    /// The npm package's prefetch and batch options that map onto the core's config, by
    /// its names, with its defaults and its messages.
    #[test]
    fn budget_warm_and_coalesce_options_as_in_the_npm_package() {
        let d = Options::new("http://h/").check().unwrap().config;
        let core = ClientConfig::default();
        assert_eq!(
            d.planner.budget_per_visible,
            core.planner.budget_per_visible
        );
        assert_eq!(d.planner.warm_below_min_zoom, 0.0);
        assert_eq!((d.batch.coalesce_levels, d.planner.align_levels), (3, 2));
        assert_eq!(d.batch.coalesce_min_share, 50);
        let o = from_json(
            r#"{"endpoint":"http://h/",
                "prefetch":{"budgetPerVisible":2.5,"warmBelowMinZoom":1},
                "batch":{"coalesceLevels":0,"coalesceMinShare":100}}"#,
        )
        .unwrap();
        let c = o.check().unwrap().config;
        assert_eq!(c.planner.budget_per_visible, 2.5);
        assert_eq!(c.planner.warm_below_min_zoom, 1.0);
        // Off for the batcher and for the planner's alignment of prefetch areas alike.
        assert_eq!((c.batch.coalesce_levels, c.planner.align_levels), (0, 0));
        assert_eq!(c.batch.coalesce_min_share, 100);
        for (j, says) in [
            (
                r#""prefetch":{"budgetPerVisible":65}"#,
                "prefetch.budgetPerVisible must be a number in 0..=64, got 65",
            ),
            (
                r#""prefetch":{"warmBelowMinZoom":4.5}"#,
                "prefetch.warmBelowMinZoom must be a number in 0..=4, got 4.5",
            ),
            (
                r#""prefetch":{"budgetPerVisible":-1}"#,
                "prefetch.budgetPerVisible must be a number in 0..=64, got -1",
            ),
            (
                r#""batch":{"coalesceLevels":5}"#,
                "batch.coalesceLevels must be an integer in 0..=4, got 5",
            ),
            (
                r#""batch":{"coalesceMinShare":0}"#,
                "batch.coalesceMinShare must be an integer in 1..=100, got 0",
            ),
        ] {
            let o = from_json(&format!(r#"{{"endpoint":"http://h/",{j}}}"#)).unwrap();
            let e = o.check().unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (ErrorCode::OutOfRange, says));
        }
    }

    /// `tileSize`, as the npm package's: 512 puts `minZoom` (and the viewport's zoom, which
    /// `TileCache::set_viewport` turns) one zoom up in the core's 256-px units.
    #[test]
    fn tile_size_sets_the_units_of_min_zoom() {
        let c = from_json(r#"{"endpoint":"http://h/","minZoom":12}"#)
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(
            (c.tile_size, c.zoom_offset, c.config.planner.min_zoom),
            (256, 0.0, 12.0)
        );
        let o = from_json(r#"{"endpoint":"http://h/","minZoom":12,"tileSize":512}"#).unwrap();
        let c = o.check().unwrap();
        assert_eq!(
            (c.tile_size, c.zoom_offset, c.config.planner.min_zoom),
            (512, 1.0, 13.0)
        );
        let d = Options {
            tile_size: Some(512),
            ..Options::new("http://h/")
        }
        .check()
        .unwrap();
        let core = ClientConfig::default().planner.min_zoom;
        assert_eq!(d.config.planner.min_zoom, core + 1.0);
        let e = from_json(r#"{"endpoint":"http://h/","tileSize":300}"#)
            .unwrap()
            .check()
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::OutOfRange,
                "tileSize must be 256 or 512, got 300"
            )
        );
    }

    #[test]
    fn credentials_are_a_fetch_credentials_mode() {
        let mode = |j: &str| {
            let o = from_json(&format!(r#"{{"endpoint":"http://h/"{j}}}"#)).unwrap();
            o.check().unwrap().credentials
        };
        assert_eq!(mode(""), Credentials::SameOrigin);
        assert_eq!(mode(r#","credentials":"omit""#), Credentials::Omit);
        assert_eq!(
            mode(r#","credentials":"same-origin""#),
            Credentials::SameOrigin
        );
        assert_eq!(mode(r#","credentials":"include""#), Credentials::Include);
        for c in [
            Credentials::Omit,
            Credentials::SameOrigin,
            Credentials::Include,
        ] {
            assert_eq!(c.as_str().parse::<Credentials>().unwrap(), c);
        }
        let e = from_json(r#"{"endpoint":"http://h/","credentials":"Include"}"#).unwrap_err();
        let says = r#"credentials must be one of "omit", "same-origin", "include", got "Include""#;
        assert!(e.to_string().starts_with(says), "{e}");
        let e = "cors".parse::<Credentials>().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgValue);
        // From a config file as from a JS object (`TileCache::from_js` reads it through
        // `from_json`): a value error with the mode's message, not serde's type error.
        let v = serde_json::json!({"endpoint": "http://h/", "credentials": "all"});
        let e = Options::from_json(v).unwrap_err();
        let says = r#"credentials must be one of "omit", "same-origin", "include", got "all""#;
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::InvalidArgValue, says)
        );
        let e = from_json(r#"{"endpoint":"http://h/","credentials":true}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    /// Each cache draws its own retry jitter, as the npm package's (`Math.random`): with the
    /// core's fixed default seed every page would back off in step with every other, and
    /// after an outage their retries would arrive together.
    #[test]
    fn each_check_draws_its_own_jitter_seed() {
        let seed = || Options::new("http://h/").check().unwrap().config.batch.seed;
        let (a, b) = (seed(), seed());
        assert_ne!(a, b);
        assert_ne!(a, ClientConfig::default().batch.seed);
    }

    /// A value of the wrong type is the npm package's message, naming the option and what
    /// it must be (serde's named neither: `invalid type: string "fast", expected u64`).
    #[test]
    fn wrong_types_are_the_npm_packages_messages() {
        let bad = |j: &str| {
            let v: serde_json::Value =
                serde_json::from_str(&format!(r#"{{"endpoint":"http://h/",{j}}}"#)).unwrap();
            Options::from_json(v).unwrap_err()
        };
        for (j, code, says) in [
            (
                r#""batch":{"timeoutMs":"fast"}"#,
                ErrorCode::InvalidArgType,
                r#"batch.timeoutMs must be an integer in 1..=600000, got "fast""#,
            ),
            (
                r#""maxItems":true"#,
                ErrorCode::InvalidArgType,
                "maxItems must be an integer in 1..=10000000, got true",
            ),
            (
                r#""minZoom":[12]"#,
                ErrorCode::InvalidArgType,
                "minZoom must be a number in 0..=30, got an array",
            ),
            (
                r#""batch":{"maxTiles":1.5}"#,
                ErrorCode::OutOfRange,
                "batch.maxTiles must be an integer in 1..=64, got 1.5",
            ),
            (
                r#""ttl":{"byClass":{"sold":"1h"}}"#,
                ErrorCode::InvalidArgType,
                r#"ttl.byClass.sold must be an integer number of seconds in 1..=2592000, got "1h""#,
            ),
            (
                r#""ttl":{"byClass":[]}"#,
                ErrorCode::InvalidArgType,
                "ttl.byClass must be an object of class names and seconds, got an array",
            ),
            (
                r#""prefetch":5"#,
                ErrorCode::InvalidArgType,
                "prefetch must be an object, got 5",
            ),
            (
                r#""access":3"#,
                ErrorCode::InvalidArgType,
                r#"access must be one of "public", "registered", "verified", "agent", got 3"#,
            ),
            (
                r#""credentials":true"#,
                ErrorCode::InvalidArgType,
                r#"credentials must be one of "omit", "same-origin", "include", got true"#,
            ),
            (
                r#""headers":{"x-app":1}"#,
                ErrorCode::InvalidArgType,
                "headers.x-app must be a string, got 1",
            ),
            (
                r#""tileSize":"512""#,
                ErrorCode::InvalidArgType,
                r#"tileSize must be 256 or 512, got "512""#,
            ),
        ] {
            let e = bad(j);
            assert_eq!((e.code, e.message.as_str()), (code, says), "{j}");
        }
        let e = Options::from_json(serde_json::json!({"endpoint": 5})).unwrap_err();
        assert_eq!(e.message, "endpoint must be an absolute http(s) URL, got 5");
        let e = Options::from_json(serde_json::json!({"endpoint": "http://h/", "maxitems": 5}));
        assert!(e.unwrap_err().message.contains("unknown field `maxitems`"));
        let ok = serde_json::json!({"endpoint": "http://h/", "batch": {"maxTiles": 8.0}});
        assert_eq!(Options::from_json(ok).unwrap().batch.max_tiles, Some(8));
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused_by_name() {
        let e = from_json(r#"{"endpoint":"http://x/","maxitems":5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `maxitems`"), "{e}");
        let e = from_json(r#"{"endpoint":"http://x/","batch":{"timeoutMs":"fast"}}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_values_are_errors_naming_what_is_allowed() {
        let bad = |o: Options| o.check().unwrap_err();
        let e = bad(Options::new("/v1/batch"));
        assert_eq!(e.code, ErrorCode::InvalidArgValue);
        assert!(
            e.message
                .contains("endpoint must be an absolute http(s) URL"),
            "{e}"
        );
        let e = bad(Options {
            access: Some("admin".into()),
            ..Options::new("http://h/")
        });
        assert!(e.message.contains("access must be one of"), "{e}");
        let e = bad(Options {
            max_items: Some(0),
            ..Options::new("http://h/")
        });
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert_eq!(
            e.message,
            "maxItems must be an integer in 1..=10000000, got 0"
        );
        let e = bad(Options {
            ttl: TtlOptions {
                default: Some(u64::MAX),
                ..TtlOptions::default()
            },
            ..Options::new("http://h/")
        });
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(
            e.message
                .starts_with("ttl.default must be an integer number of seconds in 1..=2592000"),
            "{e}"
        );
        let e = bad(Options {
            bounds: BoundsOptions {
                south: Some(48.0),
                north: Some(47.0),
                ..BoundsOptions::default()
            },
            ..Options::new("http://h/")
        });
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(e.message.contains("bounds.south"), "{e}");
    }

    #[test]
    fn headers_a_browser_would_refuse_are_refused_at_creation() {
        let with = |k: &str, v: &str| Options {
            headers: BTreeMap::from([(k.to_string(), v.to_string())]),
            ..Options::new("http://h/")
        };
        for (k, v) in [("x-app", "demo v1"), ("X_Trace.Id", "caf\u{e9}\t1")] {
            assert!(with(k, v).check().is_ok(), "{k}: {v:?}");
        }
        for (k, v, says) in [
            ("x-bad", "a\nb", "headers.x-bad must have no line break"),
            ("x-bad", "a\r", "got one with '\\r'"),
            ("x-bad", "\0", "no line break, NUL"),
            ("x-bad", "\u{2713}", "above U+00FF"),
            ("x bad", "v", "a header name must be"),
            ("", "v", "got \"\""),
            ("x:y", "v", "got \"x:y\""),
        ] {
            let e = with(k, v).check().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgValue, "{k}: {v:?}");
            assert!(e.message.contains(says), "{k}: {v:?}: {e}");
        }
    }
}
