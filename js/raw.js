// tilewarm/raw: the plain wasm-bindgen glue, for loading the .wasm from somewhere else
// (`init`, the default export, or `initSync`), and the tile functions, which work once it
// has run. Both init functions need the .wasm (this entry never names it by URL, so bundlers
// do not emit it): `init({ module_or_path })` with a URL, Response, bytes or
// WebAssembly.Module, `initSync({ module })` with bytes or a WebAssembly.Module.
import glueInit, { initSync as glueInitSync } from './tilewarm.js';

export * from './tilewarm.js';
export { tileForPoint, tilesForBbox, neighbourTiles, parentTile } from './api.js';

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
