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
