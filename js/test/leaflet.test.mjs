// tilewarm/leaflet's argument checks under Node, with a stand-in for Leaflet (what
// createLayer uses of it before a layer is on a map; the real one runs in
// js/test/browser/leaflet.test.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createLayer } from 'tilewarm/leaflet';

/** A stand-in Leaflet namespace: GridLayer.extend gives a class with `on`. */
const L = {
  GridLayer: {
    extend: (proto) => class {
      constructor(options) { this.options = options; Object.assign(this, proto); }
      on() { return this; }
    },
  },
};
const cache = {
  tileSize: 256,
  loadTiles() {}, onAccess() {}, onDispose() {}, onTilesChanged() {}, setViewport() {},
};

test('options of the wrong type are refused when the layer is made, not on each tile', () => {
  for (const [options, message] of [
    [{ draw: 'dot' }, 'draw must be a function'],
    [{ onError: console }, 'onError must be a function'],
    [{ followView: 'false' }, 'followView must be a boolean'],
  ]) {
    assert.throws(() => createLayer(L, cache, options), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message });
  }
  assert.throws(() => createLayer(L, cache, { zindex: 2 }), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE', message: /^zindex is not an option; the options are draw, / });
  // What is allowed still makes a layer, with GridLayer's options passed on.
  const layer = createLayer(L, cache, { draw: () => {}, followView: false, zIndex: 2, minZoom: 9 });
  assert.deepEqual(layer.options, { zIndex: 2, minZoom: 9 });
});

/** A stand-in map in EPSG:3857: what createTile reads of Leaflet (DomUtil.create, latLng,
 * the CRS's latLngToPoint, the layer's getTileSize). */
const mercator = {
  code: 'EPSG:3857',
  latLngToPoint({ lat, lng }, z) {
    const n = 256 * 2 ** z, r = (lat * Math.PI) / 180;
    return { x: ((lng + 180) / 360) * n, y: ((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n };
  },
};
const LMap = {
  ...L,
  latLng: (lat, lng) => ({ lat, lng }),
  DomUtil: { create: () => ({ dataset: {}, getContext: () => null }) },
  GridLayer: {
    extend: (proto) => class {
      constructor(options) { this.options = options; Object.assign(this, proto); this._map = { options: { crs: mercator } }; }
      on() { return this; }
      getTileSize() { return { x: 256, y: 256 }; }
    },
  },
};

// A view zoomed out past the zoom at which a tile covers more than maxVisibleTiles data
// tiles (below 9 with the defaults): each tile used to fail and be reported (15 uncaught
// errors on an 800x600 page at zoom 7). As in tilewarm/openlayers, such a tile now loads
// empty, and ERR_TOO_MANY_TILES is reported once per zoom the view comes to.
test('tiles too coarse for the cache load empty, reported once per zoom; other tile errors still fail the tile', async () => {
  const coarse = (tile) => Object.assign(new RangeError(`tile ${tile} covers too many data tiles`), { code: 'ERR_TOO_MANY_TILES' });
  const failing = new Set();
  const loads = [];
  const stub = {
    ...cache,
    loadTiles(names) {
      loads.push(...names);
      return Promise.resolve(names.map((tile) => ({
        tile, error: failing.has(tile) ? Object.assign(new Error('foreground batch request failed: HTTP 500'), { code: 'ERR_HTTP' }) : coarse(tile),
      })));
    },
  };
  const errors = [];
  const layer = createLayer(LMap, stub, { onError: (e) => errors.push(e.code) });
  /** Asks for every tile of a 5x3 grid at zoom z (an 800x600 view), as Leaflet does; the
   * `done` calls of each, once they came. */
  const grid = async (z) => {
    const dones = [];
    for (let x = 0; x < 5; x++) {
      for (let y = 0; y < 3; y++) {
        const tile = layer.createTile({ x, y, z }, (err, el) => dones.push([err, el === tile]));
      }
    }
    await new Promise((r) => setImmediate(r));
    return dones;
  };
  let dones = await grid(7);
  assert.equal(loads.length, 15);
  assert.equal(dones.length, 15);
  assert.ok(dones.every(([err, same]) => err === null && same), 'every tile loaded, empty');
  assert.deepEqual(errors, ['ERR_TOO_MANY_TILES'], 'reported once for zoom 7');
  await grid(7);
  assert.deepEqual(errors, ['ERR_TOO_MANY_TILES'], 'not again at the same zoom');
  dones = await grid(6);
  assert.ok(dones.every(([err]) => err === null));
  assert.deepEqual(errors, ['ERR_TOO_MANY_TILES', 'ERR_TOO_MANY_TILES'], 'once more at zoom 6');
  // A request that gave up still fails its tile, reported each time.
  failing.add('9/0/0');
  dones = await grid(9);
  assert.equal(dones.filter(([err]) => err?.code === 'ERR_HTTP').length, 1);
  assert.deepEqual(errors.slice(2).sort(), ['ERR_HTTP', 'ERR_TOO_MANY_TILES']);
});
