// tilewarm/maplibre's bookkeeping under Node, with a stand-in for the map (what attach uses
// of a maplibregl.Map; the real one runs in js/test/browser/maplibre.test.mjs): one cache per
// map (a second map is refused, the same map may take several sources), a failed attach
// leaves no listener behind, and the cache's dispose() detaches.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TileCache } from 'tilewarm';
import { attach } from 'tilewarm/maplibre';
import { startBackend, viewOf, SEATTLE } from './support/backend.mjs';

const [, SX, SY] = SEATTLE;
// attach() schedules its setViewport calls per animation frame.
globalThis.requestAnimationFrame ??= (f) => setTimeout(f, 16);
globalThis.cancelAnimationFrame ??= (id) => clearTimeout(id);
const frames = (n) => new Promise((ok) => setTimeout(ok, 20 * n));

let backend;
before(async () => { backend = await startBackend(); });
after(async () => { await backend?.close(); });

/** A stand-in map over view `v` (256-px zoom), counting its live listeners;
 * `throwOn` names a method that throws. */
function fakeMap(v, throwOn) {
  const listeners = new Map();
  const sources = new Map();
  const live = () => [...listeners.values()].reduce((n, s) => n + s.size, 0);
  const add = (type, f) => {
    if (throwOn === 'on' || (throwOn === 'once' && type === 'remove')) throw new Error(`map.${throwOn} failed`);
    if (!listeners.has(type)) listeners.set(type, new Set());
    listeners.get(type).add(f);
  };
  return {
    live, sources,
    fire(type) { for (const f of [...(listeners.get(type) ?? [])]) f(); },
    getBounds: () => ({ getWest: () => v.west, getSouth: () => v.south, getEast: () => v.east, getNorth: () => v.north }),
    getZoom: () => v.zoom - 1,
    getSource: (id) => sources.get(id),
    addSource(id, spec) {
      sources.set(id, { promoteId: spec.promoteId, features: [], setData(fc) { this.features = fc.features; } });
    },
    on: add,
    once: add,
    off(type, f) { listeners.get(type)?.delete(f); },
  };
}

/** A stand-in cache counting its live listeners. */
function fakeCache() {
  const updates = new Set(), disposes = new Set();
  return {
    tileSize: 256,
    live: () => updates.size + disposes.size,
    setViewport: () => ({ items: [], complete: true, tooWide: false, missingTiles: [] }),
    onUpdate(f) { updates.add(f); return () => updates.delete(f); },
    onDispose(f) { disposes.add(f); return () => disposes.delete(f); },
  };
}

test('two maps on one cache: the second attach is refused; the same map takes several sources', async () => {
  const cache = await TileCache.create({ endpoint: backend.url });
  try {
    const a = fakeMap(viewOf(SX - 8, SY - 8)), b = fakeMap(viewOf(SX + 6, SY + 6));
    const detachA = attach(a, cache, { sourceId: 'homes', onError: (e) => assert.fail(e) });
    const detachA2 = attach(a, cache, { sourceId: 'homes-2', onError: (e) => assert.fail(e) });
    assert.throws(() => attach(b, cache, { sourceId: 'homes' }), (e) => {
      assert.equal(e.code, 'ERR_INVALID_ARG_VALUE');
      assert.match(e.message, /attached to another map.*each map needs its own/);
      return e instanceof TypeError;
    });
    assert.equal(b.live(), 0, 'nothing added to the refused map');
    // Still refused while one attach of the first map is live; free once both detached.
    detachA();
    assert.throws(() => attach(b, cache, { sourceId: 'homes' }), { code: 'ERR_INVALID_ARG_VALUE' });
    detachA2();
    const detachB = attach(b, cache, { sourceId: 'homes' });
    assert.ok(b.live() > 0);
    detachB();
  } finally {
    cache.dispose();
  }
});

test('a map that is not a maplibregl.Map (no once) is refused before anything is added', () => {
  const map = fakeMap(viewOf(SX, SY));
  delete map.once;
  const cache = fakeCache();
  assert.throws(() => attach(map, cache, { sourceId: 'homes' }), { code: 'ERR_INVALID_ARG_TYPE', message: 'map must be a maplibregl.Map' });
  assert.equal(map.live(), 0);
  assert.equal(cache.live(), 0);
});

test('an attach that throws leaves no listener behind, and the cache free for another map', () => {
  const cache = fakeCache();
  for (const throwOn of ['on', 'once']) {
    const map = fakeMap(viewOf(SX, SY), throwOn);
    assert.throws(() => attach(map, cache, { sourceId: 'homes' }), { message: `map.${throwOn} failed` });
    assert.equal(map.live(), 0, `map listeners left after map.${throwOn} threw`);
    assert.equal(cache.live(), 0, `cache listeners left after map.${throwOn} threw`);
  }
  const detach = attach(fakeMap(viewOf(SX, SY)), cache, { sourceId: 'homes' });
  detach();
  assert.equal(cache.live(), 0);
});

test("the cache's dispose() detaches: no ERR_DISPOSED on every frame of a move", async () => {
  const cache = await TileCache.create({ endpoint: backend.url });
  const map = fakeMap(viewOf(SX, SY));
  const errors = [];
  attach(map, cache, { sourceId: 'homes', onError: (e) => errors.push(e.code) });
  await cache.whenComplete();
  await frames(2);
  assert.ok(map.sources.get('homes').features.length > 0, 'items shown');
  cache.dispose();
  assert.equal(map.live(), 0, 'map listeners left after the cache was disposed');
  for (let i = 0; i < 5; i++) {
    map.fire('move');
    await frames(1);
  }
  assert.deepEqual(errors, []);
  // A map attached to a disposed cache hears of it once, and is detached.
  const late = fakeMap(viewOf(SX, SY));
  attach(late, cache, { sourceId: 'homes', onError: (e) => errors.push(e.code) });
  assert.deepEqual(errors, ['ERR_DISPOSED']);
  assert.equal(late.live(), 0);
});

test('a tier drop made by an onUpdate listener leaves no item above the new tier in the source', async () => {
  // The page's listener hears of an update first and lowers the tier then (a session that
  // ended): the cache tells every listener of the new view at once, inside that call; the
  // adapter must not be handed the view from before the drop after that.
  const cache = await TileCache.create({ endpoint: backend.url, access: 'agent', prefetch: { ring: 0, viewRing: 0 } });
  try {
    const v = viewOf(SX, SY);
    let dropped = false;
    cache.onUpdate((items) => {
      if (!dropped && items.some((it) => it.access === 'agent')) { dropped = true; cache.setAccess('public'); }
    });
    const map = fakeMap(v);
    attach(map, cache, { sourceId: 'homes', onError: (e) => assert.fail(e) });
    const tiers = () => map.sources.get('homes').features.map((f) => f.properties.access);
    await cache.whenComplete();
    assert.ok(dropped, 'the page saw agent items and dropped the tier');
    assert.deepEqual(tiers().filter((t) => t !== 'public'), [], 'items above the tier in the source');
    // The view again at public, fetched since.
    await cache.whenComplete();
    assert.ok(tiers().length > 0);
    assert.deepEqual(tiers().filter((t) => t !== 'public'), [], 'items above the tier in the source');
  } finally {
    cache.dispose();
  }
});

test('options of the wrong type are refused before anything is added', () => {
  const map = fakeMap(viewOf(SX, SY));
  const cache = fakeCache();
  for (const [options, message] of [
    [{ sourceId: 'homes', promoteId: 5 }, 'promoteId must be a non-empty string'],
    [{ sourceId: 'homes', promoteId: '' }, 'promoteId must be a non-empty string'],
    [{ sourceId: 'homes', useUpdateData: 'false' }, 'useUpdateData must be a boolean'],
  ]) {
    assert.throws(() => attach(map, cache, options), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message });
  }
  assert.equal(map.live(), 0);
  assert.equal(cache.live(), 0);
});
