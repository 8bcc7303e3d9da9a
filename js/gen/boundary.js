// Generated from src/wasm/boundary.rs and src/client/options.rs by `make gen`: do not
// edit. `cargo test --features wasm` fails when this file is stale.
// The JS half of src/wasm/: what js/cache.js needs to read the engine's records and
// to name what the wasm hands out as numbers.

// Record tags of the engine's output lists, each with its record's layout (numbers |
// references).
/**
 * `id, kind, attempt, timeoutMs, tiles, ids, tiles... | access, ids...`: a request to send (a
 * `Transmit` from `Client::poll_request`).
 */
export const TRANSMIT = 1;
/** `id`: abort this request; its answer is no longer wanted. */
export const CANCEL = 2;
/** Data for the view arrived: read the view again. */
export const UPDATED = 3;
/** Every visible tile can be shown. */
export const COMPLETE = 4;
/**
 * `id, kind, willRetry, viewIncomplete, failure, status, retryAfterMs, tiles, tiles... |
 * message`: a request failed (`retryAfterMs` -1 for none), for these data tiles (all of its
 * tiles, or those an answer left out or that could not be kept); `viewIncomplete` 1 when one of
 * the view's tiles cannot be shown for want of it (`FetchError::view_incomplete`).
 */
export const ERROR = 5;
/** `at`: the clock time at which to call `tick`. */
export const WAKEUP = 6;
/**
 * `count, slots...`: items that left the cache; `cache.js` clears their slots in its table of
 * item objects, to reuse them for later answers (see `JsItem`).
 */
export const FREED = 7;
/**
 * `count, tiles...`: the tiles whose cached items changed (`Client::take_changed_tiles`);
 * `count` -1 (no tiles): any tile may have.
 */
export const CHANGED = 8;
// What `Engine.tiles` does with its tiles, each with what it hands back.
/** `tileStates`: per tile the code of its state (`TILE_STATES`); nothing else. */
export const TILES_STATES = 0;
/**
 * `loadTiles`: per tile `1, count, (flag, slot) per item` (the flag 1 when the item expired but
 * is within stale-while-revalidate, else 0; the slot of its object, as `JsItem` keeps it), `0,
 * count, data tiles...` (packed; queued as foreground work) or `2, count, max, minZ` (it covers
 * more data tiles than `maxVisibleTiles`).
 */
export const TILES_LOAD = 1;
/**
 * As `TILES_LOAD`, without making tiles loading: pending loads read again (their data tiles are
 * loading since their `TILES_LOAD`).
 */
export const TILES_READ = 2;
/**
 * `prefetch(tiles)`: header `queued`, or `-1, index, count, max, minZ` when tile `index` covers
 * more than `maxVisibleTiles` data tiles (nothing queued).
 */
export const TILES_PREFETCH = 3;
/**
 * Settled or aborted loads: these data tiles are no longer loading (queued while they cannot be
 * shown, kept from eviction) unless visible.
 */
export const TILES_RELEASE = 4;
/**
 * `setPopularTiles(tiles)`: the planner's prefetch asks only for these tiles and the data tiles
 * under them (`Client::set_popular_tiles`); nothing handed back.
 */
export const TILES_POPULAR = 5;
/** `setPopularTiles(null)`: prefetch is not limited (the tiles are ignored). */
export const TILES_POPULAR_OFF = 6;
/** Failure codes for `Engine.failure`; the `code` of the page's error is at that index. */
export const FAILED_TIMEOUT = 0;
export const FAILED_NETWORK = 1;
export const FAILED_HTTP = 2;
export const FAILED_INVALID = 3;
export const FAILED_UNAUTHORIZED = 4;
export const FAILURE_CODES = [
  'ERR_TIMEOUT', 'ERR_NETWORK', 'ERR_HTTP', 'ERR_INVALID_RESPONSE', 'ERR_UNAUTHORIZED',
];

/** The `code`s of thrown errors; an error record names one by its index in CODES. */
export const ERR_INVALID_ARG_TYPE = 'ERR_INVALID_ARG_TYPE';
export const ERR_OUT_OF_RANGE = 'ERR_OUT_OF_RANGE';
export const ERR_INVALID_TILE = 'ERR_INVALID_TILE';
export const ERR_TOO_MANY_TILES = 'ERR_TOO_MANY_TILES';
export const ERR_INVALID_ARG_VALUE = 'ERR_INVALID_ARG_VALUE';
export const ERR_DISPOSED = 'ERR_DISPOSED';
export const CODES = [
  ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE, ERR_INVALID_TILE, ERR_TOO_MANY_TILES,
  ERR_INVALID_ARG_VALUE, ERR_DISPOSED,
];
/**
 * The class of a thrown error, by its index in an error record: 0 The value has the wrong type
 * (or a string is not a tile): `TypeError`. 1 The value has the right type but is out of range:
 * `RangeError`.
 */
export const ERROR_CLASSES = [TypeError, RangeError];

/** Names of what crosses as a code: the code is the index. */
export const REQUEST_KINDS = ['foreground', 'prefetch'];
export const TILE_STATES = ['loaded', 'prefetched', 'inFlight', 'missing'];
export const TIERS = ['public', 'registered', 'verified', 'agent'];
/** Each protocol error code with its HTTP status (`ErrorCode::http_status`). */
export const ERROR_STATUSES = [
  ['bad_request', 400], ['unauthorized', 401], ['forbidden', 403], ['payload_too_large', 413],
  ['request_timeout', 408], ['unsupported_media_type', 415], ['method_not_allowed', 405],
  ['not_found', 404], ['rate_limited', 429], ['overloaded', 503], ['upstream_error', 502],
  ['upstream_timeout', 504], ['internal', 500], ['response_full', 413],
];
/** The `stats()` fields in the order `Engine.stats` hands their values over; FLAGS are booleans. */
export const STATS = [
  'hits', 'misses', 'staleHits', 'hitRate', 'requests', 'prefetchRequests', 'itemsFetched',
  'prefetchTilesUsed', 'prefetchTilesWasted', 'evictions', 'entries', 'bytes', 'inFlight',
  'errors', 'breakerOpen',
];
export const FLAGS = ['breakerOpen'];

/** The options: top-level names (groups at their first member's place), each group's
 * members, and the numeric options' paths in the order `new Engine` takes their values. */
export const OPTIONS = [
  'endpoint', 'tileZoom', 'tileSize', 'minZoom', 'maxVisibleTiles', 'bounds', 'maxItems',
  'maxBytes', 'ttl', 'prefetch', 'batch', 'access', 'headers', 'auth', 'fetch', 'now',
];
export const GROUPS = {
  bounds: ['west', 'south', 'east', 'north'],
  ttl: ['default', 'byClass', 'staleWhileRevalidate'],
  prefetch: ['ring', 'lookaheadMs', 'maxTilesPerRound', 'viewRing', 'budgetPerVisible', 'warmBelowMinZoom'],
  batch: ['maxTiles', 'maxIds', 'maxInFlight', 'timeoutMs', 'retries', 'coalesceLevels', 'coalesceMinShare'],
};
export const NUMBERS = [
  'tileZoom', 'minZoom', 'maxVisibleTiles', 'bounds.west', 'bounds.south', 'bounds.east',
  'bounds.north', 'maxItems', 'maxBytes', 'ttl.default', 'ttl.staleWhileRevalidate',
  'prefetch.ring', 'prefetch.lookaheadMs', 'prefetch.maxTilesPerRound', 'prefetch.viewRing',
  'prefetch.budgetPerVisible', 'prefetch.warmBelowMinZoom', 'batch.maxTiles', 'batch.maxIds',
  'batch.maxInFlight', 'batch.timeoutMs', 'batch.retries', 'batch.coalesceLevels',
  'batch.coalesceMinShare',
];

/** Largest response body read, in bytes (the protocol's `Limits::max_body_bytes`). */
export const MAX_BODY_BYTES = 8388608;
/** A packed tile id is z·TILE_Z + x·TILE_X + y (`TileId::to_u64`). */
export const TILE_Z = 281474976710656;
export const TILE_X = 16777216;
/** The response header declaring the data's extent (`protocol::BOUNDS_HEADER`). */
export const BOUNDS_HEADER = 'x-tilewarm-bounds';
/** The response header naming the caller's tier (`protocol::ACCESS_HEADER`): on a 403, the tier its credential gives. */
export const ACCESS_HEADER = 'x-tilewarm-access';
/** The deepest zoom and the Mercator limit of latitude (`tile::MAX_ZOOM`, `tile::MAX_LATITUDE`). */
export const MAX_ZOOM = 24;
export const MAX_LATITUDE = 85.0511287798066;
