// TileCache against a local HTTP backend that speaks the batch protocol (support/backend.mjs),
// imported through the package's own exports ("node" condition).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TileCache } from 'tilewarm';
import * as raw from 'tilewarm/raw';
import { startBackend, viewOf, tileOf, tileCorner, SEATTLE } from './support/backend.mjs';

const [, SX, SY] = SEATTLE;
let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.close());

/** Resets the backend between tests. */
function fresh(mode = 'ok') {
  backend.mode = mode;
  backend.delayMs = 0;
  backend.bounds = null;
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

/** The ids the backend says a view of data tiles holds at `access`. */
function truth(view, access = 'public') {
  const ids = new Set();
  for (const t of viewTiles(view)) for (const it of backend.tileItems(t, access)) ids.add(it.id);
  return [...ids].sort();
}

function viewTiles(v) {
  const [, x0, y0] = tileOf(v.west, v.north, 14);
  const [, x1, y1] = tileOf(v.east, v.south, 14);
  const out = [];
  for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) out.push(`14/${x}/${y}`);
  return out;
}

const ids = (items) => items.map((i) => i.id).sort();
const foreground = (c) => c.stats().requests - c.stats().prefetchRequests;

async function make(opts = {}) {
  return TileCache.create({ endpoint: backend.url, ...opts });
}

test('cold viewport: one foreground request for every visible tile, then onUpdate renders', async () => {
  fresh();
  // Complete blocks only (batch.coalesceMinShare 100): the view's partial blocks go out
  // as their data tiles, not as coarse tiles (the default, 50).
  const cache = await make({ headers: { Authorization: 'Bearer t0ken' }, batch: { coalesceMinShare: 100 } });
  const v = viewOf(SX, SY);
  const updates = [];
  cache.onUpdate((items, view) => updates.push([ids(items), view.complete]));
  const first = cache.setViewport(v);
  assert.deepEqual(first.items, []);
  assert.equal(first.complete, false);
  assert.deepEqual(first.missingTiles.sort(), viewTiles(v).sort());
  await cache.whenComplete();
  const fg = backend.requests[0];
  assert.deepEqual(fg.tiles.sort(), viewTiles(v).sort(), 'the first request is the visible tiles');
  assert.deepEqual(fg.ids, []);
  assert.equal(fg.access, 'public');
  assert.equal(fg.headers.authorization, 'Bearer t0ken');
  assert.equal(fg.headers['content-type'], 'application/json');
  assert.equal(foreground(cache), 1);
  assert.deepEqual(updates.at(-1), [truth(v), true]);
  // The data comes through as the server sent it.
  const again = cache.setViewport(v);
  assert.equal(again.complete, true);
  assert.deepEqual(ids(again.items), truth(v));
  const it = again.items.find((i) => i.id === truth(v)[0]);
  assert.deepEqual(it.data, backend.byId.get(it.id).data);
  assert.deepEqual(Object.keys(it).sort(), ['access', 'class', 'data', 'id', 'lat', 'lon', 'stale']);
  assert.equal(foreground(cache), 1, 'a cached view sends nothing in the foreground');
  cache.dispose();
});

test('bounds: tiles outside the data\'s extent are never asked for and a view over them is complete', async () => {
  fresh();
  // The extent ends in the middle of the view's first column (the backend has items
  // further east too, so a tile asked for or shown from there would show here).
  const [west, north] = tileCorner(14, SX - 4, SY - 4);
  const [east, south] = tileCorner(14, SX + 0.5, SY + 6);
  const cache = await make({
    bounds: { west, south, east, north },
    prefetch: { ring: 1, lookaheadMs: 0, viewRing: 0 },
    batch: { coalesceLevels: 0 },
  });
  const v = viewOf(SX, SY, 3, 2);
  const inside = [`14/${SX}/${SY}`, `14/${SX}/${SY + 1}`];
  const first = cache.setViewport(v);
  assert.deepEqual(first.missingTiles.sort(), inside.sort());
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'prefetch');
  const asked = backend.requests.flatMap((r) => r.tiles);
  const outside = asked.filter((t) => Number(t.split('/')[1]) > SX);
  assert.deepEqual(outside, [], 'nothing east of the extent is asked for, in view or around it');
  assert.ok(asked.includes(`14/${SX - 1}/${SY}`), 'the ring inside the extent is prefetched');
  const again = cache.setViewport(v);
  assert.equal(again.complete, true);
  const want = new Set(inside.flatMap((t) => backend.tileItems(t, 'public').map((i) => i.id)));
  assert.deepEqual(ids(again.items), [...want].sort());
  assert.deepEqual(cache.tileStates([`14/${SX + 2}/${SY}`]), ['loaded']);
  // A view entirely outside is complete at once, with no request.
  const before = backend.requests.length;
  const away = cache.setViewport(viewOf(SX + 4, SY));
  assert.equal(away.complete, true);
  assert.deepEqual(away.items, []);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(backend.requests.length, before);
  cache.dispose();
});

test('bounds: the extent a server declares (x-tilewarm-bounds) is adopted, unless the page declares its own', async () => {
  // The backend's items: a 24 x 24 block of data tiles around Seattle.
  const [west, north] = tileCorner(14, SX - 12, SY - 12);
  const [east, south] = tileCorner(14, SX + 12, SY + 12);
  const lean = { prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 }, batch: { coalesceLevels: 0 } };
  const far = viewOf(SX + 30, SY);
  // After one answer, what `far` (30 tiles east of the block) costs: its requests, and
  // whether it was complete at once.
  async function farAfterOneAnswer(declared, opts = {}) {
    fresh();
    backend.bounds = declared;
    const cache = await make({ ...lean, ...opts });
    const errors = [];
    cache.onError((e) => errors.push(e));
    cache.setViewport(viewOf(SX, SY));
    await cache.whenComplete();
    const n = backend.requests.length;
    const complete = cache.setViewport(far).complete;
    await cache.whenComplete();
    const cost = { complete, requests: backend.requests.length - n, errors: errors.length };
    cache.dispose();
    return cost;
  }
  const declared = `${west},${south},${east},${north}`;
  assert.deepEqual(await farAfterOneAnswer(declared), { complete: true, requests: 0, errors: 0 });
  // Without the header, or with one that is not an extent (none declared: the answers
  // stand), the far view is asked for.
  const bads = [null, 'nonsense', '1,2,3', `${west},${south},${east}`, '0,100,1,1', '0,10,1,5', ',,,', '0,,1,1', `0x10,${south},${east},${north}`];
  for (const bad of bads) {
    assert.deepEqual(await farAfterOneAnswer(bad), { complete: false, requests: 1, errors: 0 }, `${bad}`);
  }
  // The page's own extent wins, even a wider one.
  const page = { bounds: { west, south, east: tileCorner(14, SX + 40, SY)[0], north } };
  assert.deepEqual(await farAfterOneAnswer(declared, page), { complete: false, requests: 1, errors: 0 });
});

test('a pan of one tile after prefetch needs no foreground request', async () => {
  fresh();
  const cache = await make();
  cache.setViewport(viewOf(SX, SY));
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'prefetch');
  assert.ok(cache.stats().prefetchRequests >= 1);
  const fg = foreground(cache);
  const panned = viewOf(SX + 1, SY);
  const v = cache.setViewport(panned);
  assert.equal(v.complete, true);
  assert.deepEqual(ids(v.items), truth(panned));
  await until(() => cache.stats().inFlight === 0, 'quiet');
  assert.equal(foreground(cache), fg);
  assert.ok(cache.stats().prefetchTilesUsed >= 2, JSON.stringify(cache.stats()));
  cache.dispose();
});

test('tileStates: in flight, loaded, prefetched and missing data tiles; bad tiles throw', async () => {
  fresh();
  backend.delayMs = 100;
  const cache = await make({ prefetch: { ring: 1, lookaheadMs: 0, viewRing: 0 }, batch: { coalesceLevels: 0 } });
  const v = viewOf(SX, SY);
  const visible = viewTiles(v);
  assert.deepEqual(cache.tileStates(visible), visible.map(() => 'missing'));
  cache.setViewport(v);
  assert.deepEqual(cache.tileStates(visible), visible.map(() => 'inFlight'));
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'prefetch');
  assert.deepEqual(cache.tileStates(visible), visible.map(() => 'loaded'));
  const [, x0, y0] = visible[0].split('/').map(Number);
  // West of the view: ring 1, fetched ahead and not shown; far away; not the data zoom.
  const others = [`14/${x0 - 1}/${y0}`, `14/${x0 - 10}/${y0}`, `13/${x0 >> 1}/${y0 >> 1}`];
  assert.deepEqual(cache.tileStates(others), ['prefetched', 'missing', 'missing']);
  assert.deepEqual(cache.tileStates([]), []);
  // A bad tile is named by its index, with why: a TypeError for a string that is not z/x/y,
  // a RangeError for one that names no tile (as the tile functions throw).
  assert.throws(() => cache.tileStates(['14/1/1', '14/1']), {
    name: 'TypeError', code: 'ERR_INVALID_TILE', message: `tiles[1]: invalid tile "14/1": expected z/x/y, three integers separated by '/'`,
  });
  assert.throws(() => cache.tileStates(['1/5/5']), {
    name: 'RangeError', code: 'ERR_INVALID_TILE', message: 'tiles[0]: tile 1/5/5 does not exist: x and y must be below 2^1 = 2',
  });
  assert.throws(() => cache.loadTiles(['25/0/0']), {
    name: 'RangeError', code: 'ERR_INVALID_TILE', message: 'tiles[0]: zoom must be an integer in 0..=24, got 25',
  });
  assert.throws(() => cache.tileStates('14/1/1'), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  cache.dispose();
});

test('setPopularTiles: prefetch asks only for the popular tiles, the view wherever it is; null lifts it; bad lists throw', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 1, lookaheadMs: 0, viewRing: 0 }, batch: { coalesceLevels: 0 } });
  const v = viewOf(SX, SY);
  const visible = viewTiles(v);
  const [, x0, y0] = visible[0].split('/').map(Number);
  // West of the view, in ring 1; a coarse tile far away stands for the data tiles under it.
  const west = `14/${x0 - 1}/${y0}`;
  assert.equal(cache.setPopularTiles([west, `10/${x0 >> 4}/${(y0 >> 4) + 8}`]), undefined);
  cache.setViewport(v);
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'prefetch');
  const asked = backend.requests.flatMap((r) => r.tiles);
  assert.deepEqual(asked.filter((t) => !visible.includes(t)), [west], 'only the popular ring tile');
  assert.deepEqual(cache.tileStates(visible), visible.map(() => 'loaded'), 'the view, not popular, is fetched');
  // Bad lists throw and keep the limit.
  assert.throws(() => cache.setPopularTiles(['14/1']), {
    name: 'TypeError', code: 'ERR_INVALID_TILE', message: `tiles[0]: invalid tile "14/1": expected z/x/y, three integers separated by '/'`,
  });
  assert.throws(() => cache.setPopularTiles([west, '16/1/1']), {
    name: 'RangeError', code: 'ERR_INVALID_TILE',
    message: 'tiles[1] "16/1/1": popular tiles must be data tiles (zoom 14) or coarser ones, got one at zoom 16',
  });
  for (const bad of [undefined, '14/1/1', [14]]) {
    assert.throws(() => cache.setPopularTiles(bad), {
      name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: new RegExp('^tiles must be an array of strings "z/x/y" or null, got '),
    });
  }
  // A pan east: still limited, so the new ring is not fetched.
  const before = backend.requests.length;
  cache.setViewport(viewOf(SX + 1, SY));
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'prefetch');
  const moved = viewTiles(viewOf(SX + 1, SY));
  assert.deepEqual(backend.requests.slice(before).flatMap((r) => r.tiles).filter((t) => !moved.includes(t)), []);
  // Lifted: the next view prefetches its whole ring.
  cache.setPopularTiles(null);
  const after = backend.requests.length;
  cache.setViewport(viewOf(SX + 2, SY));
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'prefetch');
  const far = viewTiles(viewOf(SX + 2, SY));
  assert.ok(backend.requests.slice(after).flatMap((r) => r.tiles).some((t) => !far.includes(t)));
  cache.dispose();
});

/** A cache on a clock the test sets (`clock.now`, in ms) with the prefetch off, the view of
 * one data tile (`v`) loaded. */
async function loadedOnClock() {
  fresh();
  const clock = { now: 1_700_000_000_000 };
  const cache = await make({ now: () => clock.now, prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 } });
  const v = viewOf(SX, SY, 1, 1);
  cache.setViewport(v);
  await cache.whenComplete();
  return { cache, v, clock };
}

test('TTL expiry follows the injected clock, per class', async () => {
  const { cache, v, clock } = await loadedOnClock();
  clock.now += 299_000;
  assert.equal(cache.setViewport(v).complete, true, 'fresh before 300 s');
  clock.now += 1_000;
  const expired = cache.setViewport(v);
  assert.equal(expired.complete, false, 'tile lists and active items expire at 300 s');
  for (const it of expired.items) assert.equal(it.class, 'off_market', 'only off-market items (4 h) may show');
  await cache.whenComplete();
  assert.deepEqual(ids(cache.setViewport(v).items), truth(v));
  // Per class: at 301 s an off-market item is still cached, an active one is not.
  const all = truth(v).map((id) => backend.byId.get(id));
  const off = all.find((i) => i.class === 'off_market'), active = all.find((i) => i.class === 'active');
  clock.now += 301_000;
  const sent = backend.requests.length;
  assert.equal((await cache.get(off.id)).id, off.id);
  assert.equal(backend.requests.length, sent, 'the off-market item came from the cache');
  assert.equal((await cache.get(active.id)).id, active.id);
  // Fetched: by id, or with its tile by the view's own refresh (the view at rest wakes at
  // the same expiry and may carry the id first).
  assert.ok(backend.requests.slice(sent).some((r) => (r.ids ?? []).includes(active.id) || (r.tiles ?? []).length > 0),
    'the active one was fetched');
  cache.dispose();
});

test('a time no clock gives (NaN, Infinity, negative) is taken as the last good one: the cache goes on', async () => {
  const { cache, v, clock } = await loadedOnClock();
  const sent = backend.requests.length;
  for (const bad of [NaN, Infinity, -1, 1e300]) {
    const good = clock.now;
    clock.now = bad;
    assert.equal(cache.setViewport(v).complete, true, `at now() = ${bad}`);
    clock.now = good + 1_000;
    // Taken as given, Infinity held the client's clock at the end of time (it never goes
    // back): every item expired from then on.
    const view = cache.setViewport(v);
    assert.equal(view.complete, true, `after now() = ${bad}`);
    assert.deepEqual(ids(view.items), truth(v));
  }
  assert.equal(backend.requests.length, sent, 'nothing fetched again');
  clock.now += 300_000; // the tile lists' TTL, on the clock
  assert.equal(cache.setViewport(v).complete, false, 'lists expire at their TTL still');
  cache.dispose();
});

test('while the now option gives no time (NaN, Infinity), the wake-up timer waits a second, not 0', async () => {
  const { cache, clock } = await loadedOnClock();
  const real = globalThis.setTimeout;
  const delays = [];
  globalThis.setTimeout = (f, ms, ...args) => { delays.push(ms); return real(f, ms, ...args); };
  try {
    for (const bad of [NaN, Infinity, -Infinity]) {
      clock.now = bad;
      cache.setViewport(viewOf(SX + 1, SY, 1, 1)); // a new view: a request, a wake-up
    }
  } finally {
    globalThis.setTimeout = real;
  }
  assert.ok(delays.includes(1000), `wake-ups scheduled: ${delays}`);
  // A NaN or 0 delay fires at once, again and again while the clock stays bad (the
  // others are the requests' timeouts).
  assert.ok(delays.every((ms) => ms >= 1000), `delays ${delays}`);
  cache.dispose();
});

test('stale-while-revalidate shows expired items flagged stale while refetching', async () => {
  fresh();
  let now = 1_700_000_000_000;
  const cache = await make({ now: () => now, ttl: { staleWhileRevalidate: 60 }, prefetch: { ring: 0, viewRing: 0 } });
  const v = viewOf(SX, SY, 1, 1);
  cache.setViewport(v);
  await cache.whenComplete();
  now += 310_000;
  const view = cache.setViewport(v);
  assert.equal(view.complete, true);
  assert.ok(view.items.some((i) => i.stale), 'active items are stale');
  assert.ok(view.items.some((i) => !i.stale), 'off-market ones are not');
  await until(() => cache.stats().inFlight === 0 && backend.requests.length >= 2, 'refresh');
  assert.ok(cache.setViewport(v).items.every((i) => !i.stale));
  cache.dispose();
});

test('an access downgrade purges at once; an upgrade refetches', async () => {
  fresh();
  const cache = await make({ access: 'agent', prefetch: { ring: 0, viewRing: 0 } });
  const v = viewOf(SX, SY);
  cache.setViewport(v);
  await cache.whenComplete();
  const agentView = cache.setViewport(v).items;
  assert.ok(agentView.some((i) => i.access === 'agent'));
  assert.deepEqual(ids(agentView), truth(v, 'agent'));
  const updates = [];
  cache.onUpdate((items) => updates.push(items));
  const sent = backend.requests.length;
  cache.setAccess('public');
  assert.ok(updates.length >= 1, 'onUpdate tells the page at once');
  assert.ok(updates[0].every((i) => i.access === 'public'), 'no agent item survives the downgrade');
  const publicView = cache.setViewport(v);
  assert.ok(publicView.items.every((i) => i.access === 'public'));
  assert.equal(backend.requests.length, sent, 'the purge itself sends nothing');
  cache.setAccess('agent');
  await cache.whenComplete();
  assert.equal(backend.requests.at(-1).access, 'agent');
  assert.deepEqual(ids(cache.setViewport(v).items), truth(v, 'agent'));
  cache.dispose();
});

test('an answer to a request made before a downgrade brings nothing above the new tier: get() and the view', async () => {
  fresh();
  const cache = await make({ access: 'agent', prefetch: { ring: 0, viewRing: 0 } });
  const v = viewOf(SX, SY);
  const secret = viewTiles(v).flatMap((t) => backend.tileItems(t, 'agent')).find((i) => i.access === 'agent');
  assert.ok(secret, 'the view holds an agent item');
  backend.delayMs = 150;
  const pending = cache.get(secret.id);
  cache.setViewport(v);
  await until(() => backend.requests.length >= 1, 'the requests out');
  assert.ok(backend.requests.every((r) => r.access === 'agent'), 'asked at agent');
  cache.setAccess('public');
  // The agent answer lands after the change: its items are not the page's any more.
  assert.equal(await pending, undefined, 'get() of an agent item resolves as not visible');
  await until(() => cache.stats().inFlight === 0, 'quiet');
  await cache.whenComplete();
  const view = cache.setViewport(v).items;
  assert.ok(view.length > 0 && view.every((i) => i.access === 'public'), 'no agent item in the view');
  backend.delayMs = 0;
  assert.equal(await cache.get(secret.id), undefined, 'nor asked again at public');
  cache.dispose();
});

// The same answer, for a public item: dropped with the rest, and its id asked again at the
// new tier, so the get() finds the item (it resolved undefined, as if it did not exist,
// when the dropped answer ended it).
test('a get() whose answer lands after a downgrade is asked again at the new tier and finds a public item', async () => {
  fresh();
  const cache = await make({ access: 'agent', prefetch: { ring: 0, viewRing: 0 } });
  const v = viewOf(SX, SY);
  const open = viewTiles(v).flatMap((t) => backend.tileItems(t, 'agent')).find((i) => i.access === 'public');
  assert.ok(open, 'the view holds a public item');
  backend.delayMs = 150;
  const pending = cache.get(open.id);
  await until(() => backend.requests.length >= 1, 'the request out');
  assert.equal(backend.requests[0].access, 'agent');
  cache.setAccess('public');
  const item = await pending;
  assert.equal(item?.id, open.id, 'the get() found the public item');
  assert.ok(backend.requests.some((r) => r.access === 'public' && r.ids.includes(open.id)), 'asked again at public');
  cache.dispose();
});

// What a call collected before a downgrade and hands out after it: getMany's cached items
// and loadTiles' tiles answered first, while another id or tile was still being fetched.
test('getMany and loadTiles that end after a downgrade hand out nothing above the new tier', async () => {
  fresh();
  const cache = await make({ access: 'agent', prefetch: { ring: 0, viewRing: 0, lookaheadMs: 0 } });
  const v = viewOf(SX, SY);
  const near = viewTiles(v).find((t) => backend.tileItems(t, 'agent').some((i) => i.access === 'agent'));
  assert.ok(near, 'a tile of the view holds an agent item');
  const secret = backend.tileItems(near, 'agent').find((i) => i.access === 'agent');
  await cache.loadTiles([near]);
  // Two other tiles, not cached, so their answers wait for the slow backend.
  const [other, third] = viewTiles(v).filter((t) => t !== near && backend.tileItems(t, 'agent').length > 0);
  assert.ok(third, 'the view has two more tiles with items');
  const otherId = backend.tileItems(other, 'agent')[0].id;
  backend.delayMs = 150;
  const many = cache.getMany([secret.id, otherId]);
  const load = cache.loadTiles([near, third]);
  await until(() => backend.requests.length >= 2 && cache.stats().inFlight > 0, 'the requests out');
  cache.setAccess('public');
  const [got] = await many;
  assert.equal(got, undefined, 'the agent item read from the cache before the downgrade');
  const [first] = await load;
  assert.equal(first.tile, near);
  assert.deepEqual(first.items.filter((i) => i.access !== 'public').map((i) => i.id), [], 'no agent item in the tile read first');
  assert.deepEqual(ids(first.items), backend.tileItems(near, 'public').map((i) => i.id).sort());
  cache.dispose();
});

// An answer the backend read before a change, landing after the change reached the page
// (tilewarm/live calls invalidate): cached, its old value would be served for a full TTL.
// It is dropped and asked again; the get() waiting for it gets the new value.
test('an answer read before an invalidation that reached the page meanwhile is asked again', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
  const v = viewOf(SX, SY);
  const item = viewTiles(v).flatMap((t) => backend.tileItems(t, 'public'))[0];
  const before = item.data.price;
  backend.delayMs = 150;
  const pending = cache.get(item.id);
  await until(() => backend.requests.length >= 1, 'the request out');
  // The backend reads the old value now, and answers with it after its delay.
  let old = JSON.stringify(backend.answer(backend.requests[0]));
  backend.hostile = (res, answer) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(old ?? JSON.stringify(answer));
    old = undefined;
  };
  item.data = { ...item.data, price: before + 1 };
  try {
    cache.invalidate({ ids: [item.id] });
    assert.equal((await pending)?.data.price, before + 1, 'the get() has the new value');
    assert.equal(backend.requests.length, 2, 'asked again once');
    assert.equal((await cache.get(item.id))?.data.price, before + 1, 'the cache holds the new value');
    assert.equal(cache.stats().errors, 0);
  } finally {
    item.data = { ...item.data, price: before };
    backend.hostile = null;
    cache.dispose();
  }
});

test('onAccess hears each change of the tier, by setAccess or a lower one an answer reported, before onUpdate', async () => {
  fresh();
  const cache = await make({ access: 'agent', prefetch: { ring: 0, viewRing: 0 } });
  assert.equal(cache.access, 'agent');
  const v = viewOf(SX, SY);
  cache.setViewport(v);
  await cache.whenComplete();
  const heard = [];
  cache.onAccess((access) => heard.push(`access ${access} = ${cache.access}`));
  let stray = 0;
  cache.onAccess(() => stray++)(); // unsubscribed at once
  cache.onUpdate((items) => heard.push(`update ${items.some((i) => i.access === 'agent') ? 'with' : 'without'} agent items`));
  cache.setAccess('verified');
  assert.equal(heard[0], 'access verified = verified');
  assert.ok(heard.length >= 2 && heard.slice(1).every((h) => h === 'update without agent items'), heard.join('; '));
  cache.setAccess('verified');
  assert.equal(heard.at(-1), 'update without agent items', 'the same tier again is no change');
  assert.equal(heard.filter((h) => h.startsWith('access')).length, 1);
  cache.setAccess('agent');
  await cache.whenComplete();
  heard.length = 0;
  // The server filters for public from now on, and says so: the cache follows at once.
  backend.hostile = (res, _answer, request) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ...backend.answer({ ...request, access: 'public' }), access: 'public' }));
  };
  try {
    cache.invalidate({ all: true });
    await cache.whenComplete();
  } finally {
    backend.hostile = null;
  }
  assert.equal(cache.access, 'public');
  assert.equal(heard.filter((h) => h.startsWith('access')).join(), 'access public = public');
  assert.ok(heard.indexOf('access public = public') < heard.findLastIndex((h) => h.startsWith('update')));
  assert.equal(stray, 0);
  assert.throws(() => cache.onAccess('x'), { code: 'ERR_INVALID_ARG_TYPE', message: 'onAccess takes a function, got "x"' });
  cache.dispose();
});

test('an onAccess listener may dispose the cache (an answer lowered the tier): nothing throws after it', async () => {
  fresh();
  const cache = await make({ access: 'agent', prefetch: { ring: 0, viewRing: 0 } });
  const problems = [];
  const onRejection = (e) => problems.push(e);
  process.on('unhandledRejection', onRejection);
  backend.hostile = (res, _answer, request) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ...backend.answer({ ...request, access: 'public' }), access: 'public' }));
  };
  try {
    let heard = null;
    cache.onAccess((access) => { heard = access; cache.dispose(); });
    cache.onUpdate(() => problems.push(new Error('onUpdate after dispose')));
    cache.setViewport(viewOf(SX, SY));
    await until(() => heard !== null, 'the lower tier');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(heard, 'public');
    assert.deepEqual(problems.map((e) => e?.message ?? String(e)), []);
  } finally {
    backend.hostile = null;
    process.off('unhandledRejection', onRejection);
  }
});

test('an onUpdate or onError listener that disposes the cache ends the round: the listeners after it hear nothing', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
  const heard = [];
  cache.onUpdate(() => { heard.push('update 1'); cache.dispose(); });
  cache.onUpdate(() => heard.push('update 2'));
  cache.setViewport(viewOf(SX, SY));
  await until(() => heard.length > 0, 'an update');
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(heard, ['update 1']);
  // onError: a refusal told to the first listener, which lets the cache go; the second,
  // which would hear "will retry", hears nothing.
  fresh();
  const failing = await make({ prefetch: { ring: 0, viewRing: 0 }, batch: { retries: 1 } });
  backend.hostile = (res) => { res.writeHead(503, { 'content-type': 'application/json' }); res.end('{}'); };
  const errors = [];
  try {
    failing.onError((e) => { errors.push(`1 ${e.code}`); failing.dispose(); });
    failing.onError((e) => errors.push(`2 ${e.code} ${e.willRetry}`));
    failing.setViewport(viewOf(SX, SY));
    await until(() => errors.length > 0, 'an error');
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(errors, ['1 ERR_HTTP']);
  } finally {
    backend.hostile = null;
  }
});

test('invalidation by id, by tile and of everything refetches what is visible', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
  const v = viewOf(SX, SY);
  cache.setViewport(v);
  await cache.whenComplete();
  const [victim] = truth(v);
  assert.equal(cache.invalidate({ ids: [victim] }), 1);
  let view = cache.setViewport(v);
  assert.ok(!ids(view.items).includes(victim));
  await cache.whenComplete();
  assert.deepEqual(ids(cache.setViewport(v).items), truth(v));
  const tile = viewTiles(v)[0];
  assert.ok(cache.invalidate({ tiles: [tile] }) >= 1);
  view = cache.setViewport(v);
  assert.deepEqual(view.missingTiles, [tile]);
  await cache.whenComplete();
  assert.equal(backend.requests.at(-1).tiles.includes(tile), true);
  assert.ok(cache.invalidate({ all: true }) > 0);
  assert.equal(cache.stats().entries, 0);
  await cache.whenComplete();
  assert.deepEqual(ids(cache.setViewport(v).items), truth(v));
  assert.throws(() => cache.invalidate({ tiles: ['14/1'] }), { name: 'TypeError', code: 'ERR_INVALID_TILE' });
  assert.throws(() => cache.invalidate({ ids: 'a' }), { name: 'TypeError', message: 'ids must be an array of strings, got "a"' });
  cache.dispose();
});

test('in-flight de-duplication: two setViewport calls, one request', async () => {
  fresh();
  backend.delayMs = 100;
  // Data tiles only (no coarse tile for half a block), so requests can be told by tile.
  const cache = await make({ prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 }, batch: { coalesceMinShare: 100 } });
  const v = viewOf(SX, SY);
  cache.setViewport(v);
  cache.setViewport(v);
  await cache.whenComplete();
  await until(() => cache.stats().inFlight === 0, 'quiet');
  const withVisible = backend.requests.filter((r) => r.tiles.some((t) => viewTiles(v).includes(t)));
  assert.equal(withVisible.length, 1, JSON.stringify(backend.requests.map((r) => r.tiles)));
  cache.dispose();
});

test('stale prefetches are aborted when the planner drops them', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 2, lookaheadMs: 0 }, batch: { maxTiles: 4 } });
  backend.delayMs = 300;
  cache.setViewport(viewOf(SX, SY, 1, 1));
  await until(() => backend.requests.length >= 2, 'prefetch requests');
  const prefetchTiles = backend.requests.slice(1).flatMap((r) => r.tiles);
  assert.ok(prefetchTiles.length > 0);
  // Jump far away: the ring around the old view is not wanted any more.
  backend.delayMs = 0;
  cache.setViewport(viewOf(SX - 10, SY + 10, 1, 1));
  await until(() => backend.aborted >= 1, 'an aborted prefetch');
  await cache.whenComplete();
  cache.dispose();
});

test('HTTP 500, timeouts and invalid JSON go to onError and whenComplete; cached data stays usable', async () => {
  fresh();
  const cached = viewOf(SX, SY, 1, 1);
  // A cache whose requests time out after 150 ms for the backend that hangs, and one that
  // waits 10 s for the others (an answer of a busy machine's must not time out there).
  const caches = [];
  const errors = [];
  for (const timeoutMs of [150, 10_000]) {
    const cache = await make({ prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 }, batch: { retries: 1, timeoutMs } });
    cache.setViewport(cached);
    // The first answer may take longer than 150 ms on a busy machine: asked again.
    for (let i = 0; i < 20 && !(await cache.whenComplete().then(() => true, () => false)); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    cache.onError((e) => errors.push(e));
    caches.push(cache);
  }
  for (const [i, [mode, code, status, text]] of [
    [500, 'ERR_HTTP', 500, /^foreground batch request failed: HTTP 500: upstream_error: test backend says 500/],
    ['hang', 'ERR_TIMEOUT', undefined, /^foreground batch request failed: no answer within 150 ms/],
    ['badjson', 'ERR_INVALID_RESPONSE', undefined, /^foreground batch request failed: invalid response: the body is not JSON/],
    ['badshape', 'ERR_INVALID_RESPONSE', undefined, /^foreground batch request failed: invalid response: tiles must be an array, got 3/],
  ].entries()) {
    fresh(mode);
    errors.length = 0;
    const cache = caches[mode === 'hang' ? 0 : 1];
    // A tile of its own per mode: a tile that keeps failing backs off longer each round.
    const far = viewOf(SX + 6, SY + 6 + i, 1, 1);
    const v = cache.setViewport(far);
    assert.equal(v.complete, false);
    const e = await cache.whenComplete().then(() => assert.fail('resolved'), (e) => e);
    assert.ok(e instanceof Error);
    assert.equal(e.code, code, `${mode}: ${e.message}`);
    assert.equal(e.status, status);
    assert.equal(e.kind, 'foreground');
    assert.equal(e.willRetry, false);
    assert.match(e.message, text);
    assert.equal(errors.length, 2, 'the first attempt and its retry');
    assert.equal(errors[0].willRetry, true);
    assert.match(errors[0].message, / \(will retry\)$/);
    // What was cached is still there.
    const back = cache.setViewport(cached);
    assert.equal(back.complete, true, mode);
    assert.deepEqual(ids(back.items), truth(cached));
    cache.invalidate({ tiles: viewTiles(far) });
  }
  assert.ok(caches[0].stats().errors + caches[1].stats().errors >= 8);
  for (const cache of caches) cache.dispose();
});

test('429 Retry-After is honoured', async () => {
  fresh({ status: 429, retryAfter: '1' });
  const cache = await make({ prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 }, batch: { retries: 1 } });
  const errors = [];
  cache.onError((e) => errors.push(e));
  cache.setViewport(viewOf(SX, SY, 1, 1));
  await backend.waitFor(1);
  const t0 = Date.now();
  await until(() => errors.length === 1, 'the 429');
  assert.equal(errors[0].status, 429);
  assert.equal(errors[0].retryAfterMs, 1000);
  assert.equal(errors[0].serverCode, 'rate_limited');
  backend.mode = 'ok';
  await backend.waitFor(2);
  assert.ok(Date.now() - t0 >= 950, `retried after ${Date.now() - t0} ms`);
  await cache.whenComplete();
  cache.dispose();
});

test('the prefetch breaker opens on backend trouble; foreground still goes out', async () => {
  fresh(503);
  const cache = await make({ batch: { retries: 0 }, prefetch: { ring: 1, lookaheadMs: 0 } });
  cache.onError(() => {});
  cache.setViewport(viewOf(SX, SY));
  await cache.whenComplete().catch(() => {});
  await until(() => cache.stats().breakerOpen, 'breaker');
  await until(() => cache.stats().inFlight === 0, 'quiet');
  const before = cache.stats();
  const sent = backend.requests.length;
  const v = cache.setViewport(viewOf(SX + 8, SY - 8));
  assert.equal(v.complete, false);
  await cache.whenComplete().catch(() => {});
  const after = cache.stats();
  assert.equal(after.prefetchRequests, before.prefetchRequests, 'no prefetch while open');
  assert.ok(backend.requests.length > sent, 'the foreground request went out');
  // The backend recovers: foreground works at once.
  backend.mode = 'ok';
  cache.setViewport(viewOf(SX - 8, SY + 8));
  await cache.whenComplete();
  cache.dispose();
});

test('setViewport never throws on backend or fetch trouble', async () => {
  const fetches = [
    () => { throw new TypeError('fetch blew up synchronously'); },
    async () => { throw new TypeError('fetch failed'); },
    async () => ({ ok: true, status: 200, text: async () => 'null', headers: new Headers() }),
    async () => new Response('{"tiles":[{"tile":"99/1/1","ids":[]}],"items":[],"missing":[]}'),
    async () => new Response('{"tiles":[],"items":[{"id":"a","lon":500,"lat":0,"class":"x","access":"public"}],"missing":[]}'),
    async () => new Response('{"tiles":[],"items":[{"id":"a","lon":1,"lat":0,"class":"x","access":"root"}],"missing":[]}'),
    async () => new Response('<html>', { status: 502 }),
  ];
  for (const fetch of fetches) {
    const cache = await make({ fetch, batch: { retries: 0 } });
    const errors = [];
    cache.onError((e) => errors.push(e));
    const v = cache.setViewport(viewOf(SX, SY));
    assert.equal(v.complete, false);
    const e = await cache.whenComplete().then(() => null, (e) => e);
    assert.ok(e, String(fetch));
    assert.ok(['ERR_NETWORK', 'ERR_INVALID_RESPONSE', 'ERR_HTTP'].includes(e.code), e.message);
    assert.ok(errors.length >= 1);
    cache.setViewport(viewOf(SX + 1, SY)); // still fine
    cache.dispose();
  }
});

test('a partial answer with no room for the rest (response_full): asked again at once, the view completes, get()s wait', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 }, batch: { coalesceMinShare: 100 } });
  const errs = [];
  cache.onError((e) => errs.push(e));
  // As a server whose answer holds one tile: the first asked, its items; the rest (tiles,
  // and the ids of a request with a tile) left out as not fitting.
  backend.hostile = (res, answer, req) => {
    const [first] = req.tiles;
    const left = req.tiles.slice(1);
    answer.tiles = answer.tiles.filter((l) => l.tile === first);
    const keep = new Set(answer.tiles.flatMap((l) => l.ids));
    const idsLeft = first ? req.ids : req.ids.slice(1);
    answer.items = answer.items.filter((it) => keep.has(it.id) || (req.ids.includes(it.id) && !idsLeft.includes(it.id)));
    answer.missing = answer.missing.filter((id) => !idsLeft.includes(id));
    if (left.length || idsLeft.length) answer.error = { code: 'response_full', message: 'did not fit', tiles: left, ids: idsLeft };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  };
  try {
    const v = viewOf(SX, SY);
    const tiles = viewTiles(v);
    assert.ok(tiles.length > 2, `${tiles.length} tiles`);
    cache.setViewport(v);
    await cache.whenComplete();
    assert.deepEqual(ids(cache.setViewport(v).items), truth(v));
    assert.equal(backend.requests.length, tiles.length, 'one request a tile, each at once');
    // Two ids in one request: h1 answered, h2 left out, and its get waits for the next.
    const n = backend.requests.length;
    const [one, two] = await cache.getMany(['h1', 'h2']);
    assert.deepEqual([one?.id, two?.id], ['h1', 'h2']);
    assert.deepEqual(backend.requests.slice(n).map((r) => r.ids.length), [2, 1]);
    assert.deepEqual(errs, [], 'no error');
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('get and getMany: cached, fetched by id, missing, de-duplicated', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
  const [a, b, c] = ['h1', 'h2', 'h3'];
  const [one, two] = await Promise.all([cache.get(a), cache.get(a)]);
  assert.equal(one, two, 'the same object');
  assert.deepEqual(one.data, backend.byId.get(a).data);
  assert.equal(backend.requests.length, 1, 'one request for both');
  assert.deepEqual(backend.requests[0].ids, [a]);
  const many = await cache.getMany([a, b, c, 'nope', 'h0']);
  assert.deepEqual(many.map((i) => i?.id), [a, b, c, undefined, undefined], 'h0 is agent-only');
  assert.deepEqual(backend.requests[1].ids.sort(), [b, c, 'h0', 'nope'].sort());
  await cache.get(a);
  assert.equal(backend.requests.length, 2, 'a cached item is not fetched');
  await assert.rejects(cache.get(3), { name: 'TypeError', message: 'id must be a string, got 3' });
  fresh(500);
  const errs = [];
  cache.onError((e) => errs.push(e));
  const rejected = await cache.get('h10').then(() => null, (e) => e);
  assert.equal(rejected?.code, 'ERR_HTTP');
  cache.dispose();
});

test('each item is charged its own size: one large item does not spread over the answer', async () => {
  // An answer of one 50 000-character item and nine tiny ones. Charged the answer's
  // average, every item would hold ~5 000 bytes and dropping the large one would leave
  // ~45 000 bytes charged to nine items of a few bytes.
  const at = { lon: -122.33, lat: 47.61, class: 'active', access: 'public' };
  const small = Array.from({ length: 9 }, (_, i) => ({ id: `s${i}`, ...at, data: i }));
  const big = { id: 'big', ...at, data: 'y'.repeat(50_000) };
  const fetch = async () => new Response(JSON.stringify({ tiles: [], items: [big, ...small], missing: [] }));
  const cache = await TileCache.create({ endpoint: 'http://tilewarm.invalid/v1/batch', fetch, maxBytes: 60_000 });
  await cache.getMany(['big', ...small.map((i) => i.id)]);
  const all = cache.stats().bytes;
  assert.ok(all > 50_000 && all <= 60_000, `bytes ${all}`);
  assert.equal(cache.invalidate({ ids: ['big'] }), 1);
  const left = cache.stats().bytes;
  assert.ok(left < 9 * 200, `nine tiny items hold ${left} bytes`);
  cache.dispose();
});

test('get: an id a partial answer leaves out rejects and reaches onError, never resolves undefined', async () => {
  fresh();
  // No retries: ids left out to shed load are retried first, as a whole 503's (tested below).
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 }, batch: { retries: 0 } });
  const errs = [];
  cache.onError((e) => errs.push(e));
  // As the edge answers when its origin times out: h1 answered, h2 and h3 listed as not.
  backend.hostile = (res, answer) => {
    answer.items = answer.items.filter((it) => it.id === 'h1');
    answer.missing = [];
    answer.error = { code: 'upstream_timeout', message: 'the origin did not answer in time', tiles: [], ids: ['h2', 'h3'] };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  };
  try {
    const [one, two, three] = await Promise.allSettled([cache.get('h1'), cache.get('h2'), cache.get('h3')]);
    assert.equal(one.value?.id, 'h1');
    for (const [r, id] of [[two, 'h2'], [three, 'h3']]) {
      assert.equal(r.status, 'rejected');
      assert.equal(r.reason.code, 'ERR_HTTP');
      assert.equal(r.reason.serverCode, 'upstream_timeout');
      assert.equal(r.reason.status, 504);
      assert.ok(r.reason.ids.includes(id), r.reason.ids);
      assert.ok(errs.includes(r.reason), 'onError heard it');
    }
    assert.match(errs[0].message, /failed for \d of its ids .*upstream_timeout: the origin did not answer in time/);
    // Each error onError heard is counted, these of ids the shell tells of too.
    assert.equal(cache.stats().errors, errs.length);
    // Each code's status is the one the server answers it with; unknown codes are 502.
    for (const [code, status, id] of [['overloaded', 503, 'h5'], ['rate_limited', 429, 'h6'], ['payload_too_large', 413, 'h7'], ['constructor', 502, 'h8']]) {
      backend.hostile = (res, answer) => {
        answer.items = [];
        answer.missing = [];
        answer.error = { code, message: 'left out', tiles: [], ids: [id] };
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer));
      };
      const left = await cache.get(id).then(() => null, (err) => err);
      assert.deepEqual([left?.serverCode, left?.status], [code, status]);
    }
    // Without an error member (a broken server) it is an invalid response, still not "missing".
    backend.hostile = (res, answer) => {
      answer.items = [];
      answer.missing = [];
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    };
    const e = await cache.get('h4').then(() => null, (err) => err);
    assert.equal(e?.code, 'ERR_INVALID_RESPONSE');
    assert.equal(cache.stats().errors, errs.length);
    // Asked again later, it is fetched and answered.
    backend.hostile = null;
    assert.equal((await cache.get('h2')).id, 'h2');
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('partial answers that shed load (overloaded, rate_limited, upstream_timeout) open the prefetch breaker, as the whole refusals do', async () => {
  // As an edge answers while its origin is at capacity: what it holds, the rest left out
  // with the origin's code. Before, each such answer closed the breaker.
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 }, batch: { retries: 0 } });
  cache.onError(() => {});
  try {
    for (const [code, id] of [['overloaded', 'h2'], ['rate_limited', 'h3'], ['upstream_timeout', 'h4']]) {
      assert.equal(cache.stats().breakerOpen, false, `before ${code}`);
      backend.hostile = (res, answer) => {
        answer.items = [];
        answer.missing = [];
        answer.error = { code, message: 'shed', tiles: [], ids: [id] };
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer));
      };
      const left = await cache.get(id).then(() => null, (err) => err);
      assert.equal(left?.serverCode, code);
    }
    assert.equal(cache.stats().breakerOpen, true, 'three in a row open it');
    // A whole answer closes it again.
    backend.hostile = null;
    assert.equal((await cache.get('h2')).id, 'h2');
    assert.equal(cache.stats().breakerOpen, false);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('what a partial answer shedding load leaves out is retried as a whole 503 is, and reported as the overload', async () => {
  // Before, a get() of an id left out failed at once (willRetry false) and a tile left out
  // was an ERR_INVALID_RESPONSE ("every requested tile must be listed").
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
  const errs = [];
  cache.onError((e) => errs.push(e));
  // Once: the first tile (or the id h2) left out, as an edge answers while its origin is at capacity.
  const shedOnce = (res, answer) => {
    backend.hostile = null;
    const dropped = answer.tiles.shift();
    answer.items = answer.items.filter((it) => it.id !== 'h2' && !dropped?.ids.includes(it.id));
    answer.missing = [];
    answer.error = { code: 'overloaded', message: 'shed', tiles: dropped ? [dropped.tile] : [], ids: ['h2'] };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  };
  try {
    backend.hostile = shedOnce;
    assert.equal((await cache.get('h2')).id, 'h2', 'retried, then answered');
    assert.deepEqual(errs.map((e) => [e.code, e.status, e.serverCode, e.willRetry]), [['ERR_HTTP', 503, 'overloaded', true]]);
    errs.length = 0;
    backend.hostile = shedOnce;
    cache.setViewport(viewOf(SX, SY));
    await cache.whenComplete();
    assert.ok(errs.length >= 1);
    for (const e of errs) assert.deepEqual([e.code, e.status, e.serverCode, e.willRetry], ['ERR_HTTP', 503, 'overloaded', true], e.message);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test("what a partial answer leaves out for a failed origin (upstream_error) is retried as a whole 502 is, and reported as that failure", async () => {
  // As an edge answers what it holds when its origin fails (unreachable, a 5xx, garbage).
  // Before, a tile left out was an ERR_INVALID_RESPONSE given up at once (the answer was
  // valid) and a get() of an id left out was rejected without a retry. Any code is read as
  // its own status (ErrorCode::http_status): `internal` as a 500, retried as one.
  for (const [code, status] of [['upstream_error', 502], ['internal', 500]]) {
    fresh();
    const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
    const errs = [];
    cache.onError((e) => errs.push(e));
    const failOnce = (res, answer) => {
      backend.hostile = null;
      const dropped = answer.tiles.shift();
      answer.items = answer.items.filter((it) => it.id !== 'h2' && !dropped?.ids.includes(it.id));
      answer.missing = [];
      answer.error = { code, message: 'the origin failed', tiles: dropped ? [dropped.tile] : [], ids: ['h2'] };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    };
    const told = ['ERR_HTTP', status, code, true];
    try {
      backend.hostile = failOnce;
      assert.equal((await cache.get('h2')).id, 'h2', `${code}: retried, then answered`);
      assert.deepEqual(errs.map((e) => [e.code, e.status, e.serverCode, e.willRetry]), [told]);
      errs.length = 0;
      backend.hostile = failOnce;
      const v = viewOf(SX, SY);
      cache.setViewport(v);
      await cache.whenComplete();
      assert.deepEqual(ids(cache.setViewport(v).items), truth(v));
      assert.ok(errs.length >= 1);
      for (const e of errs) assert.deepEqual([e.code, e.status, e.serverCode, e.willRetry], told, e.message);
    } finally {
      backend.hostile = null;
      cache.dispose();
    }
  }
});

test('a get() waiting for the retry of an id a partial answer left out is not rejected by an error of the same answer about its tiles', async () => {
  // The answer to a host tile too large for the cache (its "could not be kept" error) and to
  // an id it left out to shed load. Before, that tile error carried every id of the request
  // and rejected the get() that waits for the retry.
  fresh();
  const cache = await make({ maxItems: 20, prefetch: { ring: 0, viewRing: 0 }, batch: { maxInFlight: 1 } });
  const errs = [];
  cache.onError((e) => errs.push(e));
  const host = `12/${SX >> 2}/${SY >> 2}`;
  let release;
  try {
    // The one request slot held, so the tile and the id queue up and go out together.
    backend.hostile = (res, answer) => {
      release = () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify(answer)); };
    };
    const first = cache.get('h1');
    await until(() => release, 'the first request');
    backend.hostile = (res, answer) => {
      backend.hostile = null;
      answer.items = answer.items.filter((it) => it.id !== 'h2');
      answer.missing = [];
      answer.error = { code: 'overloaded', message: 'shed', tiles: [], ids: ['h2'] };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    };
    const loads = cache.loadTiles([host]);
    const got = cache.get('h2').then((it) => it, (e) => e);
    await new Promise((r) => setTimeout(r, 0)); // the loads of this tick are read
    release();
    assert.equal((await first).id, 'h1');
    const [load] = await loads;
    assert.match(load.error?.message ?? '', /could not be kept/);
    assert.ok(backend.requests[1].ids.includes('h2') && backend.requests[1].tiles.length > 0, JSON.stringify(backend.requests[1]));
    const item = await got;
    assert.equal(item?.id, 'h2', `retried and answered, not rejected: ${item?.message}`);
    assert.ok(errs.some((e) => e.serverCode === 'overloaded' && e.willRetry), 'onError heard the overload');
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

// A backend handler answering every request but data tile `big`, which a partial answer
// leaves out as too large (`payload_too_large`), as tilewarm-server does a tile over
// --max-tile-items.
function leaveOutAsTooLarge(big) {
  return (res, answer) => {
    const out = answer.tiles.some((l) => l.tile === big);
    answer.tiles = answer.tiles.filter((l) => l.tile !== big);
    const keep = new Set(answer.tiles.flatMap((l) => l.ids));
    answer.items = answer.items.filter((it) => keep.has(it.id));
    if (out) answer.error = { code: 'payload_too_large', message: `tile ${big} holds more than 20000 items`, tiles: [big], ids: [] };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  };
}

test('a tile a partial answer leaves out as too large (payload_too_large) is asked once more on its own, then fails as a whole 413 does: not retried, its loads fail with that error', async () => {
  // As tilewarm-server answers a tile over --max-tile-items: the other tiles answered, that
  // one named. Before, it was an ERR_INVALID_RESPONSE (the answer was valid).
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 }, batch: { coalesceLevels: 0 } });
  const errs = [];
  cache.onError((e) => errs.push(e));
  const big = `14/${SX}/${SY}`, small = `14/${SX + 1}/${SY}`;
  backend.hostile = leaveOutAsTooLarge(big);
  try {
    const [a, b] = await cache.loadTiles([big, small]);
    assert.ok(b.items.length > 0, 'the other tile is answered');
    assert.deepEqual([a.error?.code, a.error?.status, a.error?.serverCode, a.error?.willRetry], ['ERR_HTTP', 413, 'payload_too_large', false]);
    assert.match(a.error.message, /HTTP 413: payload_too_large: tile 14\/\d+\/\d+ holds more than 20000 items/);
    assert.deepEqual(errs.map((e) => [e.code, e.status, e.serverCode, e.willRetry]), [['ERR_HTTP', 413, 'payload_too_large', false]]);
    // Once more on its own (the first time, it may have been too large as part of a
    // coarse tile), then not again within the retries.
    assert.deepEqual(backend.requests.map((r) => r.tiles.length), [2, 1]);
    assert.equal(cache.stats().breakerOpen, false);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('a visible tile refused as too large on its own is held: not asked again, missing from the view, and whenComplete() rejects at once with its 413', async () => {
  // The engine holds such a tile for a tile TTL (ttl.default, 300 s here). Before, it was
  // asked again every 5-10 s, each time a request and an onError; with the hold alone, a
  // whenComplete() called after the error waited for the TTL.
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 }, batch: { coalesceLevels: 0 } });
  const errs = [];
  cache.onError((e) => errs.push(e));
  const v = viewOf(SX, SY, 2, 1);
  const big = `14/${SX}/${SY}`;
  backend.hostile = leaveOutAsTooLarge(big);
  try {
    cache.setViewport(v);
    const first = await cache.whenComplete().then(() => null, (e) => e);
    assert.deepEqual([first?.status, first?.serverCode, first?.willRetry], [413, 'payload_too_large', false]);
    const sent = backend.requests.length;
    assert.deepEqual(cache.setViewport(v).missingTiles, [big]);
    // Settled before a macrotask: at once, not after the hold.
    const again = await Promise.race([cache.whenComplete().then(() => 'resolved', (e) => e), new Promise((r) => setTimeout(r, 0, 'waiting'))]);
    assert.equal(again, first, 'rejects at once with the 413 that refused it');
    assert.equal(backend.requests.length, sent, 'not asked again');
    assert.deepEqual(errs, [first], 'reported once');
    // Invalidated, it may have shrunk: asked again (and refused again).
    backend.hostile = null;
    cache.invalidate({ tiles: [big] });
    await cache.whenComplete();
    assert.deepEqual(cache.setViewport(v).missingTiles, []);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('an invalidation that does not reach a tile held as too large (ids, another tile) keeps whenComplete() rejecting at once with its 413', async () => {
  // The engine ends the hold only for an invalidation covering the tile (its tile, one it is
  // in or in it, a class, all), not for ids (a held tile's items are not cached) nor another
  // tile. Before, any invalidation forgot the 413: a whenComplete() after it waited for the
  // hold (a tile TTL, 300 s here).
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 }, batch: { coalesceLevels: 0 } });
  const v = viewOf(SX, SY, 2, 1);
  const big = `14/${SX}/${SY}`;
  backend.hostile = leaveOutAsTooLarge(big);
  const now = () => Promise.race([cache.whenComplete().then(() => 'resolved', (e) => e), new Promise((r) => setTimeout(r, 0, 'waiting'))]);
  try {
    cache.setViewport(v);
    const first = await cache.whenComplete().then(() => null, (e) => e);
    assert.equal(first?.status, 413);
    const sent = backend.requests.length;
    cache.invalidate({ ids: ['nobody'] });
    assert.equal(await now(), first, 'after an invalidation of ids');
    cache.invalidate({ tiles: [`14/${SX + 9}/${SY + 9}`] });
    assert.equal(await now(), first, 'after an invalidation of another tile');
    assert.equal(backend.requests.length, sent, 'still held: not asked again');
    assert.deepEqual(cache.setViewport(v).missingTiles, [big]);
    // One that covers it (its zoom-12 parent) ends the hold: asked again.
    backend.hostile = null;
    cache.invalidate({ tiles: [`12/${SX >> 2}/${SY >> 2}`] });
    await cache.whenComplete();
    assert.deepEqual(cache.setViewport(v).missingTiles, []);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('a coarse tile a partial answer leaves out as too large (payload_too_large) is asked again at once as its data tiles: the view completes, no error', async () => {
  // As tilewarm-server answers a coalesced tile whose items are over what one answer may
  // hold ("request finer tiles"), while each data tile fits. Before, the data tiles backed
  // off and were asked for as the same coarse tile again, refused again, for ever.
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
  const errs = [];
  cache.onError((e) => errs.push(e));
  backend.hostile = (res, answer, req) => {
    const coarse = req.tiles.filter((t) => Number(t.split('/')[0]) < 14);
    answer.tiles = answer.tiles.filter((l) => !coarse.includes(l.tile));
    const keep = new Set(answer.tiles.flatMap((l) => l.ids));
    answer.items = answer.items.filter((it) => keep.has(it.id));
    if (coarse.length) answer.error = { code: 'payload_too_large', message: `tile ${coarse[0]} would hold more than 20000 items`, tiles: coarse, ids: [] };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  };
  try {
    const v = viewOf(SX, SY, 6, 6);
    cache.setViewport(v);
    await cache.whenComplete();
    assert.deepEqual(ids(cache.setViewport(v).items), truth(v));
    assert.ok(backend.requests[0].tiles.some((t) => Number(t.split('/')[0]) < 14), `coalesced first: ${backend.requests[0].tiles}`);
    const later = backend.requests.slice(1).flatMap((r) => r.tiles);
    assert.ok(later.every((t) => t.startsWith('14/')), `then data tiles: ${later}`);
    assert.equal(new Set(later).size, later.length, 'each asked once');
    assert.deepEqual(errs, []);
  } finally {
    backend.hostile = null;
    cache.dispose();
  }
});

test('one crossing of the JS/wasm boundary per setViewport', async () => {
  fresh();
  const cache = await make();
  const calls = [];
  const proto = raw.Engine.prototype;
  const saved = {};
  for (const name of Object.getOwnPropertyNames(proto)) {
    if (name === 'constructor' || typeof proto[name] !== 'function') continue;
    saved[name] = proto[name];
    proto[name] = function (...args) { calls.push(name); return saved[name].apply(this, args); };
  }
  try {
    cache.setViewport(viewOf(SX, SY, 3, 3));
    assert.deepEqual(calls, ['view']);
    await cache.whenComplete();
    calls.length = 0;
    const v = cache.setViewport(viewOf(SX, SY, 3, 3));
    assert.ok(v.items.length > 20);
    assert.deepEqual(calls, ['view'], 'one call however many items');
  } finally {
    Object.assign(proto, saved);
  }
  cache.dispose();
});

test('dispose aborts requests, rejects waiters and makes the cache unusable', async () => {
  fresh('hang');
  const cache = await make();
  cache.setViewport(viewOf(SX, SY));
  const waiting = cache.whenComplete();
  await backend.waitFor(1);
  cache.dispose();
  await assert.rejects(waiting, { code: 'ERR_DISPOSED' });
  await until(() => backend.aborted >= 1, 'the abort');
  assert.throws(() => cache.setViewport(viewOf(SX, SY)), { code: 'ERR_DISPOSED' });
  cache.dispose(); // twice is fine
});

test('listeners unsubscribe; a throwing listener does not break the cache', async () => {
  fresh();
  const cache = await make({ prefetch: { ring: 0, viewRing: 0 } });
  let n = 0;
  const off = cache.onUpdate(() => { n++; });
  const saved = globalThis.reportError;
  const reported = [];
  globalThis.reportError = (e) => reported.push(e);
  try {
    cache.onUpdate(() => { throw new Error('listener bug'); });
    cache.setViewport(viewOf(SX, SY));
    await cache.whenComplete();
    assert.equal(n, 1);
    assert.equal(reported[0]?.message, 'listener bug');
    off();
    cache.invalidate({ all: true });
    await cache.whenComplete();
    assert.equal(n, 1);
  } finally {
    globalThis.reportError = saved;
  }
  cache.dispose();
});

test('an unchanged view is handed back as the same object; answers, expiry, invalidation and a tier change end it', async () => {
  fresh();
  let now = 1_700_000_000_000;
  const cache = await make({ now: () => now, prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 } });
  const v = (dx) => viewOf(SX + dx, SY, 3, 3);
  cache.setViewport(v(0));
  await cache.whenComplete();
  const read = cache.setViewport(v(0));
  assert.equal(read.complete, true);
  // Frames of a pan inside the same tiles: the same object, the same items.
  for (let i = 1; i <= 5; i++) {
    now += 16;
    assert.equal(cache.setViewport(v(i * 0.005)), read, `frame ${i}`);
  }
  assert.deepEqual(ids(read.items), truth(v(0)));
  // Into the next column of tiles: a new view.
  const next = cache.setViewport(v(1));
  assert.notEqual(next, read);
  await cache.whenComplete();
  const back = cache.setViewport(v(0));
  assert.notEqual(back, read, 'another read came between');
  assert.deepEqual(ids(back.items), ids(read.items));
  // Time: the tile lists expire at 300 s.
  now += 300_000;
  const expired = cache.setViewport(v(0));
  assert.notEqual(expired, back);
  assert.equal(expired.complete, false);
  await cache.whenComplete();
  const again = cache.setViewport(v(0));
  assert.equal(cache.setViewport(v(0.001)), again);
  // Invalidation and a tier change: a new read.
  cache.invalidate({ ids: [again.items[0].id] });
  const after = cache.setViewport(v(0.002));
  assert.notEqual(after, again);
  assert.ok(!after.items.some((i) => i.id === again.items[0].id));
  await cache.whenComplete();
  const before = cache.setViewport(v(0));
  cache.setAccess('registered');
  const raised = cache.setViewport(v(0));
  assert.notEqual(raised, before);
  assert.equal(raised.complete, false, 'lists fetched for public are not enough for registered');
  cache.dispose();
});

test('get of a cached id: the cached object, counted as a hit, no request', async () => {
  fresh();
  const cache = await make();
  cache.setViewport(viewOf(SX, SY, 2, 2));
  await cache.whenComplete();
  const item = cache.setViewport(viewOf(SX, SY, 2, 2)).items[0];
  const { hits } = cache.stats();
  const sent = backend.requests.length;
  assert.equal(await cache.get(item.id), item);
  assert.equal(cache.stats().hits, hits + 1);
  assert.equal(backend.requests.length, sent);
  await assert.rejects(cache.get(''), { code: 'ERR_OUT_OF_RANGE' });
  cache.dispose();
  await assert.rejects(cache.get(item.id), { code: 'ERR_DISPOSED' });
});
