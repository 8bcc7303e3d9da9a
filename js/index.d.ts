// Types of every entry point of the package (they share one API). The declarations are
// written by hand in src/wasm/mod.rs and emitted into tilewarm.d.ts by wasm-bindgen.
export { tileForPoint, tilesForBbox, neighbourTiles, parentTile } from './tilewarm.js';
export type { TileString, TilewarmError, TilewarmErrorCode } from './tilewarm.js';
