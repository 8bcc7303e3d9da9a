//! Web Mercator XYZ tile math (the OSM / Google "slippy map" scheme).
//!
//! A [`TileId`] names one square of the map at zoom `z` (0..=24): column `x` counts
//! eastwards from the antimeridian, row `y` southwards from the northern clip latitude
//! [`MAX_LATITUDE`]. Longitudes wrap (−180 and 180 are the same meridian), latitudes clamp.
//!
//! ```
//! use tilewarm::tile::TileId;
//! let t = TileId::from_lon_lat(-122.3321, 47.6062, 14).unwrap();
//! assert_eq!(t.to_string(), "14/2624/5721");
//! assert_eq!("14/2624/5721".parse::<TileId>().unwrap(), t);
//! ```

use crate::util::{sort_pairs, HashSet, Num, Quoted};
use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// The deepest zoom level a [`TileId`] may have.
pub const MAX_ZOOM: u8 = 24;

/// Web Mercator's latitude limit; points beyond it clamp to it.
pub const MAX_LATITUDE: f64 = 85.051_128_779_806_6;

/// Largest number of tiles a single call of [`neighbours`](TileId::neighbours) or
/// [`ring_around`] may produce; larger requests are an error, never a huge allocation.
pub const MAX_TILES_PER_CALL: usize = 1 << 16;

/// What went wrong with tile input. Every message names the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    /// The zoom level is above [`MAX_ZOOM`].
    #[error("zoom must be an integer in 0..={MAX_ZOOM}, got {0}")]
    ZoomOutOfRange(u32),
    /// `x` or `y` is not below `2^z`.
    #[error("tile {z}/{x}/{y} does not exist: x and y must be below 2^{z} = {limit}")]
    CoordOutOfRange { z: u8, x: u32, y: u32, limit: u64 },
    /// A coordinate was NaN or infinite.
    #[error("{what} must be a finite number, got {}", Num(*value))]
    NotFinite { what: &'static str, value: f64 },
    /// A latitude outside −90..=90 (before clamping to the Mercator limit).
    #[error("{what} must be a latitude in -90..=90, got {}", Num(*value))]
    LatitudeOutOfRange { what: &'static str, value: f64 },
    /// `south > north`.
    #[error(
        "bbox south ({}) must not be greater than north ({})",
        Num(*south),
        Num(*north)
    )]
    InvertedBbox { south: f64, north: f64 },
    /// Text that is not `z/x/y`, a quadkey, or a packed id.
    #[error("invalid tile {}: {reason}", Quoted(input))]
    Parse { input: String, reason: &'static str },
    /// An ancestor was asked for at a deeper zoom than the tile.
    #[error(
        "cannot take the zoom-{target} ancestor of a zoom-{z} tile: target must be in 0..={z}"
    )]
    AncestorZoom { z: u8, target: u32 },
    /// A cover or neighbourhood would produce more tiles than allowed.
    #[error("{count} tiles requested, more than the maximum of {max}")]
    TooManyTiles { count: u64, max: u64 },
    /// A set of tiles mixed zoom levels where one zoom was required.
    #[error("all tiles must have the same zoom, found zoom {first} and zoom {other}")]
    MixedZoom { first: u8, other: u8 },
}

/// One XYZ tile. Construction checks `z <= 24` and `x, y < 2^z`, so every value is a real tile.
#[derive(Clone, Copy, Eq, PartialOrd, Ord)]
pub struct TileId {
    z: u8,
    x: u32,
    y: u32,
}

/// Fractional tile coordinates of a point at some zoom: `floor` of them is the tile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TilePoint {
    pub x: f64,
    pub y: f64,
}

/// Number of tiles along one axis at zoom `z` (`2^z`).
#[inline]
pub fn tiles_per_axis(z: u8) -> u32 {
    1u32 << z
}

fn check_zoom(z: u32) -> Result<u8, TileError> {
    if z > MAX_ZOOM as u32 {
        Err(TileError::ZoomOutOfRange(z))
    } else {
        Ok(z as u8)
    }
}

fn check_finite(what: &'static str, value: f64) -> Result<f64, TileError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(TileError::NotFinite { what, value })
    }
}

fn check_lat(what: &'static str, value: f64) -> Result<f64, TileError> {
    check_finite(what, value)?;
    if !(-90.0..=90.0).contains(&value) {
        return Err(TileError::LatitudeOutOfRange { what, value });
    }
    Ok(value.clamp(-MAX_LATITUDE, MAX_LATITUDE))
}

/// `x.rem_euclid(n)` for `n > 0`, with `floor` (one wasm instruction) instead of the
/// `fmod` behind `%`, which costs the wasm about 2 KB (`fmod` and a 128-bit division).
/// The same result as `rem_euclid` for `x` in `-n..n` (every caller in the core except
/// [`wrap_lon`] of a longitude outside -540..180); beyond that within an ulp or so of `x`.
/// Like `rem_euclid`, it can round up to exactly `n` for a tiny negative `x`; the result is
/// always in `0..=n` for finite `x` (NaN for NaN or an infinity).
#[inline]
pub(crate) fn rem_euclid(x: f64, n: f64) -> f64 {
    let mut r = x;
    // One step is exact enough for any |x| up to about 2^52·n. A huger x (a longitude of
    // 1e300 is finite, so Bbox::new takes it) leaves a remainder as large as x's rounding
    // error, far outside 0..n: step again; each step shrinks it by about 2^-52, so 21
    // steps reach 0..=n from any finite f64 (found by the viewport_cover fuzz target).
    for _ in 0..24 {
        r -= n * (r / n).floor();
        // A quotient that rounded up to a whole number leaves a tiny negative remainder.
        if r < 0.0 {
            r += n;
        }
        if (0.0..=n).contains(&r) || r.is_nan() {
            return r;
        }
    }
    r
}

/// Wraps any finite longitude into `[-180, 180)`.
#[inline]
pub fn wrap_lon(lon: f64) -> f64 {
    let w = rem_euclid(lon + 180.0, 360.0) - 180.0;
    // The remainder can round up to exactly 360 for tiny negative inputs.
    if w >= 180.0 {
        -180.0
    } else {
        w
    }
}

/// Projects a longitude (already wrapped) to the fractional x axis at zoom `z`.
#[inline]
fn x_of(lon: f64, n: f64) -> f64 {
    (lon + 180.0) / 360.0 * n
}

/// Projects a latitude (already clamped) to the fractional y axis at zoom `z`: the textbook
/// `(1 - ln(tan φ + sec φ) / π) / 2 · n`, with `tan φ + sec φ = (1 + sin φ) / cos φ` from
/// [`sin_cos_mercator`], taken at `|φ|` with the sign put back (`ln(tan φ + sec φ)` is odd in
/// φ; south of the equator `tan φ + sec φ` would cancel).
#[inline]
fn y_of(lat: f64, n: f64) -> f64 {
    let r = lat.to_radians();
    let (s, c) = sin_cos_mercator(r.abs());
    let psi = ((1.0 + s) / c).ln().copysign(r);
    (1.0 - psi / PI) / 2.0 * n
}

/// `(sin a, cos a)` for `0 <= a <= 1.4845` (85.06°, just past [`MAX_LATITUDE`]), written here
/// for size: `f64::tan`/`sin`/`cos` link libm's argument reduction for any `f64`
/// (`rem_pio2`, `rem_pio2_large`: about 4 KB of the browser's wasm), which a clamped
/// latitude never needs. The polynomials are fdlibm's `__kernel_sin`/`__kernel_cos` (error
/// below 1 ulp for `|x| <= π/4`). Above π/4 the angle is reduced once, to `π/2 - a` in
/// `[0.086, π/4]`: `FRAC_PI_2 - a` is exact (Sterbenz: `a` is within a factor 2 of it), and
/// π/2's tail beyond `FRAC_PI_2` is added as a second word, as fdlibm's `rem_pio2` does.
/// The property test `mercator_matches_the_textbook_formula` checks the projection.
fn sin_cos_mercator(a: f64) -> (f64, f64) {
    /// π/2 - `FRAC_PI_2`, the part of π/2 an `f64` cannot hold.
    const PIO2_TAIL: f64 = 6.123_233_995_736_766e-17;
    if a <= std::f64::consts::FRAC_PI_4 {
        (sin_kernel(a, 0.0), cos_kernel(a, 0.0))
    } else {
        // π/2 - a = x + y, with y the rounding error of x (a two-sum, |hi| > PIO2_TAIL).
        let hi = std::f64::consts::FRAC_PI_2 - a;
        let x = hi + PIO2_TAIL;
        let y = PIO2_TAIL - (x - hi);
        (cos_kernel(x, y), sin_kernel(x, y))
    }
}

/// fdlibm's `__kernel_sin(x, y)`: `sin(x + y)` for `|x| <= π/4`, `|y|` below half an ulp of
/// `x`. The coefficients are fdlibm's, bit for bit.
fn sin_kernel(x: f64, y: f64) -> f64 {
    const S1: f64 = -0.166_666_666_666_666_32;
    const S2: f64 = 0.008_333_333_333_322_49;
    const S3: f64 = -1.984_126_982_985_795e-4;
    const S4: f64 = 2.755_731_370_707_006_8e-6;
    const S5: f64 = -2.505_076_025_340_686_3e-8;
    const S6: f64 = 1.589_690_995_211_55e-10;
    let z = x * x;
    let w = z * z;
    let r = S2 + z * (S3 + z * S4) + z * w * (S5 + z * S6);
    let v = z * x;
    x - ((z * (0.5 * y - v * r) - y) - v * S1)
}

/// fdlibm's `__kernel_cos(x, y)`: `cos(x + y)` for `|x| <= π/4`, `|y|` below half an ulp of
/// `x`. The coefficients are fdlibm's, bit for bit.
fn cos_kernel(x: f64, y: f64) -> f64 {
    const C1: f64 = 0.041_666_666_666_666_6;
    const C2: f64 = -0.001_388_888_888_887_411;
    const C3: f64 = 2.480_158_728_947_673e-5;
    const C4: f64 = -2.755_731_435_139_066_3e-7;
    const C5: f64 = 2.087_572_321_298_175e-9;
    const C6: f64 = -1.135_964_755_778_819_5e-11;
    let z = x * x;
    let w = z * z;
    let r = z * (C1 + z * (C2 + z * C3)) + w * w * (C4 + z * (C5 + z * C6));
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    w + (((1.0 - w) - hz) + (z * r - x * y))
}

/// Projects a point to fractional tile coordinates at zoom `z` (standard OSM formulas).
/// Longitude wraps, latitude clamps to ±[`MAX_LATITUDE`].
pub fn project(lon: f64, lat: f64, z: u8) -> Result<TilePoint, TileError> {
    let z = check_zoom(z as u32)?;
    let lon = wrap_lon(check_finite("longitude", lon)?);
    let lat = check_lat("latitude", lat)?;
    let n = tiles_per_axis(z) as f64;
    Ok(TilePoint {
        x: x_of(lon, n),
        y: y_of(lat, n),
    })
}

/// Inverse of [`project`]: the longitude/latitude of fractional tile coordinates.
pub fn unproject(p: TilePoint, z: u8) -> (f64, f64) {
    let n = tiles_per_axis(z.min(MAX_ZOOM)) as f64;
    let lon = p.x / n * 360.0 - 180.0;
    let lat = (PI * (1.0 - 2.0 * p.y / n)).sinh().atan().to_degrees();
    (lon, lat)
}

fn clamp_index(v: f64, n: u32) -> u32 {
    if v <= 0.0 {
        0
    } else if v >= (n - 1) as f64 {
        n - 1
    } else {
        v as u32
    }
}

impl TileId {
    /// A checked tile: `z <= 24`, `x < 2^z`, `y < 2^z`.
    pub fn new(z: u8, x: u32, y: u32) -> Result<TileId, TileError> {
        let z = check_zoom(z as u32)?;
        let limit = tiles_per_axis(z);
        if x >= limit || y >= limit {
            return Err(TileError::CoordOutOfRange {
                z,
                x,
                y,
                limit: limit as u64,
            });
        }
        Ok(TileId { z, x, y })
    }

    /// The zoom-0 tile that covers the whole world.
    pub const ROOT: TileId = TileId { z: 0, x: 0, y: 0 };

    /// Zoom level.
    #[inline]
    pub fn z(self) -> u8 {
        self.z
    }
    /// Column, counted eastwards from longitude −180.
    #[inline]
    pub fn x(self) -> u32 {
        self.x
    }
    /// Row, counted southwards from latitude +85.05.
    #[inline]
    pub fn y(self) -> u32 {
        self.y
    }

    /// The tile that contains a point at zoom `z`. Longitude wraps (`lon + 360` is the
    /// same place); latitude clamps to ±[`MAX_LATITUDE`]; NaN or infinity is an error.
    ///
    /// ```
    /// use tilewarm::tile::TileId;
    /// assert_eq!(TileId::from_lon_lat(180.0, 0.0, 2).unwrap(), TileId::from_lon_lat(-180.0, 0.0, 2).unwrap());
    /// ```
    pub fn from_lon_lat(lon: f64, lat: f64, z: u8) -> Result<TileId, TileError> {
        let p = project(lon, lat, z)?;
        let n = tiles_per_axis(z);
        Ok(TileId {
            z,
            x: clamp_index(p.x, n),
            y: clamp_index(p.y, n),
        })
    }

    /// The tile's extent in degrees.
    pub fn bounds(self) -> Bbox {
        let (west, north) = unproject(
            TilePoint {
                x: self.x as f64,
                y: self.y as f64,
            },
            self.z,
        );
        let (east, south) = unproject(
            TilePoint {
                x: self.x as f64 + 1.0,
                y: self.y as f64 + 1.0,
            },
            self.z,
        );
        Bbox {
            west,
            south,
            east,
            north,
        }
    }

    /// The centre of the tile in fractional tile coordinates of its own zoom.
    pub fn centre(self) -> TilePoint {
        TilePoint {
            x: self.x as f64 + 0.5,
            y: self.y as f64 + 0.5,
        }
    }

    /// The tile one zoom level up, or `None` for the root tile.
    pub fn parent(self) -> Option<TileId> {
        if self.z == 0 {
            None
        } else {
            Some(TileId {
                z: self.z - 1,
                x: self.x >> 1,
                y: self.y >> 1,
            })
        }
    }

    /// The tile at zoom `z` (at most this tile's zoom) that contains this tile.
    ///
    /// ```
    /// use tilewarm::tile::TileId;
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(t.ancestor(12).unwrap().to_string(), "12/656/1430");
    /// assert!(t.ancestor(15).is_err());
    /// ```
    pub fn ancestor(self, z: u8) -> Result<TileId, TileError> {
        if z > self.z {
            return Err(TileError::AncestorZoom {
                z: self.z,
                target: z as u32,
            });
        }
        let d = self.z - z;
        Ok(TileId {
            z,
            x: self.x >> d,
            y: self.y >> d,
        })
    }

    /// Whether `other` is this tile or lies inside it.
    pub fn contains(self, other: TileId) -> bool {
        other.z >= self.z && other.ancestor(self.z) == Ok(self)
    }

    /// Whether the point (lon, lat) lies in this tile, by the rule the origin indexes items
    /// with: the point's zoom-24 tile is inside this one (so a point on an edge belongs to
    /// exactly one tile per zoom). A point that has no tile (not finite) lies in none.
    ///
    /// ```
    /// use tilewarm::tile::TileId;
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert!(t.contains_point(-122.3321, 47.6062));
    /// assert!(!t.contains_point(2.35, 48.85));
    /// assert!(!t.contains_point(f64::NAN, 47.6));
    /// ```
    pub fn contains_point(self, lon: f64, lat: f64) -> bool {
        TileId::from_lon_lat(lon, lat, MAX_ZOOM).is_ok_and(|p| self.contains(p))
    }

    /// The tiles at zoom `z` that hold this tile's items, as a cache keyed by zoom-`z` "data
    /// tiles" reads it: this tile's ancestor when it is at `z` or finer (the caller filters by
    /// position); its `4^levels` descendants when it is at most `max_levels` coarser; `None`
    /// when coarser still (answer it straight from the origin). The server's tier and the
    /// edge proxy both route requests with it.
    ///
    /// ```
    /// use tilewarm::tile::TileId;
    /// let t = |s: &str| s.parse::<TileId>().unwrap();
    /// assert_eq!(t("16/10496/22884").data_tiles(14, 2), Some(vec![t("14/2624/5721")]));
    /// assert_eq!(t("13/1312/2860").data_tiles(14, 2).unwrap().len(), 4);
    /// assert_eq!(t("11/328/715").data_tiles(14, 2), None);
    /// ```
    pub fn data_tiles(self, z: u8, max_levels: u8) -> Option<Vec<TileId>> {
        if self.z >= z {
            self.ancestor(z).ok().map(|a| vec![a])
        } else if z - self.z <= max_levels {
            self.descendants(z).ok()
        } else {
            None
        }
    }

    /// The four tiles one zoom level down (NW, NE, SW, SE), or `None` at [`MAX_ZOOM`].
    pub fn children(self) -> Option<[TileId; 4]> {
        if self.z >= MAX_ZOOM {
            return None;
        }
        let (z, x, y) = (self.z + 1, self.x * 2, self.y * 2);
        Some([
            TileId { z, x, y },
            TileId { z, x: x + 1, y },
            TileId { z, x, y: y + 1 },
            TileId {
                z,
                x: x + 1,
                y: y + 1,
            },
        ])
    }

    /// Every descendant at zoom `z` (row-major), bounded by [`MAX_TILES_PER_CALL`].
    pub fn descendants(self, z: u8) -> Result<Vec<TileId>, TileError> {
        let z = check_zoom(z as u32)?;
        if z < self.z {
            return Err(TileError::AncestorZoom {
                z: self.z,
                target: z as u32,
            });
        }
        let d = (z - self.z) as u32;
        let side = 1u64 << d;
        let count = side * side;
        if count > MAX_TILES_PER_CALL as u64 {
            return Err(TileError::TooManyTiles {
                count,
                max: MAX_TILES_PER_CALL as u64,
            });
        }
        let (x0, y0) = (self.x << d, self.y << d);
        let side = side as u32;
        let mut out = Vec::with_capacity(count as usize);
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                out.push(TileId { z, x, y });
            }
        }
        Ok(out)
    }

    /// The Bing-maps quadkey (one base-4 digit per zoom level; empty for the root).
    pub fn quadkey(self) -> String {
        let mut s = String::with_capacity(self.z as usize);
        for i in (1..=self.z).rev() {
            let mask = 1u32 << (i - 1);
            let mut digit = b'0';
            if self.x & mask != 0 {
                digit += 1;
            }
            if self.y & mask != 0 {
                digit += 2;
            }
            s.push(digit as char);
        }
        s
    }

    /// Parses a quadkey made of the digits 0–3, at most 24 long.
    pub fn from_quadkey(key: &str) -> Result<TileId, TileError> {
        if key.len() > MAX_ZOOM as usize {
            return Err(parse_err(key, "a quadkey has at most 24 digits"));
        }
        let (mut x, mut y) = (0u32, 0u32);
        for b in key.bytes() {
            let d = match b {
                b'0'..=b'3' => (b - b'0') as u32,
                _ => {
                    return Err(parse_err(
                        key,
                        "a quadkey has only the digits 0, 1, 2 and 3",
                    ))
                }
            };
            x = (x << 1) | (d & 1);
            y = (y << 1) | (d >> 1);
        }
        Ok(TileId {
            z: key.len() as u8,
            x,
            y,
        })
    }

    /// Packs the tile into one integer: `z << 48 | x << 24 | y`. It stays below 2^53, so a
    /// JavaScript number holds it exactly.
    #[inline]
    pub fn to_u64(self) -> u64 {
        ((self.z as u64) << 48) | ((self.x as u64) << 24) | self.y as u64
    }

    /// Unpacks a value that [`to_u64`](TileId::to_u64) produced, without checks (sort keys
    /// inside the crate); `to_u64` orders like `TileId`'s `Ord` (`z`, then `x`, then `y`).
    #[inline]
    pub(crate) fn from_packed(v: u64) -> TileId {
        TileId {
            z: (v >> 48) as u8,
            x: ((v >> 24) & 0xff_ffff) as u32,
            y: (v & 0xff_ffff) as u32,
        }
    }

    /// Unpacks [`to_u64`](TileId::to_u64), checking every field.
    pub fn from_u64(v: u64) -> Result<TileId, TileError> {
        if v >> 53 != 0 {
            return Err(TileError::Parse {
                input: v.to_string(),
                reason: "a packed tile id is below 2^53",
            });
        }
        let z = (v >> 48) as u32;
        let x = ((v >> 24) & 0xFF_FFFF) as u32;
        let y = (v & 0xFF_FFFF) as u32;
        TileId::new(check_zoom(z)?, x, y)
    }

    /// The tile `dx` columns east and `dy` rows south, wrapping around the antimeridian;
    /// `None` when the row would be beyond a pole.
    pub fn offset(self, dx: i64, dy: i64) -> Option<TileId> {
        let n = tiles_per_axis(self.z) as i64;
        let y = self.y as i64 + dy;
        if !(0..n).contains(&y) {
            return None;
        }
        let x = (self.x as i64 + dx).rem_euclid(n);
        Some(TileId {
            z: self.z,
            x: x as u32,
            y: y as u32,
        })
    }

    /// Signed column distance to `other` (same zoom) the short way round the world.
    pub fn dx_to(self, other: TileId) -> i64 {
        let n = tiles_per_axis(self.z) as i64;
        let d = (other.x as i64 - self.x as i64).rem_euclid(n);
        if d > n / 2 {
            d - n
        } else {
            d
        }
    }

    /// Chebyshev distance to `other` at the same zoom (x wraps around the antimeridian).
    pub fn chebyshev(self, other: TileId) -> u64 {
        let dx = self.dx_to(other).unsigned_abs();
        let dy = (other.y as i64 - self.y as i64).unsigned_abs();
        dx.max(dy)
    }

    /// The tiles within Chebyshev distance `k` of this one, itself excluded (ring 1 is the 8
    /// around it). Columns wrap around the antimeridian; rows beyond the poles are omitted;
    /// at low zoom, where the ring wraps onto itself, each tile appears once.
    ///
    /// ```
    /// use tilewarm::tile::TileId;
    /// let t: TileId = "14/2624/5721".parse().unwrap();
    /// assert_eq!(t.neighbours(1).unwrap().len(), 8);
    /// assert_eq!(TileId::ROOT.neighbours(3).unwrap().len(), 0);
    /// ```
    pub fn neighbours(self, k: u32) -> Result<Vec<TileId>, TileError> {
        let n = tiles_per_axis(self.z) as u64;
        let k = k as u64;
        let cols = (2 * k + 1).min(n);
        let rows = (2 * k + 1).min(n);
        let count = cols * rows;
        if count > MAX_TILES_PER_CALL as u64 {
            return Err(TileError::TooManyTiles {
                count,
                max: MAX_TILES_PER_CALL as u64,
            });
        }
        let mut out = Vec::with_capacity(count as usize);
        let k = k as i64;
        let wraps = 2 * k + 1 > n as i64;
        for dy in -k..=k {
            let Some(row) = self.offset(0, dy) else {
                continue;
            };
            if wraps {
                // Every column of the row, each once.
                for x in 0..n as u32 {
                    let t = TileId { x, ..row };
                    if t != self {
                        out.push(t);
                    }
                }
            } else {
                for dx in -k..=k {
                    if dx == 0 && dy == 0 {
                        continue;
                    }
                    if let Some(t) = row.offset(dx, 0) {
                        out.push(t);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn parse_err(input: &str, reason: &'static str) -> TileError {
    TileError::Parse {
        input: input.chars().take(64).collect(),
        reason,
    }
}

/// Compared as its packed `u64` ([`TileId::to_u64`]): the derived comparison of three
/// fields (with padding between them) became a `memcmp` call in the size-built wasm, about
/// 3% of a large view's round.
impl PartialEq for TileId {
    fn eq(&self, other: &TileId) -> bool {
        self.to_u64() == other.to_u64()
    }
}

/// Hashed as its packed `u64` ([`TileId::to_u64`]): one word for the hasher instead of three
/// fields, each a folded 128-bit multiply, which the wasm has no instruction for.
impl std::hash::Hash for TileId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.to_u64());
    }
}

impl fmt::Display for TileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.z, self.x, self.y)
    }
}

impl fmt::Debug for TileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TileId({self})")
    }
}

fn parse_part(input: &str, part: &[u8]) -> Result<u32, TileError> {
    if part.is_empty() || part.len() > 8 || !part.iter().all(u8::is_ascii_digit) {
        return Err(parse_err(
            input,
            "expected z/x/y with z, x and y unsigned decimal integers",
        ));
    }
    // At most 8 digits, so this cannot overflow.
    Ok(part
        .iter()
        .fold(0u32, |acc, b| acc * 10 + (b - b'0') as u32))
}

impl FromStr for TileId {
    type Err = TileError;

    /// Parses `z/x/y` (decimal, no sign, no spaces).
    fn from_str(s: &str) -> Result<TileId, TileError> {
        // Split as bytes: `'/'` is ASCII, so no multi-byte character is cut, and the byte
        // split is smaller in the wasm than `str::split`'s char searcher (measured on
        // 2026-12-02: `s.split('/')` costs the browser wasm 0.4 KB gzipped more, 68,444 →
        // 68,854 bytes).
        let mut parts = s.as_bytes().split(|&b| b == b'/');
        let (Some(z), Some(x), Some(y), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(parse_err(
                s,
                "expected z/x/y, three integers separated by '/'",
            ));
        };
        let z = check_zoom(parse_part(s, z)?)?;
        TileId::new(z, parse_part(s, x)?, parse_part(s, y)?)
    }
}

impl TryFrom<&str> for TileId {
    type Error = TileError;
    fn try_from(s: &str) -> Result<TileId, TileError> {
        s.parse()
    }
}

impl TryFrom<u64> for TileId {
    type Error = TileError;
    fn try_from(v: u64) -> Result<TileId, TileError> {
        TileId::from_u64(v)
    }
}

impl From<TileId> for u64 {
    fn from(t: TileId) -> u64 {
        t.to_u64()
    }
}

impl serde::Serialize for TileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TileId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TileId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A longitude/latitude box. `west > east` means the box crosses the antimeridian.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bbox {
    pub west: f64,
    pub south: f64,
    pub east: f64,
    pub north: f64,
}

impl Bbox {
    /// A checked box: all four finite, latitudes in −90..=90, `south <= north`. Any finite
    /// longitude is accepted (map libraries report world copies as lon > 180); a box
    /// `east - west >= 360` wide covers every longitude.
    pub fn new(west: f64, south: f64, east: f64, north: f64) -> Result<Bbox, TileError> {
        check_finite("west", west)?;
        check_finite("east", east)?;
        check_lat("south", south)?;
        check_lat("north", north)?;
        if south > north {
            return Err(TileError::InvertedBbox { south, north });
        }
        Ok(Bbox {
            west,
            south,
            east,
            north,
        })
    }

    /// Width in degrees, in 0..=360, going east from `west` (so an antimeridian-crossing box
    /// with west 170, east −170 is 20 wide). An unwrapped box at least 360 wide is 360.
    pub fn width(&self) -> f64 {
        if self.east - self.west >= 360.0 {
            return 360.0;
        }
        let w = wrap_lon(self.west);
        let e = wrap_lon(self.east);
        if e >= w {
            e - w
        } else {
            e + 360.0 - w
        }
    }

    /// The centre point `(lon, lat)` (lon wrapped into `[-180, 180)`; lat the midpoint
    /// in degrees).
    pub fn centre(&self) -> (f64, f64) {
        (
            wrap_lon(wrap_lon(self.west) + self.width() / 2.0),
            (self.south + self.north) / 2.0,
        )
    }
}

/// Column and row ranges of a cover: `xs` as (first column, count) wrapping modulo `2^z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoverRange {
    pub z: u8,
    pub x0: u32,
    pub nx: u32,
    pub y0: u32,
    pub ny: u32,
}

impl CoverRange {
    /// Number of tiles in the cover.
    pub fn count(&self) -> u64 {
        self.nx as u64 * self.ny as u64
    }

    /// Whether `t` (at this zoom) is in the cover.
    pub fn contains(&self, t: TileId) -> bool {
        if t.z != self.z || t.y < self.y0 || t.y >= self.y0 + self.ny {
            return false;
        }
        let n = tiles_per_axis(self.z);
        let dx = (t.x as u64 + n as u64 - self.x0 as u64) % n as u64;
        dx < self.nx as u64
    }

    /// The tiles, row by row from the north, each row west to east.
    pub fn tiles(&self) -> impl Iterator<Item = TileId> + '_ {
        CoverTiles {
            range: *self,
            row: 0,
            col: 0,
        }
    }
}

/// The iterator of [`CoverRange::tiles`], written out for size: a `flat_map` over the rows
/// costs the wasm about 0.5 KB more (its front and back inner iterators). It gives no size
/// hint (that costs the wasm another 0.2 KB): callers that collect reserve
/// [`CoverRange::count`] first.
struct CoverTiles {
    range: CoverRange,
    /// The next tile's row and column, counted from `y0` and `x0`.
    row: u32,
    col: u32,
}

impl Iterator for CoverTiles {
    type Item = TileId;

    fn next(&mut self) -> Option<TileId> {
        let r = &self.range;
        if self.row >= r.ny || self.col >= r.nx {
            return None;
        }
        let n = tiles_per_axis(r.z) as u64;
        let t = TileId {
            z: r.z,
            x: ((r.x0 as u64 + self.col as u64) % n) as u32,
            y: r.y0 + self.row,
        };
        self.col += 1;
        if self.col == r.nx {
            self.col = 0;
            self.row += 1;
        }
        Some(t)
    }
}

/// Column/row ranges of the tiles at zoom `z` whose area intersects `bbox`, without
/// listing them. See [`cover`].
pub fn cover_range(bbox: &Bbox, z: u8) -> Result<CoverRange, TileError> {
    let z = check_zoom(z as u32)?;
    let n = tiles_per_axis(z);
    let nf = n as f64;
    let width = bbox.width();
    let (x0, nx) = if width >= 360.0 {
        (0, n)
    } else {
        let fw = x_of(wrap_lon(bbox.west), nf);
        let fe = fw + width / 360.0 * nf;
        let first = fw.floor();
        // A tile whose west edge is exactly the box's east edge touches it only on a line.
        let last = if fe > first { fe.ceil() - 1.0 } else { first };
        let count = ((last - first) as u64 + 1).min(n as u64) as u32;
        ((first as u64 % n as u64) as u32, count)
    };
    let south = bbox.south.clamp(-MAX_LATITUDE, MAX_LATITUDE);
    let north = bbox.north.clamp(-MAX_LATITUDE, MAX_LATITUDE);
    let fy_n = y_of(north, nf);
    let fy_s = y_of(south, nf);
    let y0 = clamp_index(fy_n, n);
    let y1 = if fy_s > fy_n {
        clamp_index(fy_s.ceil() - 1.0, n).max(y0)
    } else {
        y0
    };
    Ok(CoverRange {
        z,
        x0,
        nx,
        y0,
        ny: y1 - y0 + 1,
    })
}

/// Every tile at zoom `z` whose area intersects `bbox`. A box with `west > east` crosses
/// the antimeridian and yields the tiles on both sides. More than `max_tiles` tiles is a
/// [`TileError::TooManyTiles`] error, checked before anything is allocated.
///
/// ```
/// use tilewarm::tile::{cover, Bbox};
/// let b = Bbox::new(-122.36, 47.59, -122.30, 47.62).unwrap();
/// let tiles = cover(&b, 14, 1000).unwrap();
/// assert!(tiles.iter().any(|t| t.to_string() == "14/2624/5721"));
/// assert!(cover(&b, 24, 1000).is_err());
/// ```
pub fn cover(bbox: &Bbox, z: u8, max_tiles: usize) -> Result<Vec<TileId>, TileError> {
    let range = cover_range(bbox, z)?;
    let count = range.count();
    if count > max_tiles as u64 {
        return Err(TileError::TooManyTiles {
            count,
            max: max_tiles as u64,
        });
    }
    // At most max_tiles, checked above.
    let mut tiles = Vec::with_capacity(count as usize);
    tiles.extend(range.tiles());
    Ok(tiles)
}

/// The tiles within Chebyshev distance `k` of any tile in `set`, excluding the set itself,
/// each once. All tiles must share one zoom. Bounded by [`MAX_TILES_PER_CALL`].
pub fn ring_around(set: &[TileId], k: u32) -> Result<Vec<TileId>, TileError> {
    let Some(first) = set.first() else {
        return Ok(Vec::new());
    };
    if let Some(other) = set.iter().find(|t| t.z != first.z) {
        return Err(TileError::MixedZoom {
            first: first.z,
            other: other.z,
        });
    }
    let side = (2 * k as u64 + 1).min(tiles_per_axis(first.z) as u64);
    let upper = (side * side).saturating_mul(set.len() as u64);
    let total = (tiles_per_axis(first.z) as u64).pow(2);
    if upper.min(total) > MAX_TILES_PER_CALL as u64 {
        return Err(TileError::TooManyTiles {
            count: upper.min(total),
            max: MAX_TILES_PER_CALL as u64,
        });
    }
    let members: HashSet<TileId> = set.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for t in set {
        for nb in t.neighbours(k)? {
            if !members.contains(&nb) && seen.insert(nb) {
                out.push(nb);
            }
        }
    }
    Ok(out)
}

/// Where `tile` is in `keys`, pairs sorted by packed tile id (`(tile.to_u64(), value)`), or
/// where it would go: the search behind [`TileSet`] and [`coalesce`](crate::batch).
pub(crate) fn find_tile(keys: &[(u64, u64)], tile: TileId) -> Result<usize, usize> {
    let key = tile.to_u64();
    keys.binary_search_by(|&(k, _)| k.cmp(&key))
}

/// A set of tiles, hand-written for the wasm's size: packed tile ids ([`TileId::to_u64`]),
/// each paired with 0, sorted by [`sort_pairs`] and found by binary search. The
/// batcher's and the client's tile sets use it instead of a hash set, so they bring no hash
/// table code of their own (the sort is the crate's one instantiation). Building is
/// O(n log n) and a lookup O(log n), fine for the sets it holds: a view's tiles (at most
/// `max_visible_tiles`), a request's (at most 4096), a queue's or an answer's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TileSet(Vec<(u64, u64)>);

impl TileSet {
    /// The set of `tiles` (each kept once).
    pub(crate) fn new(tiles: impl IntoIterator<Item = TileId>) -> TileSet {
        let mut keys = Vec::new();
        for t in tiles {
            keys.push((t.to_u64(), 0));
        }
        sort_pairs(&mut keys);
        keys.dedup();
        TileSet(keys)
    }

    pub(crate) fn contains(&self, tile: TileId) -> bool {
        find_tile(&self.0, tile).is_ok()
    }

    /// How many tiles it holds.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The tiles, in packed order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = TileId> + '_ {
        self.0.iter().map(|&(t, _)| TileId::from_packed(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the viewport_cover fuzz target: a finite but absurd longitude made
    /// `wrap_lon` (floor-based remainder) return a value far outside the map, so the box's
    /// width came out as -4.9e300.
    #[test]
    fn huge_finite_longitudes_still_wrap_onto_the_map() {
        for w in [
            -4.872657005700001e300,
            1e300,
            -f64::MAX,
            f64::MAX,
            2f64.powi(60) + 7.0,
        ] {
            let lon = wrap_lon(w);
            assert!((-180.0..180.0).contains(&lon), "wrap_lon({w}) = {lon}");
            let b = Bbox::new(w, 0.0, 10.0, 10.0).unwrap();
            assert!((0.0..=360.0).contains(&b.width()), "width {}", b.width());
            let r = cover_range(&b, 3).unwrap();
            assert!(r.nx >= 1 && r.nx <= 8);
            assert!(TileId::from_lon_lat(w, 5.0, 3).is_ok());
        }
    }

    #[test]
    fn seattle_reference() {
        let t = TileId::from_lon_lat(-122.3321, 47.6062, 14).unwrap();
        assert_eq!((t.z(), t.x(), t.y()), (14, 2624, 5721));
        assert_eq!(
            TileId::from_lon_lat(-122.3321 + 360.0, 47.6062, 14).unwrap(),
            t
        );
        assert_eq!(
            TileId::from_lon_lat(-122.3321 - 720.0, 47.6062, 14).unwrap(),
            t
        );
    }

    #[test]
    fn antimeridian_and_poles() {
        assert_eq!(TileId::from_lon_lat(180.0, 0.0, 3).unwrap().x(), 0);
        assert_eq!(TileId::from_lon_lat(179.999, 0.0, 3).unwrap().x(), 7);
        assert_eq!(TileId::from_lon_lat(0.0, 90.0, 5).unwrap().y(), 0);
        assert_eq!(TileId::from_lon_lat(0.0, -90.0, 5).unwrap().y(), 31);
        assert!(TileId::from_lon_lat(f64::NAN, 0.0, 5).is_err());
        assert!(TileId::from_lon_lat(0.0, 91.0, 5).is_err());
        assert!(TileId::from_lon_lat(0.0, 0.0, 25).is_err());
    }

    #[test]
    fn parse_and_errors() {
        assert_eq!("0/0/0".parse::<TileId>().unwrap(), TileId::ROOT);
        for bad in [
            "",
            "1/2",
            "1/2/3/4",
            "a/0/0",
            "-1/0/0",
            "1/2/0",
            "25/0/0",
            "1/+1/0",
            " 1/0/0",
            "1/0/999999999",
        ] {
            assert!(bad.parse::<TileId>().is_err(), "{bad:?} should not parse");
        }
        let e = "31/0/0".parse::<TileId>().unwrap_err().to_string();
        assert_eq!(e, "zoom must be an integer in 0..=24, got 31");
        let e = "3/8/0".parse::<TileId>().unwrap_err().to_string();
        assert!(e.contains("below 2^3 = 8"), "{e}");
    }

    #[test]
    fn quadkey_reference() {
        // Bing's documented example: tile 3/3/5 is quadkey "213".
        let t = TileId::new(3, 3, 5).unwrap();
        assert_eq!(t.quadkey(), "213");
        assert_eq!(TileId::from_quadkey("213").unwrap(), t);
        assert_eq!(TileId::from_quadkey("").unwrap(), TileId::ROOT);
        assert!(TileId::from_quadkey("214").is_err());
    }

    #[test]
    fn packed_below_2_pow_53() {
        let t = TileId::new(24, (1 << 24) - 1, (1 << 24) - 1).unwrap();
        assert!(t.to_u64() < 1u64 << 53);
        assert_eq!(TileId::from_u64(t.to_u64()).unwrap(), t);
        assert!(TileId::from_u64(25u64 << 48).is_err());
        assert!(TileId::from_u64(1u64 << 60).is_err());
    }

    #[test]
    fn neighbours_counts() {
        let t: TileId = "14/2624/5721".parse().unwrap();
        assert_eq!(t.neighbours(1).unwrap().len(), 8);
        assert_eq!(t.neighbours(2).unwrap().len(), 24);
        assert_eq!(t.neighbours(0).unwrap().len(), 0);
        // Top row: the row above the pole is omitted.
        assert_eq!(
            TileId::new(3, 4, 0).unwrap().neighbours(1).unwrap().len(),
            5
        );
        // Antimeridian: column 0's west neighbours are column 7.
        let w = TileId::new(3, 0, 4).unwrap().neighbours(1).unwrap();
        assert!(w.contains(&TileId::new(3, 7, 4).unwrap()));
        // Zoom 1: 2x2 world, every other tile once.
        assert_eq!(
            TileId::new(1, 0, 0).unwrap().neighbours(1).unwrap().len(),
            3
        );
        assert_eq!(
            TileId::new(1, 0, 0).unwrap().neighbours(5).unwrap().len(),
            3
        );
        assert!(t.neighbours(1000).is_err());
    }

    #[test]
    fn cover_antimeridian_split() {
        let b = Bbox::new(170.0, -10.0, -170.0, 10.0).unwrap();
        let tiles = cover(&b, 4, 100).unwrap();
        let xs: HashSet<u32> = tiles.iter().map(|t| t.x()).collect();
        assert_eq!(xs, HashSet::from([15, 0]));
        let world = Bbox::new(-180.0, -85.0, 180.0, 85.0).unwrap();
        assert_eq!(cover(&world, 2, 100).unwrap().len(), 16);
        let copies = Bbox::new(-400.0, -85.0, 400.0, 85.0).unwrap();
        assert_eq!(cover(&copies, 2, 100).unwrap().len(), 16);
        let full = Bbox::new(-180.0, -90.0, 180.0, 90.0).unwrap();
        let e = cover(&full, 10, 1000).unwrap_err().to_string();
        assert_eq!(e, "1048576 tiles requested, more than the maximum of 1000");
    }

    #[test]
    fn ring_around_set() {
        let a: TileId = "10/100/100".parse().unwrap();
        let b = a.offset(1, 0).unwrap();
        let ring = ring_around(&[a, b], 1).unwrap();
        assert_eq!(ring.len(), 10);
        assert!(!ring.contains(&a) && !ring.contains(&b));
        assert!(ring_around(&[a, TileId::ROOT], 1).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn tile() -> impl Strategy<Value = TileId> {
            (0u8..=MAX_ZOOM).prop_flat_map(|z| {
                let n = tiles_per_axis(z);
                (Just(z), 0..n, 0..n).prop_map(|(z, x, y)| TileId::new(z, x, y).unwrap())
            })
        }

        proptest! {
            // Many points: a systematic difference would show near tile edges.
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            /// `y_of` against the textbook `ln(tan φ + sec φ)` with libm's `tan` and `cos`,
            /// evaluated at `|φ|` with the sign put back (south of the equator the textbook's
            /// `tan φ + sec φ` cancels: near -85° it is off by 1e-7 tiles at zoom 24, which
            /// `y_of` is not). The tile is the same; the coordinate is within 1e-9 tiles, or
            /// 4 ulps of it where that is more (an ulp is 1.9e-9 at zoom 24).
            #[test]
            fn mercator_matches_the_textbook_formula(lat in -90.0f64..=90.0, lon in -180.0f64..180.0, z in 0u8..=MAX_ZOOM) {
                let clamped = lat.clamp(-MAX_LATITUDE, MAX_LATITUDE);
                let r = clamped.to_radians().abs();
                let psi = (r.tan() + 1.0 / r.cos()).ln().copysign(clamped);
                let n = tiles_per_axis(z) as f64;
                let want = (1.0 - psi / PI) / 2.0 * n;
                let got = project(lon, lat, z).unwrap().y;
                let tolerance = f64::max(1e-9, 4.0 * f64::EPSILON * n);
                prop_assert!((got - want).abs() <= tolerance, "lat {} z {}: {} vs {}", lat, z, got, want);
                let t = TileId::from_lon_lat(lon, lat, z).unwrap();
                prop_assert_eq!(t.y(), clamp_index(want, tiles_per_axis(z)));
            }
        }

        proptest! {
            #[test]
            fn rem_euclid_matches_std(x in -1e9f64..1e9, n in prop::sample::select(vec![1.0, 4.0, 360.0, 16384.0])) {
                let (ours, std) = (rem_euclid(x, n), x.rem_euclid(n));
                if x.abs() < n {
                    prop_assert_eq!(ours.to_bits(), std.to_bits(), "x {} n {}", x, n);
                } else {
                    prop_assert!((ours - std).abs() <= 1e-12 * x.abs() || (ours - std).abs() >= n - 1e-12 * x.abs(),
                        "x {} n {}: {} vs {}", x, n, ours, std);
                }
                prop_assert!((0.0..=n).contains(&ours));
            }

            #[test]
            fn rem_euclid_stays_in_range_for_any_finite_x(
                x in any::<f64>().prop_filter("finite", |x| x.is_finite()),
                n in prop::sample::select(vec![1.0, 4.0, 360.0, 16384.0]),
            ) {
                let r = rem_euclid(x, n);
                prop_assert!((0.0..=n).contains(&r), "x {} n {}: {}", x, n, r);
                let w = wrap_lon(x);
                prop_assert!((-180.0..180.0).contains(&w), "wrap_lon({}) = {}", x, w);
            }

            #[test]
            fn text_quadkey_and_packed_round_trip(t in tile()) {
                prop_assert_eq!(t.to_string().parse::<TileId>().unwrap(), t);
                prop_assert_eq!(TileId::from_quadkey(&t.quadkey()).unwrap(), t);
                prop_assert_eq!(TileId::from_u64(t.to_u64()).unwrap(), t);
                prop_assert!(t.to_u64() < 1u64 << 53);
            }

            #[test]
            fn parent_children_and_ancestors_agree(t in tile()) {
                if let Some(kids) = t.children() {
                    for k in kids {
                        prop_assert_eq!(k.parent(), Some(t));
                        prop_assert!(t.contains(k));
                    }
                    let b = t.bounds();
                    let kb: Vec<Bbox> = kids.iter().map(|k| k.bounds()).collect();
                    prop_assert!((kb[0].west - b.west).abs() < 1e-9 && (kb[3].east - b.east).abs() < 1e-9);
                    prop_assert!((kb[0].north - b.north).abs() < 1e-9 && (kb[3].south - b.south).abs() < 1e-9);
                }
                for z in 0..=t.z() {
                    let a = t.ancestor(z).unwrap();
                    prop_assert!(a.contains(t));
                    prop_assert_eq!(a.z(), z);
                }
            }

            #[test]
            fn point_lies_in_its_tile(lon in -540.0f64..540.0, lat in -85.0f64..85.0, z in 0u8..=MAX_ZOOM) {
                let t = TileId::from_lon_lat(lon, lat, z).unwrap();
                let b = t.bounds();
                let w = wrap_lon(lon);
                prop_assert!(w >= b.west - 1e-9 && w <= b.east + 1e-9, "{} not in {:?}", w, b);
                prop_assert!(lat >= b.south - 1e-9 && lat <= b.north + 1e-9);
            }

            #[test]
            fn neighbour_counts(t in tile(), k in 0u32..4) {
                let nb = t.neighbours(k).unwrap();
                let n = tiles_per_axis(t.z()) as u64;
                let rows = (0..=2 * k as i64).filter(|d| t.offset(0, d - k as i64).is_some()).count() as u64;
                let cols = (2 * k as u64 + 1).min(n);
                prop_assert_eq!(nb.len() as u64, rows * cols - 1);
                let uniq: HashSet<TileId> = nb.iter().copied().collect();
                prop_assert_eq!(uniq.len(), nb.len());
                prop_assert!(nb.iter().all(|o| o.z() == t.z() && *o != t && t.chebyshev(*o) <= k as u64));
            }

            /// The cover equals a brute-force scan: every tile of the zoom (around the box)
            /// whose area overlaps the box, in projected coordinates.
            #[test]
            fn cover_matches_brute_force(
                west in -200.0f64..200.0,
                width in 0.0f64..40.0,
                south in -80.0f64..75.0,
                height in 0.0f64..10.0,
                z in 0u8..7,
            ) {
                let b = Bbox::new(west, south, west + width, (south + height).min(85.0)).unwrap();
                let got: HashSet<TileId> = cover(&b, z, 1 << 20).unwrap().into_iter().collect();
                let n = tiles_per_axis(z);
                let nf = n as f64;
                let fw = x_of(wrap_lon(b.west), nf);
                let fe = fw + b.width() / 360.0 * nf;
                let fy_n = y_of(b.north.clamp(-MAX_LATITUDE, MAX_LATITUDE), nf);
                let fy_s = y_of(b.south.clamp(-MAX_LATITUDE, MAX_LATITUDE), nf);
                let mut want = HashSet::new();
                for y in 0..n {
                    let (y0, y1) = (y as f64, y as f64 + 1.0);
                    let rows = if fy_s > fy_n { y0 < fy_s && y1 > fy_n } else { y0 <= fy_n && fy_n < y1 };
                    if !rows { continue; }
                    // Columns: the box may run past 2^z (wrapping); test both copies.
                    for x in 0..n {
                        let hit = [0.0, nf].iter().any(|off| {
                            let (x0, x1) = (x as f64 + off, x as f64 + 1.0 + off);
                            if fe > fw { x0 < fe && x1 > fw } else { x0 <= fw && fw < x1 }
                        });
                        if hit { want.insert(TileId::new(z, x, y).unwrap()); }
                    }
                }
                prop_assert_eq!(got, want);
            }
        }
    }
}
