// TileCache argument checks: exact messages for bad options and viewports, and no input
// that panics the wasm instance.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TileCache, tileForPoint } from 'tilewarm';

const endpoint = 'http://127.0.0.1:9/v1/batch'; // nothing listens; no test here fetches
const noFetch = async () => { throw new TypeError('no network in this test'); };
const create = (o) => TileCache.create({ endpoint, fetch: noFetch, ...o });

test('bad options: TypeError or RangeError naming the field, the value and what is allowed', async () => {
  const cases = [
    [{ tileZoom: 31 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'tileZoom must be an integer in 0..=24, got 31'],
    [{ tileZoom: 13.5 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'tileZoom must be an integer in 0..=24, got 13.5'],
    [{ tileZoom: '14' }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'tileZoom must be an integer in 0..=24, got "14"'],
    [{ minZoom: NaN }, 'RangeError', 'ERR_OUT_OF_RANGE', 'minZoom must be a number in 0..=30, got NaN'],
    [{ maxItems: 0 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'maxItems must be an integer in 1..=10000000, got 0'],
    [{ maxBytes: -1 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'maxBytes must be an integer in 1..=2147483647, got -1'],
    [{ ttl: { default: 0 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'ttl.default must be an integer number of seconds in 1..=2592000, got 0'],
    [{ ttl: { byClass: { sold: Infinity } } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'ttl.byClass.sold must be an integer number of seconds in 1..=2592000, got Infinity'],
    [{ ttl: { byClass: { sold: null } } }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'ttl.byClass.sold must be an integer number of seconds in 1..=2592000, got null'],
    [{ ttl: { byClass: [] } }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'ttl.byClass must be an object of class names and seconds, got an array'],
    [{ prefetch: { ring: 9 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'prefetch.ring must be an integer in 0..=8, got 9'],
    [{ prefetch: { lookaheadMs: 1e9 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'prefetch.lookaheadMs must be an integer in 0..=60000, got 1000000000'],
    [{ bounds: { west: -181 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'bounds.west must be a number in -180..=180, got -181'],
    [{ bounds: { north: '47' } }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'bounds.north must be a number in -90..=90, got "47"'],
    [{ bounds: { south: 48, north: 47 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'bounds.south must not be greater than bounds.north, got bounds.south 48 and bounds.north 47'],
    [{ bounds: [-122.5, 47.1, -121.3, 47.8] }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'bounds must be an object, got an array'],
    [{ prefetch: { viewRing: 4.5 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'prefetch.viewRing must be a number in 0..=4, got 4.5'],
    [{ prefetch: { budgetPerVisible: -1 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'prefetch.budgetPerVisible must be a number in 0..=64, got -1'],
    [{ batch: { coalesceLevels: 1.5 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'batch.coalesceLevels must be an integer in 0..=4, got 1.5'],
    [{ prefetch: 1 }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'prefetch must be an object, got 1'],
    [{ batch: { maxTiles: 65 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'batch.maxTiles must be an integer in 1..=64, got 65'],
    [{ batch: { maxIds: 0 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'batch.maxIds must be an integer in 1..=1000, got 0'],
    [{ batch: { maxInFlight: 2n } }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'batch.maxInFlight must be an integer in 1..=64, got a bigint'],
    [{ batch: { timeoutMs: 0 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'batch.timeoutMs must be an integer in 1..=600000, got 0'],
    [{ batch: { retries: 11 } }, 'RangeError', 'ERR_OUT_OF_RANGE', 'batch.retries must be an integer in 0..=10, got 11'],
    [{ batch: { retry: 1 } }, 'TypeError', 'ERR_INVALID_ARG_VALUE', 'batch.retry is not an option; the options are batch.maxTiles, batch.maxIds, batch.maxInFlight, batch.timeoutMs, batch.retries, batch.coalesceLevels, batch.coalesceMinShare'],
    [{ access: 'admin' }, 'TypeError', 'ERR_INVALID_ARG_VALUE', 'access must be one of "public", "registered", "verified", "agent", got "admin"'],
    [{ access: 3 }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'access must be one of "public", "registered", "verified", "agent", got 3'],
    [{ endpoint: '/v1/batch' }, 'TypeError', 'ERR_INVALID_ARG_VALUE', 'endpoint must be an absolute URL string, got "/v1/batch"'],
    [{ endpoint: undefined }, 'TypeError', 'ERR_INVALID_ARG_VALUE', 'endpoint must be an absolute URL string, got undefined'],
    [{ fetch: 'no' }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'fetch must be a function, got "no"'],
    [{ now: 5 }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'now must be a function returning milliseconds, got 5'],
    [{ headers: 'x' }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'headers must be an object of header names and values, got "x"'],
    [{ headers: { 'x api key': '1' } }, 'TypeError', 'ERR_INVALID_ARG_VALUE', /^headers must hold valid HTTP header names and values: .*x api key/],
    [{ tilezoom: 14 }, 'TypeError', 'ERR_INVALID_ARG_VALUE', /^tilezoom is not an option; the options are endpoint, tileZoom, /],
  ];
  for (const [opts, name, code, message] of cases) {
    await assert.rejects(create(opts), (e) => {
      assert.equal(e.name, name, String(message));
      assert.equal(e.code, code, String(message));
      if (message instanceof RegExp) assert.match(e.message, message);
      else assert.equal(e.message, message);
      return true;
    });
  }
  await assert.rejects(TileCache.create(null), { message: 'options must be an object, got null' });
  assert.throws(() => new TileCache({ endpoint }), { message: 'use `await TileCache.create(options)`' });
});

test('bad viewports: exact messages', async () => {
  const cache = await create({});
  const ok = { west: -122.4, south: 47.5, east: -122.3, north: 47.7, zoom: 14 };
  const cases = [
    [{ ...ok, zoom: 31 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'zoom must be a number in 0..=30, got 31'],
    [{ ...ok, zoom: undefined }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'zoom must be a number in 0..=30, got undefined'],
    [{ ...ok, west: '1' }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'west must be a finite number (a longitude; any value wraps), got "1"'],
    [{ ...ok, east: -Infinity }, 'RangeError', 'ERR_OUT_OF_RANGE', 'east must be a finite number (a longitude; any value wraps), got -Infinity'],
    [{ ...ok, north: 91 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'north must be a latitude in -90..=90, got 91'],
    [{ ...ok, south: 48 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'south must be at most north, got 48 (north is 47.7)'],
    [null, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'viewport must be an object {west, south, east, north, zoom}, got null'],
  ];
  for (const [vp, name, code, message] of cases) {
    assert.throws(() => cache.setViewport(vp), (e) => {
      assert.equal(e.name, name, message);
      assert.equal(e.code, code, message);
      assert.equal(e.message, message);
      return true;
    });
  }
  // The whole world at zoom 14 is not an error but a state: too wide, nothing fetched.
  const wide = cache.setViewport({ west: -180, south: -85, east: 180, north: 85, zoom: 14 });
  assert.deepEqual([wide.tooWide, wide.complete, wide.items, wide.missingTiles], [true, false, [], []]);
  // The whole world below minZoom is fine: nothing is fetched there.
  assert.equal(cache.setViewport({ west: -180, south: -85, east: 180, north: 85, zoom: 3 }).complete, true);
  assert.throws(() => cache.setAccess('root'), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
  assert.throws(() => cache.onUpdate(1), { message: 'onUpdate takes a function, got 1' });
  cache.dispose();
});

// An id no item can have is the caller's error, and nothing is sent: in a request it
// would make the server refuse the whole batch, with the view's tiles that went in it.
test('get() of an id the protocol refuses rejects with what is allowed, and sends nothing', async () => {
  let fetched = 0;
  const cache = await create({ fetch: async () => { fetched++; throw new TypeError('no network in this test'); } });
  const long = 'x'.repeat(257);
  const allowed = 'a non-empty id of at most 256 bytes without control characters';
  await assert.rejects(cache.get(long), (e) => {
    assert.equal(e.name, 'RangeError');
    assert.equal(e.code, 'ERR_OUT_OF_RANGE');
    assert.ok(e.message.startsWith(`id must be ${allowed}, got "xxx`), e.message);
    return true;
  });
  // get() names its argument `id`, getMany `ids`.
  await assert.rejects(cache.get(''), { code: 'ERR_OUT_OF_RANGE', message: 'id must not be empty' });
  await assert.rejects(cache.getMany(['h1', '']), { code: 'ERR_OUT_OF_RANGE', message: 'ids must not contain an empty string' });
  await assert.rejects(cache.getMany(['h1', 'a\u0007b']), { code: 'ERR_OUT_OF_RANGE', message: `ids[1] must be ${allowed}, got "a\\u0007b"` });
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(fetched, 0, 'nothing was sent, not even the valid id');
  assert.equal(cache.stats().requests, 0);
  cache.dispose();
});

test('no input panics the wasm instance', async () => {
  const odd = [
    NaN, Infinity, -Infinity, -0, 1e308, -1e308, 2 ** 32, 2 ** 53 + 2, Number.MIN_VALUE, -1, 0.5,
    '', 'x', '14/2624/5721/1', '99999999999/1/1', '9'.repeat(10_000), '\u0000', '🗺',
    undefined, null, true, 1n, Symbol('s'), {}, [], () => 1, new Date(0),
  ];
  let thrown = 0;
  const attempt = async (f) => {
    try { await f(); } catch (e) {
      assert.ok(e instanceof TypeError || e instanceof RangeError, `${e?.name}: ${e?.message}`);
      assert.match(e.code, /^ERR_/);
      thrown++;
    }
  };
  const cache = await create({ now: () => 1e15 });
  cache.onError(() => {});
  for (const a of odd) {
    await attempt(() => create({ tileZoom: a }));
    await attempt(() => create({ minZoom: a, maxItems: a }));
    await attempt(() => create({ ttl: { byClass: { [String(a).slice(0, 50)]: a } } }));
    await attempt(() => create({ batch: { maxTiles: a, timeoutMs: a } }));
    await attempt(() => create({ access: a }));
    for (const b of odd) {
      await attempt(() => cache.setViewport({ west: a, south: b, east: 1, north: 1, zoom: 14 }));
      await attempt(() => cache.setViewport({ west: 0, south: 0, east: 1, north: 1, zoom: a }));
    }
    await attempt(() => cache.setViewport(a));
    await attempt(() => cache.invalidate({ tiles: [a] }));
    await attempt(() => cache.invalidate({ ids: [a] }));
    await attempt(() => cache.setAccess(a));
    // Fetches by id start (and fail: there is no network); dispose() settles them below.
    await attempt(() => { cache.getMany([a]).catch(() => {}); });
  }
  // Odd clocks saturate instead of trapping.
  for (const t of [NaN, -1, Infinity, 1e300]) {
    const c = await create({ now: () => t });
    c.onError(() => {});
    c.setViewport({ west: -122.4, south: 47.5, east: -122.3, north: 47.7, zoom: 14 });
    c.stats();
    c.dispose();
  }
  assert.ok(thrown > 500, `${thrown}`);
  // The instance still works.
  const v = cache.setViewport({ west: -122.4, south: 47.5, east: -122.3, north: 47.7, zoom: 14 });
  assert.equal(v.complete, false);
  assert.equal(tileForPoint(-122.3321, 47.6062, 14), '14/2624/5721');
  cache.dispose();
});
