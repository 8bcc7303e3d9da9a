//! JavaScript bindings (feature `wasm`), built into the npm package `pkg/` by
//! `scripts/build-pkg.sh`. Thin: each function describes its JS arguments as
//! [`args::Value`]s, calls one checked function in [`args`], and converts back.
//!
//! Arguments are taken as `JsValue` rather than `f64`/`String`, so a string where a number
//! belongs (or `undefined`) is reported as such instead of being coerced to `NaN`. Errors
//! are thrown as records (see [`thrown`]) that the JS glue turns into a `TypeError` or
//! `RangeError` carrying a `code`; input never panics.
//!
//! The tile functions below are the wasm half of the public ones in `js/api.js`: tiles
//! cross as packed ids ([`args::packed`]), which the JS writes as `z/x/y`. Their TypeScript
//! declarations are in `js/index.d.ts`.
//!
//! Every code, tag, name and option that crosses is defined once, in [`boundary`] and
//! [`crate::client::options`] (the option table, shared with tilewarm-web); [`codegen`] writes the JS and TypeScript side of them (`js/gen/`).

mod args;
mod boundary;
#[cfg(test)]
mod codegen;
mod config;
mod engine;

use args::{ArgError, Value};
use wasm_bindgen::prelude::*;

/// The package's allocator: talc, a drop-in for wasm's default dlmalloc that is smaller
/// (about 2 KB less gzipped here) and faster. Memory grows as dlmalloc's does.
#[cfg(all(
    target_family = "wasm",
    not(target_feature = "atomics"),
    not(feature = "alloc-stats")
))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// The same, counting the live allocations by size, for the memory benchmark only.
#[cfg(all(
    target_family = "wasm",
    not(target_feature = "atomics"),
    feature = "alloc-stats"
))]
mod alloc_stats;

/// Describes a JS value for the checks in [`args`].
fn value(v: &JsValue) -> Value {
    if let Some(n) = v.as_f64() {
        Value::Number(n)
    } else if let Some(s) = v.as_string() {
        Value::Text(s)
    } else if v.is_undefined() {
        Value::Undefined
    } else {
        Value::Other
    }
}

/// The record thrown for an [`ArgError`]: `[class, code, ...parts]` (the codes of
/// [`boundary::ErrorClass`] and [`boundary::Code`]), which `thrown` in `js/cache.js` turns
/// into the error, writing each odd part's value into the message.
fn thrown(e: ArgError) -> JsValue {
    let mut record = Vec::with_capacity(2 + e.parts.len());
    record.push(JsValue::from_f64(e.kind.num()));
    record.push(JsValue::from_f64(e.code.num()));
    record.extend(e.parts.iter().map(|p| JsValue::from_str(p)));
    record.into()
}

/// `tileForPoint`: the packed id of the tile.
#[wasm_bindgen(js_name = tileIdForPoint, skip_typescript)]
pub fn tile_id_for_point(lon: &JsValue, lat: &JsValue, z: &JsValue) -> Result<f64, JsValue> {
    args::tile_for_point(&value(lon), &value(lat), &value(z)).map_err(thrown)
}

/// `tileForPoint` for numbers already checked as such by `api.js`: the packed id, or -1 for
/// anything out of range (`api.js` then calls [`tile_id_for_point`] for the error). No
/// `JsValue` crosses, so the call is one plain wasm call.
#[wasm_bindgen(js_name = tileIdAt, skip_typescript)]
pub fn tile_id_at(lon: f64, lat: f64, z: f64) -> f64 {
    let ok = lon.is_finite() && (-90.0..=90.0).contains(&lat) && z.fract() == 0.0;
    if !ok || !(0.0..=crate::tile::MAX_ZOOM as f64).contains(&z) {
        return -1.0;
    }
    crate::tile::TileId::from_lon_lat(lon, lat, z as u8).map_or(-1.0, args::packed)
}

/// `tilesForBbox`: the packed ids, in the order of the result.
#[wasm_bindgen(js_name = tileIdsForBbox, skip_typescript)]
pub fn tile_ids_for_bbox(
    west: &JsValue,
    south: &JsValue,
    east: &JsValue,
    north: &JsValue,
    z: &JsValue,
) -> Result<Vec<f64>, JsValue> {
    args::tiles_for_bbox(
        &value(west),
        &value(south),
        &value(east),
        &value(north),
        &value(z),
    )
    .map_err(thrown)
}

/// `neighbourTiles`: the packed ids.
#[wasm_bindgen(js_name = neighbourTileIds, skip_typescript)]
pub fn neighbour_tile_ids(tile: &JsValue, ring: &JsValue) -> Result<Vec<f64>, JsValue> {
    args::neighbour_tiles(&value(tile), &value(ring)).map_err(thrown)
}

/// `parentTile`: the packed id.
#[wasm_bindgen(js_name = parentTileId, skip_typescript)]
pub fn parent_tile_id(tile: &JsValue, z: &JsValue) -> Result<f64, JsValue> {
    args::parent_tile(&value(tile), &value(z)).map_err(thrown)
}
