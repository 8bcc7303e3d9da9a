// tilewarm/raw: the plain wasm-bindgen glue, for loading the .wasm from somewhere else
// (`init`, the default export, or `initSync`), and the tile functions, which work once it
// has run.
export * from './tilewarm.js';
export { default } from './tilewarm.js';
export { tileForPoint, tilesForBbox, neighbourTiles, parentTile } from './api.js';
