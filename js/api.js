// The public API. Each entry point (index.js, node.js, workerd.js) first instantiates the
// wasm module, then re-exports this list, so importing 'tilewarm' gives ready functions.
export { tileForPoint, tilesForBbox, neighbourTiles, parentTile } from './tilewarm.js';
export { TileCache } from './cache.js';
