// The public API. Each entry point (index.js, node.js, workerd.js) first instantiates the
// wasm module, then re-exports this list, so importing 'tilewarm' gives ready functions.
//
// The tile functions: the wasm checks the arguments and finds the tiles (src/wasm/mod.rs);
// tiles cross as packed ids, z·2^48 + x·2^24 + y (exact in a number), written as "z/x/y"
// by `tileName`. Types and docs: index.d.ts.
import { tileIdAt, tileIdForPoint, tileIdsForBbox, neighbourTileIds, parentTileId } from './tilewarm.js';
import { thrown, tileName, MAX_LATITUDE, MAX_ZOOM } from './cache.js';

export { TileCache } from './cache.js';

// How far from every edge of its tile, in tiles, a point must be for `tileForPoint` to name
// its tile in JavaScript (see `tileAwayFromEdges`).
const EDGE_MARGIN = 1e-5;

/**
 * The point's tile as "z/x/y", worked out in JavaScript; undefined where the core must say.
 *
 * The core (src/tile.rs: `project`, `TileId::from_lon_lat`) is the one definition of a
 * point's tile; crossing into the wasm and back costs more than the arithmetic (issue 22).
 * The same Web Mercator formulas here and in the core land within about 1e-7 of a tile of
 * each other at zoom 24 (each rounds differently: `Math.sin` and `Math.log` against the
 * core's own), so where the point is further than EDGE_MARGIN, a hundred times that, from
 * every edge of its tile, both name the same tile. Anything else goes to the wasm: a point
 * near an edge (about 4 in 100,000 at random), a longitude outside -180..180 (it wraps),
 * a latitude past the Mercator limit (it clamps), and every argument to check.
 */
function tileAwayFromEdges(lon, lat, z) {
  if (typeof lon !== 'number' || typeof lat !== 'number' || !Number.isInteger(z)) return undefined;
  if (!(lon >= -180 && lon <= 180 && lat >= -MAX_LATITUDE && lat <= MAX_LATITUDE)) return undefined;
  if (!(z >= 0 && z <= MAX_ZOOM)) return undefined;
  const n = 2 ** z;
  const x = ((lon + 180) / 360) * n;
  const s = Math.sin((lat * Math.PI) / 180);
  const y = (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * n;
  const tx = Math.floor(x), ty = Math.floor(y);
  const fx = x - tx, fy = y - ty;
  // (Longitude 180 and the Mercator limits are on edges: x or y is 0 or n there.)
  const away = fx > EDGE_MARGIN && fx < 1 - EDGE_MARGIN && fy > EDGE_MARGIN && fy < 1 - EDGE_MARGIN;
  return away ? `${z}/${tx}/${ty}` : undefined;
}

export function tileForPoint(lon, lat, z) {
  return tileAwayFromEdges(lon, lat, z) ?? tileFromCore(lon, lat, z);
}

function tileFromCore(lon, lat, z) {
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
