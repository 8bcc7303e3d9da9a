// tilewarm/raw: the plain wasm-bindgen glue, for loading the .wasm from somewhere else
// (`init`, the default export, or `initSync`), and the tile functions, which work once it
// has run. Both init functions need the .wasm (this entry never names it by URL, so bundlers
// do not emit it): `init({ module_or_path })` with a URL, Response, bytes or
// WebAssembly.Module, `initSync({ module })` with bytes or a WebAssembly.Module.
import glueInit, { initSync as glueInitSync } from './tilewarm.js';
import * as api from './api.js';

export * from './tilewarm.js';

/** Whether the .wasm was instantiated (by init, initSync, or another entry of the package:
 * they share this glue, whose initSync() then hands back the instance). */
function ready() {
  try {
    glueInitSync();
    return true;
  } catch {
    return false;
  }
}

/** `f()`, whose failure before the .wasm was instantiated says so, instead of the glue's
 * "Cannot read properties of undefined". */
function once(name, f) {
  try {
    return f();
  } catch (e) {
    if (ready()) throw e;
    throw new Error(`${name}() works once the .wasm is instantiated: await init({ module_or_path }) or call initSync({ module }) first`);
  }
}

export const tileForPoint = (lon, lat, z) => once('tileForPoint', () => api.tileForPoint(lon, lat, z));
export const tilesForBbox = (west, south, east, north, z) => once('tilesForBbox', () => api.tilesForBbox(west, south, east, north, z));
export const neighbourTiles = (tile, ring) => once('neighbourTiles', () => api.neighbourTiles(tile, ring));
export const parentTile = (tile, z) => once('parentTile', () => api.parentTile(tile, z));

function missing(name, what) {
  const e = new TypeError(`${name}() needs the .wasm: ${what} (tilewarm/raw does not know where it is)`);
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

// Without the .wasm they give the instance once it has run (as the glue does), else say what
// they need rather than the glue's error about `undefined`.
export default function init(input) {
  if (input != null) return glueInit(input);
  return glueInit().catch(() => {
    throw missing('init', "{ module_or_path } with its URL (e.g. new URL('tilewarm/tilewarm_bg.wasm', import.meta.url)), a Response, its bytes or a WebAssembly.Module");
  });
}

export function initSync(input) {
  if (input != null) return glueInitSync(input);
  try {
    return glueInitSync();
  } catch {
    throw missing('initSync', '{ module } with its bytes or a WebAssembly.Module');
  }
}
