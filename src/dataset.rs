//! Data sets for the native shells (server origin, simulator, tests): the King County
//! house-sales CSV, JSON lines, and a deterministic synthetic city. Behind the `data`
//! feature; the wasm build never includes it.
//!
//! Every item gets a class and an access tier. Real sales data says neither whether a home
//! is for sale now nor who may see it, so both are derived from a hash of the id: about
//! 15% `active` (for sale; 5-minute TTL) and 85% `off_market` (4-hour TTL); 85% `public`,
//! 8% `registered`, 4% `verified`, 3% `agent`. The same id always gets the same answer.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::Path;

use serde_json::value::RawValue;

use crate::access::Access;
use crate::origin::OriginItem;
use crate::protocol::RawData;

/// Loading a data set failed. Messages name the line and what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("CSV has no column {0:?} (the King County layout needs id, lat and long)")]
    MissingColumn(&'static str),
    #[error("line {line}: {message}")]
    BadRow { line: u64, message: String },
    #[error(
        "unsupported data file {0:?}: use .csv (King County layout) or .jsonl/.ndjson (JSON lines)"
    )]
    UnknownFormat(String),
}

fn bad(line: u64, message: impl Into<String>) -> DatasetError {
    DatasetError::BadRow {
        line,
        message: message.into(),
    }
}

/// splitmix64: a tiny, well-mixed deterministic generator.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn hash_str(s: &str) -> u64 {
    // FNV-1a, then one splitmix round: stable across platforms and releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Rng(h).next()
}

/// Class and tier derived from the id (see the module docs).
pub fn class_and_access(id: &str) -> (&'static str, Access) {
    let h = hash_str(id);
    let class = if h % 100 < 15 { "active" } else { "off_market" };
    let access = match (h >> 8) % 100 {
        0..=84 => Access::Public,
        85..=92 => Access::Registered,
        93..=96 => Access::Verified,
        _ => Access::Agent,
    };
    (class, access)
}

fn raw(json: serde_json::Value) -> RawData {
    // A serde_json::Value always serialises to valid JSON; the default is `null`.
    RawValue::from_string(json.to_string()).unwrap_or_default()
}

/// Loads the King County house-sales CSV (header `id,date,price,...,lat,long,...`; quoted
/// fields allowed). A home sold twice keeps its latest sale. `data` holds the price, an
/// estimate and the house's facts.
pub fn load_kc_csv<R: Read>(reader: R) -> Result<Vec<OriginItem<RawData>>, DatasetError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers = rdr.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let col = |name: &'static str| headers.iter().position(|h| h.trim() == name);
    let need = |name: &'static str| col(name).ok_or(DatasetError::MissingColumn(name));
    let (ci, clat, clon) = (need("id")?, need("lat")?, need("long")?);
    let opt = [
        "date",
        "price",
        "bedrooms",
        "bathrooms",
        "sqft_living",
        "yr_built",
        "zipcode",
    ]
    .map(col);
    let mut latest: HashMap<String, (String, usize)> = HashMap::new();
    let mut items: Vec<OriginItem<RawData>> = Vec::new();
    for (n, row) in rdr.records().enumerate() {
        let line = n as u64 + 2;
        let row = row.map_err(|e| bad(line, e.to_string()))?;
        let field = |i: usize| row.get(i).unwrap_or("").trim();
        let id = field(ci).to_string();
        if id.is_empty() {
            return Err(bad(line, "empty id"));
        }
        let num = |i: usize, what: &str| -> Result<f64, DatasetError> {
            field(i)
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(line, format!("{what} is not a number: {:?}", field(i))))
        };
        let (lat, lon) = (num(clat, "lat")?, num(clon, "long")?);
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(bad(
                line,
                format!("coordinates out of range: lat {lat}, long {lon}"),
            ));
        }
        let get = |k: usize| opt[k].map(|i| field(i).to_string()).unwrap_or_default();
        let date = get(0);
        let price: Option<f64> = get(1).parse().ok();
        let mut data = serde_json::Map::new();
        if let Some(p) = price {
            data.insert("price".into(), serde_json::json!(p.round() as i64));
            // A stand-in valuation: the sale price moved by a per-home factor of +-8%.
            let f = 0.92 + (hash_str(&id) % 1600) as f64 / 10_000.0;
            data.insert(
                "estimate".into(),
                serde_json::json!((p * f / 1000.0).round() as i64 * 1000),
            );
        }
        for (k, name) in [(2, "beds"), (3, "baths"), (4, "sqft"), (5, "year_built")] {
            if let Ok(v) = get(k).parse::<f64>() {
                data.insert(name.into(), serde_json::json!(v));
            }
        }
        let zip = get(6);
        if !zip.is_empty() {
            data.insert("zipcode".into(), serde_json::json!(zip));
        }
        if !date.is_empty() {
            data.insert(
                "sold".into(),
                serde_json::json!(date.get(..8).unwrap_or(&date)),
            );
        }
        let (class, access) = class_and_access(&id);
        let item = OriginItem {
            id: id.clone(),
            lon,
            lat,
            class: class.into(),
            access,
            ttl: None,
            data: raw(serde_json::Value::Object(data)),
        };
        match latest.get(&id) {
            Some((d, idx)) if *d <= date => {
                items[*idx] = item;
                latest.insert(id, (date, *idx));
            }
            Some(_) => {}
            None => {
                latest.insert(id, (date, items.len()));
                items.push(item);
            }
        }
    }
    Ok(items)
}

#[derive(serde::Deserialize)]
struct JsonLine {
    id: String,
    lon: f64,
    lat: f64,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    access: Option<Access>,
    #[serde(default)]
    ttl: Option<u32>,
    #[serde(default)]
    data: Option<RawData>,
}

/// Loads JSON lines: one object per line with `id`, `lon`, `lat` and optional `class`
/// (default `off_market`), `access` (default `public`), `ttl` (seconds) and `data` (any
/// JSON). Blank lines and lines starting with `#` are skipped.
pub fn load_json_lines<R: BufRead>(reader: R) -> Result<Vec<OriginItem<RawData>>, DatasetError> {
    let mut items = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line_no = n as u64 + 1;
        let line = line.map_err(|e| bad(line_no, e.to_string()))?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let j: JsonLine = serde_json::from_str(t).map_err(|e| bad(line_no, e.to_string()))?;
        let limits = crate::protocol::Limits::default();
        let class = j.class.unwrap_or_else(|| "off_market".into());
        crate::protocol::validate_item_fields(&j.id, j.lon, j.lat, &class, j.ttl, &limits)
            .map_err(|e| bad(line_no, e.to_string()))?;
        items.push(OriginItem {
            id: j.id,
            lon: j.lon,
            lat: j.lat,
            class,
            access: j.access.unwrap_or_default(),
            ttl: j.ttl,
            data: j.data.unwrap_or_else(|| raw(serde_json::Value::Null)),
        });
    }
    Ok(items)
}

/// Loads a file by extension: `.csv` (King County layout) or `.jsonl` / `.ndjson`
/// (JSON lines).
pub fn load_path(path: &Path) -> Result<Vec<OriginItem<RawData>>, DatasetError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let open = || {
        std::fs::File::open(path).map_err(|e| DatasetError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    match ext.as_str() {
        "csv" => load_kc_csv(std::io::BufReader::new(open()?)),
        "jsonl" | "ndjson" => load_json_lines(std::io::BufReader::new(open()?)),
        _ => Err(DatasetError::UnknownFormat(path.display().to_string())),
    }
}

/// The centre of the synthetic city (downtown Seattle), so it lines up with the King County
/// data and the demo's default view.
pub const CITY_CENTRE: (f64, f64) = (-122.3321, 47.6062);

/// A deterministic synthetic city of `n` homes around [`CITY_CENTRE`]: 60 neighbourhoods of
/// uneven size (a few dense cores, many small suburbs), each a Gaussian cluster, over about
/// 40 x 40 km. Prices fall off with distance from the centre and vary by neighbourhood.
/// Class and tier per [`class_and_access`]. Same seed, same city.
pub fn synthetic_city(seed: u64, n: usize) -> Vec<OriginItem<RawData>> {
    let mut rng = Rng(seed ^ 0x7111_3c17_u64);
    let (clon, clat) = CITY_CENTRE;
    // Degrees per km at this latitude.
    let dlat = 1.0 / 111.0;
    let dlon = 1.0 / (111.0 * clat.to_radians().cos());
    struct Hood {
        lon: f64,
        lat: f64,
        spread_km: f64,
        weight: f64,
        premium: f64,
    }
    let hoods: Vec<Hood> = (0..60)
        .map(|i| {
            let r = if i < 6 {
                2.0 * rng.unit()
            } else {
                4.0 + 14.0 * rng.unit().sqrt()
            };
            let a = 2.0 * std::f64::consts::PI * rng.unit();
            Hood {
                lon: clon + r * a.cos() * dlon,
                lat: clat + r * a.sin() * dlat,
                spread_km: 0.4 + 1.6 * rng.unit(),
                // Pareto-like: a few big neighbourhoods.
                weight: 1.0 / (0.05 + rng.unit()).powf(1.2),
                premium: 0.7 + 0.8 * rng.unit(),
            }
        })
        .collect();
    let total: f64 = hoods.iter().map(|h| h.weight).sum();
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let mut pick = rng.unit() * total;
        let hood = hoods
            .iter()
            .find(|h| {
                pick -= h.weight;
                pick <= 0.0
            })
            .unwrap_or(&hoods[hoods.len() - 1]);
        let lon = hood.lon + rng.normal() * hood.spread_km * dlon;
        let lat = hood.lat + rng.normal() * hood.spread_km * dlat;
        let dist_km = (((lon - clon) / dlon).powi(2) + ((lat - clat) / dlat).powi(2)).sqrt();
        let base = 900_000.0 * hood.premium * (-dist_km / 25.0).exp();
        let price = (base * (0.25 * rng.normal()).exp() / 1000.0).round() * 1000.0;
        let id = format!("s{seed:x}-{i}");
        let (class, access) = class_and_access(&id);
        let beds = 1 + (rng.unit() * 5.0) as u32;
        let data = serde_json::json!({
            "estimate": price as i64,
            "beds": beds,
            "sqft": (500.0 + beds as f64 * 400.0 * (0.8 + 0.4 * rng.unit())).round() as i64,
        });
        items.push(OriginItem {
            id,
            lon,
            lat,
            class: class.into(),
            access,
            ttl: None,
            data: raw(data),
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    const KC: &str = "id,date,price,bedrooms,bathrooms,sqft_living,sqft_lot,floors,waterfront,view,condition,grade,sqft_above,sqft_basement,yr_built,yr_renovated,zipcode,lat,long,sqft_living15,sqft_lot15
\"7129300520\",\"20141013T000000\",221900,\"3\",\"1\",1180,5650,\"1\",0,0,3,7,1180,0,1955,0,\"98178\",47.5112,-122.257,1340,5650
\"6414100192\",\"20141209T000000\",538000,\"3\",\"2.25\",2570,7242,\"2\",0,0,3,7,2170,400,1951,1991,\"98125\",47.721,-122.319,1690,7639
\"7129300520\",\"20150101T000000\",250000,\"3\",\"1\",1180,5650,\"1\",0,0,3,7,1180,0,1955,0,\"98178\",47.5112,-122.257,1340,5650
";

    #[test]
    fn kc_csv_quoted_fields_and_latest_sale() {
        let items = load_kc_csv(KC.as_bytes()).unwrap();
        assert_eq!(items.len(), 2);
        let a = items.iter().find(|i| i.id == "7129300520").unwrap();
        assert_eq!((a.lon, a.lat), (-122.257, 47.5112));
        let data: serde_json::Value = serde_json::from_str(a.data.get()).unwrap();
        assert_eq!(data["price"], 250000, "the later sale wins");
        assert_eq!(data["zipcode"], "98178");
        assert_eq!(data["sold"], "20150101");
    }

    #[test]
    fn kc_csv_errors_name_the_line() {
        let e = load_kc_csv("id,lat\n1,2\n".as_bytes()).unwrap_err();
        assert_eq!(e, DatasetError::MissingColumn("long"));
        let e = load_kc_csv("id,lat,long\n1,47.5,-122\n2,x,-122\n".as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "line 3: lat is not a number: \"x\"");
        let e = load_kc_csv("id,lat,long\n1,147.5,-122\n".as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 2: coordinates out of range"),
            "{e}"
        );
    }

    #[test]
    fn json_lines_defaults_and_errors() {
        let text = "# homes\n{\"id\":\"a\",\"lon\":1,\"lat\":2,\"data\":{\"v\":1}}\n\n{\"id\":\"b\",\"lon\":1,\"lat\":2,\"class\":\"active\",\"access\":\"agent\",\"ttl\":60}\n";
        let items = load_json_lines(text.as_bytes()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].class.as_str(), items[0].access),
            ("off_market", Access::Public)
        );
        assert_eq!(items[0].data.get(), "{\"v\":1}");
        assert_eq!((items[1].access, items[1].ttl), (Access::Agent, Some(60)));
        let e = load_json_lines("{\"id\":\"a\",\"lon\":1,\"lat\":200}\n".as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("line 1: "), "{e}");
        assert!(e.to_string().contains("lat"), "{e}");
        let e =
            load_json_lines("{\"id\":\"a\",\"lon\":1,\"access\":\"boss\",\"lat\":2}".as_bytes())
                .unwrap_err();
        assert!(e.to_string().contains("unknown access tier"), "{e}");
    }

    #[test]
    fn synthetic_city_is_deterministic_clustered_and_mixed() {
        let a = synthetic_city(7, 5000);
        let b = synthetic_city(7, 5000);
        assert_eq!(a.len(), 5000);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.id == y.id && x.lon == y.lon && x.data.get() == y.data.get()));
        assert_ne!(synthetic_city(8, 10)[0].lon, a[0].lon);
        let active = a.iter().filter(|i| i.class == "active").count();
        assert!((500..1000).contains(&active), "{active}");
        assert!(a.iter().any(|i| i.access == Access::Agent));
        // Clustered: the busiest zoom-14 tile holds far more than the average occupied one.
        let o = crate::origin::Origin::new(a).unwrap();
        let occ = o.occupied_tiles(14);
        let max = occ.iter().map(|(_, n)| *n).max().unwrap();
        let mean = 5000.0 / occ.len() as f64;
        assert!(max as f64 > 4.0 * mean, "max {max}, mean {mean}");
    }

    #[test]
    fn derived_class_and_tier_are_stable() {
        assert_eq!(
            class_and_access("7129300520"),
            class_and_access("7129300520")
        );
        let n = 10_000;
        let agents = (0..n)
            .filter(|i| class_and_access(&i.to_string()).1 == Access::Agent)
            .count();
        assert!((150..450).contains(&agents), "{agents}");
    }

    #[test]
    fn load_path_by_extension() {
        let e = load_path(Path::new("homes.xlsx")).unwrap_err();
        assert!(matches!(e, DatasetError::UnknownFormat(_)));
        let e = load_path(Path::new("/nonexistent/homes.csv")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/homes.csv"),
            "{e}"
        );
    }
}
