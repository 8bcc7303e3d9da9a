// TileCache against hostile and broken backends (issue 8): every way a batch endpoint can
// misbehave, over real HTTP (support/backend.mjs) where the wire matters (cut bodies,
// oversized bodies) and through an injected fetch with mocked timers and an injected
// clock where time matters (stalls, Retry-After, backoff, the breaker), so the suite stays
// fast. For each: setViewport never throws or blocks, the error reaches onError and
// stats().errors, cached data stays usable, and the page recovers when the backend does.
// Then long sessions: thousands of viewports with the cache, the wasm memory and the
// shell's timers and requests staying bounded.
import { test, before, after, mock } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { TileCache } from 'tilewarm';
import { follow } from 'tilewarm/live';
import * as raw from 'tilewarm/raw';
import { startBackend, viewOf, SEATTLE } from './support/backend.mjs';

const [, SX, SY] = SEATTLE;
const NO_PREFETCH = { ring: 0, lookaheadMs: 0, viewRing: 0 };
let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.close());

function reset() {
  Object.assign(backend, { mode: 'ok', delayMs: 0, hostile: null, requests: [], aborted: 0 });
}

async function until(cond, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const ids = (items) => items.map((i) => i.id).sort();
const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
};

/** A call that must return at once (synchronously, without throwing). */
function quick(f) {
  const t0 = performance.now();
  const v = f();
  assert.ok(!(v instanceof Promise));
  return [v, performance.now() - t0];
}

// -- over HTTP --------------------------------------------------------------------------

const HOSTILE = [
  ['HTTP 500', (res) => json(res, 500, { error: { code: 'upstream_error', message: 'boom' } }),
    'ERR_HTTP', /HTTP 500: upstream_error: boom/],
  ['HTTP 502 with an HTML page', (res) => { res.writeHead(502, { 'content-type': 'text/html' }); res.end('<h1>Bad gateway</h1>'); },
    'ERR_HTTP', /HTTP 502$/],
  ['invalid JSON', (res) => json(res, 200, '{"tiles": [{"tile": "14/1/1", "ids": [}'),
    'ERR_INVALID_RESPONSE', /the body is not JSON/],
  ['an empty body', (res) => json(res, 200, ''), 'ERR_INVALID_RESPONSE', /the body is not JSON/],
  ['JSON of the wrong type', (res) => json(res, 200, '[1, 2, 3]'), 'ERR_INVALID_RESPONSE', /the body must be a JSON object, got an array/],
  ['the wrong schema: ids not an array', (res, a) => json(res, 200, { ...a, tiles: a.tiles.map((t) => ({ ...t, ids: 'h1' })) }),
    'ERR_INVALID_RESPONSE', /tiles\[0\]\.ids must be an array of ids, got "h1"/],
  ['the wrong schema: an item without coordinates', (res, a) => json(res, 200, { ...a, items: a.items.map(({ lon, ...rest }) => rest) }),
    'ERR_INVALID_RESPONSE', /items\[0\]\.lon must be a number, got undefined/],
  ['the wrong schema: a listed id without its item', (res, a) => json(res, 200, { ...a, items: a.items.slice(1) }),
    'ERR_INVALID_RESPONSE', /is not in items; every listed id must have an item/],
  ['a tile string that is not a tile', (res, a) => json(res, 200, { ...a, tiles: [{ ...a.tiles[0], tile: '14/99999/1' }] }),
    'ERR_INVALID_RESPONSE', /14\/99999\/1/],
  ['a negative ttl', (res, a) => json(res, 200, { ...a, tiles: a.tiles.map((t) => ({ ...t, ttl: -5 })) }),
    'ERR_INVALID_RESPONSE', /tiles\[0\]\.ttl must be a whole number of seconds, got -5/],
  ['an unknown access tier', (res, a) => json(res, 200, { ...a, items: a.items.map((i) => ({ ...i, access: 'root' })) }),
    'ERR_INVALID_RESPONSE', /access/],
  // Names every object has (an object lookup of the tier would find them and the item would
  // pass as public).
  ...['toString', 'constructor', '__proto__'].map((tier) => [
    `an access tier named like an Object.prototype key (${tier})`,
    (res, a) => json(res, 200, { ...a, items: a.items.map((i) => ({ ...i, access: tier })) }),
    'ERR_INVALID_RESPONSE', /items\[0\]\.access must be one of "public", "registered", "verified", "agent"/]),
  ['a body cut mid-way (connection closed)', (res, a) => {
    const body = JSON.stringify(a);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length) });
    res.write(body.slice(0, body.length >> 1));
    setTimeout(() => res.socket.destroy(), 5);
  }, 'ERR_NETWORK', /network error: /],
  ['a requested tile missing from the answer', (res, a) => json(res, 200, { ...a, tiles: a.tiles.slice(1) }),
    'ERR_INVALID_RESPONSE', /the answer leaves out \d+ of the requested tiles \(first 1[34]\/\d+\/\d+\); every requested tile must be listed/],
  ['an out-of-range longitude', (res, a) => json(res, 200, { ...a, items: a.items.map((i, k) => (k ? i : { ...i, lon: 500 })) }),
    'ERR_INVALID_RESPONSE', /lon must be in -180\.\.=180, got 500/],
  ['an out-of-range latitude', (res, a) => json(res, 200, { ...a, items: a.items.map((i, k) => (k ? i : { ...i, lat: -95.5 })) }),
    'ERR_INVALID_RESPONSE', /lat must be in -90\.\.=90, got -95\.5/],
  // JSON has no NaN; a number too large for a double parses as Infinity, and a bare NaN
  // is not JSON at all.
  ['an infinite coordinate (1e999)', (res, a) => json(res, 200, JSON.stringify(a).replace(/"lon":-?[\d.e-]+/, '"lon":1e999')),
    'ERR_INVALID_RESPONSE', /lon must be in -180\.\.=180, got inf/],
  ['a NaN coordinate', (res, a) => json(res, 200, JSON.stringify(a).replace(/"lat":-?[\d.e-]+/, '"lat":NaN')),
    'ERR_INVALID_RESPONSE', /the body is not JSON/],
  ['a coordinate as a string', (res, a) => json(res, 200, { ...a, items: a.items.map((i) => ({ ...i, lat: String(i.lat) })) }),
    'ERR_INVALID_RESPONSE', /items\[0\]\.lat must be a number, got "-?[\d.]+"/],
  ['more items than the limit (50 001)', (res, a) => {
    const [it] = a.items;
    const items = Array.from({ length: 50_001 }, (_, k) => ({ ...it, id: `x${k}` }));
    json(res, 200, { ...a, items });
  }, 'ERR_INVALID_RESPONSE', /response has 50001 items, at most 50000 are allowed/],
  ['a body larger than 8 MiB (streamed, never fully read)', (res, a) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write(`{"tiles":${JSON.stringify(a.tiles)},"items":[`);
    const chunk = `${JSON.stringify(a.items[0])},`.repeat(2000);
    let sent = 0;
    const more = () => {
      // Up to 64 MiB, unless the client stops reading first.
      while (sent < 64 * 1024 * 1024 && !res.destroyed) {
        sent += chunk.length;
        if (!res.write(chunk)) { res.once('drain', more); return; }
      }
      if (!res.destroyed) res.end(']}');
    };
    res.on('close', () => { backend.bodyBytesSent = sent; });
    more();
  }, 'ERR_INVALID_RESPONSE', /the body is larger than 8388608 bytes/],
];

test('hostile answers: setViewport never throws, errors reach onError and stats, the cache stays usable, the page recovers', async (t) => {
  reset();
  const cache = await TileCache.create({
    // None of these answers is a timeout: 10 s, room for the 64 MiB body's cut and the
    // recoveries on a busy machine.
    endpoint: backend.url, prefetch: NO_PREFETCH, batch: { retries: 0, timeoutMs: 10_000 },
  });
  const cached = viewOf(SX, SY, 2, 2);
  cache.setViewport(cached);
  await cache.whenComplete();
  const cachedIds = ids(cache.setViewport(cached).items);
  assert.ok(cachedIds.length > 0);
  const errors = [];
  cache.onError((e) => errors.push(e));
  let slowest = 0;
  for (const [i, [name, hostile, code, message]] of HOSTILE.entries()) {
    reset();
    errors.length = 0;
    backend.hostile = hostile;
    const before = cache.stats().errors;
    // New ground each time: a 2 x 2 view in a fresh corner of the test city.
    const far = viewOf(SX - 10 + 2 * (i % 10), SY + 4 + 3 * Math.floor(i / 10), 2, 2);
    const [view, ms] = quick(() => cache.setViewport(far));
    slowest = Math.max(slowest, ms);
    assert.equal(view.complete, false, name);
    const e = await cache.whenComplete().then(() => null, (err) => err);
    assert.ok(e instanceof Error, `${name}: whenComplete rejects`);
    assert.equal(e.code, code, `${name}: ${e.message}`);
    assert.match(e.message, message, name);
    assert.equal(e.kind, 'foreground', name);
    assert.ok(errors.length >= 1 && errors.includes(e), `${name}: onError heard it`);
    assert.ok(cache.stats().errors > before, `${name}: stats().errors`);
    // Setting views during and after the trouble returns at once; the cached view is whole.
    const [back] = quick(() => cache.setViewport(cached));
    assert.equal(back.complete, true, name);
    assert.deepEqual(ids(back.items), cachedIds, name);
    // The backend recovers: the failed view loads (its tiles come back after a backoff).
    backend.hostile = null;
    const again = cache.setViewport(far);
    if (!again.complete) await cache.whenComplete();
    const loaded = cache.setViewport(far);
    assert.equal(loaded.complete, true, `${name}: recovered`);
    assert.ok(loaded.items.length > 0, name);
  }
  assert.ok(backend.bodyBytesSent < 32 * 1024 * 1024, `the 64 MiB body was cut short at ${backend.bodyBytesSent} bytes`);
  assert.equal(cache.stats().inFlight, 0);
  t.diagnostic(`${HOSTILE.length} hostile answers; slowest setViewport ${slowest.toFixed(2)} ms; ` +
    `oversized body: ${(backend.bodyBytesSent / 2 ** 20).toFixed(1)} MiB sent before the client hung up`);
  cache.dispose();
});

test('a stalled backend (no answer for 10 s) times out per batch.timeoutMs; setViewport stays instant', async () => {
  reset();
  backend.delayMs = 10_000;
  const cache = await TileCache.create({ endpoint: backend.url, prefetch: NO_PREFETCH, batch: { retries: 0, timeoutMs: 150 } });
  const errors = [];
  cache.onError((e) => errors.push(e));
  const t0 = Date.now();
  const [v] = quick(() => cache.setViewport(viewOf(SX, SY)));
  assert.equal(v.complete, false);
  const e = await cache.whenComplete().then(() => null, (err) => err);
  const waited = Date.now() - t0;
  assert.equal(e?.code, 'ERR_TIMEOUT');
  assert.match(e.message, /no answer within 150 ms/);
  assert.ok(waited < 2000, `gave up after ${waited} ms, not after the stall`);
  await until(() => backend.aborted >= 1, 'the aborted request');
  assert.equal(cache.stats().inFlight, 0);
  backend.delayMs = 0;
  // Asked again after its back-off (an answer slower than 150 ms on a busy machine times out
  // too: asked again after that).
  for (let i = 0; i < 20 && !(await cache.whenComplete().then(() => true, () => false)); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(cache.setViewport(viewOf(SX, SY)).complete, true);
  cache.dispose();
});

// -- injected fetch, mocked timers, injected clock --------------------------------------

/** A fetch backed by the test city with scripted trouble; time is `clock.now`. */
function scripted() {
  const s = {
    now: 1_700_000_000_000,
    /** (request) => Response | 'stall' | undefined (undefined: the normal answer) */
    trouble: null,
    calls: [],
    open: 0,
    fetch: (url, init) => {
      const request = JSON.parse(init.body);
      s.calls.push({ at: s.now, request });
      const r = s.trouble?.(request);
      if (r === 'stall') {
        s.open++;
        return new Promise((resolve, reject) => {
          const timer = setTimeout(() => { s.open--; resolve(new Response(JSON.stringify(backend.answer(request)))); }, 10_000);
          init.signal.addEventListener('abort', () => { clearTimeout(timer); s.open--; reject(init.signal.reason); }, { once: true });
        });
      }
      return Promise.resolve(r ?? new Response(JSON.stringify(backend.answer(request))));
    },
    /** Moves the clock and the mocked timers on by `ms`, in steps, letting promises run. */
    async advance(ms, step = 10) {
      for (let done = 0; done < ms; done += step) {
        s.now += step;
        mock.timers.tick(step);
        for (let k = 0; k < 4; k++) await new Promise((r) => setImmediate(r));
      }
    },
  };
  return s;
}

const status = (code, headers = {}) => new Response(JSON.stringify({ error: { code: 'x', message: `status ${code}` } }), { status: code, headers });

async function withMockedTimers(f) {
  mock.timers.enable({ apis: ['setTimeout'] });
  try { await f(); } finally { mock.timers.reset(); }
}

test('a 10 s stall under mocked time: the request times out at timeoutMs, is retried, and the late answer is ignored', () => withMockedTimers(async () => {
  const s = scripted();
  s.trouble = () => 'stall';
  const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH, batch: { retries: 1, timeoutMs: 3000 } });
  const errors = [];
  cache.onError((e) => errors.push({ at: s.now, code: e.code, willRetry: e.willRetry }));
  const start = s.now;
  cache.setViewport(viewOf(SX, SY));
  assert.equal(s.calls.length, 1);
  await s.advance(2990);
  assert.equal(errors.length, 0, 'not before timeoutMs');
  await s.advance(20);
  assert.deepEqual(errors.map((e) => [e.code, e.willRetry]), [['ERR_TIMEOUT', true]]);
  assert.ok(errors[0].at - start >= 3000 && errors[0].at - start <= 3010);
  // During the stall the page keeps working on what it has.
  const [v] = quick(() => cache.setViewport(viewOf(SX, SY)));
  assert.equal(v.complete, false);
  // The retry goes out 100-200 ms later (full jitter) and stalls too: it times out at
  // 6110-6210 ms and the request gives up; the next round waits at least 200 ms more.
  await s.advance(3240);
  assert.equal(s.calls.length, 2, 'one retry');
  assert.deepEqual(errors.map((e) => [e.code, e.willRetry]), [['ERR_TIMEOUT', true], ['ERR_TIMEOUT', false]]);
  assert.equal(s.open, 0, 'both stalled fetches were aborted');
  assert.equal(cache.stats().inFlight, 0);
  s.trouble = null;
  await s.advance(2000);
  assert.equal(cache.setViewport(viewOf(SX, SY)).complete, true, 'recovered');
  cache.dispose();
}));

// Retry-After in both of its forms: delay seconds, and an HTTP date 7 s (rounded up to the
// second) after the cache's clock, which the scripted fetch runs years before Date.now():
// the date is measured from the injected clock, so it too means a wait of at least 7 s from
// the request, and `retryAfterMs` is the date less the clock when the answer is read.
for (const [form, retryAfter, waitMs] of [
  ['delay seconds', () => '7', () => 7000],
  ['an HTTP date', (now) => new Date(Math.ceil((now + 7000) / 1000) * 1000).toUTCString(), (h, at) => Date.parse(h) - at],
]) {
  test(`429 with Retry-After as ${form}: no request for those tiles before it, across retries and give-ups`, () => withMockedTimers(async () => {
    const s = scripted();
    let limited = 5;
    const sent = [];
    s.trouble = () => {
      if (limited-- <= 0) return undefined;
      sent.push(retryAfter(s.now));
      return status(429, { 'retry-after': sent.at(-1) });
    };
    const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH, batch: { retries: 1 } });
    const errors = [];
    cache.onError((e) => errors.push({ e, at: s.now }));
    cache.setViewport(viewOf(SX, SY));
    await s.advance(60_000, 50);
    assert.equal(cache.setViewport(viewOf(SX, SY)).complete, true);
    assert.equal(s.calls.length, 6, 'five 429s, then the answer');
    const gaps = s.calls.slice(1).map((c, i) => c.at - s.calls[i].at);
    assert.ok(gaps.every((g) => g >= 7000), `gaps ${gaps}`);
    assert.equal(errors.length, 5);
    errors.forEach(({ e, at }, i) => {
      assert.equal(e.status, 429);
      assert.equal(e.retryAfterMs, waitMs(sent[i], at), `Retry-After ${sent[i]}`);
      assert.ok(e.retryAfterMs > 6000, `retryAfterMs ${e.retryAfterMs}`);
    });
    assert.equal(cache.stats().errors, 5);
    cache.dispose();
  }));
}

test('a dead backend under a still page: the visible tiles are retried with a growing backoff, not every second', (t) => withMockedTimers(async () => {
  const s = scripted();
  s.trouble = () => status(503);
  const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH });
  cache.onError(() => {});
  cache.setViewport(viewOf(SX, SY));
  await s.advance(600_000, 100);
  const n = s.calls.length;
  const gaps = s.calls.slice(1).map((c, i) => c.at - s.calls[i].at);
  // Before the fix: 3 attempts per ~1.2 s round, about 1500 requests in ten minutes.
  assert.ok(n < 150, `${n} requests in 10 minutes`);
  assert.ok(gaps.slice(-10).every((g) => g >= 5000 && g <= 10_100), `last gaps ${gaps.slice(-10)}`);
  assert.equal(cache.stats().errors, n);
  t.diagnostic(`${n} requests in 10 minutes against a dead backend; last gaps ${gaps.slice(-5).join(', ')} ms`);
  s.trouble = null;
  await s.advance(10_100, 100);
  assert.equal(cache.setViewport(viewOf(SX, SY)).complete, true, 'recovered within the 10 s cap');
  cache.dispose();
}));

test('a tile an answer leaves out fails its load once, and is not asked for again every few seconds', () => withMockedTimers(async () => {
  const s = scripted();
  // Every answer lists no tile (a server bug): the engine used to keep the tile queued for
  // the failed load and ask for it after each backoff, for as long as the page stayed open.
  s.trouble = (request) => new Response(JSON.stringify({ ...backend.answer(request), tiles: [] }));
  const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH });
  const errors = [];
  cache.onError((e) => errors.push(e));
  const load = cache.loadTiles([`14/${SX}/${SY}`]);
  // Mocked time moves only when told: move it until the load ends, never await it bare
  // (nothing would move the clock again if the load needed more of it).
  let ended = false;
  load.then(() => { ended = true; }, () => { ended = true; });
  for (let i = 0; i < 2000 && !ended; i++) await s.advance(1, 1);
  assert.ok(ended, 'the load ended');
  const [got] = await load;
  assert.match(got.error?.message ?? '', /leaves out 1 of the requested tiles/);
  await s.advance(600_000, 100);
  assert.equal(s.calls.length, 1, `${s.calls.length} requests in 10 minutes`);
  assert.deepEqual(errors, [got.error]);
  cache.dispose();
}));

// An answer that fails the engine's checks (the JS side cannot see them) is not taken: the
// get() of an id in it waits for the retry, or rejects with the error, never resolves
// undefined (as if the item did not exist).
for (const [what, spoil] of [
  ['a latitude out of range', (a) => ({ ...a, items: [{ ...a.items[0], lat: 95 }] })],
  ['an item listed twice', (a) => ({ ...a, items: [a.items[0], a.items[0]] })],
  ['an id both in items and missing', (a) => ({ ...a, missing: [a.items[0].id] })],
]) {
  test(`get(): an answer with ${what} is retried, then the error rejects the get()`, async () => {
    const id = backend.items.find((it) => it.access === 'public').id;
    let calls = 0, spoiled = 1;
    const fetch = async (url, init) => {
      const answer = backend.answer(JSON.parse(init.body));
      return new Response(JSON.stringify(calls++ < spoiled ? spoil(answer) : answer));
    };
    const errors = [];
    const cache = await TileCache.create({ endpoint: backend.url, fetch, prefetch: NO_PREFETCH, batch: { retries: 1 } });
    cache.onError((e) => errors.push(e));
    const got = await cache.get(id);
    assert.equal(got?.id, id, 'answered by the retry');
    assert.equal(calls, 2);
    assert.deepEqual(errors.map((e) => [e.code, e.willRetry]), [['ERR_INVALID_RESPONSE', true]]);
    // Every answer spoiled: the get() rejects with the last error.
    calls = 0;
    spoiled = Infinity;
    errors.length = 0;
    const other = backend.items.filter((it) => it.access === 'public')[1].id;
    await assert.rejects(cache.get(other), (e) => e.code === 'ERR_INVALID_RESPONSE' && !e.willRetry && errors.includes(e));
    assert.equal(calls, 2);
    cache.dispose();
  });
}

// A page's fetch (a wrapper, a mock) may answer with no headers at all: a refusal was then
// read as no answer (an unhandled rejection, then ERR_TIMEOUT), its status lost.
test('an answer with no headers that refuses is an ERR_HTTP error with its status', async () => {
  const fetch = async () => ({ ok: false, status: 503, text: async () => '' });
  const errors = [];
  const cache = await TileCache.create({ endpoint: backend.url, fetch, prefetch: NO_PREFETCH, batch: { retries: 0, timeoutMs: 2000 } });
  cache.onError((e) => errors.push(e));
  const id = backend.items.find((it) => it.access === 'public').id;
  await assert.rejects(cache.get(id), (e) => e.code === 'ERR_HTTP' && e.status === 503);
  assert.deepEqual(errors.map((e) => [e.code, e.status]), [['ERR_HTTP', 503]]);
  cache.dispose();
});

// Every way a backend or a token provider can keep failing, under a still page with the
// default prefetch and a get() waiting: the cache's requests (and auth.token() calls) in
// ten minutes stay within a growing backoff, never a loop.
for (const [what, trouble, auth] of [
  ['401 (a fresh token each try)', () => status(401), { token: () => 'tok' }],
  ['403', () => status(403)],
  ['404', () => status(404)],
  ['429 without Retry-After', () => status(429)],
  ['500', () => status(500)],
  ['503 with Retry-After: 0', () => status(503, { 'retry-after': '0' })],
  ['200 with a body that is not JSON', () => new Response('<html>', { status: 200 })],
  ['200 with JSON that is not an answer', () => new Response('[]', { status: 200 })],
  ['a rejected fetch', () => Promise.reject(new TypeError('fetch failed'))],
  ['auth.token() throwing', null, { token: () => { throw new Error('no session'); } }],
  ['auth.token() giving garbage', null, { token: () => 'not a token' }],
]) {
  test(`a backend that keeps failing (${what}) is asked with a growing backoff: no loop in ten minutes`, (t) => withMockedTimers(async () => {
    const s = scripted();
    if (trouble) s.trouble = trouble;
    let tokens = 0;
    const options = { endpoint: backend.url, fetch: s.fetch, now: () => s.now };
    if (auth) options.auth = { token: () => { tokens++; return auth.token(); } };
    const cache = await TileCache.create(options);
    cache.onError(() => {});
    cache.setViewport(viewOf(SX, SY));
    cache.get('no-such-id').catch(() => {});
    await s.advance(600_000, 100);
    const asked = Math.max(s.calls.length, tokens);
    // The dead-backend test above: under 150 with no prefetch (foreground only). With the
    // prefetch ring too, every tile backs off on its own; a loop would ask thousands of times.
    assert.ok(asked < 400, `${s.calls.length} requests and ${tokens} auth.token() calls in 10 minutes`);
    const last = s.calls.filter((c) => c.at > s.now - 60_000).length;
    t.diagnostic(`${what}: ${s.calls.length} requests, ${tokens} tokens; ${last} in the last minute`);
    assert.ok(last < 60, `${last} requests in the last minute`);
    cache.dispose();
  }));
}

test('the breaker: opens after consecutive failures (prefetch held, foreground tried), closes after recovery', () => withMockedTimers(async () => {
  const s = scripted();
  s.trouble = () => status(503);
  const cache = await TileCache.create({
    endpoint: backend.url, fetch: s.fetch, now: () => s.now,
    // Complete blocks only, so the foreground request below names its data tiles.
    prefetch: { ring: 1, lookaheadMs: 0, viewRing: 0 }, batch: { retries: 0, coalesceMinShare: 100 },
  });
  cache.onError(() => {});
  cache.setViewport(viewOf(SX, SY, 1, 1));
  await s.advance(1000);
  assert.equal(cache.stats().breakerOpen, true, 'open after 3 failures');
  const opened = s.now, prefetchBefore = cache.stats().prefetchRequests;
  // A minute open: prefetch only as one probe per cool-down (5 s, 10 s, 20 s, ...).
  const sent = s.calls.length;
  cache.setViewport(viewOf(SX + 5, SY, 1, 1));
  await s.advance(10);
  assert.ok(s.calls.slice(sent).some((c) => c.request.tiles.includes(`14/${SX + 5}/${SY}`)), 'foreground still tried');
  await s.advance(60_000, 100);
  const probes = cache.stats().prefetchRequests - prefetchBefore;
  assert.ok(probes >= 1 && probes <= 4, `${probes} prefetch probes in a minute`);
  assert.equal(cache.stats().breakerOpen, true);
  assert.ok(s.calls.filter((c) => c.at > opened).length < 30, `${s.calls.length} calls`);
  // Recovery: the next request that gets through closes it, and prefetch resumes.
  s.trouble = null;
  await s.advance(60_000, 100);
  assert.equal(cache.stats().breakerOpen, false, 'closed after recovery');
  const p = cache.stats().prefetchRequests;
  cache.setViewport(viewOf(SX - 6, SY - 6, 1, 1));
  await s.advance(100);
  assert.ok(cache.stats().prefetchRequests > p, 'prefetch runs again');
  assert.equal(cache.setViewport(viewOf(SX - 6, SY - 6, 1, 1)).complete, true);
  cache.dispose();
}));

// A view at rest refreshes its stale items by id in the background. A partial answer that
// sheds them (`overloaded`, ids left out) said "(will retry)" (willRetry true), as for the
// ids of a get(), but the refresh was dropped: nothing asked for them again until they
// expired. Now it is retried after the backoff, as it says.
test('ids of a refresh by id that a partial answer sheds are retried, as onError says', () => withMockedTimers(async () => {
  const s = scripted();
  const cache = await TileCache.create({
    endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH,
    ttl: { byClass: { active: 60, off_market: 60 }, staleWhileRevalidate: 60 },
  });
  const errors = [];
  cache.onError((e) => errors.push(e));
  const v = viewOf(SX, SY, 1, 1);
  cache.setViewport(v);
  await s.advance(100);
  assert.equal(cache.setViewport(v).complete, true);
  let shed = 0;
  s.trouble = (r) => {
    if (!r.ids.length || shed++ > 0) return undefined;
    const answer = backend.answer(r);
    answer.items = [];
    answer.error = { code: 'overloaded', message: 'shed', tiles: [], ids: r.ids };
    return new Response(JSON.stringify(answer));
  };
  const sent = s.calls.length;
  await s.advance(60_000, 100); // the items turn stale: their refresh by id goes out, shed
  const refresh = s.calls.slice(sent).map((c) => c.request);
  assert.equal(refresh.length, 1, JSON.stringify(refresh));
  assert.ok(refresh[0].ids.length > 0 && refresh[0].tiles.length === 0, JSON.stringify(refresh));
  assert.deepEqual(errors.map((e) => [e.serverCode, e.willRetry]), [['overloaded', true]]);
  assert.match(errors[0].message, / \(will retry\)$/);
  await s.advance(1000);
  assert.deepEqual(s.calls.slice(sent + 1).map((c) => c.request.ids), [refresh[0].ids], 'retried, as it said');
  const view = cache.setViewport(v);
  assert.ok(view.complete && view.items.every((it) => !it.stale), 'fresh again');
  cache.dispose();
}));

// A get() of an id out in a visible tile's refresh by id (its item was invalidated) waits for
// that request. A 503 retries it, and the user pans away before the retry: the id is still
// asked for, and the get() settles with the item. (It never settled: the pan replaced the
// tile's work, the retry never went out, and nothing asked for the id again.)
test('a get() of an id in a refresh by id that is retried settles after a pan', () => withMockedTimers(async () => {
  const s = scripted();
  const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH });
  const errors = [];
  cache.onError((e) => errors.push([e.status, e.willRetry]));
  const v = viewOf(SX, SY, 1, 1);
  cache.setViewport(v);
  await s.advance(100);
  const shown = cache.setViewport(v);
  assert.equal(shown.complete, true);
  const id = shown.items[0].id;
  let refused = 0;
  s.trouble = (r) => (r.ids.includes(id) && refused++ === 0 ? status(503) : undefined);
  const sent = s.calls.length;
  cache.invalidate({ ids: [id] });
  assert.deepEqual(s.calls.slice(sent).map((c) => c.request.ids), [[id]], 'the refresh by id is out');
  let settled = 'pending';
  cache.get(id).then((item) => { settled = item?.id; }, (e) => { settled = e; });
  await s.advance(10);
  assert.deepEqual(errors, [[503, true]]);
  cache.setViewport(viewOf(SX + 8, SY, 1, 1));
  await s.advance(5000);
  assert.equal(settled, id, 'the get() settles with the item');
  assert.equal(s.calls.filter((c) => c.request.ids.includes(id)).length, 2, 'asked once more');
  cache.dispose();
}));

// A map at rest (no setViewport calls) over items with a 300 s TTL and a 60 s
// staleWhileRevalidate. At 300 s the view is refreshed: onUpdate with the items flagged
// stale, and a refetch. When the refetch fails, at 360 s the tile cannot be shown: onUpdate
// with an incomplete view, and whenComplete() waits for it. (Nothing woke the cache: the
// items stayed drawn flagged fresh for ever, and whenComplete() resolved at once.) Answered,
// an hour at rest costs one request per expiry, not a poll.
test('a view at rest is refreshed when its items turn stale and expire, once per expiry', () => withMockedTimers(async () => {
  const s = scripted();
  const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH, ttl: { staleWhileRevalidate: 60 } });
  cache.onError(() => {});
  const updates = [];
  cache.onUpdate((items, view) => updates.push({ at: s.now, stale: items.filter((i) => i.stale).length, complete: view.complete }));
  const v = viewOf(SX, SY, 1, 1);
  cache.setViewport(v);
  await s.advance(100);
  const start = s.now;
  const shown = cache.setViewport(v);
  assert.equal(shown.complete, true);
  const active = shown.items.filter((i) => i.class === 'active').length;
  assert.ok(active > 0, 'the view shows items with a 300 s TTL');
  updates.length = 0;
  s.trouble = () => status(503);
  const sent = s.calls.length;
  await s.advance(299_000, 1000);
  assert.deepEqual(updates, [], 'nothing changes before 300 s');
  assert.equal(s.calls.length, sent, 'and nothing is asked');
  await s.advance(2000, 1000);
  assert.ok(updates.some((u) => u.stale === active && u.complete), `flagged stale at 300 s: ${JSON.stringify(updates)}`);
  assert.ok(s.calls.length > sent, 'and refetched');
  await s.advance(60_000, 1000);
  assert.equal(updates.at(-1).complete, false, 'past the window the tile cannot be shown');
  let done = false;
  cache.whenComplete().then(() => { done = true; }, () => { done = true; });
  await s.advance(100);
  assert.equal(done, false, 'whenComplete() waits for it');
  s.trouble = null;
  await s.advance(15_000, 100);
  assert.equal(done, true, 'and resolves once the backend answers');
  assert.equal(updates.at(-1).complete, true);
  // An hour at rest with a working backend: a request per expiry of the items (300 s).
  const calls = s.calls.length;
  await s.advance(3_600_000, 1000);
  const n = s.calls.length - calls;
  assert.ok(n >= 11 && n <= 13, `${n} requests in an hour at rest`);
  assert.equal(cache.setViewport(v).complete, true);
  assert.ok(s.now - start > 3_600_000);
  cache.dispose();
}));

// A hidden page (another tab in front) asks for nothing at rest: the wake-ups are put off
// until it is shown, and then the view is refreshed at once. A page that waits (here
// whenComplete) is woken while hidden.
test('a hidden page at rest makes no requests until it is shown again', () => withMockedTimers(async () => {
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  globalThis.document = doc;
  try {
    const s = scripted();
    const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH });
    const updates = [];
    cache.onUpdate((items, view) => updates.push(view.complete));
    const v = viewOf(SX, SY, 1, 1);
    cache.setViewport(v);
    await s.advance(100);
    assert.equal(cache.setViewport(v).complete, true);
    const sent = s.calls.length;
    doc.visibilityState = 'hidden';
    doc.dispatchEvent(new Event('visibilitychange'));
    await s.advance(3_600_000, 1000);
    assert.equal(s.calls.length, sent, 'an hour hidden at rest: no request');
    // Shown again: the view's expired items are asked for at once.
    doc.visibilityState = 'visible';
    doc.dispatchEvent(new Event('visibilitychange'));
    await s.advance(100);
    assert.ok(s.calls.length > sent, 'refreshed when shown');
    assert.equal(cache.setViewport(v).complete, true);
    // Hidden again past the next expiry, the view cannot be shown; a whenComplete() wakes
    // the cache although the page is hidden.
    doc.visibilityState = 'hidden';
    doc.dispatchEvent(new Event('visibilitychange'));
    const before = s.calls.length;
    await s.advance(3_600_000, 1000);
    assert.equal(s.calls.length, before);
    let done = false;
    updates.length = 0;
    cache.whenComplete().then(() => { done = true; });
    assert.deepEqual(updates, [false], 'whenComplete() wakes the cache, which sees the view expired');
    await s.advance(1000, 100);
    assert.equal(done, true, 'and resolves while the page is hidden, once refetched');
    assert.ok(s.calls.length > before);
    cache.dispose();
  } finally {
    delete globalThis.document;
  }
}));

// A change feed (tilewarm/live) invalidates visible items all day. A hidden page that awaits
// nothing drops them at once (the view reports them gone: the cache never shows an
// invalidated item) but refetches only when it is shown again, in one round; a visible page
// refetches at once. (The engine's invalidate sent the refetches at once, hidden or not:
// every event of the feed was a paid request nobody saw.)
test('a hidden page following a change feed drops what changed at once and refetches once when shown', () => withMockedTimers(async () => {
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  globalThis.document = doc;
  try {
    for (const hidden of [true, false]) {
      const s = scripted();
      const cache = await TileCache.create({ endpoint: backend.url, fetch: s.fetch, now: () => s.now, prefetch: NO_PREFETCH });
      const updates = [];
      cache.onUpdate((items, view) => updates.push({ ids: new Set(items.map((i) => i.id)), complete: view.complete }));
      const v = viewOf(SX - 2, SY - 2, 5, 4);
      cache.setViewport(v);
      await s.advance(100);
      const shown = cache.setViewport(v);
      assert.equal(shown.complete, true);
      const ids = shown.items.map((i) => i.id).slice(0, 50);
      assert.equal(ids.length, 50, 'the view shows 50 items or more');
      doc.visibilityState = hidden ? 'hidden' : 'visible';
      doc.dispatchEvent(new Event('visibilitychange'));
      let feed;
      // The requests made by the time each event was applied (its invalidate returned).
      const atEvent = [];
      const f = follow(cache, 'http://feed.test/v1/changes', {
        lastEventId: '0-0',
        onEvent: (e) => { if (e.type === 'invalidate') atEvent.push(s.calls.length); },
        fetch: async (_url, { signal }) => new Response(new ReadableStream({
          start(c) {
            feed = c;
            c.enqueue(new TextEncoder().encode('event: ready\nid: 0-0\ndata: {}\n\n'));
            signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
          },
        }), { status: 200, headers: { 'content-type': 'text/event-stream' } }),
      });
      await s.advance(100);
      const sent = s.calls.length;
      for (const [k, id] of ids.entries()) {
        updates.length = 0;
        feed.enqueue(new TextEncoder().encode(`event: invalidate\nid: ${k + 1}-0\ndata: ${JSON.stringify({ ids: [id] })}\n\n`));
        await s.advance(1000, 100);
        assert.equal(f.lastEventId, `${k + 1}-0`, 'the event was applied');
        assert.ok(updates.length > 0 && !updates[0].ids.has(id), `the view reports ${id} gone at once`);
        if (hidden) {
          assert.equal(updates.at(-1).complete, false, 'and the view incomplete');
          assert.equal(atEvent[k], sent);
          assert.equal(s.calls.length, sent, `no request while hidden (event ${k + 1})`);
        } else {
          assert.ok(atEvent[k] > sent + k, `a visible page refetches at once (event ${k + 1})`);
          assert.ok(updates.at(-1).ids.has(id) && updates.at(-1).complete, 'and shows it again');
        }
      }
      if (hidden) {
        await s.advance(60_000, 1000);
        assert.equal(s.calls.length, sent, 'a minute later, still none');
        doc.visibilityState = 'visible';
        doc.dispatchEvent(new Event('visibilitychange'));
        await s.advance(1000, 100);
        const round = s.calls.slice(sent);
        // The tiles of the 50 items, in one request.
        assert.equal(round.length, 1, 'shown: the refetch goes out, in one round');
        assert.ok(round[0].request.tiles.length > 1);
        const last = updates.at(-1);
        assert.equal(last.complete, true);
        assert.ok(ids.every((id) => last.ids.has(id)), 'and the view shows the items again');
      }
      cache.dispose();
      await f.done;
    }
  } finally {
    delete globalThis.document;
  }
}));

// That wake-up (at the items' expiry, for as long as the cache lives) neither keeps a cache
// the page let go of without dispose() from being collected, nor keeps a Node process alive
// when nothing is out or awaited: after a whenComplete() that resolved, nor after one that
// rejected (a give-up, with the tiles' retry 30 s off: the timer, armed while it waited,
// holds the cache no more once it rejected).
test('the wake-up of a view at rest holds the cache weakly and does not keep Node running', () => {
  const code = `
    import { TileCache } from 'tilewarm';
    const answer = async (url, init) => {
      const r = JSON.parse(init.body);
      return new Response(JSON.stringify({ tiles: r.tiles.map((tile) => ({ tile, ids: [] })), items: [], missing: r.ids }));
    };
    const refuse = async () => new Response('{"error":{"code":"upstream_error","message":"down"}}', { status: 503, headers: { 'retry-after': '30' } });
    const refs = [];
    for (const fetch of [answer, refuse]) {
      let cache = await TileCache.create({ endpoint: 'http://x/v1/batch', fetch, prefetch: { ring: 0, viewRing: 0, lookaheadMs: 0 }, batch: { retries: 0 } });
      cache.onError(() => {});
      cache.setViewport({ west: -122.34, south: 47.59, east: -122.32, north: 47.61, zoom: 15 });
      await cache.whenComplete().catch(() => {});
      refs.push(new WeakRef(cache));
      cache = null;
    }
    await new Promise((r) => setImmediate(r));
    globalThis.gc();
    console.log(refs.map((ref) => (ref.deref() === undefined ? 'collected' : 'alive')).join(' '));`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', code], {
    cwd: fileURLToPath(new URL('.', import.meta.url)), encoding: 'utf8', timeout: 20_000,
  });
  assert.equal(r.signal, null, 'the process ended by itself, not after the 300 s wake-up or the 30 s retry');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'collected collected');
});

// But while the page awaits one of its promises, the timer holds the cache. An async function
// that awaits whenComplete() (or a get(), a loadTiles()) and holds the only reference to the
// cache is reachable only through the cache's list of waiters: with the timer holding the
// cache weakly, a GC while a retry was backing off took both, the retry never went out and
// the await never ended (the first test above hung so, about one run in four on a loaded
// machine, where the 50 001-item answer's garbage brought a GC into the ~150 ms backoff).
// Each function here gets a 503 first, and a GC comes while its retry backs off.
test('a promise the page awaits while a retry backs off settles, though only the awaiting code holds the cache', () => {
  const code = `
    import { TileCache } from 'tilewarm';
    const view = { west: -122.34, south: 47.59, east: -122.32, north: 47.61, zoom: 15 };
    const failed = {}, waiting = {}, got = {};
    const create = (name) => {
      const fetch = async (url, init) => {
        const r = JSON.parse(init.body);
        if (!failed[name]) {
          failed[name] = true;
          // Retry-After: 2 holds the retry back for 2 s, for the GC to come first.
          return new Response('{"error":{"code":"upstream_error","message":"down"}}', { status: 503, headers: { 'retry-after': '2' } });
        }
        return new Response(JSON.stringify({ tiles: r.tiles.map((tile) => ({ tile, ids: [] })), items: [], missing: r.ids }));
      };
      return TileCache.create({ endpoint: 'http://x/v1/batch', fetch, prefetch: { ring: 0, viewRing: 0, lookaheadMs: 0 } });
    };
    const turn = () => new Promise((r) => setImmediate(r));
    const ways = {
      // whenComplete() waiting when the 503 comes (the timer is armed while it waits) ...
      async whenCompleteFirst(cache) { cache.setViewport(view); waiting.whenCompleteFirst = true; await cache.whenComplete(); },
      // ... and called after it (the timer was armed while nothing waited), as the test above.
      async whenCompleteAfter(cache) {
        cache.setViewport(view);
        while (!failed.whenCompleteAfter) await turn();
        for (let i = 0; i < 3; i++) await turn();
        waiting.whenCompleteAfter = true;
        await cache.whenComplete();
      },
      async get(cache) { waiting.get = true; return cache.get('h1'); },
      async loadTiles(cache) { waiting.loadTiles = true; return (await cache.loadTiles(['14/2624/5721']))[0].tile; },
    };
    for (const [name, way] of Object.entries(ways)) {
      (async () => {
        const cache = await create(name);
        cache.onError(() => {});
        const v = await way(cache);
        got[name] = v === undefined ? 'settled' : v;
        cache.dispose();
      })();
    }
    const names = Object.keys(ways);
    while (!names.every((n) => waiting[n] && failed[n])) await turn();
    for (let i = 0; i < 3; i++) await turn();
    if (Object.keys(got).length) throw new Error('a retry went out before the GC: ' + JSON.stringify(got));
    globalThis.gc();
    process.on('exit', () => console.log(JSON.stringify(got)));`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', code], {
    cwd: fileURLToPath(new URL('.', import.meta.url)), encoding: 'utf8', timeout: 20_000,
  });
  assert.equal(r.signal, null, 'the process ended by itself');
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), {
    whenCompleteFirst: 'settled', whenCompleteAfter: 'settled', get: 'settled', loadTiles: '14/2624/5721',
  });
});

// In a hidden page the wake-up waits for `visibilitychange`: the document's listener holds
// the cache weakly too (a closure naming the cache would keep it alive for as long as the
// page lives), and removes itself once the page is shown with the cache gone.
test('the wake-up a hidden page put off holds the cache weakly', () => {
  const code = `
    import { TileCache } from 'tilewarm';
    const doc = new EventTarget();
    doc.visibilityState = 'hidden';
    globalThis.document = doc;
    const listeners = new Set();
    const [add, remove] = [doc.addEventListener.bind(doc), doc.removeEventListener.bind(doc)];
    doc.addEventListener = (type, f, o) => { listeners.add(f); add(type, f, o); };
    doc.removeEventListener = (type, f, o) => { listeners.delete(f); remove(type, f, o); };
    let n = 0;
    // The first request fails and is retried at once: that retry's wake-up is put off.
    const fetch = async (url, init) => {
      if (n++ === 0) return new Response('{"error":{"code":"x","message":"y"}}', { status: 503, headers: { 'retry-after': '0' } });
      const r = JSON.parse(init.body);
      return new Response(JSON.stringify({ tiles: r.tiles.map((tile) => ({ tile, ids: [] })), items: [], missing: r.ids }));
    };
    let cache = await TileCache.create({ endpoint: 'http://x/v1/batch', fetch, prefetch: { ring: 0, viewRing: 0, lookaheadMs: 0 } });
    cache.onError(() => {});
    cache.setViewport({ west: -122.34, south: 47.59, east: -122.32, north: 47.61, zoom: 15 });
    for (let i = 0; i < 500 && listeners.size === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const waiting = listeners.size;
    const ref = new WeakRef(cache);
    cache = null;
    await new Promise((r) => setImmediate(r));
    globalThis.gc();
    const collected = ref.deref() === undefined;
    doc.visibilityState = 'visible';
    doc.dispatchEvent(new Event('visibilitychange'));
    console.log(JSON.stringify({ waiting, requests: n, collected, left: listeners.size }));`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', code], {
    cwd: fileURLToPath(new URL('.', import.meta.url)), encoding: 'utf8', timeout: 20_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { waiting: 1, requests: 1, collected: true, left: 0 });
});

// -- long sessions ------------------------------------------------------------------------

/** Live timers and unsettled fetches of the code under test, counted from outside. */
function instrument(fetchImpl) {
  const live = new Set();
  const [st, ct] = [globalThis.setTimeout, globalThis.clearTimeout];
  globalThis.setTimeout = (fn, ms, ...a) => {
    const h = st((...x) => { live.delete(h); fn(...x); }, ms, ...a);
    live.add(h);
    return h;
  };
  globalThis.clearTimeout = (h) => { live.delete(h); ct(h); };
  const m = {
    live, outstanding: 0,
    fetch: async (url, init) => {
      m.outstanding++;
      try { return await fetchImpl(url, init); } finally { m.outstanding--; }
    },
    restore() { globalThis.setTimeout = st; globalThis.clearTimeout = ct; },
  };
  return m;
}

/** Drives `views` through a cache with tight limits and records what must stay bounded. */
async function longSession(t, label, views) {
  const big = await startBackend({ perTile: 4 }); // 2304 items in the 24 x 24 block
  const m = instrument(async (url, init) => new Response(JSON.stringify(big.answer(JSON.parse(init.body)))));
  const maxItems = 500, maxBytes = 130_000;
  try {
    const cache = await TileCache.create({ endpoint: big.url, fetch: m.fetch, maxItems, maxBytes, batch: { timeoutMs: 5000 } });
    // Views wider than the cache (zoom 12.5 holds ~500 items) cannot complete: their
    // tiles are reported once per answer and backed off, nothing else may fail.
    const errors = { unkept: 0, other: [] };
    cache.onError((e) => {
      if (/could not be kept/.test(e.message)) errors.unkept++;
      else errors.other.push(e.message);
    });
    const offs = [];
    const memory = () => raw.initSync().memory.buffer.byteLength;
    const peak = { entries: 0, bytes: 0, timers: 0, outstanding: 0, inFlight: 0 };
    const samples = [['before', memory()]];
    for (const [i, v] of views.entries()) {
      quick(() => cache.setViewport(v));
      peak.timers = Math.max(peak.timers, m.live.size);
      peak.outstanding = Math.max(peak.outstanding, m.outstanding);
      // A listener per view, unsubscribed when the view changes, as a map component does.
      offs.splice(0).forEach((off) => off());
      offs.push(cache.onUpdate(() => {}));
      for (let k = 0; k < 3; k++) await new Promise((r) => setImmediate(r));
      const st = cache.stats();
      assert.ok(st.entries <= maxItems && st.bytes <= maxBytes, `view ${i}: ${JSON.stringify(st)}`);
      peak.entries = Math.max(peak.entries, st.entries);
      peak.bytes = Math.max(peak.bytes, st.bytes);
      peak.timers = Math.max(peak.timers, m.live.size);
      peak.outstanding = Math.max(peak.outstanding, m.outstanding);
      peak.inFlight = Math.max(peak.inFlight, st.inFlight);
      if (i % Math.ceil(views.length / 4) === 0 || i === views.length - 1) samples.push([i, memory()]);
    }
    await until(() => cache.stats().inFlight === 0, 'quiet');
    const st = cache.stats();
    // Requests are bounded by maxInFlight (4); the shell holds one timer per request plus
    // the engine's wake-up.
    assert.ok(peak.inFlight <= 4 && peak.outstanding <= 4, JSON.stringify(peak));
    assert.ok(peak.timers <= 5, JSON.stringify(peak));
    assert.equal(m.outstanding, 0);
    assert.ok(m.live.size <= 1, `${m.live.size} timers after the session`);
    assert.deepEqual(errors.other, []);
    assert.ok(st.requests < 6 * views.length, `${st.requests} requests for ${views.length} views`);
    // Prefetch stays within what the cache can hold: without that limit each answer pushed
    // earlier ones out, to be fetched again (the random walk fetched 1.26M items, 420 a view).
    assert.ok(st.itemsFetched < 40 * views.length, `${st.itemsFetched} items fetched for ${views.length} views`);
    assert.ok(st.evictions > 0, 'the limits were reached');
    // The wasm memory grows while the cache fills, then stays: the last quarter of the
    // session adds nothing.
    const [, atHalf] = samples[Math.ceil(samples.length / 2)];
    const [, atEnd] = samples.at(-1);
    assert.ok(atEnd <= atHalf * 1.25, `wasm memory ${samples.map(([i, b]) => `${i}:${b}`).join(' ')}`);
    t.diagnostic(`${label}: ${views.length} viewports, ${st.requests} requests (${st.prefetchRequests} prefetch), ` +
      `${st.itemsFetched} items fetched, ${st.evictions} evictions; peak entries ${peak.entries}/${maxItems}, ` +
      `peak bytes ${peak.bytes}/${maxBytes}; wasm memory ${samples.map(([i, b]) => `${i}:${(b / 2 ** 20).toFixed(2)}MiB`).join(' ')}; ` +
      `peak timers ${peak.timers}, peak fetches ${peak.outstanding}, hit rate ${st.hitRate.toFixed(3)}, ` +
      `${errors.unkept} "could not be kept" errors`);
    cache.dispose();
  } finally {
    m.restore();
    await big.close();
  }
}

/** xorshift32, for a reproducible walk. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 2 ** 32; };
}

/** A viewport `zoom` of a 1280 x 800 screen centred at data-tile coordinates (cx, cy). */
function screen(cx, cy, zoom) {
  const w = (1280 / 256) * 2 ** (14 - zoom), h = (800 / 256) * 2 ** (14 - zoom);
  const v = viewOf(0, 0, w, h, zoom);
  const { west, south, east, north } = viewOf(cx - w / 2, cy - h / 2, w, h, zoom);
  return { ...v, west, south, east, north };
}

test('a long session (3000 viewports, seeded random walk) stays within maxItems/maxBytes, with bounded wasm memory, timers and requests', async (t) => {
  const r = rng(0x5eed);
  const views = [];
  let [cx, cy, zoom] = [SX, SY, 14.5];
  for (let i = 0; i < 3000; i++) {
    const a = r();
    if (a < 0.7) { cx += (r() - 0.5) * 3; cy += (r() - 0.5) * 3; } // pan
    else if (a < 0.85) zoom = Math.min(16, zoom + 0.5);
    else zoom = Math.max(12.5, zoom - 0.5);
    cx = Math.min(SX + 10, Math.max(SX - 10, cx));
    cy = Math.min(SY + 10, Math.max(SY - 10, cy));
    views.push(screen(cx, cy, zoom));
  }
  await longSession(t, 'random walk', views);
});

const FORECACHE = new URL('../../../shared/data/forecache-ndsi2d/', import.meta.url);

/** The ForeCache study's sessions (10 real users) as viewports over the test city: each
 * row's ZoomLevel L (0..6) is zoom 12 + L/2, a pan moves the view one screen tile (256 px)
 * in the row's Angle, a zoom re-centres nothing (the city is small); the walk is kept
 * inside the 24 x 24 block. */
function forecacheViews() {
  const views = [];
  const files = readdirSync(FORECACHE).filter((f) => /^U_\d+\.csv$/.test(f)).sort();
  for (const f of files) {
    const [header, ...rows] = readFileSync(new URL(f, FORECACHE), 'utf8').trim().split('\n');
    const cols = header.split(',');
    const at = (name) => cols.indexOf(name);
    let [cx, cy] = [SX + 0.5, SY + 0.5];
    for (const line of rows) {
      const cells = line.match(/("([^"]|"")*"|[^,]*)(,|$)/g).map((c) => c.replace(/,$/, ''));
      const level = Number(cells[at('ZoomLevel')]), zoom = 12 + Math.min(6, Math.max(0, level)) / 2;
      if (cells[at('Action')] === 'pan') {
        const a = (Number(cells[at('Angle')]) * Math.PI) / 180, step = 2 ** (14 - zoom);
        cx = Math.min(SX + 10, Math.max(SX - 10, cx + Math.cos(a) * step));
        cy = Math.min(SY + 10, Math.max(SY - 10, cy - Math.sin(a) * step));
      }
      views.push(screen(cx, cy, zoom));
    }
  }
  return views;
}

test('a long session over the real ForeCache navigation traces (10 users, replayed 3 times)', async (t) => {
  if (!existsSync(FORECACHE)) {
    t.skip(`../shared/data/forecache-ndsi2d/ is absent (${FORECACHE.pathname}); the seeded random walk above covers long sessions`);
    return;
  }
  const once = forecacheViews();
  await longSession(t, `ForeCache traces (${once.length} actions x 3)`, [...once, ...once, ...once]);
});
