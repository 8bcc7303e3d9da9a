// The per-tile API (loadTiles), known destinations (prefetch), views too wide to fetch
// (tooWide) and zoom units (tileSize), against the local batch backend.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TileCache, parentTile } from 'tilewarm';
import { startBackend, viewOf, SEATTLE } from './support/backend.mjs';

const [, SX, SY] = SEATTLE;
let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.close());

function fresh(mode = 'ok') {
  backend.mode = mode;
  backend.delayMs = 0;
  backend.requests = [];
  backend.aborted = 0;
}

async function until(cond, what = 'condition', ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const ids = (items) => items.map((i) => i.id).sort();
/** Tile (dx, dy) from Seattle's z14 tile. */
const t14 = (dx, dy) => `14/${SX + dx}/${SY + dy}`;
/** What the backend holds in a tile at `access`. */
const truth = (tile, access = 'public') => backend.tileItems(tile, access).map((i) => i.id).sort();

async function make(opts = {}) {
  // No prefetch of its own, so only the calls under test send requests.
  return TileCache.create({ endpoint: backend.url, prefetch: { ring: 0, viewRing: 0, lookaheadMs: 0 }, ...opts });
}

test('loadTiles: N one-tile calls in one tick need ceil(N / maxTiles) requests, and each gets its items', async () => {
  fresh();
  // Complete blocks only: two neighbours are half a z13 block, a coarse tile at the default.
  const cache = await make({ batch: { maxTiles: 4, maxInFlight: 8, coalesceMinShare: 100 } });
  const tiles = [];
  for (let k = 0; k < 10; k++) tiles.push(t14(k - 5, 2));
  const loads = await Promise.all(tiles.map((t) => cache.loadTiles([t])));
  assert.equal(backend.requests.length, Math.ceil(10 / 4), JSON.stringify(backend.requests));
  assert.deepEqual(backend.requests.flatMap((r) => r.tiles).sort(), [...tiles].sort());
  loads.forEach(([got], k) => {
    assert.equal(got.tile, tiles[k]);
    assert.equal(got.error, undefined);
    assert.deepEqual(ids(got.items), truth(tiles[k]));
    assert.ok(got.items.length > 0);
  });
  cache.dispose();
});

test('loadTiles: fresh tiles are answered without a request; finer and coarser host tiles', async () => {
  fresh();
  const cache = await make();
  // The four data tiles of a z13 tile.
  const [x0, y0] = [SX & ~1, SY & ~1];
  const quad = [[0, 0], [1, 0], [0, 1], [1, 1]].map(([dx, dy]) => `14/${x0 + dx}/${y0 + dy}`);
  await cache.loadTiles(quad);
  const before = backend.requests.length;
  assert.equal(before, 1);
  // A data tile again, the z13 tile over them, and a z16 tile inside one of them.
  const z13 = `13/${x0 >> 1}/${y0 >> 1}`;
  const z16 = `16/${SX * 4 + 1}/${SY * 4 + 2}`;
  const again = await cache.loadTiles([t14(0, 0), z13, z16]);
  assert.equal(backend.requests.length, before, 'no request');
  assert.deepEqual(ids(again[0].items), truth(t14(0, 0)));
  assert.deepEqual(ids(again[1].items), truth(z13));
  assert.deepEqual(ids(again[2].items), truth(z16), 'only the items inside the finer tile');
  assert.ok(again[2].items.length < again[0].items.length + 1);
  cache.dispose();
});

test('loadTiles: a request that gives up fails its tiles only; the other tiles of the call load', async () => {
  fresh();
  // Data tiles only: a coarse tile over half a block would carry the bad tile's
  // neighbours into its failure.
  const cache = await make({ batch: { maxTiles: 1, retries: 0, coalesceMinShare: 100 } });
  const errors = [];
  cache.onError((e) => errors.push(e));
  // Fail every request that asks for the bad tile.
  const bad = t14(3, 3);
  backend.hostile = (res, answer, request) => {
    if (request.tiles.includes(bad)) { res.writeHead(500, { 'content-type': 'application/json' }); res.end('{"error":{"code":"boom","message":"no"}}'); return; }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  };
  try {
    const got = await cache.loadTiles([t14(2, 2), bad, t14(2, 3)]);
    assert.deepEqual(ids(got[0].items), truth(t14(2, 2)));
    assert.deepEqual(ids(got[2].items), truth(t14(2, 3)));
    assert.equal(got[1].items, undefined);
    assert.equal(got[1].error.code, 'ERR_HTTP');
    assert.equal(got[1].error.status, 500);
    assert.equal(errors.length, 1);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('loadTiles: a tile an answer leaves out fails with the error; the tiles it answered load', async () => {
  fresh();
  const cache = await make({ batch: { maxTiles: 4, coalesceMinShare: 100 } });
  const errors = [];
  cache.onError((e) => errors.push(e));
  // Answers every request, leaving out the list of one tile (a server bug): without its
  // tiles in the error, the load waited for ever while the engine asked again on backoff.
  const left = t14(4, 4);
  backend.hostile = (res, answer) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ...answer, tiles: answer.tiles.filter((t) => t.tile !== left) }));
  };
  try {
    const got = await cache.loadTiles([t14(4, 3), left]);
    assert.deepEqual(ids(got[0].items), truth(t14(4, 3)));
    assert.equal(got[1].items, undefined);
    assert.equal(got[1].error.code, 'ERR_INVALID_RESPONSE');
    assert.match(got[1].error.message, /leaves out 1 of the requested tiles/);
    assert.equal(errors.length, 1);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('loadTiles: a host tile holding more items than maxItems fails with an error naming the limit, not a request loop', async () => {
  fresh();
  const cache = await make({ maxItems: 20 });
  const errors = [];
  cache.onError((e) => errors.push(e));
  // A z12 tile: its 16 data tiles hold 48 items. Each answer evicted what the one before
  // brought, the tiles were asked for again at once, and the load never settled.
  const host = `12/${SX >> 2}/${SY >> 2}`;
  try {
    const got = await Promise.race([
      cache.loadTiles([host]),
      new Promise((r) => setTimeout(() => r('still waiting'), 3000)),
    ]);
    assert.notEqual(got, 'still waiting', `${backend.requests.length} requests`);
    assert.equal(got[0].items, undefined);
    assert.equal(got[0].error.code, 'ERR_INVALID_RESPONSE');
    assert.match(got[0].error.message, /could not be kept .*the tiles a host loads.*max_items 20.*loads fail/);
    assert.ok(errors.includes(got[0].error));
    const sent = backend.requests.length;
    assert.ok(sent <= 16, `${sent} requests`);
    // Asked for again at once, the tiles wait for a backoff (100 ms at least) before they
    // go out, and fail the same way.
    const again = cache.loadTiles([host]);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(backend.requests.length, sent, 'asked for again before a backoff');
    assert.match((await again)[0].error?.message ?? '', /could not be kept/);
    // Then nothing asks for them again.
    const after = backend.requests.length;
    assert.ok(after <= 2 * sent, `${after} requests`);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(backend.requests.length, after, 'asked for again');
  } finally {
    cache.dispose();
  }
});

/** A cache whose view at Seattle's tile and its ring are loaded, then one item of the ring
 * tile to the east dropped: its list is known, so the next round refreshes it by id in a
 * prefetch request. Returns the cache and that item's id. */
async function withRingRefresh(batch) {
  const cache = await TileCache.create({ endpoint: backend.url, prefetch: { ring: 1, viewRing: 0, lookaheadMs: 0 }, batch });
  cache.setViewport(viewOf(SX, SY, 1, 1));
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'the ring fetched');
  const ring = backend.tileItems(t14(1, 0), 'public')[0].id;
  cache.invalidate({ ids: [ring] });
  return { cache, ring };
}

test('get: an id that went out in a prefetch refresh is answered or rejected with it, never left waiting', async () => {
  fresh();
  // Refreshes by id fail (retries 0), and a get() of the ring item used to wait for ever:
  // it was not queued on its own, its id being in flight.
  const { cache, ring } = await withRingRefresh({ retries: 0, coalesceMinShare: 100 });
  cache.onError(() => {});
  try {
    backend.delayMs = 200;
    backend.hostile = (res, answer, request) => {
      if ((request.ids ?? []).length) { res.writeHead(500, { 'content-type': 'application/json' }); res.end('{"error":{"code":"boom","message":"no"}}'); return; }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    };
    cache.setViewport(viewOf(SX, SY, 1, 1));
    await until(() => backend.requests.some((r) => (r.ids ?? []).includes(ring)), 'the ring refresh sent');
    const got = await Promise.race([
      cache.get(ring).then((v) => ({ v }), (e) => ({ e })),
      new Promise((r) => setTimeout(() => r('still waiting'), 3000)),
    ]);
    assert.notEqual(got, 'still waiting');
    assert.equal(got.e?.code, 'ERR_HTTP');
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('get: an id whose prefetch refresh is cancelled (the view moved on) is asked for again', async () => {
  fresh();
  const { cache, ring } = await withRingRefresh({ coalesceMinShare: 100 });
  try {
    backend.delayMs = 300;
    cache.setViewport(viewOf(SX, SY, 1, 1));
    await until(() => backend.requests.some((r) => (r.ids ?? []).includes(ring)), 'the ring refresh sent');
    const pending = cache.get(ring).then((v) => ({ v }), (e) => ({ e }));
    // Far away: the refresh is no longer wanted and is cancelled with the get() waiting.
    cache.setViewport(viewOf(SX + 8, SY + 8, 1, 1));
    const got = await Promise.race([pending, new Promise((r) => setTimeout(() => r('still waiting'), 3000))]);
    assert.notEqual(got, 'still waiting');
    assert.equal(got.v?.id, ring);
  } finally {
    cache.dispose();
  }
});

test('loadTiles: a tile over maxVisibleTiles data tiles is an error for that tile, bad tiles throw', async () => {
  fresh();
  const cache = await make({ maxVisibleTiles: 16 });
  const got = await cache.loadTiles([`11/${SX >> 3}/${SY >> 3}`, `12/${SX >> 2}/${SY >> 2}`]);
  assert.equal(got[0].error.code, 'ERR_TOO_MANY_TILES');
  assert.equal(got[0].error.message, `tile 11/${SX >> 3}/${SY >> 3} covers 64 data tiles, more than maxVisibleTiles (16): ask for tiles at zoom 12 or finer`);
  assert.equal(got[1].error, undefined);
  assert.deepEqual(ids(got[1].items), truth(`12/${SX >> 2}/${SY >> 2}`), 'a z12 tile is 16 data tiles: within the limit');
  assert.throws(() => cache.loadTiles(['14/x/1']), { code: 'ERR_INVALID_TILE' });
  assert.throws(() => cache.loadTiles(['14/1/1'], { signal: 1 }), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => cache.loadTiles(['14/1/1'], { sigal: 1 }), { code: 'ERR_INVALID_ARG_VALUE' });
  cache.dispose();
});

test('loadTiles: abort before the tick sends nothing; abort while waiting rejects and unqueues', async () => {
  fresh();
  const cache = await make({ batch: { maxInFlight: 1 } });
  const ctrl = new AbortController();
  const p = cache.loadTiles([t14(-4, -4)], { signal: ctrl.signal });
  ctrl.abort();
  await assert.rejects(p, { name: 'AbortError' });
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(backend.requests.length, 0, 'nothing sent');
  // Waiting: one slot, the first request hangs, the second call's tile is queued behind it.
  backend.delayMs = 300;
  const first = cache.loadTiles([t14(-4, -3)]);
  await backend.waitFor(1);
  const ctrl2 = new AbortController();
  const second = cache.loadTiles([t14(-6, -6)], { signal: ctrl2.signal });
  await new Promise((r) => setTimeout(r, 10));
  ctrl2.abort(new Error('gone'));
  await assert.rejects(second, /gone/);
  await first;
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(backend.requests.map((r) => r.tiles), [[t14(-4, -3)]], 'the aborted tile was never asked for');
  // Already aborted: rejects at once.
  await assert.rejects(cache.loadTiles([t14(0, 0)], { signal: AbortSignal.abort() }), { name: 'AbortError' });
  cache.dispose();
});

test('loadTiles: tiles stay queued across setViewport until they arrive', async () => {
  fresh();
  const cache = await make({ batch: { maxInFlight: 1 } });
  backend.delayMs = 100;
  cache.setViewport(viewOf(SX, SY, 1, 1));
  const far = cache.loadTiles([t14(8, 8)]);
  await new Promise((r) => setTimeout(r, 10));
  cache.setViewport(viewOf(SX + 1, SY, 1, 1)); // replaces the planner's queues
  const [got] = await far;
  assert.deepEqual(ids(got.items), truth(t14(8, 8)));
  cache.dispose();
});

test('dispose rejects pending loads', async () => {
  fresh();
  const cache = await make();
  backend.delayMs = 200;
  const p = cache.loadTiles([t14(5, 5)]);
  await backend.waitFor(1);
  cache.dispose();
  await assert.rejects(p, { code: 'ERR_DISPOSED' });
});

test('prefetch: a destination is fetched as prefetch, kept across viewports; then a view there sends no foreground request', async () => {
  fresh();
  const cache = await make();
  cache.setViewport(viewOf(SX, SY, 2, 2));
  await cache.whenComplete();
  const dest = viewOf(SX + 8, SY + 8, 2, 2);
  assert.equal(cache.prefetch(dest), 4);
  cache.setViewport(viewOf(SX + 1, SY, 2, 2)); // would have replaced a warm()
  await until(() => cache.tileStates([t14(8, 8), t14(9, 9)]).every((s) => s === 'prefetched'), 'prefetched destination');
  const fg = cache.stats().requests - cache.stats().prefetchRequests;
  const there = cache.setViewport(dest);
  assert.equal(there.complete, true);
  assert.equal(cache.stats().requests - cache.stats().prefetchRequests, fg, 'no foreground request');
  assert.equal(cache.prefetch(dest), 0, 'fresh: nothing to queue');
  assert.equal(cache.prefetch([t14(-9, -9)]), 1);
  // A data tile given twice (or by overlapping tiles) counts once.
  assert.equal(cache.prefetch([t14(-9, -9), t14(-9, -9), parentTile(t14(-9, -9), 13)]), 4);
  assert.throws(() => cache.prefetch({ west: -180, south: -85, east: 180, north: 85, zoom: 14 }), { code: 'ERR_TOO_MANY_TILES' });
  assert.throws(() => cache.prefetch('14/1/1'), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => cache.prefetch(['nope']), { code: 'ERR_INVALID_TILE' });
  cache.dispose();
});

test('tooWide: a wide view fetches nothing, keeps showing the cache, and never throws', async () => {
  fresh();
  // Data tiles only: a coarse tile over half a block would cache tiles of the wide view
  // beyond the first one.
  const cache = await make({ maxVisibleTiles: 4, batch: { coalesceMinShare: 100 } });
  cache.setViewport(viewOf(SX, SY, 2, 2));
  await cache.whenComplete();
  const shown = cache.setViewport(viewOf(SX, SY, 2, 2)).items.length;
  const wide = cache.setViewport(viewOf(SX - 1, SY - 1, 4, 4));
  assert.equal(wide.tooWide, true);
  assert.equal(wide.complete, false);
  assert.deepEqual(wide.missingTiles, []);
  assert.equal(wide.items.length, shown, 'the cached items in view');
  // It never completes: waiting for it is an error, not a promise that never settles.
  await assert.rejects(cache.whenComplete(), { code: 'ERR_TOO_MANY_TILES', message: /maxVisibleTiles \(4\)/ });
  const n = backend.requests.length;
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(backend.requests.length, n, 'nothing fetched');
  const back = cache.setViewport(viewOf(SX, SY, 2, 2));
  assert.equal(back.tooWide, false);
  assert.equal(back.complete, true);
  // So does a wait that began before the view turned too wide.
  backend.delayMs = 200;
  cache.setViewport(viewOf(SX + 6, SY + 6, 2, 2));
  const pending = cache.whenComplete();
  cache.setViewport(viewOf(SX - 1, SY - 1, 4, 4));
  await assert.rejects(pending, { code: 'ERR_TOO_MANY_TILES' });
  backend.delayMs = 0;
  await assert.rejects(TileCache.create({ endpoint: backend.url, maxVisibleTiles: 0 }), { code: 'ERR_OUT_OF_RANGE' });
  cache.dispose();
});

test('tileSize 512: the viewport zoom and minZoom are MapLibre\'s', async () => {
  fresh();
  const v = viewOf(SX, SY, 2, 2, 13.5); // MapLibre zoom 13.5 = 14.5 in 256-px terms
  const a = await make({ tileSize: 512, minZoom: 13 });
  a.setViewport(v);
  await a.whenComplete();
  assert.ok(backend.requests.length > 0, 'fetched at MapLibre zoom 13.5 with minZoom 13');
  const b = await make({ minZoom: 14 });
  fresh();
  assert.equal(b.setViewport(v).complete, true, '256-px zoom 13.5 is below minZoom 14');
  assert.equal(backend.requests.length, 0, 'nothing fetched below minZoom (prefetch.warmBelowMinZoom is off by default)');
  await assert.rejects(make({ tileSize: 300 }), { code: 'ERR_OUT_OF_RANGE', message: 'tileSize must be 256 or 512, got 300' });
  await assert.rejects(make({ tileSize: '512' }), { code: 'ERR_INVALID_ARG_TYPE' });
  a.dispose();
  b.dispose();
});

test('loadTiles: items expired within staleWhileRevalidate come flagged stale, fresh ones not', async () => {
  fresh();
  let now = 1_700_000_000_000;
  const cache = await make({ now: () => now, ttl: { staleWhileRevalidate: 60 } });
  const tile = t14(1, 1);
  const [first] = await cache.loadTiles([tile]);
  assert.ok(first.items.length > 0 && first.items.every((i) => !i.stale));
  // Past the default TTL (300 s; the backend sends ttl 300 per tile), within the 60 s grace:
  // active items expire, off-market ones (class TTL 4 h) do not.
  now += 310_000;
  const sent = backend.requests.length;
  const [later] = await cache.loadTiles([tile]);
  assert.equal(backend.requests.length, sent, 'answered from the cache');
  assert.deepEqual(ids(later.items), truth(tile));
  const byId = new Map(backend.items.map((it) => [it.id, it]));
  for (const it of later.items) assert.equal(it.stale, byId.get(it.id).class === 'active', `${it.id} (${it.class})`);
  assert.ok(later.items.some((i) => i.stale) && later.items.some((i) => !i.stale));
  cache.dispose();
});

/** A load's promise, or 'still waiting' after `ms`. */
const within = (p, ms = 3000) => Promise.race([p, new Promise((r) => setTimeout(() => r('still waiting'), ms))]);

/** The z13 tile over Seattle's data tile, and its four data tiles. */
const Z13 = `13/${SX >> 1}/${SY >> 1}`;
const QUAD = [[0, 0], [1, 0], [0, 1], [1, 1]].map(([dx, dy]) => `14/${(SX & ~1) + dx}/${(SY & ~1) + dy}`);

/** Answers requests for `first` (and requests without tiles: get()s) at once and holds the
 * others until `release()`. */
function holdAllBut(first) {
  const held = [];
  backend.hostile = (res, answer, request) => {
    const send = () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    };
    if ((request.tiles ?? []).every((t) => t === first)) send(); else held.push(send);
  };
  return { release: () => { for (const send of held.splice(0)) send(); } };
}

test('loadTiles: a host tile answered in several requests that the cache cannot keep fails, instead of waiting for ever', async () => {
  fresh();
  // One data tile per request: each answer pushed out what an earlier one brought before
  // the host tile was read, and nothing asked for it again or failed the load.
  const cache = await make({ maxItems: 20, batch: { maxTiles: 1, coalesceLevels: 0 } });
  const errors = [];
  cache.onError((e) => errors.push(e));
  const host = `12/${SX >> 2}/${SY >> 2}`;
  try {
    const got = await within(cache.loadTiles([host]));
    assert.notEqual(got, 'still waiting', `${backend.requests.length} requests, ${JSON.stringify(cache.stats())}`);
    assert.equal(got[0].items, undefined);
    assert.match(got[0].error.message, /could not be kept .*max_items 20/);
    assert.ok(errors.includes(got[0].error));
    // Each data tile asked for once: none is fetched again in a loop.
    assert.ok(backend.requests.length <= 16, `${backend.requests.length} requests`);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(backend.requests.length <= 16, `${backend.requests.length} requests`);
  } finally {
    cache.dispose();
  }
});

test('loadTiles: a host tile that fits keeps its first data tile while other answers come, and loads', async () => {
  fresh();
  const want = truth(Z13);
  // Room for the host tile and nothing more.
  const cache = await make({ maxItems: want.length, batch: { maxTiles: 1, coalesceLevels: 0 } });
  const errors = [];
  cache.onError((e) => errors.push(e));
  const { release } = holdAllBut(QUAD[0]);
  try {
    const load = cache.loadTiles([Z13]);
    await until(() => cache.tileStates([QUAD[0]])[0] === 'loaded', 'the first data tile');
    // Items elsewhere, fetched by id after it: the least recently used was the first data
    // tile, which the last answer pushed out before the host tile could be read.
    const far = truth(t14(-8, -8));
    assert.ok(far.length > 0);
    assert.ok((await cache.getMany(far)).every((it) => it !== undefined));
    release();
    const got = await within(load);
    assert.notEqual(got, 'still waiting', JSON.stringify(cache.tileStates(QUAD)));
    assert.equal(got[0].error, undefined, got[0].error?.message);
    assert.deepEqual(ids(got[0].items), want);
    assert.deepEqual(errors, []);
    assert.equal(backend.requests.length, 5, 'four data tiles and the ids');
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('loadTiles: a load bigger than what a view at rest leaves fails, and the view stays complete', async () => {
  fresh();
  // The view's items were older than the load's answers and kept no better: the load
  // pushed them out and resolved, and the view went incomplete and was fetched again.
  const seen = t14(-8, -8);
  const view = truth(seen);
  const want = truth(Z13);
  assert.ok(view.length > 0 && want.length > 1);
  // Room for the view and all but one of the host tile's items.
  const cache = await make({ maxItems: view.length + want.length - 1 });
  const errors = [];
  cache.onError((e) => errors.push(e));
  try {
    cache.setViewport(viewOf(SX - 8, SY - 8, 1, 1));
    await cache.whenComplete();
    const sent = backend.requests.length;
    await new Promise((r) => setTimeout(r, 20)); // at rest
    const got = await within(cache.loadTiles([Z13]));
    assert.notEqual(got, 'still waiting', `${backend.requests.length} requests`);
    assert.equal(got[0].items, undefined);
    assert.match(got[0].error?.message ?? '', new RegExp(`could not be kept .*max_items ${view.length + want.length - 1}`));
    await new Promise((r) => setTimeout(r, 300));
    const again = backend.requests.slice(sent).filter((r) => r.tiles?.includes(seen));
    assert.deepEqual(again, [], 'the view was asked for again');
    const now = cache.setViewport(viewOf(SX - 8, SY - 8, 1, 1));
    assert.ok(now.complete, JSON.stringify(now.missingTiles));
    assert.deepEqual(ids(now.items), view);
    // Every error names one of the load's tiles, none the view's.
    assert.ok(errors.length > 0);
    assert.ok(errors.every((e) => QUAD.some((t) => e.message.includes(`(first ${t})`))), errors.map((e) => e.message).join('; '));
  } finally {
    cache.dispose();
  }
});

test('loadTiles: a data tile dropped after it arrived and before the host tile was read is asked for again', async () => {
  fresh();
  const cache = await make({ batch: { maxTiles: 1, coalesceLevels: 0 } });
  const { release } = holdAllBut(QUAD[0]);
  try {
    const load = cache.loadTiles([Z13]);
    await until(() => cache.tileStates([QUAD[0]])[0] === 'loaded', 'the first data tile');
    cache.invalidate({ tiles: [QUAD[0]] });
    await until(() => backend.requests.filter((r) => r.tiles?.includes(QUAD[0])).length === 2, 'asked for again');
    release();
    const got = await within(load);
    assert.notEqual(got, 'still waiting', JSON.stringify(cache.tileStates(QUAD)));
    assert.deepEqual(ids(got[0].items), truth(Z13));
    // Read, the load's data tiles are released: dropped again, nothing asks for them.
    const sent = backend.requests.length;
    cache.invalidate({ tiles: [QUAD[0]] });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(backend.requests.length, sent, 'asked for after the load settled');
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('whenComplete: a get() that gives up does not reject it; a request for the view that gives up does', async () => {
  fresh();
  const cache = await make({ batch: { retries: 0 } });
  cache.onError(() => {});
  // Ids fail at once; the view's tile is held until released.
  let held = [];
  backend.hostile = (res, answer, request) => {
    const send = () => {
      if ((request.ids ?? []).length || backend.mode === 'fail') {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end('{"error":{"code":"boom","message":"no"}}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    };
    if ((request.ids ?? []).length) send(); else held.push(send);
  };
  try {
    cache.setViewport(viewOf(SX, SY, 1, 1));
    const complete = cache.whenComplete().then(() => 'complete', (e) => e);
    await assert.rejects(cache.get(truth(t14(-8, -8))[0]), (e) => e.code === 'ERR_HTTP' && e.kind === 'foreground');
    await until(() => held.length > 0, 'the view sent');
    for (const send of held.splice(0)) send();
    assert.equal(await within(complete), 'complete');
    // The view elsewhere, its request failing for good: that rejects it.
    cache.setViewport(viewOf(SX + 5, SY + 5, 1, 1));
    const failed = cache.whenComplete().then(() => 'complete', (e) => e);
    await until(() => held.length > 0, 'the view sent');
    backend.mode = 'fail';
    for (const send of held.splice(0)) send();
    const e = await within(failed);
    assert.equal(e.code, 'ERR_HTTP');
    assert.equal(e.kind, 'foreground');
  } finally {
    backend.hostile = null;
    backend.mode = 'ok';
    cache.dispose();
  }
});

test('loadTiles: a coarse host tile answered in many requests loads (its data tiles noted once, not once per answer)', async () => {
  fresh();
  // A z9 tile (1024 data tiles) in 128 requests of 8 data tiles. A pending load is read
  // again after each answer: its data tiles were noted again each time (128 x 1024), then
  // spread into one call's arguments when it settled, which threw (a RangeError, unhandled)
  // and left the load waiting for ever.
  const cache = await make({ batch: { maxTiles: 8, coalesceLevels: 0 } });
  const z9 = `9/${SX >> 5}/${SY >> 5}`;
  try {
    const got = await within(cache.loadTiles([z9]), 20_000);
    assert.notEqual(got, 'still waiting', `${backend.requests.length} requests`);
    assert.equal(got[0].error, undefined, got[0].error?.message);
    assert.deepEqual(ids(got[0].items), truth(z9));
    assert.ok(got[0].items.length > 0);
    assert.equal(backend.requests.length, 128);
    // Settled, its data tiles are released: one dropped is not asked for again.
    cache.invalidate({ tiles: [t14(0, 0)] });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(backend.requests.length, 128);
  } finally {
    cache.dispose();
  }
});

// A get() answer was inserted as if it were for the view: with the cache full of the view's
// items at rest, it pushed one out, the view went incomplete and was fetched again. It may
// only push out unprotected items now; with none left, the cache does not keep it, and the
// get() is handed the item all the same (it resolved undefined: "does not exist").
test('get(): with the cache full of a view at rest, an item outside it is handed out and the view keeps its items', async () => {
  // room: none beside the view's items, or one (each item of the answer pushed out the one
  // kept just before it, whose get() resolved undefined).
  for (const room of [0, 1]) {
    fresh();
    const seen = t14(-8, -8);
    const view = truth(seen);
    const far = truth(t14(5, 5));
    assert.ok(view.length > 0 && far.length > 2);
    const cache = await make({ maxItems: view.length + room });
    const errors = [];
    cache.onError((e) => errors.push(e));
    try {
      cache.setViewport(viewOf(SX - 8, SY - 8, 1, 1));
      await cache.whenComplete();
      const sent = backend.requests.length;
      await new Promise((r) => setTimeout(r, 20)); // at rest
      const got = await within(cache.getMany(far));
      assert.notEqual(got, 'still waiting');
      assert.deepEqual(got.map((it) => it?.id), far, `room ${room}: every item handed out`);
      assert.deepEqual(got[0].data, backend.byId.get(far[0]).data);
      assert.equal(await cache.get(far[0]).then((it) => it?.id), far[0], 'and again (not kept: fetched)');
      await new Promise((r) => setTimeout(r, 300));
      const again = backend.requests.slice(sent).filter((r) => r.tiles?.includes(seen));
      assert.deepEqual(again, [], 'the view was asked for again');
      const now = cache.setViewport(viewOf(SX - 8, SY - 8, 1, 1));
      assert.ok(now.complete, JSON.stringify(now.missingTiles));
      assert.deepEqual(ids(now.items), view);
      assert.deepEqual(errors, []);
      assert.ok(cache.stats().entries <= view.length + room);
    } finally {
      cache.dispose();
    }
  }
});

// Security: a get()'s item the cache does not keep is handed out only when the engine's
// tier check passed it: an item above the tier (a server that ignores tiers), or above the
// lower tier the server reports for the credential in that answer, resolves undefined.
test('get(): an item above the verified tier answered to a get() is never handed out, kept or not', async () => {
  const secret = backend.items.find((i) => i.access === 'agent' && !truth(t14(-8, -8), 'agent').includes(i.id));
  assert.ok(secret);
  for (const [access, reported] of [['public', null], ['agent', 'public']]) {
    fresh();
    const seen = t14(-8, -8);
    const cache = await make({ access, maxItems: truth(seen, access).length });
    try {
      cache.setViewport(viewOf(SX - 8, SY - 8, 1, 1));
      await cache.whenComplete();
      backend.hostile = (res, answer, request) => {
        const headers = { 'content-type': 'application/json' };
        if ((request.ids ?? []).includes(secret.id)) {
          if (!answer.items.includes(secret)) answer.items.push(secret);
          answer.missing = answer.missing.filter((id) => id !== secret.id);
          if (reported) answer.access = reported;
        }
        res.writeHead(200, headers);
        res.end(JSON.stringify(answer));
      };
      const got = await within(cache.get(secret.id));
      assert.equal(got, undefined, `${access}, reported ${reported}: handed out`);
      assert.equal(cache.access, reported ?? access, 'the reported tier is followed');
    } finally {
      backend.hostile = null;
      cache.dispose();
    }
  }
});

test('onTilesChanged: names the tiles an answer or an invalidate changed, with no view; onUpdate hears nothing then', async () => {
  fresh();
  const cache = await make({ batch: { coalesceMinShare: 100 } });
  const heard = [];
  let updates = 0;
  cache.onTilesChanged((tiles) => heard.push(tiles && [...tiles].sort()));
  cache.onUpdate(() => { updates++; });
  const [a, b] = [t14(3, 3), t14(4, 3)];
  await cache.loadTiles([a, b]);
  assert.deepEqual(heard, [[a, b].sort()], 'the answer changed both tiles, once');
  await cache.loadTiles([a]);
  assert.equal(heard.length, 1, 'a read from the cache changes nothing');
  cache.invalidate({ tiles: [b] });
  cache.invalidate({ classes: ['active'] });
  assert.deepEqual(heard.slice(1), [[b], null], 'the tile invalidated; by class, any');
  assert.equal(updates, 2, 'onUpdate: the two invalidates, not the answer outside the view');
  cache.dispose();
});

test('onTilesChanged: a tile loadTiles read is named when what it read expires, with no view (the cache wakes for it)', async () => {
  fresh();
  let skew = 0;
  const cache = await make({ now: () => Date.now() + skew });
  const heard = [];
  cache.onTilesChanged((tiles) => heard.push(tiles));
  const [a] = [t14(3, 5)];
  await cache.loadTiles([a]);
  await cache.loadTiles([a]);
  assert.deepEqual(heard, [[a]], 'the answer');
  // Past the active items' ttl (300 s); a call arms the cache's timer for the wake-up now due.
  skew = 301_000;
  cache.prefetch([]);
  await until(() => heard.length > 1, 'the expired tile named');
  assert.deepEqual(heard, [[a], [a]]);
  cache.dispose();
});

test('onTilesChanged: an invalidate by id of an item pushed out of the cache names the tile loadTiles read it in', async () => {
  fresh();
  const cache = await make({ maxItems: 4 });
  const heard = [];
  cache.onTilesChanged((tiles) => heard.push(tiles));
  const [a, b] = [t14(-3, 5), t14(-4, 5)];
  const [{ items }] = await cache.loadTiles([a]);
  assert.ok(items.length > 0);
  await cache.loadTiles([b]);
  assert.ok(cache.stats().evictions > 0, "b's items pushed a's out");
  heard.length = 0;
  cache.invalidate({ ids: [items[0].id] });
  assert.deepEqual(heard, [[a]]);
  cache.dispose();
});
