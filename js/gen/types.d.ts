// Generated from src/wasm/boundary.rs and src/client/options.rs by `make gen`: do not
// edit. `cargo test --features wasm` fails when this file is stale.
// The public types built from the boundary's tables; index.d.ts re-exports them.

/**
 * The `code` of every error thrown for a bad argument, option or call: a `TypeError` or
 * `RangeError` (an `Error` for `ERR_DISPOSED`).
 */
export type TilewarmErrorCode =
  /**
   * An argument or option of the wrong JavaScript type (a string where a number belongs,
   * `undefined`, ...). TypeError.
   */
  | 'ERR_INVALID_ARG_TYPE'
  /** A number that is not an integer, not finite, or outside its range. RangeError. */
  | 'ERR_OUT_OF_RANGE'
  /** A string that is not a tile `z/x/y` (TypeError) or names no tile (RangeError). */
  | 'ERR_INVALID_TILE'
  /**
   * More tiles than one call may cover: a bbox of more than 4096 tiles (a viewport over
   * `maxVisibleTiles` data tiles is not an error but `tooWide`). RangeError.
   */
  | 'ERR_TOO_MANY_TILES'
  /**
   * A value of the right type that is not one of the allowed ones (an access tier, an option
   * name, an endpoint that is not an absolute URL). TypeError.
   */
  | 'ERR_INVALID_ARG_VALUE'
  /** A `TileCache` used after `dispose()`. Error. */
  | 'ERR_DISPOSED'
  ;

/** The `code` of a failed batch request (`FetchError`). */
export type FetchErrorCode =
  /** No answer within `batch.timeoutMs`. */
  | 'ERR_TIMEOUT'
  /** The connection failed or the body could not be read. */
  | 'ERR_NETWORK'
  /** The server answered with an HTTP error status (see `status`). */
  | 'ERR_HTTP'
  /**
   * The answer is not JSON, has the wrong shape or values, is larger than the body limit, or
   * leaves out a requested tile.
   */
  | 'ERR_INVALID_RESPONSE'
  /**
   * The server refused the credential (HTTP 401) even after `auth.token()` was asked for a
   * fresh token once; retried with backoff.
   */
  | 'ERR_UNAUTHORIZED'
  ;

/** Which requests a `FetchError` came from. */
export type RequestKind =
  /** Loads the visible tiles. */
  | 'foreground'
  /** Loads what may come into view next. */
  | 'prefetch'
  ;

/** The state of a data tile (`TileCache.tileStates`). */
export type TileState =
  /** Showable, fetched for the view (or already shown). */
  | 'loaded'
  /** Showable, fetched ahead by prefetch and not shown yet. */
  | 'prefetched'
  /** A request for it is out. */
  | 'inFlight'
  /** Not showable and not being fetched. */
  | 'missing'
  ;

/** An access tier, lowest first. A tier sees items of its own tier and below. */
export type Access = 'public' | 'registered' | 'verified' | 'agent';

/** Counters since the cache was created (`TileCache.stats`). */
export interface TileCacheStats {
  /** Item lookups that found a fresh item. */
  hits: number;
  /** Item lookups that found nothing showable. */
  misses: number;
  /** Item lookups that found a stale item (within `ttl.staleWhileRevalidate`). */
  staleHits: number;
  /** (hits + staleHits) / lookups; 0 before any lookup. */
  hitRate: number;
  /** Batch requests sent, retries included. */
  requests: number;
  /** Those sent for prefetch. */
  prefetchRequests: number;
  /** Items received. */
  itemsFetched: number;
  /** Prefetched tiles later shown. */
  prefetchTilesUsed: number;
  /** Prefetched tiles that expired or were fetched again unseen. */
  prefetchTilesWasted: number;
  /** Items evicted for capacity. */
  evictions: number;
  /** Items held now. */
  entries: number;
  /** Bytes held now (each item: its id, class and `data` as JSON, plus 96). */
  bytes: number;
  /** Requests out now. */
  inFlight: number;
  /**
   * Errors `onError` heard: failed request attempts, and reports of ids a partial answer left
   * out.
   */
  errors: number;
  /** The prefetch circuit breaker is open: prefetch is paused, foreground still goes out. */
  breakerOpen: boolean;
}

/** Options of `TileCache.create`. Only `endpoint` is required. */
export interface TileCacheOptions {
  /** Absolute URL of the batch endpoint (POST, JSON). */
  endpoint: string;
  /** Zoom of the data tiles: an integer in 0..=24. Default 14. */
  tileZoom?: number;
  /**
   * The map's tile size in pixels, which sets the units of the viewport's `zoom` and of
   * `minZoom`: 256 or 512 (256: Leaflet, OpenLayers; 512: MapLibre and deck.gl, whose zoom is
   * then passed as it is). Default 256.
   */
  tileSize?: 256 | 512;
  /**
   * Below this map zoom nothing is fetched (unless `prefetch.warmBelowMinZoom` is set): a
   * number in 0..=30, in the units `tileSize` sets. Default 12.
   */
  minZoom?: number;
  /**
   * Most data tiles a view may cover: an integer in 1..=4096. A wider view is `tooWide`:
   * nothing is fetched for it and the cached items in it are still returned. Default 1024.
   */
  maxVisibleTiles?: number;
  bounds?: {
    /**
     * The data's extent, like a map source's `bounds`: a data tile entirely outside it holds no
     * items, so it is never asked for and a view over it is complete. West edge: a number in
     * -180..=180 (west above east crosses the antimeridian). The default, the whole world,
     * leaves every tile to the backend, and takes the extent a server declares with its answers
     * (`x-tilewarm-bounds`, its `--bounds`). Default -180.
     */
    west?: number;
    /**
     * South edge of the data's extent: a number in -90..=90, not above `bounds.north`. Default
     * -90.
     */
    south?: number;
    /** East edge of the data's extent: a number in -180..=180. Default 180. */
    east?: number;
    /** North edge of the data's extent: a number in -90..=90. Default 90. */
    north?: number;
  };
  /**
   * Most items held: an integer in 1..=10000000. Prefetch stays within it and `maxBytes`: a
   * round asks for no more tiles than the cache can hold beside the view, at the items per tile
   * the answers have shown. Default 50000.
   */
  maxItems?: number;
  /**
   * Most bytes held; each item is charged its id, class and `data` as JSON, plus 96: an integer
   * in 1..=2147483647. Default 33554432.
   */
  maxBytes?: number;
  ttl?: {
    /**
     * Seconds an item is fresh when neither the response nor its class says: an integer number
     * of seconds in 1..=2592000. Default 300.
     */
    default?: number;
    /**
     * Seconds an item is fresh, per item class, each an integer number of seconds in
     * 1..=2592000; replaces the default table. Default `{ active: 300, off_market: 14400 }`.
     */
    byClass?: Record<string, number>;
    /**
     * Seconds after expiry an item may still be shown, flagged `stale`, while it is refetched:
     * an integer number of seconds in 0..=2592000. Default 0.
     */
    staleWhileRevalidate?: number;
  };
  prefetch?: {
    /** Ring of neighbour tiles fetched around the view: an integer in 0..=8. Default 1. */
    ring?: number;
    /**
     * How far ahead motion is extrapolated, in ms: an integer in 0..=60000 (0 = off, e.g. 1500
     * on). Off by default: the view's neighbourhood (`prefetch.viewRing`) already holds where a
     * pan of up to a view lands, and on the simulator's traces the look-ahead cost more
     * requests for no more complete views; turn it on where users move further between pauses.
     * Default 0.
     */
    lookaheadMs?: number;
    /** Prefetch tiles per round, at least: an integer in 0..=4096. Default 32. */
    maxTilesPerRound?: number;
    /**
     * Neighbourhood of the view, in view sizes (1 = the 8 neighbouring views): a number in
     * 0..=4 (0 = off). Default 1.
     */
    viewRing?: number;
    /**
     * The per-round budget grows to this many prefetch tiles per visible tile: a number in
     * 0..=64. Default 8.
     */
    budgetPerVisible?: number;
    /**
     * A view at most this many zoom levels below `minZoom` that is not zooming out prefetches
     * the data tiles under it, centre first (the next step there is a zoom in): a number in
     * 0..=4 (0 = off). Off by default: over dense data a user resting just below `minZoom`
     * prefetches up to thousands of data tiles that may never be looked at. Where sessions
     * start just below `minZoom` it makes nearly every later view ready for more requests
     * (docs/BENCHMARKS.md measures 1). Default 0.
     */
    warmBelowMinZoom?: number;
  };
  batch?: {
    /**
     * Tiles per request: an integer in 1..=64 (the protocol's limit per request). Default 16.
     */
    maxTiles?: number;
    /**
     * Ids per request: an integer in 1..=1000 (the protocol's limit per request). Default 200.
     */
    maxIds?: number;
    /**
     * Requests out at once: an integer in 1..=64; prefetch never takes the last slot. Default
     * 4.
     */
    maxInFlight?: number;
    /** Time a request may take, in ms: an integer in 1..=600000. Default 3000. */
    timeoutMs?: number;
    /**
     * Retries after the first attempt: an integer in 0..=10, with exponential backoff and
     * jitter; `Retry-After` is honoured. Default 2.
     */
    retries?: number;
    /**
     * Ask for a tile up to this many zooms coarser when its data tiles are missing
     * (`batch.coalesceMinShare`): an integer in 0..=4 (0 = off); the server must accept that
     * zoom (a tilewarm server's default `--split-levels` is 3; in front of one older than
     * 2026-12-06, whose default was 2, set 2). Prefetch areas are widened to whole tiles of
     * that zoom, or of 2 zooms up when it is coarser, so they go out as coarse tiles. A server
     * that refuses a request of coarse tiles (and no ids) with a 400 (it allows fewer data
     * tiles a request than they cover) is asked one zoom finer at once, and no coarser for a
     * tile TTL (then this level again). Default 3.
     */
    coalesceLevels?: number;
    /**
     * Percent of a coarse tile's data tiles that must be queued for it to be asked for: an
     * integer in 1..=100 (100 = all). Below 100 its answer brings the block's other data tiles
     * too, and it is asked for only when none of them is cached, in flight or backing off:
     * fewer requests for at most those tiles' items. Default 50.
     */
    coalesceMinShare?: number;
  };
  /**
   * The caller's tier: one of "public", "registered", "verified", "agent". Default `'public'`.
   */
  access?: Access;
  /** Extra request headers (e.g. `Authorization`). Default `{}`. */
  headers?: Record<string, string> | Headers;
  /**
   * Bearer-token credentials: `token()` is called for every request (so tokens refresh) and
   * sent as `Authorization: Bearer <token>`; after a 401 it is called once more and the request
   * retried, then the failure goes to `onError` as `ERR_UNAUTHORIZED` and is retried with
   * backoff. The token never appears in errors or logs. Default `none`.
   */
  auth?: { token: () => string | Promise<string> };
  /** The fetch to use (tests, auth wrappers). Default `globalThis.fetch`. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  /**
   * The clock, in ms (TTLs and backoff use it). A clock that steps back (NTP, a user fixing it)
   * counts as no time passing: no wait or TTL lasts longer for it (but for the time between the
   * calls either side of the step). A number no clock gives (NaN, Infinity, negative) counts as
   * the last good one. Default `Date.now`.
   */
  now?: () => number;
}

