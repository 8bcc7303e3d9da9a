// Types of every entry point of the package (they share one API, js/api.js): the tile
// functions and TileCache (js/cache.js).

/** A tile as text: `z/x/y`, e.g. `"14/2624/5721"` (zoom 0..=24, x and y below 2^z). */
export type TileString = `${number}/${number}/${number}`;

/** The `code` of every error the tile functions throw. */
export type TilewarmErrorCode =
  /** An argument of the wrong type (a string where a number belongs, `undefined`, ...). TypeError. */
  | 'ERR_INVALID_ARG_TYPE'
  /** A number that is not an integer, not finite, or outside its range. RangeError. */
  | 'ERR_OUT_OF_RANGE'
  /** A string that is not `z/x/y` (TypeError) or names no tile (RangeError). */
  | 'ERR_INVALID_TILE'
  /** More tiles than one call returns (4096). RangeError. */
  | 'ERR_TOO_MANY_TILES';

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
 * @example tileForPoint(-122.3321, 47.6062, 14) // '14/2624/5721'
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
 * @example parentTile('14/2624/5721', 12) // '12/656/1430'
 */
export function parentTile(tile: string, z: number): TileString;

/** An access tier, lowest first. A tier sees items of its own tier and below. */
export type Access = 'public' | 'registered' | 'verified' | 'agent';

/** Options of {@link TileCache.create}. Only `endpoint` is required. */
export interface TileCacheOptions {
  /** Absolute URL of the batch endpoint (POST, JSON). */
  endpoint: string;
  /** Zoom of the data tiles: an integer in 0..=24. Default 14. */
  tileZoom?: number;
  /** Below this map zoom nothing is fetched: a number in 0..=30. Default 12. */
  minZoom?: number;
  /** Most items held: an integer in 1..=10000000. Default 50000. */
  maxItems?: number;
  /** Most bytes held (estimated from the response size): 1..=2147483647. Default 32 MiB. */
  maxBytes?: number;
  ttl?: {
    /** Seconds an item is fresh when neither the response nor its class says: 1..=2592000. Default 300. */
    default?: number;
    /** Seconds per item class (replaces the default table). Default `{ active: 300, off_market: 14400 }`. */
    byClass?: Record<string, number>;
    /** Seconds after expiry an item may still be shown, flagged `stale`, while it is refetched. Default 0. */
    staleWhileRevalidate?: number;
  };
  prefetch?: {
    /** Ring of neighbour tiles fetched around the view: 0..=8. Default 1. */
    ring?: number;
    /** How far ahead motion is extrapolated, in ms: 0..=60000 (0 = off). Default 1500. */
    lookaheadMs?: number;
    /** Prefetch tiles per round, at least: 0..=4096. Default 32. */
    maxTilesPerRound?: number;
    /** Neighbourhood of the view, in view sizes (1 = the 8 neighbouring views): 0..=4 (0 = off). Default 1. */
    viewRing?: number;
    /** The per-round budget grows to this many prefetch tiles per visible tile: 0..=64. Default 8. */
    budgetPerVisible?: number;
  };
  batch?: {
    /** Tiles per request: 1..=64. Default 16. */
    maxTiles?: number;
    /** Ids per request: 1..=1000. Default 200. */
    maxIds?: number;
    /** Requests out at once: 1..=64. Default 4. */
    maxInFlight?: number;
    /** Time a request may take, in ms: 1..=600000. Default 3000. */
    timeoutMs?: number;
    /** Retries after the first attempt: 0..=10. Default 2. */
    retries?: number;
    /** Ask for a tile up to this many zooms coarser when all its data tiles are missing: 0..=4 (0 = off). Default 2. */
    coalesceLevels?: number;
  };
  /** The caller's tier. Default `'public'`. */
  access?: Access;
  /** Extra request headers (e.g. `Authorization`). */
  headers?: Record<string, string> | Headers;
  /** The fetch to use (tests, auth wrappers). Default `globalThis.fetch`. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  /** The clock, in ms (TTLs and backoff use it). Default `Date.now`. */
  now?: () => number;
}

/** A map viewport in degrees; `west > east` crosses the antimeridian. */
export interface Viewport {
  west: number;
  south: number;
  east: number;
  north: number;
  /** Map zoom in 256-px XYZ terms, 0..=30 (fractional is fine): Leaflet's zoom as is, MapLibre's `getZoom() + 1` (its tiles are 512 px). */
  zoom: number;
}

/** An item as the page gets it. The same object is handed out while it is cached. */
export interface Item<Data = unknown> {
  id: string;
  lon: number;
  lat: number;
  class: string;
  access: Access;
  /** The server's `data`, as it came. */
  data: Data;
  /** Expired but within `ttl.staleWhileRevalidate`: shown while it is refetched. Set on
   * each read of the view. */
  stale: boolean;
}

/** What {@link TileCache.setViewport} returns (and `onUpdate` listeners get). */
export interface View<Data = unknown> {
  /** Every cached item in the view. */
  items: Item<Data>[];
  /** Every visible data tile can be shown. */
  complete: boolean;
  /** Visible data tiles not loaded yet (being fetched). */
  missingTiles: TileString[];
}

/** The `code` of a request error. */
export type FetchErrorCode = 'ERR_TIMEOUT' | 'ERR_NETWORK' | 'ERR_HTTP' | 'ERR_INVALID_RESPONSE';

/** A failed batch request, given to `onError` listeners and `whenComplete()` rejections. */
export interface FetchError extends Error {
  code: FetchErrorCode;
  /** The HTTP status, for `ERR_HTTP`. */
  status?: number;
  /** Foreground requests load the visible tiles; prefetch ones load what may come next. */
  kind: 'foreground' | 'prefetch';
  /** The request is tried again after a backoff. */
  willRetry: boolean;
  /** From a `Retry-After` header. */
  retryAfterMs?: number;
  /** The `error.code` of the server's error body, when it sent one. */
  serverCode?: string;
}

/** Counters since the cache was created. */
export interface TileCacheStats {
  /** Item lookups that found a fresh item, nothing showable, or a stale item. */
  hits: number;
  misses: number;
  staleHits: number;
  /** (hits + staleHits) / lookups; 0 before any lookup. */
  hitRate: number;
  /** Batch requests sent, retries included. */
  requests: number;
  /** Those sent for prefetch. */
  prefetchRequests: number;
  /** Items received. */
  itemsFetched: number;
  /** Prefetched tiles later shown, and those that expired or were fetched again unseen. */
  prefetchTilesUsed: number;
  prefetchTilesWasted: number;
  /** Items evicted for capacity. */
  evictions: number;
  /** Items and (estimated) bytes held now. */
  entries: number;
  bytes: number;
  /** Requests out now. */
  inFlight: number;
  /** Failed request attempts. */
  errors: number;
  /** The prefetch circuit breaker is open: prefetch is paused, foreground still goes out. */
  breakerOpen: boolean;
}

/**
 * The state of a data tile ({@link TileCache.tileStates}): `loaded` (showable, fetched for
 * the view or already shown), `prefetched` (showable, fetched ahead and not shown yet),
 * `inFlight` (a request for it is out), `missing` (not showable and not being fetched).
 */
export type TileState = 'loaded' | 'prefetched' | 'inFlight' | 'missing';

/** What {@link TileCache.invalidate} drops. */
export interface Invalidation {
  ids?: string[];
  tiles?: string[];
  all?: boolean;
}

/**
 * A tile-aware LRU cache with per-class TTLs, motion-aware prefetch and a batch fetcher for
 * one batch endpoint.
 *
 * Bad options and arguments throw a `TypeError` or `RangeError` with a `code` and a message
 * naming the field, the value and what is allowed. Network and backend trouble never
 * throws from `setViewport`: it goes to `onError`, `stats()` and `whenComplete()`.
 */
export class TileCache<Data = unknown> {
  private constructor();
  /** Checks the options and starts a cache. Rejects with a TypeError/RangeError on bad options. */
  static create<Data = unknown>(options: TileCacheOptions): Promise<TileCache<Data>>;
  /** The map moved: what the cache has for the view now (synchronously); the fetches for
   * missing tiles and the prefetch round start in the background. */
  setViewport(viewport: Viewport): View<Data>;
  /** Resolves when every visible tile can be shown; rejects with the {@link FetchError} of a
   * foreground request that gave up. */
  whenComplete(): Promise<void>;
  /** Calls `listener` when data for the view arrived (and after `invalidate`/`setAccess`);
   * returns a function that unsubscribes. */
  onUpdate(listener: (items: Item<Data>[], view: Omit<View<Data>, 'items'>) => void): () => void;
  /** Calls `listener` for every failed request attempt; returns a function that unsubscribes. */
  onError(listener: (error: FetchError) => void): () => void;
  /** One item by id, from the cache or fetched by id; `undefined` if it does not exist or
   * the tier may not see it. Rejects with the {@link FetchError} if the fetch gave up. */
  get(id: string): Promise<Item<Data> | undefined>;
  /** Items by id, in order, fetching the unknown ones together. */
  getMany(ids: string[]): Promise<(Item<Data> | undefined)[]>;
  /** Drops items, tiles or everything; returns how many entries went. Visible tiles that
   * emptied are fetched again. */
  invalidate(what: Invalidation): number;
  /** The state of each tile, in order (a tile not at `tileZoom` is never `loaded` or
   * `prefetched`). Throws a TypeError (`ERR_INVALID_TILE`) for a string that is not a tile
   * `z/x/y`. */
  tileStates(tiles: TileString[] | string[]): TileState[];
  /** Changes the caller's tier; lowering it drops what the new tier may not see at once. */
  setAccess(access: Access): void;
  stats(): TileCacheStats;
  /** Aborts every request, stops timers, rejects pending promises, frees the wasm memory. */
  dispose(): void;
}
