// The public API. Each entry point (index.js, node.js, workerd.js) first instantiates the
// wasm module, then re-exports this list, so importing 'tilewarm' gives ready functions.
//
// The tile functions: the wasm checks the arguments and finds the tiles (src/wasm/mod.rs);
// tiles cross as packed ids, z·2^48 + x·2^24 + y (exact in a number), written as "z/x/y"
// by `tileName`. Types and docs: index.d.ts.
import { tileIdAt, tileIdForPoint, tileIdsForBbox, neighbourTileIds, parentTileId } from './tilewarm.js';
import { thrown, tileName } from './cache.js';

export { TileCache } from './cache.js';

export function tileForPoint(lon, lat, z) {
  // Numbers go through the plain numeric call; anything else, or out of range (-1), takes
  // the checked call, which says what is wrong.
  if (typeof lon === 'number' && typeof lat === 'number' && typeof z === 'number') {
    const id = tileIdAt(lon, lat, z);
    if (id >= 0) return tileName(id);
  }
  try {
    return tileName(tileIdForPoint(lon, lat, z));
  } catch (e) {
    throw thrown(e, (name) => ({ lon, lat, z })[name]);
  }
}

export function tilesForBbox(west, south, east, north, z) {
  try {
    return Array.from(tileIdsForBbox(west, south, east, north, z), tileName);
  } catch (e) {
    throw thrown(e, (name) => ({ west, south, east, north, z })[name]);
  }
}

export function neighbourTiles(tile, ring) {
  try {
    return Array.from(neighbourTileIds(tile, ring), tileName);
  } catch (e) {
    throw thrown(e, (name) => ({ tile, ring })[name]);
  }
}

export function parentTile(tile, z) {
  try {
    return tileName(parentTileId(tile, z));
  } catch (e) {
    throw thrown(e, (name) => ({ tile, z })[name]);
  }
}
