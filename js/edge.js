// tilewarm/edge: the caching batch proxy as a Cloudflare Workers / workerd module worker.
// Glue only: the caching logic is the Rust core's `Proxy` (src/proxy/), compiled into its
// own wasm (tilewarm_edge_bg.wasm, from src/edge.rs) so the browser package's wasm does not
// carry it. The .wasm is imported as a WebAssembly.Module (wrangler's default rule for
// *.wasm, or a workerd config listing it as a wasm module): workerd forbids compiling wasm
// from bytes at run time.
//
//   import { createWorker } from 'tilewarm/edge';
//   export default createWorker();            // env.ORIGIN: the origin's batch URL
//
// Bindings: ORIGIN (required; the origin's POST /v1/batch URL, never taken from a request;
// https, or plain http only to a loopback host unless the option allowInsecureOrigin is set),
// ORIGIN_TOKEN (the edge's own bearer token for the origin), JWT_SECRET | JWKS | JWKS_URL (the
// keys callers' tokens are verified with, js/edge-auth.js), TILEWARM_OPTIONS (optional JSON,
// see edge.d.ts). Routes: POST /v1/batch (the protocol), GET /healthz, GET /edge/stats (this
// isolate's counters; to a verified token with `tilewarm_admin: true` only, unless the option
// statsPublic is set: they count what the caches of every tier hold).
//
// Tiers: the caller's tier is what its verified token says (`public` without one); the body's
// `access` may only lower it (asking for more is a 403 from the core). The core keys its
// caches by that effective tier and forwards it as the origin request's `access`, sent with
// the edge's own ORIGIN_TOKEN, never with the caller's token or claim.
import wasm from './tilewarm_edge_bg.wasm';
import { initSync, EdgeProxy } from './tilewarm_edge.js';
import {
  createAuth, checkedUrl, Unauthorized, KeysUnavailable, Misconfigured, INSUFFICIENT_SCOPE_CHALLENGE, NO_TOKEN_CHALLENGE,
} from './edge-auth.js';
// The header a server declares the data's extent in (bundled in by build-pkg.sh).
import { BOUNDS_HEADER } from './gen/boundary.js';
import { retryAfterMs } from './retry-after.js';
import { readBody, TooLarge } from './edge-body.js';

export { EdgeProxy };

const JSON_TYPE = 'application/json';
const DEFAULTS = {
  originTimeoutMs: 3000, warmTimeoutMs: 5000, sharedCacheTimeoutMs: 250,
  changesPollMs: 5000, changesLookbackMs: 4 * 3600 * 1000,
};
/** Largest change-feed answer read in one poll. */
const MAX_FEED_BYTES = 4 * 1024 * 1024;
/**
 * The longest a failed poll puts off the next one (the origin's `Retry-After`, or the
 * back-off of failures in a row; `changesPollMs` if that is longer): while polls fail,
 * this isolate serves what it holds without the changes, so the feed is never left for
 * longer, whatever the origin asks.
 */
const MAX_POLL_WAIT_MS = 60_000;
/**
 * The most round trips a poll makes (the feed's position, the changes after it, and the
 * replay from a later `from`): its fetches share a deadline of this many `originTimeoutMs`
 * after its start.
 */
const POLL_ROUND_TRIPS = 3;
/**
 * The least of a request's `originTimeoutMs` left that an ask in part is sent with: with
 * less, the request ends as a timeout rather than send an origin call that cannot answer.
 */
const MIN_ASK_MS = 50;
/**
 * How long past a poll's deadline the requests waiting for a new isolate's first poll wait
 * on timers of their own: a poll that has not ended by then never will (its request was
 * cancelled), and counts as failed.
 */
const POLL_WAIT_MARGIN_MS = 1000;

// The shared cache's keys live under a host no client can send a request to, so an entry
// (which may hold a tier above `public`) is only ever read back through this worker.
const SHARED_HOST = 'https://tilewarm-edge.internal';
/**
 * The header beside a shared-cache entry giving its date (ms since the epoch): when the
 * origin request its data came from was planned, not when it was stored (src/proxy/change.rs).
 * An entry without it (written by a worker of before it) reads as 0: expired, refused.
 */
const FETCHED_AT = 'x-tilewarm-fetched-at';

let initialised = false;

function cors(headers) {
  headers.set('access-control-allow-origin', '*');
  headers.set('access-control-expose-headers', `x-tilewarm-cache, x-tilewarm-origin-error, x-tilewarm-access, ${BOUNDS_HEADER}, www-authenticate, retry-after`);
  return headers;
}

function json(status, body, extra = {}) {
  const headers = cors(new Headers({ 'content-type': JSON_TYPE, ...extra }));
  return new Response(body, { status, headers });
}

function error(status, code, message, extra = {}) {
  return json(status, JSON.stringify({ error: { code, message } }), extra);
}

/** The 500 of a token that could not be checked: the key binding's fault, named
 * (`Misconfigured`), or the worker's. */
function tokenUnchecked(e) {
  if (e instanceof Misconfigured) return error(500, 'internal', `the edge worker is misconfigured: ${e.message}`);
  return error(500, 'internal', 'the caller\'s token could not be checked');
}

function isJson(ct) {
  const mime = ct.split(';')[0].trim().toLowerCase();
  return mime === JSON_TYPE || mime === 'text/plain' || (mime.startsWith('application/') && mime.endsWith('+json'));
}

/** Copies a wasm `Step` into a plain object and frees it. */
function take(step) {
  const s = {
    handle: step.handle,
    status: step.status,
    body: step.body,
    origin: step.origin,
    cache: step.cache,
    warm: step.warm,
    originError: step.originError,
    access: step.access,
    shared: step.shared,
    sharedPut: step.sharedPut,
    retryAfter: step.retryAfter,
  };
  step.free();
  return s;
}

/**
 * The answer of step `s`; one with data carries the extent the origin last declared, an
 * error answer the core's `Retry-After` (`s.retryAfter`: the 503 of an isolate with too many
 * requests waiting, or the 429 or 503 made of the origin's, src/proxy/mod.rs).
 */
function respond(s, bounds) {
  const extra = {};
  if (s.cache) extra['x-tilewarm-cache'] = s.cache;
  if (s.originError) extra['x-tilewarm-origin-error'] = s.originError;
  if (s.access) extra['x-tilewarm-access'] = s.access;
  if (s.status === 200 && bounds) extra[BOUNDS_HEADER] = bounds;
  if (s.status !== 200 && s.retryAfter != null) extra['retry-after'] = String(s.retryAfter);
  if (s.challenge) extra['www-authenticate'] = s.challenge;
  return json(s.status, s.body, extra);
}

/**
 * A request to the origin, with the edge's own credential (ORIGIN_TOKEN) when set. A
 * redirect is not followed (`redirected`): it throws, a failed call as a refused connection.
 */
async function originRequest(url, token, body, timeoutMs, purpose) {
  const headers = { 'content-type': JSON_TYPE, accept: JSON_TYPE, 'x-tilewarm-purpose': purpose };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(url, {
    method: 'POST',
    headers,
    body,
    signal: AbortSignal.timeout(timeoutMs),
    redirect: 'manual',
  });
  const why = redirected(res, url, 'it');
  if (why === null) return res;
  await res.body?.cancel().catch(() => {});
  throw new Error(why);
}

/** The statuses fetch follows as redirects; another 3xx is an error answer as any other. */
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * What is wrong when `res`, the answer to a fetch of `url` by `who` (the origin, its change
 * feed), is a redirect (REDIRECTS); null when it is not. With `redirect: 'manual'` workerd
 * gives a redirect as it came, its status and Location (edge/test/config.test.mjs); a
 * runtime that keeps to the Fetch standard gives an opaque one (status 0, no headers).
 * Redirects are never followed, as tilewarm-server does not follow its upstream's: the
 * request would go, with ORIGIN_TOKEN, to a URL nobody configured, past the
 * https-or-loopback rule of ORIGIN. The Location is shown without user, password or query
 * (a caller of the batch path reads it in its 502), at most 300 characters.
 */
function redirected(res, url, who) {
  let what;
  if (res.type === 'opaqueredirect') {
    what = 'a redirect (the runtime does not show where to)';
  } else if (REDIRECTS.has(res.status)) {
    const location = res.headers.get('location');
    let to = 'nowhere (no Location)';
    if (location !== null) {
      try {
        const u = new URL(location, url);
        to = `${u.protocol}//${u.host}${u.pathname}${u.search ? '?…' : ''}`;
      } catch {
        to = 'a Location that is not a URL';
      }
      if (to.length > 300) to = `${to.slice(0, 300)}…`;
    }
    what = `HTTP ${res.status}, a redirect to ${to}`;
  } else {
    return null;
  }
  return `${who} answered ${what}: redirects are not followed (the edge's ORIGIN_TOKEN would go along); set ORIGIN to the URL that answers`;
}

/**
 * A change feed answer other than 200: its status, and its `Retry-After` in ms (or null);
 * `message` in place of the status alone (a redirect says where it pointed).
 */
class FeedRefused extends Error {
  constructor(status, retryAfterMs, message = null) {
    super(message ?? `the change feed answered HTTP ${status}`);
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

/** A `reset` event's data as an object ({} when it is not one). */
function resetData(data) {
  try {
    const d = JSON.parse(data);
    return d !== null && typeof d === 'object' ? d : {};
  } catch {
    return {};
  }
}

/**
 * Whether a poll's events are the origin's answer for a gap: `ready` and one `reset` whose
 * reason is `gap`, or that gives none (an origin of before the reasons sends `{}`).
 */
function loneGap(events) {
  return events.length === 2 && events[0].event === 'ready' && events[1].event === 'reset'
    && [undefined, 'gap'].includes(resetData(events[1].data).reason);
}

/** A stream id, `<ms>-<seq>`, each part a u64 (a `from` may be `<ms>-18446744073709551615`). */
const STREAM_ID = /^(\d{1,20})-(\d{1,20})$/;

/** The `from` of a gap's data (the oldest id the origin can replay from), or null. */
function gapFrom(data) {
  const from = resetData(data).from;
  return typeof from === 'string' && STREAM_ID.test(from) ? from : null;
}

/** Whether stream id `a` (`<ms>-<seq>`) comes after `b`; false when either is not one. */
function idAfter(a, b) {
  const x = STREAM_ID.exec(a);
  const y = STREAM_ID.exec(b);
  if (!x || !y) return false;
  const [am, as, bm, bs] = [x[1], x[2], y[1], y[2]].map(BigInt);
  return am > bm || (am === bm && as > bs);
}

/** The server-sent events of a whole text: [{ event, id, data }] (the HTML spec's rules;
 * id undefined when the event set none). */
function sseEvents(text) {
  const out = [];
  let event = '', data = [], id;
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (data.length || event) out.push({ event: event || 'message', id, data: data.join('\n') });
      event = ''; data = []; id = undefined;
      continue;
    }
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let v = colon < 0 ? '' : line.slice(colon + 1);
    if (v.startsWith(' ')) v = v.slice(1);
    if (field === 'event') event = v;
    else if (field === 'data') data.push(v);
    else if (field === 'id' && !v.includes('\0')) id = v;
  }
  return out;
}

/** The origin's change feed URL (a poll: `?follow=false`), next to its batch URL. */
function changesUrl(origin) {
  const base = origin.endsWith('/v1/batch')
    ? `${origin.slice(0, -'/v1/batch'.length)}/v1/changes`
    : new URL('/v1/changes', origin).href;
  return `${base}?follow=false`;
}

/**
 * The shared second level of the cache: the Workers Cache API (`caches.default`, one per
 * data centre, read by every isolate there), one entry per (tier, data tile) under
 * `SHARED_HOST/v1/tiles/{z}/{x}/{y}?access=<tier>&origin=<ORIGIN>`. What to look up and
 * what an entry holds is the core's (src/proxy/shared.rs); this only moves bytes. Every call
 * is best effort: a failure or a call slower than `timeoutMs` counts as a miss.
 */
function sharedCache(origin, timeoutMs) {
  const cache = globalThis.caches?.default;
  const stats = { lookups: 0, hits: 0, puts: 0, purges: 0, errors: 0 };
  if (!cache) return { enabled: false, stats };
  const o = encodeURIComponent(origin);
  const key = (tier, tile) => `${SHARED_HOST}/v1/tiles/${tile}?access=${tier}&origin=${o}`;
  const within = (p) => {
    let timer;
    const late = new Promise((_, fail) => {
      timer = setTimeout(() => fail(new Error('shared cache timeout')), timeoutMs);
    });
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  };
  return {
    enabled: true,
    stats,
    /** The entry of `tile` at `tier`: { body: Uint8Array, fetchedAt } or null. */
    async get(tier, tile) {
      stats.lookups++;
      try {
        const r = await within(cache.match(key(tier, tile)));
        if (!r) return null;
        const fetchedAt = Number(r.headers.get(FETCHED_AT));
        const body = new Uint8Array(await within(r.arrayBuffer()));
        if (!Number.isFinite(fetchedAt)) return null;
        stats.hits++;
        return { body, fetchedAt };
      } catch {
        stats.errors++;
        return null;
      }
    },
    /** Writes `entry` (an EdgeProxy SharedEntry, freed here) under `tile` at `tier`. */
    async put(tier, tile, entry) {
      const headers = {
        'content-type': JSON_TYPE,
        'cache-control': `max-age=${entry.maxAge}`,
        [FETCHED_AT]: String(entry.fetchedAt),
      };
      const body = entry.body;
      entry.free();
      try {
        await within(cache.put(key(tier, tile), new Response(body, { headers })));
        stats.puts++;
      } catch {
        stats.errors++;
      }
    },
    async purge(tier, tile) {
      try {
        await within(cache.delete(key(tier, tile)));
        stats.purges++;
      } catch {
        stats.errors++;
      }
    },
  };
}

/**
 * The options in the TILEWARM_OPTIONS binding: a JSON object. Anything else is refused
 * naming the binding: `null` or a number would otherwise be taken as no options at all
 * (spread into the defaults as nothing), silently the defaults.
 */
function optionsOf(text) {
  if (typeof text !== 'string') {
    throw new Error(`TILEWARM_OPTIONS must be the JSON text of an object of options, got a value of type ${typeof text}`);
  }
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`TILEWARM_OPTIONS is not JSON: ${e?.message ?? e}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new Error(`TILEWARM_OPTIONS must be a JSON object of options, got ${JSON.stringify(String(text).slice(0, 64))}`);
  }
  return v;
}

/**
 * A module worker with its own proxy (one per isolate). `defaults` are options that
 * TILEWARM_OPTIONS overrides.
 */
export function createWorker(defaults = {}) {
  let proxy = null;
  let options = null;
  let auth = null;
  let shared = null;
  // The data's extent the origin declared on its last answer taken (BOUNDS_HEADER; none
  // if that answer declared none), passed on with this isolate's answers, hits included, so
  // clients behind the edge adopt it too.
  let bounds = null;
  // The change feed (docs/edge.md, "Changes"): this isolate's position in it, at most one
  // poll in flight, the next poll not before `nextAt`.
  // `tooLarge`: answers over MAX_FEED_BYTES, each taken as a reset; `replaying`: a new
  // isolate's replay from `changesLookbackMs` before its start is not applied yet;
  // `replayedFrom`: the later id the origin said it could replay from, when it could not
  // from the one asked (entries fetched before it are refused).
  // `failing`: the kind of the last failures in a row (an HTTP status, or 'error': no
  // answer, or one that could not be read), `failures` how many, `waitMs` how long the next
  // poll waits after the last one (pollWait), which started at `lastPollAt`.
  const feed = { lastId: null, inFlight: false, nextAt: 0, startedAt: 0, polls: 0, events: 0, errors: 0, tooLarge: 0, lastError: null, firstDone: false, replaying: false, replayedFrom: null, failing: null, failures: 0, waitMs: 0, lastPollAt: 0 };
  // The poll in flight, if any (not in `feed`, which /edge/stats shows): when it started, its
  // deadline, and the resolvers of the requests waiting for it (see `waitFor`).
  let flight = null;

  function setup(env) {
    if (proxy) return null;
    try {
      if (!initialised) {
        initSync({ module: wasm });
        initialised = true;
      }
      const fromEnv = env.TILEWARM_OPTIONS ? optionsOf(env.TILEWARM_OPTIONS) : {};
      options = { ...DEFAULTS, ...defaults, ...fromEnv };
      const insecure = options.allowInsecureOrigin ?? false;
      if (typeof insecure !== 'boolean') throw new Error(`allowInsecureOrigin must be true or false, got ${JSON.stringify(insecure)}`);
      checkedUrl('ORIGIN', env.ORIGIN, insecure);
      // Sent as `Bearer <ORIGIN_TOKEN>`: one with a space in it, or only spaces, would be
      // refused by the origin (400 invalid_request) and that refusal passed on to callers as
      // theirs. Any visible ASCII is taken (API keys may go beyond RFC 6750's b64token).
      // Not echoed: it is a secret. Empty: none sent.
      if (env.ORIGIN_TOKEN && !/^[\x21-\x7e]+$/.test(env.ORIGIN_TOKEN)) {
        throw new Error('ORIGIN_TOKEN must be a bearer token (visible ASCII characters, no space), '
          + `got ${String(env.ORIGIN_TOKEN).length} characters with whitespace or others among them`);
      }
      const statsPublic = options.statsPublic ?? false;
      if (typeof statsPublic !== 'boolean') throw new Error(`statsPublic must be true or false, got ${JSON.stringify(statsPublic)}`);
      auth = createAuth(env, options);
      proxy = new EdgeProxy(JSON.stringify(options));
      shared = sharedCache(String(env.ORIGIN), options.sharedCacheTimeoutMs);
      feed.startedAt = Date.now();
      return null;
    } catch (e) {
      proxy = null;
      auth = null;
      return error(500, 'internal', `the edge worker is misconfigured: ${e?.message ?? e}`);
    }
  }

  /**
   * Writes the entries of `tiles` (space separated) at `tier` to the shared cache, each
   * dated by the core (`fetchedAt`: when the origin request its data came from was planned).
   */
  function sharePut(tier, tiles) {
    if (!shared.enabled || !tiles || proxy.sharedTiles === 0) return null;
    const now = Date.now();
    const puts = [];
    for (const tile of tiles.split(' ').slice(0, proxy.sharedTiles)) {
      const entry = proxy.sharedEntry(tier, tile, now);
      if (entry) puts.push(shared.put(tier, tile, entry));
    }
    return puts.length ? Promise.all(puts) : null;
  }

  /** The events of one poll of the change feed after `lastId` (none: the current position). */
  async function fetchChanges(url, token, lastId) {
    const headers = { accept: 'text/event-stream', 'x-tilewarm-purpose': 'changes' };
    if (token) headers.authorization = `Bearer ${token}`;
    if (lastId) headers['last-event-id'] = lastId;
    // Each fetch within `originTimeoutMs` and the poll's deadline.
    const left = Math.min(options.originTimeoutMs, (flight?.deadline ?? Infinity) - Date.now());
    // A redirect is not followed (`redirected`): a failed poll, of the kind of its status.
    const res = await fetch(url, { headers, signal: AbortSignal.timeout(Math.max(1, left)), redirect: 'manual' });
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => {});
      const why = redirected(res, url, 'the change feed');
      throw new FeedRefused(res.status, retryAfterMs(res.headers.get('retry-after'), Date.now()), why);
    }
    const bytes = await readBody(res, MAX_FEED_BYTES, "the change feed's answer");
    return sseEvents(new TextDecoder().decode(bytes));
  }

  /** The feed's current position: the id of the `ready` event of a poll without Last-Event-ID. */
  async function position(url, token) {
    const ready = (await fetchChanges(url, token, null)).find((e) => e.event === 'ready');
    if (!ready?.id || !STREAM_ID.test(ready.id)) throw new Error('the change feed sent no ready event with a stream id (<ms>-<seq>)');
    return ready.id;
  }

  /**
   * One poll: applies every change after this isolate's last seen id through the core
   * (`applyChange`: the isolate's caches, and the log that refuses older shared-cache
   * entries). A new isolate first learns the feed's position; when the last change is
   * within `changesLookbackMs` of the isolate's start it replays from there, so shared-cache
   * entries fetched before those changes are refused too. A failed poll is retried from the
   * same id (nothing is lost while the origin holds the events), after `pollWait`.
   * An answer over MAX_FEED_BYTES is taken as a reset (`changesAfter`).
   */
  async function poll(env, f) {
    const began = f.startedAt;
    feed.lastPollAt = began;
    try {
      const url = changesUrl(String(env.ORIGIN));
      const token = env.ORIGIN_TOKEN;
      if (feed.lastId === null) {
        const at = await position(url, token);
        const from = Math.max(0, feed.startedAt - options.changesLookbackMs);
        // Kept in the feed's state until a poll of the replay has been applied: a failed
        // one is retried from `${from}-0`, and is still the replay.
        feed.replaying = Number(at.split('-')[0]) >= from;
        feed.lastId = feed.replaying ? `${from}-0` : at;
      }
      let events = await changesAfter(url, token);
      // A replay the origin cannot serve from the id asked (its feed starts later: a
      // restarted origin without Redis, past its retention; or more than its backlog bound
      // of 1000 events) is answered `ready` and one `reset` whose reason is `gap`. Skipped,
      // Cache API entries fetched before the changes it stands for would be served until
      // their max-age. When it says from where it can replay (`from`: it holds every change
      // after that id), and that is later than the id asked, entries fetched before `from`
      // are refused (the core's floor) and the changes after it are replayed at once.
      // Otherwise (an origin of before `from` sends `{"reason":"gap"}` or `{}`; or the
      // backlog bound, `from` then no later than the id asked) it is applied as every
      // `reset` is: everything dropped, and entries fetched before now refused
      // (docs/edge.md, "Changes").
      if (events !== null && feed.replaying && loneGap(events)) {
        const from = gapFrom(events[1].data);
        if (from !== null && idAfter(from, feed.lastId)) {
          proxy.invalidateAllBefore(Number(from.split('-')[0]) + 1);
          feed.events++;
          feed.replayedFrom = from;
          feed.lastId = from;
          events = await changesAfter(url, token);
        }
      }
      for (const e of events ?? []) {
        if (e.event === 'invalidate' || e.event === 'reset') {
          proxy.applyChange(e.event, e.data, Date.now());
          feed.events++;
        }
        // Resumed from only when a stream id: another (a proxy's, a broken origin's) would be
        // refused by the origin at every poll, or, past U+00FF, make every poll's fetch throw
        // (a header value must be a ByteString): this isolate would see no change again.
        if (e.id && STREAM_ID.test(e.id)) feed.lastId = e.id;
      }
      feed.replaying = false;
      feed.polls++;
      succeeded();
    } catch (e) {
      failed(e, began);
    } finally {
      over(f);
    }
  }

  /** A poll that started at `began` failed with `e`: counted, and the next one put off. */
  function failed(e, began) {
    feed.errors++;
    feed.lastError = String(e?.message ?? e);
    const { wait, retryAfter } = pollWait(e);
    feed.waitMs = Math.max(wait, retryAfter);
    feed.nextAt = Math.max(feed.nextAt, began + wait, Date.now() + retryAfter);
  }

  /** Poll `f` is over (ended, or given up): no longer in flight, its waiting requests let go. */
  function over(f) {
    if (flight === f) {
      flight = null;
      feed.inFlight = false;
    }
    feed.firstDone = true;
    for (const resolve of f.waiters.splice(0)) resolve();
  }

  /**
   * Poll `f` did not end by its deadline and the margin: its request was cancelled (its
   * continuations dropped; the fetches' own timeouts end every other poll). It is over for
   * the isolate, as a failed poll: the next one starts when due.
   */
  function lost(f) {
    if (flight !== f) return;
    const ms = f.deadline - f.startedAt + POLL_WAIT_MARGIN_MS;
    failed(new Error(`the change feed's poll did not finish within ${ms} ms`), f.startedAt);
    over(f);
  }

  /**
   * Waits for poll `f`, at most until its deadline and the margin, on a promise and a timer
   * of this request's own: the poll's own promise belongs to the request that started it
   * (a request awaiting another's is never resumed if that one is cancelled first,
   * docs/edge.md "Per request, not across requests"); `over` resolves these with nothing.
   */
  async function waitFor(f, now) {
    let timer;
    const late = await new Promise((resolve) => {
      f.waiters.push(() => resolve(false));
      timer = setTimeout(() => resolve(true), Math.max(0, f.deadline + POLL_WAIT_MARGIN_MS - now));
    });
    clearTimeout(timer);
    if (late) lost(f);
  }

  /**
   * The events after `feed.lastId`, or null when the answer was over MAX_FEED_BYTES and has
   * been taken as a reset. More changes since lastId than one answer may hold: retried from
   * the same id it would fail the same way at every poll, and no change would be applied
   * again. So it is a reset, as the origin's own for events it cannot replay: the feed's
   * position first, then everything dropped (the isolate's caches, and Cache API entries
   * fetched before now), then on from that position. A change after the position comes in
   * the next poll; one before it is covered by the reset (an answer asked of the origin
   * before the reset is not written back, src/proxy/change.rs).
   */
  async function changesAfter(url, token) {
    try {
      return await fetchChanges(url, token, feed.lastId);
    } catch (e) {
      if (!(e instanceof TooLarge)) throw e;
      const at = await position(url, token);
      proxy.applyChange('reset', '{}', Date.now());
      feed.events++;
      feed.tooLarge++;
      feed.lastId = at;
      feed.replaying = false;
      return null;
    }
  }

  /** A poll applied: the next one after `changesPollMs`, failures forgotten. */
  function succeeded() {
    feed.failing = null;
    feed.failures = 0;
    feed.waitMs = options.changesPollMs;
  }

  /**
   * How long after a failed poll the next one waits: `wait`, from the poll's start,
   * `changesPollMs` for a failure of a new kind (an HTTP status, or 'error' for no answer
   * or one that could not be read), doubling for each further one of the same kind;
   * `retryAfter`, from the answer, the origin's `Retry-After` (0 without one). Each at
   * most MAX_POLL_WAIT_MS (or `changesPollMs`, if longer).
   */
  function pollWait(e) {
    const every = options.changesPollMs;
    const cap = Math.max(MAX_POLL_WAIT_MS, every);
    const kind = e instanceof FeedRefused ? e.status : 'error';
    feed.failures = kind === feed.failing ? feed.failures + 1 : 1;
    feed.failing = kind;
    const wait = Math.min(every * 2 ** (feed.failures - 1), cap);
    const retryAfter = Math.min((e instanceof FeedRefused && e.retryAfterMs) || 0, cap);
    return { wait, retryAfter };
  }

  /**
   * Starts a poll inside `ctx.waitUntil` when one is due (`changesPollMs` after the last
   * one started, or later after a failed one: `pollWait`) and none is in flight (a poll
   * past its deadline and the margin is not: `lost`). Until this isolate's first poll has
   * finished (applied, or failed), requests wait for it (`waitFor`), so a new isolate never
   * answers from a Cache API entry older than a change it has not seen yet (two round
   * trips, the feed's position then the changes after it, three for a replay from a later
   * `from`, each within `originTimeoutMs` and all within POLL_ROUND_TRIPS of them, once per
   * isolate).
   */
  async function maybePoll(env, ctx) {
    const every = options.changesPollMs;
    const now = Date.now();
    if (!(every > 0)) return;
    if (flight !== null && now >= flight.deadline + POLL_WAIT_MARGIN_MS) lost(flight);
    if (flight === null && now >= feed.nextAt) {
      const f = { startedAt: now, deadline: now + POLL_ROUND_TRIPS * options.originTimeoutMs, waiters: [] };
      flight = f;
      feed.inFlight = true;
      feed.nextAt = now + every;
      ctx.waitUntil(poll(env, f));
    }
    if (!feed.firstDone && flight !== null) await waitFor(flight, now);
  }

  /**
   * Why `request` may not read /edge/stats (its answer), or null when it may. The counters
   * hold the cache sizes of every tier (how many items above `public` this isolate holds,
   * how that changes as its callers move): only a verified token with `tilewarm_admin:
   * true` (ADMIN_CLAIM, the server's claim for POST /v1/invalidate) reads them, unless the
   * option statsPublic opens them to anyone.
   */
  async function statsRefused(request) {
    if (options.statsPublic === true) return null;
    const forbidden = (why, challenge) => error(403, 'forbidden', `/edge/stats ${why}; or set the option statsPublic: true to serve them to anyone`,
      challenge ? { 'www-authenticate': challenge } : {});
    if (!auth.configured) return forbidden('answers a verified token with "tilewarm_admin": true only, and this edge verifies no tokens (no JWT_SECRET, JWKS or JWKS_URL binding)');
    let admin;
    try {
      admin = await auth.admin(request);
    } catch (e) {
      if (e instanceof Unauthorized) {
        return error(e.status, e.code, e.message, { 'www-authenticate': e.challenge });
      }
      if (e instanceof KeysUnavailable) return error(502, 'upstream_error', e.message, { 'retry-after': String(e.retryAfterS) });
      return tokenUnchecked(e);
    }
    if (admin) return null;
    if (!request.headers.has('authorization')) {
      return error(401, 'unauthorized', '/edge/stats needs a bearer token with "tilewarm_admin": true', { 'www-authenticate': NO_TOKEN_CHALLENGE });
    }
    // A verified token without the claim (RFC 6750 3.1).
    return forbidden('needs "tilewarm_admin": true in a verified token', INSUFFICIENT_SCOPE_CHALLENGE);
  }

  /**
   * The warming `body` without the tiles the shared cache holds (another isolate paid the
   * origin for them): each of its tiles (at most `sharedCacheTiles`) looked up, those found
   * taken into the cache, and the rest to ask the origin for (`warmRest`, null: nothing).
   */
  async function warmShared(body, tier) {
    if (!shared.enabled || proxy.sharedTiles === 0) return body;
    const tiles = JSON.parse(body).tiles.slice(0, proxy.sharedTiles);
    const found = await Promise.all(tiles.map((t) => shared.get(tier, t)));
    const now = Date.now();
    let filled = 0;
    tiles.forEach((t, i) => {
      const e = found[i];
      if (e && proxy.warmSharedFill(body, t, e.body, e.fetchedAt, now) >= 0) filled++;
    });
    return filled === 0 ? body : (proxy.warmRest(body, Date.now()) ?? null);
  }

  async function warm(origin, token, body, tier) {
    let given = false;
    // Planned just now (workerd's clock stands still until I/O): an answer read at its
    // deadline or later is given back as a failure, for the core no longer counts the
    // warming as out then (ProxyConfig::warm_timeout_ms).
    const planned = Date.now();
    let status = 0;
    let wait = -1;
    try {
      // The shared cache first, as a request reads it: only the rest goes to the origin.
      const rest = await warmShared(body, tier);
      if (rest === null) return;
      body = rest;
      const res = await originRequest(origin, token, body, options.warmTimeoutMs, 'warm');
      status = res.status;
      // A 429 or 503 puts off all warming by its Retry-After (the core decides how long).
      wait = retryAfterMs(res.headers.get('retry-after'), Date.now()) ?? -1;
      const bytes = await readBody(res, proxy.maxBodyBytes, "the origin's answer");
      if (Date.now() - planned >= options.warmTimeoutMs) throw new Error('past warmTimeoutMs');
      given = true;
      if (proxy.warmed(body, res.status, bytes, wait, Date.now()) >= 0) {
        bounds = res.headers.get(BOUNDS_HEADER);
        await sharePut(tier, JSON.parse(body).tiles.join(' '));
      }
    } catch (e) {
      // Warming is best effort: a failure leaves the cache as it was. It is given back
      // all the same (status 0: nothing written): while a warming of the same tiles is
      // out, the core judges their answers by the earliest planning (src/proxy/change.rs).
      // An answer too large to read is given back as such: the core warms its tiles in
      // smaller groups next, and a 429's or 503's Retry-After still puts warming off.
      if (given) return;
      if (e instanceof TooLarge) proxy.warmTooLarge(body, status, e.seen, wait, Date.now());
      else proxy.warmed(body, 0, new Uint8Array(0), -1, Date.now());
    }
  }

  /** Looks up `step.shared` in the shared cache; the step planned again with what it held. */
  async function sharedLookups(step) {
    const tiles = step.shared.split(' ');
    const found = await Promise.all(tiles.map((t) => shared.get(step.access, t)));
    const now = Date.now();
    let filled = 0;
    tiles.forEach((t, i) => {
      const e = found[i];
      if (e && proxy.sharedFill(step.handle, t, e.body, e.fetchedAt, now) >= 0) filled++;
    });
    if (filled === 0) return step;
    return take(proxy.resume(step.handle, now));
  }

  async function batch(request, env, ctx) {
    const origin = env.ORIGIN; // checked by setup
    const ct = request.headers.get('content-type');
    if (ct !== null && !isJson(ct)) {
      return error(415, 'unsupported_media_type',
        `content-type ${JSON.stringify(ct.slice(0, 64))} is not accepted: send application/json (or text/plain)`);
    }
    let tier;
    try {
      tier = await auth.tier(request);
    } catch (e) {
      if (e instanceof Unauthorized) {
        return error(e.status, e.code, e.message, { 'www-authenticate': e.challenge });
      }
      if (e instanceof KeysUnavailable) return error(502, 'upstream_error', e.message, { 'retry-after': String(e.retryAfterS) });
      return tokenUnchecked(e);
    }
    // A caller's body: at most what the tile and id limits allow (about 517 KiB, as the
    // server reads), not the 8 MiB an origin answer may take (the isolate has 128 MB).
    let body;
    try {
      body = await readBody(request, proxy.maxRequestBytes, 'body');
    } catch (e) {
      if (e instanceof TooLarge) return error(413, 'payload_too_large', e.message);
      return error(400, 'bad_request', `the request body could not be read: ${e?.message ?? e}`);
    }
    const step = take(proxy.begin(body, tier, Date.now()));
    // A 403 (the body asks above the caller's tier) for a verified token says so (RFC 6750
    // 3.1); without a token it has no challenge.
    if (step.status === 403 && request.headers.has('authorization')) step.challenge = INSUFFICIENT_SCOPE_CHALLENGE;
    if (!step.origin) return answered(step, origin, env, ctx);
    // A client that leaves while its request waits (for the shared cache or the origin)
    // gives its place among the requests an isolate holds (1024, src/edge.rs) back at once:
    // workerd aborts `request.signal` when the client disconnects (with the compatibility
    // flag enable_request_signal, edge/config.capnp and wrangler.toml; without it the
    // signal never aborts and the place is let go after its hold time, src/edge.rs). Its
    // origin call is not cancelled here; it is this request's own (no other request waits
    // on it: docs/edge.md, "Per request, not across requests").
    const left = () => proxy.abandon(step.handle);
    request.signal?.addEventListener('abort', left, { once: true });
    try {
      return await waiting(step, origin, env, ctx);
    } finally {
      request.signal?.removeEventListener('abort', left);
    }
  }

  /** The answer of a step that needs no origin call; a hit warms too: the core plans the
   * neighbours its cache does not hold fresh (a ring wider than one warming request, a hit
   * from the shared cache). */
  function answered(step, origin, env, ctx) {
    if (step.warm) ctx.waitUntil(warm(origin, env.ORIGIN_TOKEN, step.warm, step.access));
    return respond(step, bounds);
  }

  /** The answer of a request waiting under `step.handle`: the shared cache's entries
   * first, then the origin for the rest. */
  async function waiting(step, origin, env, ctx) {
    if (step.shared && shared.enabled) step = await sharedLookups(step);
    if (!step.origin) return answered(step, origin, env, ctx);

    let done;
    try {
      // A 2xx too large to read that asked for more than one tile or id comes back with
      // the same handle and a narrower origin request (its first half; the rest is left
      // out as `response_full`, or as the origin's failure of the last part): asked again at
      // once, at most log2 of what was asked times.
      // All of a request's origin calls, their bodies read, share one `originTimeoutMs`
      // from the first (its client waits for them all, and gives up after its own
      // timeout): each later ask gets what is left, and with less than MIN_ASK_MS left the
      // request ends as a timeout.
      const limit = options.originTimeoutMs;
      const deadline = Date.now() + limit;
      let tooLarge = 0;
      for (let ask = step.origin; ask; ask = done.origin) {
        const left = deadline - Date.now();
        if (tooLarge > 0 && left < MIN_ASK_MS) {
          done = take(proxy.fail(step.handle, true,
            `its answers to ${tooLarge} requests were over the body limit (${proxy.maxBodyBytes} bytes), and asking for less in part ran out of originTimeoutMs (${limit} ms): ${Math.max(0, left)} ms left, under ${MIN_ASK_MS}`,
            Date.now()));
          break;
        }
        let status = 0;
        let wait = -1;
        try {
          const res = await originRequest(origin, env.ORIGIN_TOKEN, ask, Math.max(0, left), 'request');
          status = res.status;
          // Its Retry-After as read (-1: none, or not well-formed); the core decides what of
          // it goes on (only with a 429 or 503, capped, or its default), whatever the body.
          wait = retryAfterMs(res.headers.get('retry-after'), Date.now()) ?? -1;
          const bytes = await readBody(res, proxy.maxBodyBytes, "the origin's answer");
          done = take(proxy.complete(step.handle, res.status, bytes, wait, Date.now()));
          if (res.status === 200 && done.status === 200 && !done.originError) bounds = res.headers.get(BOUNDS_HEADER);
        } catch (e) {
          if (e instanceof TooLarge) {
            // An answer, too large to read: the core says so with its size and the limit
            // (a 429 or 503 stays one, with its Retry-After), or asks for part of it.
            tooLarge++;
            done = take(proxy.tooLarge(step.handle, status, e.seen, wait, Date.now()));
          } else {
            const timeout = e?.name === 'TimeoutError' || e?.name === 'AbortError';
            const message = !timeout ? String(e?.message ?? e)
              : tooLarge === 0 ? `no answer within originTimeoutMs (${limit} ms)`
                : `no answer within the ${left} ms left of originTimeoutMs (${limit} ms) after its answers to ${tooLarge} requests were over the body limit (${proxy.maxBodyBytes} bytes) and it was asked for less in part`;
            done = take(proxy.fail(step.handle, timeout, message, Date.now()));
          }
        }
      }
    } finally {
      proxy.abandon(step.handle);
    }
    const put = done.status === 200 ? sharePut(done.access, done.sharedPut) : null;
    if (put) ctx.waitUntil(put);
    if (done.warm) ctx.waitUntil(warm(origin, env.ORIGIN_TOKEN, done.warm, done.access));
    return respond(done, bounds);
  }

  return {
    async fetch(request, env, ctx) {
      const failed = setup(env);
      if (failed) return failed;
      await maybePoll(env, ctx);
      const { pathname } = new URL(request.url);
      if (pathname === '/v1/batch') {
        if (request.method === 'POST') return batch(request, env, ctx);
        if (request.method === 'OPTIONS') {
          const headers = cors(new Headers({
            'access-control-allow-methods': 'POST, OPTIONS',
            'access-control-allow-headers': 'content-type, authorization',
            'access-control-max-age': '600',
          }));
          return new Response(null, { status: 204, headers });
        }
        return error(405, 'method_not_allowed', '/v1/batch accepts POST (and OPTIONS for CORS preflight)');
      }
      if (pathname === '/healthz' && request.method === 'GET') return new Response('ok\n');
      if (pathname === '/edge/stats' && request.method === 'GET') {
        const refused = await statsRefused(request);
        if (refused) return refused;
        const stats = JSON.parse(proxy.stats());
        stats.shared = { enabled: shared.enabled, ...shared.stats };
        stats.tokens = auth.stats();
        stats.changes = { ...feed };
        return json(200, JSON.stringify(stats));
      }
      return error(404, 'not_found', 'no such route: the API is POST /v1/batch, GET /healthz, GET /edge/stats');
    },
  };
}

export default createWorker();
