// Types of tilewarm/raw (raw.js): the glue's init functions and the tile functions.
export { default, initSync } from './tilewarm.js';
export type { InitInput, InitOutput, SyncInitInput } from './tilewarm.js';
export { tileForPoint, tilesForBbox, neighbourTiles, parentTile } from './index.js';
export type { TileString, TilewarmError, TilewarmErrorCode } from './index.js';
