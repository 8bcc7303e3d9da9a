// TileCache: the JS shell around the wasm Engine (src/wasm/engine.rs), which is the
// sans-IO core. The engine decides what to fetch, when to retry, what to abort and what the
// view holds; this file owns fetch, AbortControllers, the one wake-up timer, listeners and
// promises, and it builds request bodies, flattens responses and writes the values into
// error messages, so no JSON and no number formatting runs in wasm. `thrown` (the errors
// the wasm describes) and `tileName` also serve the tile functions in api.js.
import { Engine, takeFreed } from './tilewarm.js';
// Tags, codes, names and option lists, generated from the Rust (src/wasm/boundary.rs,
// src/wasm/options.rs), so they are the engine's.
import {
  TRANSMIT, CANCEL, UPDATED, COMPLETE, ERROR, WAKEUP, FREED, CHANGED, TILES_STATES, TILES_LOAD, TILES_READ,
  TILES_PREFETCH, TILES_RELEASE, TILES_POPULAR, TILES_POPULAR_OFF, FAILED_TIMEOUT, FAILED_NETWORK, FAILED_HTTP,
  FAILED_INVALID, FAILED_UNAUTHORIZED, FAILURE_CODES, CODES, ERROR_CLASSES, ERR_INVALID_ARG_TYPE,
  ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE, ERR_DISPOSED, ERR_TOO_MANY_TILES, REQUEST_KINDS, TILE_STATES, TIERS,
  STATS, FLAGS, OPTIONS, GROUPS, NUMBERS, MAX_BODY_BYTES, TILE_Z, TILE_X, BOUNDS_HEADER, ACCESS_HEADER,
  ERROR_STATUSES,
} from './gen/boundary.js';
import { retryAfterMs } from './retry-after.js';
import { report } from './report.js';

// For the tile functions' JavaScript half (api.js), which is not bundled with gen/.
export { MAX_LATITUDE, MAX_ZOOM } from './gen/boundary.js';

const TIMED_OUT = Symbol('timed out');

// The HTTP status a server answers each code with (ErrorCode::http_status): what a partial
// answer left out with that code failed as that status would have (the engine reads the
// code back from it); for an id with an unknown code, 502.
const PARTIAL_STATUS = new Map(ERROR_STATUSES);

// The item objects the caches of this wasm instance hold, by slot: the engine keeps an
// item's slot, not the object, so items cross as numbers (src/wasm/engine.rs, `JsItem`).
// A slot is filled before an answer goes to the engine and cleared when a FREED record
// (or `takeFreed`, after an engine is freed) gives it back; `FREE` lists the empty ones.
const OBJS = [], FREE = [];

/** Puts an item object in an empty slot; returns the slot. */
function hold(obj) {
  const slot = FREE.length ? FREE.pop() : OBJS.length;
  OBJS[slot] = obj;
  return slot;
}

/** Empties the slots the engine gave back. */
function release(slots) {
  for (const slot of slots) {
    OBJS[slot] = undefined;
    FREE.push(slot);
  }
}

/** Frees the engine of a cache the page let go of without `dispose()`, and its slots (the
 * glue's own finalizer would free the engine but leave its objects in `OBJS`). */
const ABANDONED = typeof FinalizationRegistry === 'function'
  ? new FinalizationRegistry((engine) => { engine.free(); release(takeFreed()); })
  : { register() {}, unregister() {} };
const CREATE = Symbol('create');
/** A reference that lets `o` be collected, where the runtime has `WeakRef`. */
const weakly = typeof WeakRef === 'function' ? (o) => new WeakRef(o) : (o) => ({ deref: () => o });

/** The page's document when it can say whether the page is seen (none in Node or a worker). */
const seenDocument = () => (typeof document === 'object' && document !== null && 'visibilityState' in document ? document : null);

/** A value the way an error message shows it. */
function show(v) {
  switch (typeof v) {
    case 'number': return Object.is(v, -0) ? '-0' : String(v);
    case 'string': return v.length > 40 ? `${JSON.stringify(v.slice(0, 40))}… (a string of ${v.length} characters)` : JSON.stringify(v);
    case 'undefined': case 'boolean': return String(v);
    case 'bigint': return 'a bigint';
    case 'symbol': return 'a symbol';
    case 'function': return 'a function';
    default: return v === null ? 'null' : Array.isArray(v) ? 'an array' : 'an object';
  }
}

function argError(Class, code, message) {
  const e = new Class(message);
  e.code = code;
  return e;
}

/** The error for a record `[class, code, ...parts]` from the wasm (ERROR_CLASSES and CODES
 * by index): the message is the parts joined, each odd part (an argument's name or option
 * path) replaced by `show(lookup(part))`, the value the caller passed. Anything else is
 * returned as it is. */
export function thrown(e, lookup) {
  if (!Array.isArray(e)) return e;
  const [kind, code, ...parts] = e;
  const message = parts.map((p, i) => (i % 2 ? show(lookup(p)) : p)).join('');
  return argError(ERROR_CLASSES[kind], CODES[code], message);
}

/** A packed tile id as [z, x, y]. */
const unpack = (id) => [Math.floor(id / TILE_Z), Math.floor(id / TILE_X) % TILE_X, id % TILE_X];

/** Whether tile `a` ([z, x, y]) is `b` or contains it, or lies inside it. */
function covers(a, b) {
  const [outer, inner] = a[0] <= b[0] ? [a, b] : [b, a];
  const d = inner[0] - outer[0];
  return Math.floor(inner[1] / 2 ** d) === outer[1] && Math.floor(inner[2] / 2 ** d) === outer[2];
}

/** A packed tile id (z·TILE_Z + x·TILE_X + y, as the wasm hands tiles out) as "z/x/y". */
export const tileName = (id) => `${Math.floor(id / TILE_Z)}/${Math.floor(id / TILE_X) % TILE_X}/${id % TILE_X}`;

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

function byPath(obj, path) {
  let v = obj;
  for (const k of path.split('.')) v = isObject(v) ? v[k] : undefined;
  return v;
}

function checkKeys(obj, allowed, prefix) {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      throw argError(TypeError, ERR_INVALID_ARG_VALUE,
        `${prefix}${k} is not an option; the options are ${allowed.map((a) => prefix + a).join(', ')}`);
    }
  }
}

function checkGroup(options, name) {
  const g = options[name];
  if (g === undefined) return;
  if (!isObject(g)) throw argError(TypeError, ERR_INVALID_ARG_TYPE, `${name} must be an object, got ${show(g)}`);
  checkKeys(g, GROUPS[name], `${name}.`);
}

function checkStrings(name, v) {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    throw argError(TypeError, ERR_INVALID_ARG_TYPE, `${name} must be an array of strings, got ${show(v)}`);
  }
  return v;
}

/** An invalid response: the message says what is wrong. */
class Invalid extends Error {}
/** `auth.token()` failed or gave no usable token (its message never holds the token). */
class TokenError extends Error {}

/** What a bearer token may consist of (RFC 6750's b64token): no spaces, no line breaks. */
const TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

function optTtl(v, where) {
  if (v === undefined || v === null) return -1;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  throw new Invalid(`${where}.ttl must be a whole number of seconds, got ${show(v)}`);
}

/** The members every item must have, with their JavaScript types, in the order checked. */
const ITEM_TYPES = [['id', 'string'], ['lon', 'number'], ['lat', 'number'], ['class', 'string'], ['access', 'string']];

/** Why `items[j]` is not an item: not an object, or the first member of the wrong type,
 * named (the engine checks the values). */
function badItem(it, j) {
  if (!isObject(it)) return new Invalid(`items[${j}] must be an object {id, lon, lat, class, access, ttl?, data}, got ${show(it)}`);
  const [name, type] = ITEM_TYPES.find(([name, type]) => typeof it[name] !== type);
  return new Invalid(`items[${j}].${name} must be a ${type}, got ${show(it[name])}`);
}

function list(v, name) {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new Invalid(`${name} must be an array, got ${show(v)}`);
  return v;
}

/** A decimal number, as the core's `parse_bounds` reads one (no hex, no empty field). */
const DECIMAL = /^\s*[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?\s*$/i;

/** The data's extent a server declares in its `BOUNDS_HEADER` (`west,south,east,north`) as
 * four numbers; four NaN when it declares none or they are not four decimal numbers. The
 * engine takes an extent out of range as none too: each answer decides. */
function declaredBounds(header) {
  const parts = header ? header.split(',') : [];
  return parts.length === 4 && parts.every((p) => DECIMAL.test(p)) ? parts.map(Number) : [NaN, NaN, NaN, NaN];
}

/** The parsed response as the three lists `Engine.response` takes (see there), with the
 * item objects the page gets, and the ids of the items and of the missing ones. Only shapes
 * are checked here; the engine checks values. Each item is charged the length of its own
 * `data` as JSON, so one large item cannot hide behind the answer's average. `bounds` is
 * the extent the answer's headers declare ([`declaredBounds`]). */
function flatten(body, bounds) {
  if (!isObject(body)) throw new Invalid(`the body must be a JSON object, got ${show(body)}`);
  const tl = list(body.tiles, 'tiles'), il = list(body.items, 'items'), missing = list(body.missing, 'missing');
  const n = il.length;
  // The tier the server filtered for: -1 when it does not say, 255 for an unknown name (the
  // engine refuses it).
  const reported = body.access === undefined || body.access === null ? -1
    : typeof body.access === 'string' && TIERS.includes(body.access) ? TIERS.indexOf(body.access) : 255;
  // Why a partial answer leaves something out (the engine decides what follows): 1, it did
  // not fit (asked again); else its code's status (what it left out failed as that status
  // would have: 503, 502 retried, 413 not); 0, none or an unknown code.
  const why = body.error?.code;
  const nums = [tl.length, n, reported, ...bounds, why === 'response_full' ? 1 : PARTIAL_STATUS.get(why) ?? 0], strs = [];
  const ids = new Array(n), objs = new Array(n);
  // One string per class name in the answer, and the tier's own name: JSON.parse may give
  // each item its own copy of the same value (Chromium's does for "off_market"), and the
  // item objects keep them as long as they are cached (issue 22: bench/js/memory-browser.mjs).
  const classes = new Map();
  tl.forEach((t, i) => {
    if (!isObject(t)) throw new Invalid(`tiles[${i}] must be an object {tile, ids, ttl?}, got ${show(t)}`);
    if (typeof t.tile !== 'string') throw new Invalid(`tiles[${i}].tile must be a string, got ${show(t.tile)}`);
    if (!Array.isArray(t.ids)) throw new Invalid(`tiles[${i}].ids must be an array of ids, got ${show(t.ids)}`);
    strs.push(t.tile);
    for (const id of t.ids) {
      if (typeof id !== 'string') throw new Invalid(`tiles[${i}].ids must hold strings, got ${show(id)}`);
      strs.push(id);
    }
    nums.push(optTtl(t.ttl, `tiles[${i}]`), t.ids.length);
  });
  il.forEach((it, j) => {
    if (!isObject(it) || typeof it.id !== 'string' || typeof it.lon !== 'number' ||
        typeof it.lat !== 'number' || typeof it.class !== 'string' || typeof it.access !== 'string') {
      throw badItem(it, j);
    }
    // An unknown tier is -1, which the engine refuses (an own-property lookup in an object
    // would find `toString` and the like).
    const tier = TIERS.indexOf(it.access);
    nums.push(it.lon, it.lat, optTtl(it.ttl, `items[${j}]`), tier, JSON.stringify(it.data)?.length ?? 0);
    strs.push(it.id, it.class);
    ids[j] = it.id;
    let cls = classes.get(it.class);
    if (cls === undefined) classes.set(it.class, cls = it.class);
    objs[j] = { id: it.id, lon: it.lon, lat: it.lat, class: cls, access: tier >= 0 ? TIERS[tier] : it.access, data: it.data, stale: false };
  });
  for (const id of missing) {
    if (typeof id !== 'string') throw new Invalid(`missing must hold strings, got ${show(id)}`);
    strs.push(id);
  }
  return { nums, strs, objs, ids, missing, error: body.error };
}

/** The body as text, read in chunks and given up (the stream cancelled) once it passes
 * MAX_BODY_BYTES, so a hostile or broken backend cannot make the page buffer without end. */
async function readBody(res) {
  const reader = res.body?.getReader?.();
  if (!reader) {
    const text = await res.text();
    if (text.length > MAX_BODY_BYTES) throw new Invalid(`the body is larger than ${MAX_BODY_BYTES} bytes`);
    return text;
  }
  const decoder = new TextDecoder();
  let text = '', size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return text + decoder.decode();
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      reader.cancel().catch(() => {});
      throw new Invalid(`the body is larger than ${MAX_BODY_BYTES} bytes`);
    }
    text += decoder.decode(value, { stream: true });
  }
}

function disposedError() {
  return argError(Error, ERR_DISPOSED, 'this TileCache was disposed');
}

/** whenComplete()'s answer while the view is too wide to fetch: it would never complete. */
function tooWideError(max) {
  return argError(RangeError, ERR_TOO_MANY_TILES, `the view covers more than maxVisibleTiles (${max}) data tiles (tooWide): nothing is fetched for it, so it never completes`);
}

/**
 * The tile-aware cache for one batch endpoint. Create with `await TileCache.create(options)`.
 * Types and docs: index.d.ts.
 */
export class TileCache {
  #engine; #fetch; #now; #endpoint; #headers; #timeoutMs; #tileSize; #auth;
  /** request id -> { ctrl, timer, kind, ids, timeoutMs, detail } while it is out */
  #requests = new Map();
  #timer = null;
  /** The wake-up the timer is armed for, and whether it holds the cache (see #schedule). */
  #wakeAt = -1;
  #timerHolds = false;
  /** The visibilitychange listener of a wake-up put off while the page is hidden. */
  #onShown = null;
  #updates = new Set();
  #changes = new Set();
  #errors = new Set();
  /** The errors of ids partial answers left out (#unanswered): the shell tells onError of
   * them, not the engine, so stats() adds them to the engine's count. */
  #idErrors = 0;
  #accessListeners = new Set();
  #disposeListeners = new Set();
  /** The tier the cache views as, as last told to onAccess listeners. */
  #access;
  #waiters = [];
  #complete = true;
  /** The current view's maxVisibleTiles when it is too wide to fetch, else 0. */
  #tooWide = 0;
  /** "z/x/y" -> the 413 that refused the tile (the engine holds it for a tile TTL), until
   * the tile is asked for again, an invalidation or another tier: whenComplete() rejects
   * with it while the view misses the tile. */
  #refused = new Map();
  /** id -> [{ resolve, reject }] for get/getMany */
  #gets = new Map();
  #disposed = false;
  /** loadTiles calls of this tick, read by one engine call in a microtask */
  #queuedLoads = [];
  /** loadTiles calls waiting for data tiles: { tiles, results, waiting: Map<index, packed[]>, ... } */
  #pendingLoads = new Set();
  /** Data tiles (packed) of loads settled since the last release, per load and tile (not
   * spread into one array: a call's tiles may cover more data tiles than a call takes
   * arguments): the engine keeps a load's data tiles (asked for while they cannot be shown,
   * protected from eviction) until they are released. */
  #settledTiles = [];
  /** The last view read ({items, complete, tooWide, missingTiles}), handed back as it is
   * while the engine says the view reads the same (`unchanged`). */
  #last;
  /** Counts the rounds of onUpdate listeners (see #refresh). */
  #rounds = 0;

  /** Checks the options and starts a cache; see index.d.ts for every option. */
  static async create(options) {
    return new TileCache(options, CREATE);
  }

  constructor(options, key) {
    if (key !== CREATE) throw new TypeError('use `await TileCache.create(options)`');
    if (!isObject(options)) throw argError(TypeError, ERR_INVALID_ARG_TYPE, `options must be an object, got ${show(options)}`);
    checkKeys(options, OPTIONS, '');
    for (const g of Object.keys(GROUPS)) checkGroup(options, g);
    const { endpoint, headers = {}, fetch = globalThis.fetch, now = Date.now } = options;
    let url;
    try { url = typeof endpoint === 'string' ? new URL(endpoint) : undefined; } catch { /* below */ }
    if (!url) {
      throw argError(TypeError, ERR_INVALID_ARG_VALUE, `endpoint must be an absolute URL string, got ${show(endpoint)}`);
    }
    if (!isObject(headers) && !(typeof Headers === 'function' && headers instanceof Headers)) {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `headers must be an object of header names and values, got ${show(headers)}`);
    }
    // Read before the engine is made: a bad name or value is an option error, and an engine
    // made before it would never be freed.
    let headerList;
    try { headerList = Object.fromEntries(new Headers(headers)); } catch (e) {
      throw argError(TypeError, ERR_INVALID_ARG_VALUE, `headers must hold valid HTTP header names and values: ${e.message}`);
    }
    if (typeof fetch !== 'function') throw argError(TypeError, ERR_INVALID_ARG_TYPE, `fetch must be a function, got ${show(fetch)}`);
    const { auth } = options;
    if (auth !== undefined && !(isObject(auth) && typeof auth.token === 'function')) {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `auth must be an object { token: () => string | Promise<string> }, got ${show(auth)}`);
    }
    if (typeof now !== 'function') throw argError(TypeError, ERR_INVALID_ARG_TYPE, `now must be a function returning milliseconds, got ${show(now)}`);
    const byClass = options.ttl?.byClass;
    if (byClass !== undefined && !isObject(byClass)) {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `ttl.byClass must be an object of class names and seconds, got ${show(byClass)}`);
    }
    const values = NUMBERS.map((p) => byPath(options, p));
    const classes = byClass ? Object.keys(byClass) : [];
    const seed = Math.floor(Math.random() * 2 ** 52);
    try {
      this.#engine = new Engine(values, byClass !== undefined, classes, classes.map((c) => byClass[c]), options.access, options.tileSize, seed);
    } catch (e) {
      throw thrown(e, (f) => f.startsWith('ttl.byClass.') ? byClass[f.slice(12)] : f === 'access' ? options.access : byPath(options, f));
    }
    this.#tileSize = options.tileSize ?? 256;
    this.#endpoint = url.href;
    this.#headers = { ...headerList, 'content-type': 'application/json' };
    this.#fetch = fetch;
    this.#now = now;
    this.#auth = auth;
    this.#access = TIERS[this.#engine.access()];
    ABANDONED.register(this, this.#engine, this);
  }

  /** The `tileSize` option (256 or 512): the units of the viewport's zoom. */
  get tileSize() {
    return this.#tileSize;
  }

  /** The tier the cache views as: the `access` option, then `setAccess`'s, or the lower
   * one the server reported. */
  get access() {
    return this.#access;
  }

  /** The map moved: what the cache has for it now, and the fetches it needs, started. */
  setViewport(viewport) {
    this.#alive();
    if (!isObject(viewport)) {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `viewport must be an object {west, south, east, north, zoom}, got ${show(viewport)}`);
    }
    const { west, south, east, north, zoom } = viewport;
    let out;
    try {
      out = this.#engine.view(west, south, east, north, zoom, this.#now());
    } catch (e) {
      throw thrown(e, (f) => viewport[f]);
    }
    const at = this.#view(out);
    this.#run(out, at.n, at.r);
    return this.#last;
  }

  /** Resolves when every visible tile can be shown; rejects with the error of a
   * foreground request that gave up. */
  whenComplete() {
    if (this.#disposed) return Promise.reject(disposedError());
    // A wake-up put off while the page is hidden is due now that the page asks.
    if (this.#onShown) this.#wake();
    if (this.#complete) return Promise.resolve();
    if (this.#tooWide) return Promise.reject(tooWideError(this.#tooWide));
    const refused = this.#last?.missingTiles.find((t) => this.#refused.has(t));
    if (refused) return Promise.reject(this.#refused.get(refused));
    const p = new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
    this.#rearm();
    return p;
  }

  /** Calls `listener(items, view)` when data for the view arrived, or its items turned
   * stale or expired; returns unsubscribe. */
  onUpdate(listener) {
    return this.#listen(this.#updates, listener, 'onUpdate');
  }

  /** Calls `listener(tiles)` when cached items changed: `tiles` names the tiles they are in
   * ("z/x/y"), `null` when any may have. Returns unsubscribe. */
  onTilesChanged(listener) {
    return this.#listen(this.#changes, listener, 'onTilesChanged');
  }

  /** Calls `listener(access)` when the tier the cache views as changed (`setAccess`, or a
   * lower tier the server reported), after what the new tier may not see was dropped and
   * before onUpdate listeners hear of it: hosts that hold items themselves (the map
   * adapters' tiles) drop theirs and load again. Returns unsubscribe. */
  onAccess(listener) {
    return this.#listen(this.#accessListeners, listener, 'onAccess');
  }

  /** Calls `listener()` once, when the cache is disposed (at once when it already was):
   * for what works beside the cache and must stop with it (tilewarm/live's follow).
   * Returns unsubscribe. */
  onDispose(listener) {
    const off = this.#listen(this.#disposeListeners, listener, 'onDispose');
    if (this.#disposed) {
      off();
      listener();
    }
    return off;
  }

  /** Calls `listener(error)` for every failed request; returns unsubscribe. */
  onError(listener) {
    return this.#listen(this.#errors, listener, 'onError');
  }

  /** One item by id: from the cache, else fetched through the batch endpoint (an answer the
   * cache cannot keep beside the view's items is handed out all the same);
   * `undefined` when it does not exist or the tier may not see it; rejects when it could
   * not be answered (the request failed, or the answer left it out). */
  async get(id) {
    if (typeof id !== 'string') throw argError(TypeError, ERR_INVALID_ARG_TYPE, `id must be a string, got ${show(id)}`);
    // A cached id in one engine call; anything else (a miss, '') takes getMany.
    if (id !== '' && !this.#disposed) {
      const slot = this.#engine.getCached(id, this.#now());
      if (slot >= 0) return OBJS[slot];
    }
    return (await this.#getMany([id], true))[0];
  }

  /** Items by id, in order; unknown ones are fetched in as few requests as possible. */
  getMany(ids) {
    return this.#getMany(ids);
  }

  /** `one`: for get(id), whose errors name `id`. */
  async #getMany(ids, one) {
    this.#alive();
    checkStrings('ids', ids);
    if (ids.some((id) => id === '')) throw argError(RangeError, ERR_OUT_OF_RANGE, one ? 'id must not be empty' : 'ids must not contain an empty string');
    let out;
    try {
      out = this.#engine.get(ids, this.#now());
    } catch (e) {
      const err = thrown(e, (f) => ids[Number(f.slice(4, -1))]);
      if (one) err.message = err.message.replace('ids[0]', 'id');
      throw err;
    }
    const slots = out[0];
    const results = ids.map((id, i) => slots[1 + i] >= 0 ? OBJS[slots[1 + i]] : new Promise((resolve, reject) => {
      const w = this.#gets.get(id) ?? [];
      w.push({ resolve, reject });
      this.#gets.set(id, w);
    }));
    this.#run(out, 1 + ids.length, 1);
    // An item found before a downgrade that ended the wait is not handed out after it.
    return Promise.all(results).then((items) => items.map((it) => it && this.#mayShow(it) ? it : undefined));
  }

  /** Drops cached items (`ids`), tiles (`tiles`, "z/x/y"), classes (`classes`) or
   * everything (`all`); returns how many entries went. Visible tiles that emptied are
   * fetched again: at once, or in a hidden page that awaits nothing when it is shown again
   * (a change feed's every event would pay for refetches nobody sees; the wake-up that is
   * then due now is put off, see #tick). */
  invalidate(what = {}) {
    this.#alive();
    if (!isObject(what)) throw argError(TypeError, ERR_INVALID_ARG_TYPE, `invalidate takes {ids, tiles, classes, all}, got ${show(what)}`);
    checkKeys(what, ['ids', 'tiles', 'classes', 'all'], '');
    const ids = checkStrings('ids', what.ids), tiles = checkStrings('tiles', what.tiles);
    const classes = checkStrings('classes', what.classes);
    if (what.all !== undefined && typeof what.all !== 'boolean') {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `all must be a boolean, got ${show(what.all)}`);
    }
    const plan = !this.#hiddenAtRest();
    let out;
    try {
      out = this.#engine.invalidate(ids, tiles, classes, what.all === true, this.#now(), plan);
    } catch (e) {
      throw thrown(e, () => tiles);
    }
    // A tile held as too large that this may have changed (the engine's rule: its tile, one
    // it is in or in it, a class, all; not ids) is no longer held: the next whenComplete()
    // waits for it. Another stays held, and refused.
    const at = (t) => t.split('/').map(Number);
    for (const t of this.#refused.keys()) {
      if (classes.length || what.all || tiles.some((i) => covers(at(i), at(t)))) this.#refused.delete(t);
    }
    this.#run(out, 1, 1, plan);
    this.#refresh(plan);
    return out[0][0];
  }

  /** Items per tile for hosts that tile themselves; calls made in the same tick are read
   * together, and the data tiles missing go out in as few requests as `batch.maxTiles`
   * allows. Resolves with `{ tile, items }` or `{ tile, error }` per tile, in order;
   * rejects with `signal.reason` when aborted. See index.d.ts. */
  loadTiles(tiles, options = {}) {
    this.#alive();
    checkStrings('tiles', tiles);
    if (!Array.isArray(tiles)) throw argError(TypeError, ERR_INVALID_ARG_TYPE, `tiles must be an array of strings, got ${show(tiles)}`);
    if (!isObject(options)) throw argError(TypeError, ERR_INVALID_ARG_TYPE, `options must be an object {signal}, got ${show(options)}`);
    checkKeys(options, ['signal'], '');
    const { signal } = options;
    if (signal !== undefined && !(typeof AbortSignal === 'function' && signal instanceof AbortSignal)) {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `signal must be an AbortSignal, got ${show(signal)}`);
    }
    try {
      this.#engine.tiles(TILES_STATES, tiles, this.#now()); // checks every tile string
    } catch (e) {
      throw thrown(e, () => tiles);
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const load = { tiles: [...tiles], results: new Array(tiles.length), waiting: new Map(), resolve, reject, signal };
      if (signal) {
        load.onAbort = () => this.#abortLoad(load);
        signal.addEventListener('abort', load.onAbort, { once: true });
      }
      this.#queuedLoads.push(load);
      if (this.#queuedLoads.length === 1) queueMicrotask(() => this.#flushLoads());
    });
  }

  /** Fetches a known destination ahead, behind the planner's prefetch and kept across
   * viewports until fetched: a viewport (as `setViewport` takes) or tiles "z/x/y".
   * Returns how many data tiles are not fresh yet (queued). */
  prefetch(what) {
    this.#alive();
    let out;
    if (Array.isArray(what)) {
      checkStrings('tiles', what);
      try {
        out = this.#engine.tiles(TILES_PREFETCH, what, this.#now());
      } catch (e) {
        throw thrown(e, () => what);
      }
    } else if (isObject(what)) {
      const { west, south, east, north, zoom } = what;
      try {
        out = this.#engine.prefetchView(west, south, east, north, zoom, this.#now());
      } catch (e) {
        throw thrown(e, (f) => what[f]);
      }
    } else {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE,
        `prefetch takes a viewport {west, south, east, north, zoom} or an array of tiles, got ${show(what)}`);
    }
    const nums = out[0];
    if (nums[0] === -1) {
      throw argError(RangeError, ERR_TOO_MANY_TILES,
        `tile ${what[nums[1]]} covers ${nums[2]} data tiles, more than maxVisibleTiles (${nums[3]}): prefetch tiles at zoom ${nums[4]} or finer`);
    }
    if (nums[0] === -2) {
      throw argError(RangeError, ERR_TOO_MANY_TILES,
        `the viewport covers more than maxVisibleTiles (${nums[1]}) data tiles: prefetch a smaller one, or its tiles`);
    }
    this.#run(out, 1, 1);
    return nums[0];
  }

  /** Limits prefetch to where earlier sessions looked: tiles "z/x/y" (data tiles, or coarser
   * ones for every data tile under them), or null for no limit. The view is fetched
   * wherever it is; the next setViewport plans with it. See index.d.ts. */
  setPopularTiles(tiles) {
    this.#alive();
    if (tiles !== null && !(Array.isArray(tiles) && tiles.every((t) => typeof t === 'string'))) {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `tiles must be an array of strings "z/x/y" or null, got ${show(tiles)}`);
    }
    try {
      this.#engine.tiles(tiles === null ? TILES_POPULAR_OFF : TILES_POPULAR, tiles ?? [], this.#now());
    } catch (e) {
      throw thrown(e, () => tiles);
    }
  }

  /** The state of each data tile, in order: 'loaded', 'prefetched' (fetched ahead and not
   * shown yet), 'inFlight' or 'missing'; see index.d.ts. */
  tileStates(tiles) {
    this.#alive();
    checkStrings('tiles', tiles);
    let codes;
    try {
      codes = this.#engine.tiles(TILES_STATES, tiles, this.#now())[0];
    } catch (e) {
      throw thrown(e, () => tiles);
    }
    return Array.from(codes, (c) => TILE_STATES[c]);
  }

  /** Changes the caller's tier; lowering it drops what the new tier may not see at once.
   * `{ newCredential: true }` after a sign-in: see index.d.ts. */
  setAccess(access, options) {
    this.#alive();
    if (options !== undefined && (!isObject(options) ||
        (options.newCredential !== undefined && typeof options.newCredential !== 'boolean'))) {
      throw argError(TypeError, ERR_INVALID_ARG_TYPE, `options must be an object { newCredential?: boolean }, got ${show(options)}`);
    }
    // A misspelt `newCredential` would keep the tier the old credential reported, silently.
    if (options !== undefined) checkKeys(options, ['newCredential'], '');
    let out;
    try {
      out = this.#engine.setAccess(access, options?.newCredential === true, this.#now());
    } catch (e) {
      throw thrown(e, () => access);
    }
    this.#run(out, 0, 1);
    this.#refresh();
  }

  /** Counters; see index.d.ts. */
  stats() {
    this.#alive();
    const v = this.#engine.stats();
    const s = {};
    STATS.forEach((k, i) => { s[k] = FLAGS.includes(k) ? v[i] === 1 : v[i]; });
    s.errors += this.#idErrors;
    return s;
  }

  /** Aborts every request, stops the timer, rejects pending promises and frees the wasm
   * memory. The cache cannot be used afterwards. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const req of this.#requests.values()) { clearTimeout(req.timer); req.ctrl.abort(); }
    this.#requests.clear();
    clearTimeout(this.#timer);
    this.#stopWaitingToBeShown();
    const err = disposedError();
    for (const l of [...this.#queuedLoads, ...this.#pendingLoads]) this.#settleLoad(l, err);
    this.#queuedLoads = [];
    this.#pendingLoads.clear();
    for (const w of this.#waiters) w.reject(err);
    for (const ws of this.#gets.values()) for (const w of ws) w.reject(err);
    this.#waiters = [];
    this.#gets.clear();
    this.#updates.clear();
    this.#changes.clear();
    this.#errors.clear();
    this.#accessListeners.clear();
    ABANDONED.unregister(this);
    this.#engine.free();
    release(takeFreed());
    const disposed = [...this.#disposeListeners];
    this.#disposeListeners.clear();
    for (const { listener } of disposed) {
      try { listener(); } catch (e) { report(e); }
    }
  }

  // -- internals ----------------------------------------------------------------------

  #alive() {
    if (this.#disposed) throw disposedError();
  }

  #listen(set, listener, name) {
    if (typeof listener !== 'function') throw argError(TypeError, ERR_INVALID_ARG_TYPE, `${name} takes a function, got ${show(listener)}`);
    const entry = { listener };
    set.add(entry);
    return () => { set.delete(entry); };
  }

  /** Reads the loads of this tick with one engine call (which queues what is missing). */
  #flushLoads() {
    const loads = this.#queuedLoads.filter((l) => !l.signal?.aborted);
    this.#queuedLoads = [];
    if (this.#disposed || loads.length === 0) return;
    const tiles = [...new Set(loads.flatMap((l) => l.tiles))];
    const out = this.#engine.tiles(TILES_LOAD, tiles, this.#now());
    const at = this.#readLoads(out, tiles);
    for (const l of loads) {
      this.#fillLoad(l, at.byTile);
      if (l.waiting.size) this.#pendingLoads.add(l);
    }
    this.#run(out, at.n, at.r);
  }

  /** Per tile of a `loadTiles` engine answer: `{ items }`, `{ data }` (packed data tiles
   * waited for) or `{ error }`; and where the records start. */
  #readLoads(out, tiles) {
    const nums = out[0];
    let n = 0;
    const byTile = new Map();
    for (const tile of tiles) {
      const state = nums[n], count = nums[n + 1];
      if (state === 1) {
        const items = new Array(count);
        for (let i = 0; i < count; i++) {
          const item = OBJS[nums[n + 3 + 2 * i]];
          item.stale = nums[n + 2 + 2 * i] === 1;
          items[i] = item;
        }
        byTile.set(tile, { items });
        n += 2 + 2 * count;
      } else if (state === 0) {
        byTile.set(tile, { data: Array.from(nums.subarray(n + 2, n + 2 + count)) });
        n += 2 + count;
      } else {
        const [max, minZ] = [nums[n + 2], nums[n + 3]];
        byTile.set(tile, { error: argError(RangeError, ERR_TOO_MANY_TILES,
          `tile ${tile} covers ${count} data tiles, more than maxVisibleTiles (${max}): ask for tiles at zoom ${minZ} or finer`) });
        n += 4;
      }
    }
    return { byTile, n, r: 1 };
  }

  #fillLoad(load, byTile) {
    load.tiles.forEach((tile, i) => {
      if (load.results[i]) return;
      const got = byTile.get(tile);
      if (!got) return;
      if (got.data) {
        // Its data tiles, noted once (a pending load is read again after every answer).
        if (!load.waiting.has(i)) (load.data ??= []).push(got.data);
        load.waiting.set(i, got.data);
      } else {
        load.waiting.delete(i);
        load.results[i] = got.items ? { tile, items: got.items } : { tile, error: got.error };
      }
    });
    if (load.waiting.size === 0) this.#settleLoad(load);
  }

  /** Re-reads the tiles pending loads wait for (after an answer or a failure). */
  #checkLoads() {
    if (this.#pendingLoads.size === 0 || this.#disposed) return;
    const loads = [...this.#pendingLoads];
    const tiles = [...new Set(loads.flatMap((l) => [...l.waiting.keys()].map((i) => l.tiles[i])))];
    const out = this.#engine.tiles(TILES_READ, tiles, this.#now());
    const at = this.#readLoads(out, tiles);
    for (const l of loads) this.#fillLoad(l, at.byTile);
    this.#run(out, at.n, at.r);
  }

  /** A request that gave up: the loads waiting for a data tile it asked for get `error`
   * for that tile. */
  #failLoads(packedTiles, error) {
    const asked = packedTiles.map(unpack);
    for (const l of [...this.#pendingLoads]) {
      for (const [i, data] of [...l.waiting]) {
        if (data.some((d) => asked.some((a) => covers(a, unpack(d))))) {
          l.waiting.delete(i);
          l.results[i] = { tile: l.tiles[i], error };
        }
      }
      if (l.waiting.size === 0) this.#settleLoad(l);
    }
  }

  /** Resolves a load (or rejects it with `error`) and forgets it. */
  #settleLoad(load, error) {
    this.#pendingLoads.delete(load);
    if (load.data) this.#settledTiles.push(load.data);
    load.signal?.removeEventListener('abort', load.onAbort);
    if (error) load.reject(error);
    // A tile read before a downgrade that came while others were fetched is handed out at
    // the tier the cache views as now.
    else load.resolve(load.results.map((r) => r.items ? { tile: r.tile, items: r.items.filter((i) => this.#mayShow(i)) } : r));
  }

  /** Whether the tier the cache views as now may see `item`. */
  #mayShow(item) {
    return TIERS.indexOf(item.access) <= (this.#disposed ? TIERS.indexOf(this.#access) : this.#engine.access());
  }

  #abortLoad(load) {
    const queued = this.#queuedLoads.indexOf(load);
    if (queued >= 0) this.#queuedLoads.splice(queued, 1);
    this.#settleLoad(load, load.signal.reason);
    this.#releaseSettled();
  }

  /** Releases the data tiles of the loads settled since the last call that no pending load
   * waits for: the engine no longer asks for them or keeps them from eviction. */
  #releaseSettled() {
    if (!this.#settledTiles.length || this.#disposed) return;
    const still = new Set();
    for (const l of this.#pendingLoads) for (const d of l.waiting.values()) for (const t of d) still.add(t);
    const drop = [...new Set(this.#settledTiles.flat(2))].filter((t) => !still.has(t));
    this.#settledTiles = [];
    if (drop.length) this.#run(this.#engine.tiles(TILES_RELEASE, drop.map(tileName), this.#now()), 0, 1);
  }

  /** Reads a view header, `complete, tooWide, missing, stale, items, unchanged, missing
   * tiles..., item slots...`, into `#last` (kept as it is when `unchanged`: no items follow
   * then); returns where the records start. */
  #view(out) {
    const nums = out[0];
    const missing = nums[2], stale = nums[3], count = nums[4];
    this.#setComplete(nums[0] === 1);
    // A view too wide to fetch never completes: whoever waits for it hears so.
    this.#tooWide = nums[1];
    if (this.#tooWide) for (const w of this.#takeWaiters()) w.reject(tooWideError(this.#tooWide));
    if (nums[5] === 1 && this.#last) return { n: 6 + missing, r: 1 };
    const missingTiles = Array.from(nums.subarray(6, 6 + missing), tileName);
    const items = new Array(count);
    for (let i = 0, n = 6 + missing; i < count; i++) {
      const item = OBJS[nums[n + i]];
      item.stale = i < stale;
      items[i] = item;
    }
    this.#last = { items, complete: nums[0] === 1, tooWide: nums[1] > 0, missingTiles };
    return { n: 6 + missing + count, r: 1 };
  }

  #setComplete(complete) {
    this.#complete = complete;
    if (complete) for (const w of this.#takeWaiters()) w.resolve();
  }

  /** The whenComplete() calls waiting, which the caller settles. */
  #takeWaiters() {
    const ws = this.#waiters;
    this.#waiters = [];
    return ws;
  }

  /** Rejects the get()s waiting for `ids` with `e`. */
  #rejectGets(ids, e) {
    for (const gid of ids) {
      const gs = this.#gets.get(gid);
      this.#gets.delete(gid);
      for (const w of gs ?? []) w.reject(e);
    }
  }

  /** Acts on the records from number `n` and reference `r` on. */
  #run(out, n, r, plan = true) {
    const nums = out[0];
    let updated = false, wakeup = -1, changed;
    const errors = [], gaveUp = [], askAgain = [];
    while (n < nums.length) {
      switch (nums[n++]) {
        case TRANSMIT: {
          const id = nums[n], kind = nums[n + 1], timeoutMs = nums[n + 3];
          const nt = nums[n + 4], ni = nums[n + 5];
          const tiles = Array.from(nums.subarray(n + 6, n + 6 + nt), tileName);
          n += 6 + nt;
          const access = out[r], ids = out.slice(r + 1, r + 1 + ni);
          r += 1 + ni;
          for (const t of tiles) this.#refused.delete(t);
          this.#send(id, kind, timeoutMs, JSON.stringify({ tiles, ids, access }), ids);
          break;
        }
        case CANCEL: {
          const req = this.#requests.get(nums[n++]);
          if (req) {
            this.#requests.delete(req.id);
            clearTimeout(req.timer);
            req.ctrl.abort();
            // A get() of an id this request carried was not queued on its own (the id was in
            // flight): it is asked for again, or nothing would answer it.
            for (const gid of req.ids) if (this.#gets.has(gid)) askAgain.push(gid);
          }
          break;
        }
        case UPDATED: updated = true; break;
        case COMPLETE: this.#setComplete(true); break;
        case ERROR: {
          const [id, kind, willRetry, viewIncomplete, failure, status, retryAfter, nt] = nums.subarray(n, n + 8);
          const tiles = Array.from(nums.subarray(n + 8, n + 8 + nt));
          n += 8 + nt;
          const e = this.#error(id, kind, willRetry === 1, failure, status, retryAfter, out[r++]);
          errors.push([e, viewIncomplete === 1]);
          // The loads waiting on its tiles end with the error: nothing will answer them now
          // (a failed request given up, tiles an answer left out or could not keep).
          if (willRetry !== 1 && tiles.length) gaveUp.push([tiles, e]);
          if (willRetry !== 1 && status === 413) {
            if (this.#refused.size > 4096) this.#refused.clear();
            for (const t of tiles) this.#refused.set(tileName(t), e);
          }
          break;
        }
        case WAKEUP: wakeup = nums[n++]; break;
        case CHANGED: {
          // One a list; count -1: any tile (null).
          const c = nums[n++];
          changed = c < 0 ? null : Array.from(nums.subarray(n, n += c), tileName);
          break;
        }
        case FREED: release(nums.subarray(n + 1, n + 1 + nums[n])); n += 1 + nums[n]; break;
        default: n = nums.length; // unknown: cannot happen with the matching engine
      }
    }
    this.#schedule(wakeup);
    for (const [tiles, e] of gaveUp) this.#failLoads(tiles, e);
    for (const [e, viewIncomplete] of errors) this.#emitError(e, viewIncomplete);
    if (askAgain.length && !this.#disposed) this.#askAgain(askAgain);
    if (changed !== undefined) {
      for (const { listener } of [...this.#changes]) {
        try { listener(changed); } catch (e) { report(e); }
      }
    }
    if (updated) this.#refresh(plan);
    this.#releaseSettled();
    // The errors may have settled the promises that waited when the timer was armed.
    this.#rearm();
  }

  /** Tells onAccess listeners when the engine's tier is not the one they last heard. */
  #checkAccess() {
    const access = TIERS[this.#engine.access()];
    if (access === this.#access) return;
    this.#access = access;
    this.#refused.clear(); // held tiles are asked again at the new tier
    for (const { listener } of [...this.#accessListeners]) {
      try { listener(access); } catch (e) { report(e); }
    }
  }

  /** Re-reads the view and tells onUpdate listeners (onAccess ones first, when the tier
   * changed: every change of it, by setAccess or an answer, ends here). Without `plan`
   * the requests due are not sent (see invalidate). */
  #refresh(plan = true) {
    if (this.#disposed) return;
    this.#checkAccess();
    if (this.#disposed) return; // an onAccess listener let the cache go
    const out = this.#engine.items(this.#now(), plan);
    const at = this.#view(out);
    this.#run(out, at.n, at.r, plan);
    const view = this.#last;
    const round = ++this.#rounds;
    for (const { listener } of [...this.#updates]) {
      // A listener that changed the view (setAccess, invalidate) had every listener told of
      // the newer one already: the rest of this round would hand them the older view (above
      // a lowered tier, say) after it.
      // One that disposed the cache ends it: the rest would be handed a freed cache's view.
      if (round !== this.#rounds || this.#disposed) break;
      try { listener(view.items, { complete: view.complete, tooWide: view.tooWide, missingTiles: view.missingTiles }); } catch (e) { report(e); }
    }
  }

  /** Arms the one timer for the engine's next wake-up (`at`, -1: none). A view at rest
   * wakes at each expiry of its items for as long as the cache lives, so while nothing is
   * out or awaited the timer holds the cache weakly (one let go of without dispose() is
   * still collected) and in Node does not keep the process alive. While a promise of the
   * page waits it holds the cache: the page's code awaiting it (an async function that
   * awaits whenComplete() and holds the only reference to the cache) is reachable only
   * through the cache, and a GC took both while a retry was backing off, so the await
   * never ended. */
  #schedule(at) {
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#wakeAt = at;
    if (at < 0 || this.#disposed) return;
    // A `now` giving a time no clock gives (NaN, Infinity: the engine takes the last good
    // one) made the wait NaN or 0, a timer spinning for as long as it did: look in a second.
    const now = this.#now();
    const delay = now >= 0 && now <= 8.64e15 ? Math.min(Math.max(0, at - now), 2 ** 31 - 1) : 1000;
    this.#timerHolds = this.#awaited();
    this.#timer = setTimeout(TileCache.#wakeUp, delay, this.#timerHolds ? this : weakly(this));
    if (!this.#timerHolds) this.#timer?.unref?.();
  }

  /** The timer's callback (no closure: one made in a method could hold `this` through its
   * context): `held` is the cache, or a WeakRef to it. */
  static #wakeUp(held) {
    (held instanceof TileCache ? held : held.deref())?.#tick();
  }

  /** Arms the timer again for the same wake-up when whether it must hold the cache changed:
   * a promise of the page waits now, or none does any more. */
  #rearm() {
    if (this.#timer !== null && this.#timerHolds !== this.#awaited()) this.#schedule(this.#wakeAt);
  }

  /** Whether a request is out or a promise of the page waits (whenComplete, get, loadTiles). */
  #awaited() {
    return this.#requests.size > 0 || this.#gets.size > 0 || this.#waiters.length > 0 || this.#pendingLoads.size > 0;
  }

  /** The engine's wake-up. A hidden page (another tab in front, a minimised window) that
   * waits for nothing puts it off until it is shown: the refreshes of a view at rest, the
   * prefetch and the retries due meanwhile would be paid for and seen by nobody. */
  #tick() {
    this.#timer = null;
    if (this.#disposed) return;
    if (this.#hiddenAtRest()) {
      if (!this.#onShown) this.#waitToBeShown(seenDocument());
      return;
    }
    this.#wake();
  }

  /** Whether the page is hidden and waits for nothing: what it would fetch now waits. */
  #hiddenAtRest() {
    return seenDocument()?.visibilityState === 'hidden' && !this.#awaited();
  }

  #wake() {
    this.#stopWaitingToBeShown();
    this.#run(this.#engine.tick(this.#now()), 0, 1);
  }

  /** Ticks when `doc` is shown again; holds the cache weakly, as the timer does. */
  #waitToBeShown(doc) {
    // (No closure here may name `this`: the document would hold the cache through it.)
    const self = weakly(this);
    const onShown = () => {
      if (doc.visibilityState === 'hidden') return;
      const cache = self.deref();
      if (!cache) { doc.removeEventListener('visibilitychange', onShown); return; }
      cache.#wake();
    };
    this.#onShown = onShown;
    doc.addEventListener('visibilitychange', onShown);
  }

  #stopWaitingToBeShown() {
    if (!this.#onShown) return;
    seenDocument()?.removeEventListener('visibilitychange', this.#onShown);
    this.#onShown = null;
  }

  #send(id, kind, timeoutMs, body, ids) {
    // A listener that disposed the cache while an engine call's records were read (an
    // onError of ids an answer left out, say) ends it: what the records still ask for is
    // not sent, as its answer would reach the freed engine.
    if (this.#disposed) return;
    // Every request gets the configured timeout; kept for the messages of timeouts.
    this.#timeoutMs = timeoutMs;
    const ctrl = new AbortController();
    const req = { id, ctrl, kind, ids, detail: undefined };
    req.timer = setTimeout(() => ctrl.abort(TIMED_OUT), timeoutMs);
    this.#requests.set(id, req);
    this.#exchange(req, body);
  }

  /** POSTs `body`, with `Authorization: Bearer <auth.token()>` when `auth` is set (a fresh
   * call per attempt, so a refreshed token is used). */
  async #post(body, signal) {
    let headers = this.#headers;
    if (this.#auth) {
      let token;
      try {
        token = await this.#auth.token();
      } catch (e) {
        throw new TokenError(`auth.token() failed: ${e?.message ?? e}`);
      }
      if (typeof token !== 'string' || !TOKEN.test(token)) {
        const got = typeof token === 'string' ? `a string of ${token.length} characters that is not one` : show(token);
        throw new TokenError(`auth.token() must give a bearer token (letters, digits and -._~+/), got ${got}`);
      }
      headers = { ...headers, authorization: `Bearer ${token}` };
      // Given up meanwhile (disposed, cancelled, timed out): the page's fetch is not called
      // for it (a wrapper would do its work, or send it, for nothing).
      if (signal.aborted) throw signal.reason;
    }
    return this.#fetch.call(globalThis, this.#endpoint, { method: 'POST', headers, body, signal });
  }

  async #exchange(req, body) {
    const { id, ctrl } = req;
    let res, text;
    try {
      res = await this.#post(body, ctrl.signal);
      if (res.status === 401 && this.#auth && this.#requests.get(id) === req) {
        // The token may have expired in between: ask for a fresh one and try once more.
        res.body?.cancel?.().catch?.(() => {});
        res = await this.#post(body, ctrl.signal);
      }
      text = await readBody(res);
    } catch (e) {
      if (this.#requests.get(id) !== req) return; // cancelled, or disposed
      this.#finish(req);
      if (e instanceof TokenError) {
        req.tokenError = e.message;
        return this.#failed(req, FAILED_UNAUTHORIZED, 401, -1, '');
      }
      if (e instanceof Invalid) return this.#failed(req, FAILED_INVALID, 0, -1, e.message);
      if (ctrl.signal.reason === TIMED_OUT) return this.#failed(req, FAILED_TIMEOUT, 0, -1, '');
      return this.#failed(req, FAILED_NETWORK, 0, -1, String(e?.cause?.message ?? e?.message ?? e));
    }
    if (this.#requests.get(id) !== req) return;
    this.#finish(req);
    if (!res.ok) {
      let detail;
      try { detail = JSON.parse(text)?.error; } catch { /* not JSON */ }
      req.detail = isObject(detail) ? detail : undefined;
      const failure = res.status === 401 ? FAILED_UNAUTHORIZED : FAILED_HTTP;
      // A date is measured from the cache's clock (the `now` option), as every other time
      // the engine is given is; -1: none, or one that could not be read.
      const wait = retryAfterMs(res.headers?.get?.('retry-after'), this.#now()) ?? -1;
      // A 403 names the tier the credential gives: the engine decides whether the cache
      // follows it down (-1: none, or not a tier).
      return this.#failed(req, failure, res.status, wait, '', TIERS.indexOf(res.headers?.get?.(ACCESS_HEADER)));
    }
    let f;
    try {
      f = flatten(JSON.parse(text), declaredBounds(res.headers?.get?.(BOUNDS_HEADER)));
    } catch (e) {
      return this.#failed(req, FAILED_INVALID, 0, -1, e instanceof Invalid ? e.message : `the body is not JSON: ${e.message}`);
    }
    const out = this.#engine.response(id, this.#now(), f.nums, f.strs, f.objs.map(hold));
    // 3: taken, and what did not fit in it (`response_full`) asked again: its get()s wait.
    if (out[0][0] !== 1 && out[0][0] !== 3) {
      // 0: the engine found the answer invalid: its ERROR record fails (or retries) the
      // request, with the get()s waiting for it. 2: it was sent at a tier the cache has
      // left since, and its work is asked again: the get()s wait for that answer.
      this.#pendingDetail = req;
      this.#run(out, 2 + out[0][1], 1);
      this.#pendingDetail = undefined;
      this.#checkLoads();
      return;
    }
    // Resolve get()s this response answered. Ids it asked for but left out of both items
    // and missing (a partial answer: the edge's origin failed; its `error` lists them) are
    // an error for those get()s and onError, never "does not exist".
    // An item asked for that the cache could not keep (room for it would have pushed out
    // the view's items) is handed out all the same: the engine names the slots of those
    // that passed its tier check (their FREED record comes below, after the get()s).
    const nums = out[0], unkept = new Map();
    for (const slot of nums.slice(2, 2 + nums[1])) unkept.set(OBJS[slot].id, OBJS[slot]);
    const known = new Set([...f.ids, ...f.missing]);
    const left = req.ids.filter((gid) => !known.has(gid));
    const now = this.#now();
    for (const gid of known) {
      const ws = this.#gets.get(gid);
      if (!ws) continue;
      const slot = this.#engine.peek(gid, now);
      const item = unkept.get(gid) ?? (slot >= 0 ? OBJS[slot] : undefined);
      if (item === undefined && !f.missing.includes(gid) && !req.ids.includes(gid)) continue;
      this.#gets.delete(gid);
      for (const w of ws) w.resolve(item);
    }
    // 3 for a code whose failure is retried (503, 502, ...): the engine queued them again.
    const shed = nums[0] === 3 && f.error?.code !== 'response_full';
    if (left.length && (nums[0] === 1 || shed)) this.#unanswered(req, left, f.error, shed);
    // The tiles it left out: their ERROR record carries the server's code, as a refusal's.
    // No ids: each was answered or told above, and a get() waiting for the retry of one must
    // not end with the error of a tile (one the cache could not keep, say).
    this.#pendingDetail = { id: req.id, detail: isObject(f.error) ? f.error : undefined, ids: [] };
    this.#run(out, 2 + nums[1], 1);
    this.#pendingDetail = undefined;
    this.#checkLoads();
  }

  /** A partial answer: `ids` were asked for and not answered; `why` is the body's `error`. */
  #unanswered(req, ids, why, willRetry = false) {
    const d = isObject(why) && typeof why.code === 'string' ? why : undefined;
    const what = REQUEST_KINDS[req.kind];
    const e = new Error(`${what} batch request failed for ${ids.length} of its ids (first ${JSON.stringify(ids[0])}): ` +
      (d ? `${d.code}: ${d.message ?? ''}` : 'the answer neither lists them in items nor in missing') + (willRetry ? ' (will retry)' : ''));
    Object.assign(e, { code: d ? 'ERR_HTTP' : 'ERR_INVALID_RESPONSE', status: d ? PARTIAL_STATUS.get(d.code) ?? 502 : undefined, kind: what, willRetry, ids });
    if (d) e.serverCode = d.code;
    this.#idErrors++;
    if (!willRetry) this.#rejectGets(ids, e);
    for (const { listener } of [...this.#errors]) {
      if (this.#disposed) break; // one let the cache go: nothing will retry any more
      try { listener(e); } catch (err) { report(err); }
    }
  }

  #finish(req) {
    clearTimeout(req.timer);
    this.#requests.delete(req.id);
  }

  #failed(req, failure, status, retryAfter, message, access = -1) {
    if (this.#disposed) return;
    this.#pendingDetail = req;
    this.#run(this.#engine.failure(req.id, failure, status, retryAfter, message, access, this.#now()), 0, 1);
    this.#pendingDetail = undefined;
    this.#checkLoads();
  }

  #pendingDetail;

  #error(id, kind, willRetry, failure, status, retryAfter, message) {
    const req = this.#pendingDetail?.id === id ? this.#pendingDetail : undefined;
    const code = FAILURE_CODES[failure];
    let reason;
    switch (failure) {
      case FAILED_TIMEOUT: reason = `no answer within ${this.#timeoutMs} ms`; break;
      case FAILED_NETWORK: reason = `network error: ${message}`; break;
      case FAILED_HTTP: case FAILED_UNAUTHORIZED: {
        const d = req?.detail;
        reason = req?.tokenError ?? `HTTP ${status}` + (d ? `: ${d.code ?? 'error'}: ${d.message ?? ''}` : '');
        break;
      }
      default: reason = `invalid response: ${message}`;
    }
    const what = REQUEST_KINDS[kind];
    const e = new Error(`${what} batch request failed: ${reason}${willRetry ? ' (will retry)' : ''}`);
    const http = failure === FAILED_HTTP || (failure === FAILED_UNAUTHORIZED && !req?.tokenError);
    Object.assign(e, { code, status: http ? status : undefined, kind: what, willRetry });
    if (retryAfter >= 0) e.retryAfterMs = retryAfter;
    if (req?.detail) e.serverCode = req.detail.code;
    e.ids = req?.ids ?? [];
    return e;
  }

  /** get()s waiting for `ids` whose request went away: answered from the cache, or queued. */
  #askAgain(ids) {
    const out = this.#engine.get(ids, this.#now());
    const slots = out[0];
    ids.forEach((gid, i) => {
      if (slots[1 + i] < 0) return;
      const ws = this.#gets.get(gid);
      this.#gets.delete(gid);
      for (const w of ws ?? []) w.resolve(OBJS[slots[1 + i]]);
    });
    this.#run(out, 1 + ids.length, 1);
  }

  /** Tells onError listeners of `e`; rejects the whenComplete() calls waiting when it gave
   * up on a foreground request that leaves the view incomplete (`viewIncomplete`: it
   * carried one of the view's data tiles that cannot be shown). */
  #emitError(e, viewIncomplete) {
    if (e.kind === 'foreground' && !e.willRetry && viewIncomplete) for (const w of this.#takeWaiters()) w.reject(e);
    // The get()s of its ids, whatever its kind: an id a get() waits for may have gone out
    // in a prefetch request (a refresh of a neighbour's items), and nothing asks again.
    if (!e.willRetry) this.#rejectGets(e.ids, e);
    delete e.ids;
    for (const { listener } of [...this.#errors]) {
      // One that disposed the cache ends it: nothing will retry any more.
      if (this.#disposed) break;
      try { listener(e); } catch (err) { report(err); }
    }
  }
}
