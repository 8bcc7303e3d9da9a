// Types of every entry point of the package (they share one API, js/api.js): the tile
// functions and TileCache (js/cache.js). The codes, names, counters and options are
// generated from the Rust (gen/types.d.ts) and re-exported here.
import type {
  Access,
  FetchErrorCode,
  RequestKind,
  TileCacheOptions,
  TileCacheStats,
  TileState,
  TilewarmErrorCode,
} from './gen/types.js';

export type {
  Access,
  FetchErrorCode,
  RequestKind,
  TileCacheOptions,
  TileCacheStats,
  TileState,
  TilewarmErrorCode,
};

/** A tile as text: `z/x/y`, e.g. `"14/2624/5721"` (zoom 0..=24, x and y below 2^z). */
export type TileString = `${number}/${number}/${number}`;

/** What the tile functions and `TileCache` throw for bad arguments: a `TypeError` or
 * `RangeError` with a `code` (an `Error` for `ERR_DISPOSED`). */
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

/** A map viewport in degrees; `west > east` crosses the antimeridian. */
export interface Viewport {
  west: number;
  south: number;
  east: number;
  north: number;
  /** Map zoom, 0..=30 (fractional is fine), in the units of the `tileSize` option: with the
   * default 256, Leaflet's and OpenLayers' zoom as is; with `tileSize: 512`, MapLibre's
   * `getZoom()` and deck.gl's zoom as is. */
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
   * each read (a view, a `loadTiles` answer). */
  stale: boolean;
}

/** What {@link TileCache.setViewport} returns (and `onUpdate` listeners get). */
export interface View<Data = unknown> {
  /** Every cached item in the view. */
  items: Item<Data>[];
  /** Every visible data tile can be shown (never while `tooWide`). */
  complete: boolean;
  /** The view covers more than `maxVisibleTiles` data tiles: nothing is fetched for it, and
   * `items` are the cached ones in it. Not an error: zoom in (or raise the option). */
  tooWide: boolean;
  /** Visible data tiles not loaded yet (being fetched). */
  missingTiles: TileString[];
}

/** A failed batch request, given to `onError` listeners and `whenComplete()` rejections. */
export interface FetchError extends Error {
  code: FetchErrorCode;
  /** The HTTP status, for `ERR_HTTP`. */
  status?: number;
  /** Foreground requests load the visible tiles; prefetch ones load what may come next. */
  kind: RequestKind;
  /** The request is tried again after a backoff. */
  willRetry: boolean;
  /** From a `Retry-After` header: its seconds, or the time from the cache's clock (the
   * `now` option) to its HTTP date (0 when that has passed). */
  retryAfterMs?: number;
  /** The `error.code` of the server's error body, when it sent one. */
  serverCode?: string;
  /** The ids the answer left out, for an error about a partial answer (its `get()`s
   * reject with this error). */
  ids?: string[];
}

/** One tile's answer from {@link TileCache.loadTiles}: its items, or why it has none. */
export type TileLoad<Data = unknown> =
  | { tile: string; items: Item<Data>[]; error?: undefined }
  | {
      tile: string;
      items?: undefined;
      /** The {@link FetchError} of the request that gave up on it (or of an answer that left
       * it out, or whose items the cache could not keep: more than `maxItems`/`maxBytes`, or
       * items of more than 512 distinct classes at once),
       * or a `RangeError` (`ERR_TOO_MANY_TILES`) for a tile that covers more than
       * `maxVisibleTiles` data tiles. */
      error: FetchError | TilewarmError;
    };

/** What {@link TileCache.invalidate} drops. */
export interface Invalidation {
  ids?: string[];
  /** Tiles `z/x/y` at any zoom: a coarse one covers every data tile inside it. */
  tiles?: string[];
  /** Every item of these classes. */
  classes?: string[];
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
  /** The `tileSize` option: the units of the viewport's zoom (adapters read it). */
  readonly tileSize: 256 | 512;
  /** The tier the cache views as: the `access` option, then `setAccess`'s, or the lower one
   * a server reported (see {@link TileCache.onAccess}). */
  readonly access: Access;
  /** Checks the options and starts a cache. Rejects with a TypeError/RangeError on bad options. */
  static create<Data = unknown>(options: TileCacheOptions): Promise<TileCache<Data>>;
  /** The map moved: what the cache has for the view now (synchronously); the fetches for
   * missing tiles and the prefetch round start in the background. While the view reads
   * exactly as the last one (same tiles in view, nothing arrived, expired or was dropped:
   * most frames of a pan), the same `View` object is returned again, so `view === last`
   * (or `view.items === last.items`) tells a map that nothing changed. Treat it as
   * read-only. */
  setViewport(viewport: Viewport): View<Data>;
  /** Resolves when every visible tile can be shown; rejects with the {@link FetchError} of a
   * foreground request that gave up on one of the view's data tiles (one that cannot be
   * shown for want of it), and with a RangeError `ERR_TOO_MANY_TILES` while the view is
   * `tooWide` (nothing is fetched for it, so it never completes). While the view misses a
   * data tile refused as too large (a 413, held for a tile TTL), it rejects at once with
   * that error. Other failures leave it waiting: a `get()`'s, a `loadTiles` tile's outside
   * the view, a prefetch's, or one the cache will retry. */
  whenComplete(): Promise<void>;
  /** Calls `listener` when data for the view arrived (and after `invalidate`/`setAccess`,
   * and when the view's items turn stale or expire with the map at rest: they are
   * refetched); returns a function that unsubscribes. A hidden page (`document.visibilityState`
   * `'hidden'`: another tab in front, a minimised window) that waits for nothing makes no
   * requests at rest: the refreshes, prefetch and retries due wait until it is shown, or
   * until it asks (`whenComplete`, `get`, `loadTiles`, `setViewport`). A listener that
   * changes the view itself (`setAccess`, `invalidate`) has every listener hear the newer
   * view at once; the listeners after it do not hear the older one after that. */
  onUpdate(listener: (items: Item<Data>[], view: Omit<View<Data>, 'items'>) => void): () => void;
  /** Calls `listener(tiles)` when cached items changed, in the view or not: `tiles` names the
   * tiles they are in (data tiles, or the coarser or finer tiles an answer listed or
   * `invalidate` named), `null` when any tile may have (an `invalidate` by class or of
   * everything, a tier change, the data's extent changed, more than 1,024 tiles at once).
   * A change is an answer that added, replaced, moved or deleted items or changed a tile's
   * list (a refresh, a prefetch, a `loadTiles` or `get` answer), an `invalidate`, the
   * view's items turning stale or expiring, or what `loadTiles` read turning stale or
   * expiring (once per read: the cache wakes for it); items pushed out to make room are none
   * (an `invalidate` by id of one names the tile `loadTiles` read it in).
   * For hosts that draw tiles from `loadTiles` themselves (the map adapters): read again the
   * tiles over those named. Returns a function that unsubscribes. */
  onTilesChanged(listener: (tiles: TileString[] | null) => void): () => void;
  /** Calls `listener` when the tier the cache views as changed: `setAccess`, or an answer
   * (or a `403` naming the token's tier in `x-tilewarm-access`) reporting a lower tier than
   * asked (which the cache follows at once). It runs after what
   * the new tier may not see was dropped, and before the `onUpdate` listeners hear of it:
   * a host that holds items itself (tiles drawn from `loadTiles`) must drop them and load
   * again, since they may be above the new tier. The map adapters do. Returns a function
   * that unsubscribes. */
  onAccess(listener: (access: Access) => void): () => void;
  /** Calls `listener` once, when the cache is disposed (at once if it already was): for
   * what works beside the cache and must stop with it (`tilewarm/live`'s `follow`). Returns
   * a function that unsubscribes. */
  onDispose(listener: () => void): () => void;
  /** Calls `listener` for every failed request attempt; returns a function that unsubscribes. */
  onError(listener: (error: FetchError) => void): () => void;
  /** One item by id, from the cache or fetched by id; `undefined` if it does not exist or
   * the tier may not see it. An answer never pushes out the view's items (nor those of
   * tiles `loadTiles` waits for): when they fill the cache, the item is handed out without
   * being kept. Rejects with the {@link FetchError} if the fetch gave up, and
   * with a RangeError (`ERR_OUT_OF_RANGE`) for an id no item can have (empty, longer than
   * 256 bytes, or holding a control character), with nothing sent. */
  get(id: string): Promise<Item<Data> | undefined>;
  /** Items by id, in order, fetching the unknown ones together; ids as `get` takes them
   * (one it refuses rejects the call, and nothing is sent). What it hands out is what the
   * tier the cache views as when it resolves may see: an item found at once is `undefined`
   * if `setAccess` (or a lower tier an answer reported) lowered the tier meanwhile. */
  getMany(ids: string[]): Promise<(Item<Data> | undefined)[]>;
  /** Drops items, tiles or everything; returns how many entries went, and `onUpdate`
   * listeners hear of it at once. Visible tiles that emptied are fetched again: at once, or
   * in a hidden page that waits for nothing when it is shown again (or asks, as above). */
  invalidate(what: Invalidation): number;
  /**
   * Limits the planner's prefetch to where earlier sessions looked: only these tiles (data
   * tiles, or coarser ones standing for every data tile under them) are fetched ahead (a
   * coarse tile asked for because half its block is queued still brings the rest of the
   * block; `prefetch` destinations and `loadTiles` are not limited; `[]` stops the
   * planner's prefetch); the view is fetched wherever it is. `null` lifts the limit (the
   * default). The next `setViewport` plans with it. Where a map's users look at the same
   * places it cuts what prefetch fetches and nobody sees; where interest is spread evenly
   * it costs complete views and foreground requests (docs/BENCHMARKS.md, "Where earlier
   * sessions looked"). `tilewarm-sim popular` makes
   * the list from logged viewports. Throws as `tileStates` does for a bad tile, and a
   * RangeError (`ERR_INVALID_TILE`) for one finer than `tileZoom`, with the limit unchanged.
   */
  setPopularTiles(tiles: TileString[] | string[] | null): void;
  /** The state of each tile, in order (a tile not at `tileZoom` is never `loaded` or
   * `prefetched`). Throws a TypeError (`ERR_INVALID_TILE`) for a string that is not a tile
   * `z/x/y`, a RangeError (`ERR_INVALID_TILE`) for one that names no tile (`1/5/5`), the bad
   * one named by its index (`tiles[1]: ...`), as `loadTiles`, `prefetch` and `invalidate` do. */
  tileStates(tiles: TileString[] | string[]): TileState[];
  /**
   * Items per tile, for hosts that tile their layers themselves (deck.gl `TileLayer`,
   * OpenLayers' tile strategy, Leaflet `GridLayer`). Tiles are the host's `"z/x/y"` at any
   * zoom: a tile finer than `tileZoom` gets the items inside it, a coarser one those of its
   * data tiles (at most `maxVisibleTiles`). Tiles whose data tiles can be shown are
   * answered without a request (stale items flagged, and refetched meanwhile); calls made
   * in the same tick are read together, so N one-tile calls need ceil(N / `batch.maxTiles`)
   * requests. What is waited for stays
   * queued across `setViewport` until the call settles, and the data tiles it waits for are
   * kept in the cache meanwhile as the view's are (one dropped before the call read it, by
   * `invalidate` or expiry, is asked for again).
   *
   * Resolves with one {@link TileLoad} per tile, in order; a tile whose request gave up
   * has an `error`, the others still load; so has a tile whose data tiles do not fit in the
   * cache with the view and the other tiles waited for (`maxItems`, `maxBytes`: an answer
   * pushed one out before it could be read), rather than being fetched again in a loop.
   * Each tile's items are those the tier the cache views as when the call resolves may see
   * (a tile read before a downgrade that came while others were fetched loses what is
   * above it). Rejects with `signal.reason` when the signal
   * aborts (the tiles no other call waits for are no longer queued).
   * @throws {TilewarmError} for a tile string that is not `z/x/y` or a bad `signal`
   */
  loadTiles(tiles: string[], options?: { signal?: AbortSignal }): Promise<TileLoad<Data>[]>;
  /**
   * Fetches a known destination ahead (a `flyTo`, a route, a search result): a viewport,
   * as `setViewport` takes it, or tiles `"z/x/y"`. Queued behind the planner's prefetch
   * and kept across viewports until fetched (the last 4096 data tiles given, older ones
   * dropped first). Returns how many data tiles are not fresh, each counted once.
   * @throws {TilewarmError} `ERR_TOO_MANY_TILES` for a viewport, or one of the tiles, that
   * covers more than `maxVisibleTiles` data tiles
   */
  prefetch(destination: Viewport | string[]): number;
  /** Changes the tier the cache views as; lowering it drops what the new tier may not see at
   * once; raising it is how the page asks for more. Once the server has reported a lower
   * tier than asked (the credential gives no more, in an answer or a 403), a tier above that
   * one throws a RangeError (`ERR_OUT_OF_RANGE`): a page that set its old tier again at every
   * update would be refused and lowered round trip after round trip. After a sign-in (or
   * anything that changes the credential `auth.token()` or the cookies carry), pass
   * `{ newCredential: true }`: the tier reported for the old credential is forgotten, the
   * cache asks at `access`, and keeps what it holds (a lower tier's items stay valid). If the
   * new credential gives less, its first answer lowers the cache again, as any answer does.
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` for options other than `{ newCredential?: boolean }`,
   * `ERR_INVALID_ARG_VALUE` for an option of another name (a misspelt `newCredential`) */
  setAccess(access: Access, options?: { newCredential?: boolean }): void;
  stats(): TileCacheStats;
  /** Aborts every request, stops timers, rejects pending promises, frees the wasm memory. */
  dispose(): void;
}
