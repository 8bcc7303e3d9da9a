//! JavaScript bindings (feature `wasm`), built into the npm package `pkg/` by
//! `scripts/build-pkg.sh`. Thin: each function describes its JS arguments as
//! [`args::Value`]s, calls one checked function in [`args`], and converts back.
//!
//! Arguments are taken as `JsValue` rather than `f64`/`String`, so a string where a number
//! belongs (or `undefined`) is reported as such instead of being coerced to `NaN`. Errors
//! are thrown as a `TypeError` or `RangeError` carrying a `code`; input never panics.
//! The TypeScript declarations are written by hand below.

mod args;
mod config;
mod engine;

use args::{ArgError, Kind, Value};
use wasm_bindgen::prelude::*;

/// The package's allocator: talc, a drop-in for wasm's default dlmalloc that is smaller
/// (about 2 KB less gzipped here) and faster. Memory grows as dlmalloc's does.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[wasm_bindgen(typescript_custom_section)]
const TS_API: &'static str = r#"
/** A tile as text: `z/x/y`, e.g. `"14/2624/5721"` (zoom 0..=24, x and y below 2^z). */
export type TileString = `${number}/${number}/${number}`;

/** The `code` of every error the tile functions throw. */
export type TilewarmErrorCode =
  /** An argument of the wrong type (a string where a number belongs, `undefined`, ...). TypeError. */
  | "ERR_INVALID_ARG_TYPE"
  /** A number that is not an integer, not finite, or outside its range. RangeError. */
  | "ERR_OUT_OF_RANGE"
  /** A string that is not `z/x/y` (TypeError) or names no tile (RangeError). */
  | "ERR_INVALID_TILE"
  /** More tiles than one call returns (4096). RangeError. */
  | "ERR_TOO_MANY_TILES";

/** What the tile functions throw: a `TypeError` or `RangeError` with a `code`. */
export interface TilewarmError extends Error {
  code: TilewarmErrorCode;
}

/**
 * The tile at zoom `z` that contains a point. Longitude wraps (180 and -180 are the same
 * meridian); latitude clamps to the Web Mercator limit of ±85.0511.
 * @param lon any finite longitude in degrees
 * @param lat latitude in degrees, -90..=90
 * @param z zoom, an integer in 0..=24
 * @throws {TilewarmError} on a non-number, non-finite or out-of-range argument
 * @example tileForPoint(-122.3321, 47.6062, 14) // "14/2624/5721"
 */
export function tileForPoint(lon: number, lat: number, z: number): TileString;

/**
 * Every tile at zoom `z` that intersects a box, row by row from the north, each row west to
 * east. `west > east` means the box crosses the antimeridian. At most 4096 tiles.
 * @throws {TilewarmError} `ERR_TOO_MANY_TILES` when the box covers more than 4096 tiles
 */
export function tilesForBbox(
  west: number,
  south: number,
  east: number,
  north: number,
  z: number,
): TileString[];

/**
 * The tiles within `ring` tiles of `tile` (Chebyshev distance), `tile` itself excluded:
 * 8 for ring 1, 24 for ring 2. Columns wrap around the antimeridian; rows past the poles
 * are left out; each tile appears once.
 * @param tile `"z/x/y"`
 * @param ring an integer in 0..=31
 */
export function neighbourTiles(tile: string, ring: number): TileString[];

/**
 * The tile at zoom `z` (at most the zoom of `tile`) that contains `tile`.
 * @example parentTile("14/2624/5721", 12) // "12/656/1430"
 */
export function parentTile(tile: string, z: number): TileString;
"#;

/// Describes a JS value for the checks in [`args`].
fn value(v: &JsValue) -> Value {
    if let Some(n) = v.as_f64() {
        return Value::Number(n);
    }
    if let Some(s) = v.as_string() {
        return Value::Text(s);
    }
    let what = if v.is_undefined() {
        "undefined".to_string()
    } else if v.is_null() {
        "null".to_string()
    } else if let Some(b) = v.as_bool() {
        b.to_string()
    } else if v.is_bigint() {
        "a bigint".to_string()
    } else if v.is_symbol() {
        "a symbol".to_string()
    } else if v.is_function() {
        "a function".to_string()
    } else if js_sys::Array::is_array(v) {
        "an array".to_string()
    } else {
        "an object".to_string()
    };
    Value::Other(what)
}

/// Builds the JS error to throw.
fn throw(e: ArgError) -> JsValue {
    let err: JsValue = match e.kind {
        Kind::Type => js_sys::TypeError::new(&e.message).into(),
        Kind::Range => js_sys::RangeError::new(&e.message).into(),
    };
    // Setting a property on a fresh Error object cannot fail; if it did, the error without
    // its code is still the right thing to throw.
    let _ = js_sys::Reflect::set(&err, &JsValue::from_str("code"), &JsValue::from_str(e.code));
    err
}

#[wasm_bindgen(js_name = tileForPoint, skip_typescript)]
pub fn tile_for_point(lon: &JsValue, lat: &JsValue, z: &JsValue) -> Result<String, JsValue> {
    args::tile_for_point(&value(lon), &value(lat), &value(z)).map_err(throw)
}

#[wasm_bindgen(js_name = tilesForBbox, skip_typescript)]
pub fn tiles_for_bbox(
    west: &JsValue,
    south: &JsValue,
    east: &JsValue,
    north: &JsValue,
    z: &JsValue,
) -> Result<Vec<String>, JsValue> {
    args::tiles_for_bbox(
        &value(west),
        &value(south),
        &value(east),
        &value(north),
        &value(z),
    )
    .map_err(throw)
}

#[wasm_bindgen(js_name = neighbourTiles, skip_typescript)]
pub fn neighbour_tiles(tile: &JsValue, ring: &JsValue) -> Result<Vec<String>, JsValue> {
    args::neighbour_tiles(&value(tile), &value(ring)).map_err(throw)
}

#[wasm_bindgen(js_name = parentTile, skip_typescript)]
pub fn parent_tile(tile: &JsValue, z: &JsValue) -> Result<String, JsValue> {
    args::parent_tile(&value(tile), &value(z)).map_err(throw)
}
