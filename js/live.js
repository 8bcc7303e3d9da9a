// tilewarm/live: follow a server's change feed (GET /v1/changes, server-sent events) so a
// TileCache drops what changed, refetches what is visible and tells onUpdate listeners.
//
//   const stop = new AbortController();
//   follow(cache, 'https://api.example/v1/changes', { auth, signal: stop.signal });
//
// An EventSource-like reader over fetch, because EventSource cannot send an Authorization
// header. Each `invalidate` event goes through cache.invalidate (the core's invalidation);
// `reset` (the server could not replay what was missed) invalidates everything (at most
// once per RESET_GAP_MS: one arriving sooner is applied at the end of it). A dropped
// connection reconnects with `Last-Event-ID` and backs off (0.5 s doubling to 30 s, with
// jitter, and at least a refusal's Retry-After; back to 0.5 s once a connection has stayed
// up for STABLE_MS, or maxRetryMs when that is less), so no event is lost while the server
// still holds it, and a server or proxy that ends each stream right after `ready` (or sends
// `expired` at once) is not reconnected to several times a second. The first connection
// invalidates everything too: what the cache held before it cannot be proven fresh
// (follow right after create and that is nothing); so does any connection with no id to
// resume from (RESUMABLE_ID), as the server then replays nothing.
// The server filters the feed for the connection's verified tier (ids go to the top tier
// only), so when the cache's tier changes (cache.onAccess: setAccess, or a lower tier the
// server reported) the connection is dropped and made again at once with a fresh
// auth.token(), resuming after the last event applied; events the old connection still
// delivers are not applied or reported. The server ends a stream whose token stopped
// verifying with an `expired` event: the next connection asks auth.token() again, with no
// error reported.
// What a connection can make the reader hold is bounded: an event past MAX_EVENT_CHARS is
// skipped as it arrives (an `invalidate` one invalidates everything). Every event's id is
// the last event id, as an EventSource's is (one of an unknown kind too), and a failed
// connection or read reaches onError as TileCache's do (ERR_NETWORK, the error as its cause),
// and so does an auth.token() that fails or gives no usable token, or a 401 from the feed
// (ERR_UNAUTHORIZED; an HTTP error's status is on the error, as on TileCache's).
// Types: live.d.ts.

import { retryAfterMs } from './retry-after.js';
import { report } from './report.js';

const OPTION_NAMES = ['signal', 'auth', 'headers', 'fetch', 'lastEventId', 'onEvent', 'onError', 'minRetryMs', 'maxRetryMs'];
const TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
/** An event id that can go back as `Last-Event-ID` and be read there: visible ASCII (the
 * server's are `<ms>-<seq>`). */
const RESUMABLE_ID = /^[\x21-\x7e]+$/;
/** How long a connection must stay up after its `ready` for the backoff to start over at
 * minRetryMs (at most maxRetryMs). A `ready` alone proves nothing: a feed that closes right
 * after it used to be reconnected to every 0.25-0.5 s for ever. */
const STABLE_MS = 30_000;

/** Least time between two invalidations of everything the feed makes (`reset`, an event
 * that cannot be read, `all`): the first is applied at once, those within this much of it
 * once at its end. Each one refetches the whole view, and a server sends a `reset` for
 * every change by id to a follower below the top tier (a busy database's changes, say): one
 * view refetch per event, twenty a second, before. */
const RESET_GAP_MS = 1000;

/** Longest Retry-After honoured (an hour), as the batch requests' backoff takes it. */
const MAX_RETRY_AFTER_MS = 3_600_000;

function fail(Class, code, message, cause) {
  const e = new Class(message, cause === undefined ? undefined : { cause });
  e.code = code;
  return e;
}

/** A connection that failed or a body that could not be read (what fetch and the stream
 * reject with, a bare TypeError), as TileCache reports one: `ERR_NETWORK`, the error as its
 * `cause`. */
const networkError = (e) => fail(Error, 'ERR_NETWORK', `change feed: network error: ${e?.cause?.message ?? e?.message ?? e}`, e);

/** `p`'s outcome, or a rejection with the signal's reason once `signal` aborts first: an
 * `auth.token()` that never settles (a sign-in that never comes) must not keep following
 * (its listeners, `done`) alive after the signal aborts or the cache is disposed. */
function unlessAborted(p, signal) {
  return new Promise((ok, no) => {
    const off = () => no(signal.reason);
    if (signal.aborted) return off();
    signal.addEventListener('abort', off, { once: true });
    Promise.resolve(p).then(ok, no).finally(() => signal.removeEventListener('abort', off));
  });
}

/** Most characters an event (its data lines, and the line being read) may hold: 1 Mi, above
 * the largest the server sends (an invalidation within the protocol's request limits, under
 * 600 KiB). A longer one is not kept: the reader skips to its end (memory stays bounded
 * whatever a server or proxy sends, a line that never ends included) and hands it on as
 * `tooLong`, an event that cannot be read. */
const MAX_EVENT_CHARS = 1 << 20;

/** Splits a text stream into server-sent events: { event, id, data } (id undefined when
 * the event set none), or { event, id, tooLong: true } for one past MAX_EVENT_CHARS, after
 * `onTooLong()` was called when it passed it. Follows the HTML spec's parsing rules. */
async function* events(body, onTooLong) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  // `size`: the characters of `data`; `skip`: the rest of the line being read is dropped
  // (it made the event too long).
  // `afterCR`: the last line ended with a `\r` that closed the chunk, so a `\n` opening the
  // next chunk is the rest of that line end (`\r\n` split across chunks), not an empty line.
  let buf = '', event = '', data = [], size = 0, id, tooLong = false, skip = false, afterCR = false;
  const overflow = () => {
    if (!tooLong) onTooLong();
    tooLong = true;
    data = [];
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      if (!value) continue;
      buf += afterCR && value.startsWith('\n') ? value.slice(1) : value;
      afterCR = false;
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        const crlf = buf.startsWith('\r\n', nl);
        afterCR = !crlf && buf[nl] === '\r' && nl + 1 === buf.length;
        buf = buf.slice(nl + (crlf ? 2 : 1));
        if (skip) {
          skip = false;
          continue;
        }
        if (line === '') {
          if (tooLong) yield { event: event || 'message', id, tooLong };
          // One with an id alone is handed on too: its id is the last event id (the spec).
          else if (data.length || event || id !== undefined) yield { event: event || 'message', id, data: data.join('\n') };
          event = ''; data = []; size = 0; id = undefined; tooLong = false;
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') event = v;
        else if (field === 'data') {
          size += v.length + 1;
          if (size > MAX_EVENT_CHARS) overflow();
          else data.push(v);
        } else if (field === 'id' && !v.includes('\0')) id = v;
      }
      // A line not ended yet that makes the event too long: dropped up to its end.
      if (!skip && size + buf.length > MAX_EVENT_CHARS) {
        overflow();
        skip = true;
      }
      if (skip) buf = '';
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Follows the change feed at `url` until `options.signal` aborts or the cache is disposed.
 * Returns an object whose `lastEventId` is the id of the last event read and whose
 * `done` resolves when following stopped. See live.d.ts.
 */
export function follow(cache, url, options = {}) {
  if (typeof cache?.invalidate !== 'function' || typeof cache.onDispose !== 'function' || typeof cache.onAccess !== 'function') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'follow takes a TileCache first');
  }
  let href;
  try { href = new URL(url).href; } catch {
    throw fail(TypeError, 'ERR_INVALID_ARG_VALUE', `url must be an absolute URL string, got ${typeof url === 'string' ? JSON.stringify(url) : typeof url}`);
  }
  if (options === null || typeof options !== 'object') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'options must be an object');
  for (const k of Object.keys(options)) {
    if (!OPTION_NAMES.includes(k)) throw fail(TypeError, 'ERR_INVALID_ARG_VALUE', `unknown option ${JSON.stringify(k)}; allowed: ${OPTION_NAMES.join(', ')}`);
  }
  const { signal, auth, headers = {}, fetch = globalThis.fetch, onEvent, onError: onErrorOption = () => {} } = options;
  // Checked here: a wrong type would fail later, on every connection or event, or (onError)
  // reject `done` with nobody told why.
  for (const [name, f] of [['fetch', fetch], ['onEvent', onEvent], ['onError', onErrorOption]]) {
    if (f !== undefined && typeof f !== 'function') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${name} must be a function`);
  }
  // An onError that throws is the listener's fault, reported as TileCache reports its
  // listeners' (reportError, else console.error): it used to end following, rejecting `done`.
  const onError = (e) => {
    try { onErrorOption(e); } catch (err) { report(err); }
  };
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'signal must be an AbortSignal');
  if (options.lastEventId !== undefined && typeof options.lastEventId !== 'string') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'lastEventId must be a string');
  // One that cannot go back as `Last-Event-ID` is refused here: fetch refuses a header value
  // past U+00FF or with CR/LF (every connection failed, for ever), and the server reads an
  // empty one, or one with other than visible ASCII, as none (nothing replayed, and nothing
  // invalidated either, as the id said there was a place to resume from).
  if (options.lastEventId !== undefined && !RESUMABLE_ID.test(options.lastEventId)) {
    const id = options.lastEventId;
    throw fail(TypeError, 'ERR_INVALID_ARG_VALUE', `lastEventId must be an event id of the feed (visible ASCII, not empty), got ${id.length > 40 ? `a string of ${id.length} characters that is not one` : JSON.stringify(id)}`);
  }
  // As TileCache reads its `headers`: an object or a Headers (whose entries a spread would lose).
  let headerList;
  try {
    if (headers === null || typeof headers !== 'object') throw new TypeError('not an object');
    headerList = Object.fromEntries(new Headers(headers));
  } catch (e) {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `headers must be an object of valid header names and values (${e.message})`);
  }
  const minMs = options.minRetryMs ?? 500, maxMs = options.maxRetryMs ?? 30_000;
  const numbers = typeof minMs === 'number' && typeof maxMs === 'number';
  // At most setTimeout's longest delay: a longer one fires at once, and the feed would be
  // reconnected to in a tight loop once the backoff passed it.
  if (!numbers || !(minMs > 0 && maxMs >= minMs && maxMs <= 2 ** 31 - 1)) {
    throw fail(numbers ? RangeError : TypeError, numbers ? 'ERR_OUT_OF_RANGE' : 'ERR_INVALID_ARG_TYPE',
      `minRetryMs and maxRetryMs must be numbers of ms, 0 < minRetryMs <= maxRetryMs <= 2147483647, got ${typeof minMs === 'number' ? minMs : typeof minMs} and ${typeof maxMs === 'number' ? maxMs : typeof maxMs}`);
  }
  if (auth !== undefined && typeof auth?.token !== 'function') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'auth must be an object { token: () => string | Promise<string> }');
  }
  const state = { lastEventId: options.lastEventId, done: undefined };
  const ctrl = new AbortController();
  const stop = () => ctrl.abort();
  signal?.addEventListener('abort', stop, { once: true });
  if (signal?.aborted) stop();
  // A disposed cache stops following at once, as an aborted signal does: the connection
  // (or the wait before the next) is aborted, where the loop used to notice only when an
  // event's invalidate threw, so a quiet or failing feed was followed for ever.
  const offDispose = cache.onDispose(stop);
  // The connection being made or read (its own controller, aborted on a change of tier),
  // and how to end the wait before the next one early.
  let conn = null, wake = null;
  const offAccess = cache.onAccess(() => {
    conn?.abort();
    wake?.();
  });

  // When everything was last invalidated (Date.now()), and the timer of the one put off
  // until RESET_GAP_MS after it, if any.
  let allAt = -Infinity, allLater = null;
  /** Invalidates everything now; false when the cache is gone. */
  const invalidateAll = () => {
    clearTimeout(allLater);
    allLater = null;
    allAt = Date.now();
    try { cache.invalidate({ all: true }); } catch (e) {
      if (e?.code === 'ERR_DISPOSED') return false;
      onError(e);
    }
    return true;
  };

  /** Notes the id an event set (undefined: none). One that cannot be sent back resets it:
   * an empty one (EventSource's rule; the server reads an empty Last-Event-ID as none), or
   * one with other than visible ASCII (fetch refuses a header value past U+00FF, so every
   * reconnect failed for ever; the server reads one with other bytes as none). */
  const noteId = (id) => {
    if (id !== undefined) state.lastEventId = RESUMABLE_ID.test(id) ? id : undefined;
  };

  /** Applies one event (a `ready` with `all` invalidates everything); false when the
   * cache is gone. */
  const apply = (ev, all = false) => {
    let what = all ? { all: true } : undefined;
    if (ev.event === 'invalidate' && ev.tooLong) {
      what = { all: true }; // reported when it passed the limit
    } else if (ev.event === 'invalidate') {
      try { what = JSON.parse(ev.data); } catch { what = undefined; }
      const ok = what && typeof what === 'object' && !Array.isArray(what);
      // An event that cannot be read cannot be proven harmless.
      what = ok ? { ids: what.ids ?? undefined, tiles: what.tiles ?? undefined, classes: what.classes ?? undefined, all: what.all === true } : { all: true };
      if (!ok) onError(fail(Error, 'ERR_BAD_EVENT', `change feed: an invalidate event whose data is not an invalidation; invalidated everything`));
    } else if (ev.event === 'reset') {
      what = { all: true };
    } else if (ev.event !== 'ready') {
      // Unknown events are not applied (an EventSource dispatches them to no listener),
      // but their id is the last event id, as every event's is there.
      noteId(ev.id);
      return true;
    }
    if (what?.all) {
      // Within RESET_GAP_MS of the last: once, at the end of it (it covers every one since).
      // A clock set back since the last is not within it: put off, the reset would wait as
      // long as the clock went back.
      const since = Date.now() - allAt;
      const early = since >= 0 && since < RESET_GAP_MS;
      if (!early && !invalidateAll()) return false;
      if (early) allLater ??= setTimeout(invalidateAll, allAt + RESET_GAP_MS - Date.now());
    } else if (what) {
      try {
        cache.invalidate(what);
      } catch (e) {
        if (e?.code === 'ERR_DISPOSED') return false;
        onError(e);
        try { cache.invalidate({ all: true }); } catch { return false; }
      }
    }
    noteId(ev.id);
    try { onEvent?.({ type: ev.event, id: ev.id, invalidation: what }); } catch (e) { onError(e); }
    return true;
  };

  const stableMs = Math.min(STABLE_MS, maxMs);
  const run = async () => {
    // `floor`: the Retry-After of the last refusal (429, 503), the least the next wait is.
    let wait = minMs, floor = 0, first = state.lastEventId === undefined;
    while (!ctrl.signal.aborted) {
      // With no id to resume from (an event reset it with an empty `id:`, or the feed sends
      // none) the server starts from now, replaying nothing: what changed while this was
      // down is unknown, so this connection's `ready` invalidates everything, as the first's.
      if (state.lastEventId === undefined) first = true;
      const c = new AbortController();
      conn = c;
      // When this connection's `ready` came (Date.now()); undefined until then.
      let upAt;
      const cut = () => c.abort();
      ctrl.signal.addEventListener('abort', cut, { once: true });
      try {
        const h = { ...headerList, accept: 'text/event-stream' };
        if (auth) {
          // Given up on when this connection is aborted (stop, or a change of tier).
          // A token() that fails or gives no usable token is ERR_UNAUTHORIZED, as a batch
          // request's is in TileCache (its error the cause; the token never in a message).
          let token;
          try {
            token = await unlessAborted(auth.token(), c.signal);
          } catch (e) {
            if (c.signal.aborted) throw e; // stopped, or a change of tier: not a failure
            throw fail(Error, 'ERR_UNAUTHORIZED', `change feed: auth.token() failed: ${e?.message ?? e}`, e);
          }
          if (typeof token !== 'string' || !TOKEN.test(token)) {
            throw fail(Error, 'ERR_UNAUTHORIZED', 'change feed: auth.token() must give a bearer token (letters, digits and -._~+/)');
          }
          h.authorization = `Bearer ${token}`;
        }
        // The tier changed while the token was asked for: it may be the old one's.
        if (c.signal.aborted) continue;
        if (state.lastEventId !== undefined) h['last-event-id'] = state.lastEventId;
        let res;
        try {
          res = await fetch.call(globalThis, href, { headers: h, signal: c.signal });
        } catch (e) {
          throw networkError(e);
        }
        if (res.status === 400 && state.lastEventId !== undefined) {
          // The server cannot read our id: start over, invalidating everything.
          res.body?.cancel().catch(() => {});
          onError(Object.assign(fail(Error, 'ERR_FEED', `change feed: HTTP 400 for Last-Event-ID ${state.lastEventId}; starting over`), { status: 400 }));
          state.lastEventId = undefined;
          first = true;
          continue;
        }
        if (!res.ok || !res.body) {
          res.body?.cancel().catch(() => {});
          floor = res.ok ? 0 : Math.min(MAX_RETRY_AFTER_MS, retryAfterMs(res.headers?.get?.('retry-after'), Date.now()) ?? 0);
          // A 401 is ERR_UNAUTHORIZED, as TileCache reports a batch request's (a 403 is not:
          // TileCache's is ERR_HTTP); the status is on the error either way.
          const code = res.status === 401 ? 'ERR_UNAUTHORIZED' : 'ERR_FEED';
          const e = fail(Error, code, `change feed: HTTP ${res.status}` + (floor ? ` (Retry-After: ${Math.ceil(floor / 1000)} s)` : ''));
          if (!res.ok) e.status = res.status;
          throw e;
        }
        let expired = false;
        const tooLong = () => onError(fail(Error, 'ERR_BAD_EVENT',
          `change feed: an event longer than ${MAX_EVENT_CHARS} characters; it is skipped, and if it is an invalidate, everything is invalidated`));
        try {
          for await (const ev of events(res.body, tooLong)) {
            // Sent for the tier before a change: not applied, not reported.
            if (c.signal.aborted) break;
            // The token the connection was opened with stopped verifying: the server ends
            // the stream; connect again (after the wait) with a fresh auth.token().
            if (ev.event === 'expired') { noteId(ev.id); expired = true; break; }
            if (ev.event === 'ready') {
              upAt ??= Date.now();
              if (first) {
                first = false;
                if (!apply(ev, true)) return;
                continue;
              }
            }
            if (!apply(ev)) return;
          }
        } catch (e) {
          throw networkError(e); // the body could not be read
        }
        if (c.signal.aborted) continue;
        if (!expired) throw fail(Error, 'ERR_FEED', 'change feed: the server closed the stream');
      } catch (e) {
        if (ctrl.signal.aborted) return;
        // A change of tier: connect again at once, with the new credentials.
        if (c.signal.aborted) continue;
        onError(e);
      } finally {
        ctrl.signal.removeEventListener('abort', cut);
        conn = null;
        // A connection that stayed up long enough was a healthy one: the next wait starts
        // over. (A change of tier skips the wait and keeps it as it is.)
        if (upAt !== undefined && Date.now() - upAt >= stableMs) wait = minMs;
      }
      const jittered = Math.max(floor, wait / 2 + Math.random() * (wait / 2));
      floor = 0;
      await new Promise((ok) => {
        const done = () => { clearTimeout(t); ctrl.signal.removeEventListener('abort', done); wake = null; ok(); };
        const t = setTimeout(done, jittered);
        ctrl.signal.addEventListener('abort', done, { once: true });
        // A change of tier ends the wait too: the next connection is the new tier's.
        wake = done;
      });
      wait = Math.min(maxMs, wait * 2);
    }
  };
  state.done = run().finally(() => {
    // One put off is applied now (nothing when the cache is gone).
    if (allLater) invalidateAll();
    signal?.removeEventListener('abort', stop);
    offDispose();
    offAccess();
  });
  return state;
}
