// Seeded hostile-feed runs of tilewarm/live (js/live.js, imported from the source so no
// build is needed): a stubbed fetch whose SSE stream is split at random byte boundaries
// (every byte, some runs), with CRLF / CR / LF line ends, comments, `retry:` fields, unknown
// fields and event types, ids that go backwards or repeat, `reset` and `ready` events,
// malformed JSON, and a stream that ends, errors mid-event or stalls. A fake cache records
// what reaches it. Each run's seed is in its name, so a failure reproduces.
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { follow } from '../live.js';
import { mulberry32 } from './support/mulberry32.mjs';

function rng(seed) {
  const next = mulberry32(seed);
  const int = (n) => Math.floor(next() * n);
  const pick = (xs) => xs[int(xs.length)];
  return { next, int, pick, chance: (p) => next() < p };
}

/** A cache stand-in: records every invalidate, can be disposed. */
function fakeCache() {
  const calls = [], disposers = new Set(), access = new Set();
  let disposed = false;
  return {
    calls,
    invalidate(what) {
      if (disposed) throw Object.assign(new Error('disposed'), { code: 'ERR_DISPOSED' });
      calls.push(structuredClone(what));
      return 0;
    },
    onDispose(f) { if (disposed) { f(); return () => {}; } disposers.add(f); return () => disposers.delete(f); },
    onAccess(f) { access.add(f); return () => access.delete(f); },
    dispose() { disposed = true; for (const f of [...disposers]) f(); disposers.clear(); },
    get listeners() { return disposers.size + access.size; },
  };
}

const IDS = ['a', 'b', 'é', '🌍x', 'item:1', 'x y', '"q"', 'a\\b'];
const TILES = ['14/2624/5721', '15/5249/11443', '0/0/0'];
const CLASSES = ['sold', 'pending', 'ünïcode'];

/** One random feed: the text of its stream and what each event should do. */
function makeFeed(r) {
  // A `\n` right after a `\r` would be the rest of that line end, not a line of its own.
  const eol = () => (text.endsWith('\r') ? r.pick(['\r\n', '\r']) : r.pick(['\n', '\r\n', '\r']));
  let text = '';
  const line = (s) => { text += s + eol(); };
  const expected = []; // { kind: 'inv', what, id } | { kind: 'all', id } | { kind: 'ready', id }
  let lastId = '0-0';
  let seq = 100;
  const nextId = () => {
    // Ids that go backwards or repeat, as a hostile server may send them.
    const k = r.int(10);
    if (k === 0) seq -= 3; else if (k === 1) { /* repeat */ } else seq += 1;
    return `${1000 + seq}-${r.int(3)}`;
  };
  const junk = () => {
    const k = r.int(6);
    if (k === 0) line(`: comment ${r.int(1000)}`);
    else if (k === 1) line(`retry: ${r.pick(['0', '-5', '99999999999999999999', 'soon', '1000', ''])}`);
    else if (k === 2) line(`${r.pick(['reach', 'foo', 'Data', 'ID', 'event '])}: ${r.pick(['tiles', 'x', ''])}`);
    else if (k === 3) line(':');
    else if (k === 4) line('retry');
  };
  const field = (name, v) => {
    // `name:value`, `name: value` (one space dropped), `name:  value` keeps one.
    const sp = r.pick(['', ' ']);
    line(`${name}:${sp}${v}`);
  };
  line(':ok');
  text += eol(); // an empty line before anything: dispatches nothing
  const n = 5 + r.int(25);
  let readySent = false;
  for (let k = 0; k < n; k++) {
    if (r.chance(0.3)) junk();
    const kind = !readySent ? 'ready' : r.pick(['inv', 'inv', 'inv', 'reset', 'ready', 'unknown', 'bad', 'empty']);
    const id = r.chance(0.9) ? nextId() : undefined;
    // Every event's id is the last event id, an unknown one's too (EventSource's rule).
    if (id !== undefined) lastId = id;
    const order = [];
    if (kind === 'ready') {
      readySent = true;
      order.push(['event', 'ready'], ['data', '{}']);
      expected.push({ kind: 'ready', id });
    } else if (kind === 'inv') {
      const what = {};
      if (r.chance(0.7)) what.ids = Array.from({ length: 1 + r.int(3) }, () => r.pick(IDS));
      if (r.chance(0.4)) what.tiles = Array.from({ length: 1 + r.int(2) }, () => r.pick(TILES));
      if (r.chance(0.3)) what.classes = [r.pick(CLASSES)];
      if (!what.ids && !what.tiles && !what.classes) what.ids = ['a'];
      const sent = { ...what };
      if (r.chance(0.3)) sent.reach = 'tiles';
      if (r.chance(0.2)) sent.all = false;
      let json = JSON.stringify(sent, null, r.chance(0.3) ? 1 : undefined);
      order.push(['event', 'invalidate']);
      // Multi-line JSON goes as several data lines (joined with \n, JSON whitespace).
      for (const part of json.split('\n')) order.push(['data', part]);
      expected.push({ kind: 'inv', what: { ids: what.ids, tiles: what.tiles, classes: what.classes, all: false }, id });
    } else if (kind === 'reset') {
      order.push(['event', 'reset'], ['data', '{}']);
      expected.push({ kind: 'all', id });
    } else if (kind === 'unknown') {
      order.push(['event', r.pick(['tiles', 'Invalidate', 'invalidate ', 'ping'])], ['data', '{"ids":["never"]}']);
    } else if (kind === 'bad') {
      order.push(['event', 'invalidate'], ['data', r.pick(['{"ids":["never"]', 'null', '[1]', '"x"', '', '{'])]);
      expected.push({ kind: 'all', id, bad: true });
    } else {
      // `message` events (no event field) are not the feed's: ignored.
      order.push(['data', '{"ids":["never"]}']);
    }
    if (id !== undefined) order.splice(r.int(order.length + 1), 0, ['id', id]);
    for (const [f, v] of order) { field(f, v); if (r.chance(0.1)) junk(); }
    text += eol();
  }
  return { text, expected, lastId };
}

/** Splits the UTF-8 bytes of `text` into chunks: every byte, or random sizes. */
function chunksOf(r, text) {
  const bytes = new TextEncoder().encode(text);
  const out = [];
  const every = r.chance(0.3);
  for (let i = 0; i < bytes.length;) {
    const n = every ? 1 : 1 + r.int(r.pick([2, 7, 40, 400]));
    out.push(bytes.slice(i, i + n));
    i += n;
  }
  return out;
}

const settle = async () => { for (let k = 0; k < 4; k++) await new Promise((ok) => setImmediate(ok)); };

for (let seed = 1; seed <= 60; seed++) {
  test(`seed ${seed}: every valid invalidation reaches the cache as sent, nothing invalid does`, async () => {
    const r = rng(seed);
    const { text, expected, lastId } = makeFeed(r);
    const chunks = chunksOf(r, text);
    // How the stream ends: closed, errored mid-event, or left open (stall).
    const end = r.pick(['close', 'error', 'stall']);
    const tail = end === 'error' ? new TextEncoder().encode('event: invalidate\ndata: {"ids":["half"]}') : null;
    const cache = fakeCache();
    const conns = [];
    const stop = new AbortController();
    let streamsOpen = 0;
    const fetch = async (_url, { headers, signal }) => {
      conns.push(headers);
      if (conns.length > 1) {
        // Later connections: stall until aborted.
        streamsOpen++;
        return new Response(new ReadableStream({
          start(c) { signal.addEventListener('abort', () => { streamsOpen--; c.error(signal.reason); }, { once: true }); },
        }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
      }
      let i = 0;
      return new Response(new ReadableStream({
        async pull(c) {
          if (r.chance(0.2)) await new Promise((ok) => setImmediate(ok));
          if (i < chunks.length) { c.enqueue(chunks[i++]); return; }
          if (end === 'close') c.close();
          else if (end === 'error') { c.enqueue(tail); c.error(new Error('connection reset')); }
          else if (!signal.aborted) {
            // As fetch's body does: errors when the request's signal aborts.
            streamsOpen++;
            return new Promise((ok) => signal.addEventListener('abort', () => { streamsOpen--; c.error(signal.reason); ok(); }, { once: true }));
          }
        },
      }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
    };
    const events = [], errors = [];
    let unhandled = null;
    const onUnhandled = (e) => { unhandled = e; };
    process.on('unhandledRejection', onUnhandled);
    const f = follow(cache, 'http://feed.test/v1/changes', {
      fetch, signal: stop.signal, lastEventId: '0-0', minRetryMs: 1, maxRetryMs: 2,
      onEvent: (e) => events.push(e), onError: (e) => errors.push(e),
    });
    const want = expected.length;
    const deadline = Date.now() + 5000;
    // Until the last event was read too: one of a kind not reported (unknown, `message`)
    // may end the feed, and its id counts.
    while ((events.length < want || f.lastEventId !== lastId) && Date.now() < deadline) await new Promise((ok) => setTimeout(ok, 2));
    if (end !== 'stall') while (conns.length < 2 && Date.now() < deadline) await new Promise((ok) => setTimeout(ok, 2));
    await settle();
    const ctx = `seed ${seed} (${end}, ${chunks.length} chunks)`;
    // Every event the feed's own kinds: reported in order, with its id.
    assert.deepEqual(events.map((e) => `${e.type} ${e.id}`), expected.map((x) => `${x.kind === 'inv' || x.bad ? 'invalidate' : x.kind === 'all' ? 'reset' : 'ready'} ${x.id}`), ctx);
    // What reached the cache: each valid invalidation as sent, in order; an `all` for
    // each reset and bad event (the first at once, the rest put off: counted below).
    const byId = cache.calls.filter((w) => !w.all);
    assert.deepEqual(byId, expected.filter((x) => x.kind === 'inv').map((x) => x.what), ctx);
    assert.ok(!JSON.stringify(cache.calls).includes('never') && !JSON.stringify(cache.calls).includes('half'), `${ctx}: an invalid event reached the cache`);
    const alls = expected.filter((x) => x.kind === 'all').length;
    const allCalls = cache.calls.filter((w) => w.all).length;
    assert.ok(allCalls <= alls && (alls === 0 || allCalls >= 1), `${ctx}: ${allCalls} invalidations of everything for ${alls} resets and bad events`);
    assert.equal(errors.filter((e) => e.code === 'ERR_BAD_EVENT').length, expected.filter((x) => x.bad).length, ctx);
    // Resume after the last event's id, an unknown event's or a `message`'s too.
    assert.equal(f.lastEventId, lastId, ctx);
    if (end !== 'stall') assert.equal(conns[1]['last-event-id'], lastId, `${ctx}: the reconnect resumes after the last id`);
    stop.abort();
    await f.done;
    // A reset put off at the end of the gap is applied when following stops.
    if (alls > 0) assert.ok(cache.calls.some((w) => w.all), ctx);
    await settle();
    assert.equal(streamsOpen, 0, `${ctx}: a stream left open after stop`);
    assert.equal(cache.listeners, 0, `${ctx}: cache listeners left after stop`);
    process.off('unhandledRejection', onUnhandled);
    assert.equal(unhandled, null, ctx);
  });
}

// Refusals and broken connections in a random order, on a mocked clock: each wait is the
// documented backoff (minRetryMs doubling to maxRetryMs, jittered down to half) and at
// least a refusal's Retry-After (at most an hour); a 400 for a Last-Event-ID is asked
// again at once without it, once. No connection comes sooner, so no tight loop.
const ANSWERS = ['closed', 'midEvent', 'throws', 204, 400, 401, 403, 429, 500, 502, 503];
const RETRY_AFTER = [undefined, '', '3', '0', '-5', 'soon', '1.5', '99999999999999999999', 'date+', 'date-', '120'];
for (let seed = 1; seed <= 20; seed++) {
  test(`seed ${seed}: refusals and dropped connections back off within the documented bounds`, async () => {
    const r = rng(1000 + seed);
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_700_000_000_000 });
    try {
      const cache = fakeCache();
      const conns = []; // { at, lastEventId, answer, floor }
      const minMs = r.pick([1, 50, 500]), maxMs = minMs * r.pick([1, 4, 64]);
      let sent = 0;
      const fetch = async (_url, { headers }) => {
        const answer = r.pick(ANSWERS);
        let ra = r.pick(RETRY_AFTER);
        if (ra === 'date+') ra = new Date(Date.now() + 7000).toUTCString();
        if (ra === 'date-') ra = new Date(Date.now() - 7000).toUTCString();
        const c = { at: Date.now(), lastEventId: headers['last-event-id'], answer, ra };
        conns.push(c);
        if (answer === 'throws') throw new TypeError('fetch failed');
        if (typeof answer === 'number') {
          const h = ra === undefined ? {} : { 'retry-after': ra };
          return new Response(answer === 204 ? null : '{"error":{"code":"x","message":"no"}}', { status: answer, headers: h });
        }
        sent++;
        const body = `event: ready\nid: ${sent}-0\ndata: {}\n\n` + (answer === 'midEvent' ? 'event: invalidate\ndata: {"ids":["half"' : '');
        return new Response(new ReadableStream({
          // Errored on the read after the text (an error in start() would drop it unread).
          start(ctl) { ctl.enqueue(new TextEncoder().encode(body)); },
          pull(ctl) {
            if (answer === 'midEvent') ctl.error(new Error('connection reset'));
            else ctl.close();
          },
        }), { status: 200, headers: { 'content-type': 'text/event-stream', ...(ra === undefined ? {} : { 'retry-after': ra }) } });
      };
      const stop = new AbortController();
      const errors = [];
      const f = follow(cache, 'http://feed.test/v1/changes', {
        fetch, signal: stop.signal, lastEventId: '0-0', minRetryMs: minMs, maxRetryMs: maxMs, onError: (e) => errors.push(e),
      });
      const step = Math.max(1, minMs / 10);
      for (let t = 0; conns.length < 25 && t < 4 * 3_600_000; t += step) {
        await settle();
        // Past the first hour-long refusal, move on faster: its bound is checked below.
        mock.timers.tick(conns.at(-1) && Date.now() - conns.at(-1).at > maxMs * 2 ? 1000 : step);
      }
      await settle();
      const ctx = `seed ${seed} (min ${minMs}, max ${maxMs}): ${conns.map((c) => `${c.answer}${c.ra === undefined ? '' : `[${c.ra}]`}@${c.at - conns[0].at}`).join(' ')}`;
      // The model of live.d.ts: `wait` starts at minRetryMs and doubles after each wait,
      // up to maxRetryMs; the wait is in [wait / 2, wait], at least the Retry-After.
      let wait = minMs, lastId = '0-0';
      for (let k = 1; k < conns.length; k++) {
        const prev = conns[k - 1], gap = conns[k].at - prev.at;
        assert.equal(prev.lastEventId, lastId, `${ctx}: connection ${k - 1} resumes after the last id`);
        if (prev.answer === 400 && prev.lastEventId !== undefined) {
          assert.equal(gap, 0, `${ctx}: a 400 for the id is asked again at once`);
          lastId = undefined;
          continue;
        }
        if (prev.answer === 'closed' || prev.answer === 'midEvent') lastId = `${conns.slice(0, k).filter((c) => c.answer === 'closed' || c.answer === 'midEvent').length}-0`;
        let floor = 0;
        if (typeof prev.answer === 'number' && prev.answer !== 204) {
          const ra = prev.ra;
          if (/^\d+$/.test(ra ?? '')) floor = Math.min(3_600_000, Number(ra) * 1000);
          else if (ra?.startsWith?.('Mon') || /^[A-Z][a-z]{2},/.test(ra ?? '')) floor = Math.max(0, Date.parse(ra) - prev.at);
        }
        const lo = Math.max(floor, wait / 2), hi = Math.max(floor, wait);
        // The mocked clock moves in steps: a connection is seen up to a step (or a second,
        // once far past maxRetryMs) late.
        assert.ok(gap >= lo - 1000 && gap >= Math.floor(lo * 0.99) - 1, `${ctx}: gap ${k} of ${gap} ms, below ${lo}`);
        assert.ok(gap <= hi + Math.max(step, 1000), `${ctx}: gap ${k} of ${gap} ms, above ${hi}`);
        wait = Math.min(maxMs, wait * 2);
      }
      assert.ok(!JSON.stringify(cache.calls).includes('half'), ctx);
      assert.ok(errors.every((e) => e instanceof Error), ctx);
      stop.abort();
      await settle();
      assert.equal(await Promise.race([f.done.then(() => 'done'), settle().then(() => 'pending')]), 'done', ctx);
      assert.equal(cache.listeners, 0, ctx);
    } finally {
      mock.timers.reset();
    }
  });
}

// Stopped (signal aborted, or the cache disposed) at a random point: while auth.token() is
// pending (one that never settles: a sign-in that never comes), while fetch is, mid-stream,
// in the wait before a reconnect, or with an invalidation of everything put off. `done` resolves, the put-off one is applied (unless
// the cache is gone), and nothing runs afterwards: no connection, no invalidate, no timer.
const STAGES = ['token', 'fetch', 'stream', 'wait', 'putOff'];
for (let seed = 1; seed <= 20; seed++) {
  test(`seed ${seed}: stopping at any point settles done and leaves nothing running`, async () => {
    const r = rng(2000 + seed);
    const stage = STAGES[(seed - 1) % STAGES.length], how = Math.floor((seed - 1) / STAGES.length) % 2 ? 'dispose' : 'abort';
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_700_000_000_000 });
    try {
      const cache = fakeCache();
      let connections = 0, tokens = 0;
      const fetch = (_url, { signal }) => {
        connections++;
        if (stage === 'fetch') return new Promise((_, no) => signal.addEventListener('abort', () => no(signal.reason), { once: true }));
        if (stage === 'wait') return Promise.resolve(new Response(null, { status: 503 }));
        const text = stage === 'putOff'
          ? 'event: ready\nid: 1-0\ndata: {}\n\nevent: reset\nid: 2-0\ndata: {}\n\nevent: reset\nid: 3-0\ndata: {}\n\n'
          : 'event: ready\nid: 1-0\ndata: {}\n\n';
        return Promise.resolve(new Response(new ReadableStream({
          start(c) {
            c.enqueue(new TextEncoder().encode(text));
            signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
          },
        }), { status: 200 }));
      };
      const auth = { token: () => { tokens++; return stage === 'token' ? new Promise(() => {}) : 't0k3n'; } };
      const stop = new AbortController();
      const events = [];
      const f = follow(cache, 'http://feed.test/v1/changes', {
        fetch, auth, signal: stop.signal, lastEventId: '0-0', onEvent: (e) => events.push(e.type), onError: () => {},
      });
      for (let k = 0; k < 5 + r.int(20); k++) { await settle(); mock.timers.tick(r.int(3)); }
      const ctx = `seed ${seed}: stopped by ${how} at ${stage}`;
      assert.equal(tokens, 1, ctx);
      if (stage === 'putOff') assert.deepEqual(events, ['ready', 'reset', 'reset'], ctx);
      const before = cache.calls.length;
      if (how === 'abort') stop.abort(); else cache.dispose();
      await settle();
      assert.equal(await Promise.race([f.done.then(() => 'done'), settle().then(() => 'pending')]), 'done', ctx);
      // The reset put off is applied when following stops (the cache is gone when disposed).
      if (stage === 'putOff' && how === 'abort') assert.equal(cache.calls.length, before + 1, ctx);
      const after = { connections, tokens, calls: cache.calls.length };
      mock.timers.tick(3_600_000);
      await settle();
      assert.deepEqual({ connections, tokens, calls: cache.calls.length }, after, `${ctx}: something ran after stop`);
      assert.equal(cache.listeners, 0, ctx);
    } finally {
      mock.timers.reset();
    }
  });
}

// An onError that throws (a logger's bug, `onError: (e) => { throw e; }`) is a listener's
// fault, reported as TileCache reports its listeners' (reportError, else console.error):
// following goes on. It used to end following at the first bad event or dropped
// connection, with `done` rejected (unhandled, unless the page awaited it).
{
  test('an onError that throws does not end following', async () => {
    const cache = fakeCache();
    let connections = 0;
    const fetch = async (_url, { signal }) => {
      connections++;
      const text = connections === 1
        ? 'event: ready\nid: 1-0\ndata: {}\n\nevent: invalidate\nid: 2-0\ndata: {"ids":\n\nevent: invalidate\nid: 3-0\ndata: {"ids":["a"]}\n\n'
        : 'event: ready\nid: 3-0\ndata: {}\n\nevent: invalidate\nid: 4-0\ndata: {"ids":["b"]}\n\n';
      return new Response(new ReadableStream({
        start(c) {
          c.enqueue(new TextEncoder().encode(text));
          if (connections === 1) c.close();
          else signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
        },
      }), { status: 200 });
    };
    const reported = [];
    const realError = console.error, realReport = globalThis.reportError;
    console.error = (e) => reported.push(e);
    delete globalThis.reportError;
    let unhandled = null;
    const onUnhandled = (e) => { unhandled = e; };
    process.on('unhandledRejection', onUnhandled);
    const stop = new AbortController();
    const thrower = (e) => { throw new Error(`listener failed on ${e?.code ?? e?.type}`); };
    const f = follow(cache, 'http://feed.test/v1/changes', {
      fetch, signal: stop.signal, lastEventId: '0-0', minRetryMs: 1, maxRetryMs: 2,
      onError: thrower,
    });
    let rejected = null;
    f.done.catch((e) => { rejected = e; });
    try {
      const deadline = Date.now() + 5000;
      while (!cache.calls.some((w) => w.ids?.[0] === 'b') && rejected === null && Date.now() < deadline) await new Promise((ok) => setTimeout(ok, 2));
      assert.equal(rejected, null, 'done rejected');
      assert.deepEqual(cache.calls.filter((w) => !w.all).map((w) => w.ids), [['a'], ['b']], 'the events after the throw applied, on both connections');
      assert.equal(f.lastEventId, '4-0');
      assert.ok(reported.length >= 1 && reported.every((e) => /^listener failed on /.test(e.message)), String(reported));
      stop.abort();
      await f.done;
      await settle();
      assert.equal(unhandled, null);
    } finally {
      console.error = realError;
      if (realReport) globalThis.reportError = realReport;
      process.off('unhandledRejection', onUnhandled);
      stop.abort();
    }
  });
}

// A connection with no id to resume from is a first connection again: it invalidates
// everything at its `ready`. The server reads an empty Last-Event-ID as none (it starts
// from now, replaying nothing), so after an event with an empty `id:` (which resets the
// id, as EventSource has it), or on a feed that sends no ids, the changes made while the
// connection was down used to be lost: not replayed, and nothing invalidated. So with an
// id of other bytes than visible ASCII: one past U+00FF made every reconnect's fetch throw,
// for ever; the server reads one with other bytes (`é`) as none.
for (const [what, firstText, lastEventId] of [
  ['an empty id:', 'event: ready\nid: 1-0\ndata: {}\n\nevent: invalidate\nid:\ndata: {"ids":["a"]}\n\n', '0-0'],
  ['an id of spaces', 'event: ready\nid: 1-0\ndata: {}\n\nevent: invalidate\nid:   \ndata: {"ids":["a"]}\n\n', '0-0'],
  ['an id past U+00FF', 'event: ready\nid: 1-0\ndata: {}\n\nevent: invalidate\nid: 2-🌍\ndata: {"ids":["a"]}\n\n', '0-0'],
  ['an id with é', 'event: ready\nid: 1-0\ndata: {}\n\nevent: invalidate\nid: 2-é\ndata: {"ids":["a"]}\n\n', '0-0'],
  ['no ids at all', 'event: ready\ndata: {}\n\nevent: invalidate\ndata: {"ids":["a"]}\n\n', undefined],
]) {
  test(`after ${what}, the next connection invalidates everything, sending no Last-Event-ID`, async () => {
    const cache = fakeCache();
    const conns = [];
    const fetch = async (_url, { headers, signal }) => {
      conns.push(headers);
      const text = conns.length === 1 ? firstText : 'event: ready\nid: 9-0\ndata: {}\n\n';
      return new Response(new ReadableStream({
        start(c) {
          c.enqueue(new TextEncoder().encode(text));
          if (conns.length === 1) c.close();
          else signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
        },
      }), { status: 200 });
    };
    const events = [];
    const stop = new AbortController();
    const f = follow(cache, 'http://feed.test/v1/changes', {
      fetch, signal: stop.signal, lastEventId, minRetryMs: 1, maxRetryMs: 2, onEvent: (e) => events.push(e), onError: () => {},
    });
    const deadline = Date.now() + 5000;
    while (events.length < 3 && Date.now() < deadline) await new Promise((ok) => setTimeout(ok, 2));
    stop.abort();
    await f.done;
    assert.equal(conns.length, 2);
    assert.equal(conns[1]['last-event-id'], undefined, 'no id to resume from is sent');
    assert.deepEqual(events.map((e) => `${e.type} ${e.id}`).slice(-1), ['ready 9-0']);
    assert.deepEqual(events.at(-1).invalidation, { all: true }, 'the second ready invalidates everything');
    assert.equal(f.lastEventId, '9-0');
    // Everything is invalidated at the second ready (at once, or at the end of the gap
    // after the first connection's; applied by the time following stopped).
    const alls = cache.calls.filter((w) => w.all).length;
    assert.equal(alls, lastEventId === undefined ? 2 : 1, JSON.stringify(cache.calls));
  });
}
