// tilewarm/deckgl's prop checks under Node, with a stand-in for deck.gl's TileLayer (what
// the subclass uses of it in updateState; the real one runs in js/test/browser/deckgl.test.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { extendTileLayer } from 'tilewarm/deckgl';

class TileLayer {
  constructor(props) {
    this.props = props;
    this.id = props.id;
    this.state = {};
    this.context = {};
  }
  getTileData() {}
  updateState() {}
  setNeedsUpdate() {}
}
const off = () => {};
const cache = {
  tileSize: 256,
  loadTiles() {}, onAccess: () => off, onDispose: () => off, onTilesChanged: () => off, setViewport() {},
};

test('props of the wrong type are refused by updateState, naming the layer', () => {
  const Layer = extendTileLayer(TileLayer);
  for (const [props, message] of [
    [{ followView: 'false' }, 'homes: the followView prop must be a boolean'],
    [{ onViewError: 'log' }, 'homes: the onViewError prop must be a function'],
  ]) {
    const layer = new Layer({ id: 'homes', cache, ...props });
    assert.throws(() => layer.updateState({}), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message });
  }
  // What is allowed (deck's defaults: followView true, onViewError null) is taken.
  new Layer({ id: 'homes', cache, followView: false, onViewError: null }).updateState({});
  new Layer({ id: 'homes', cache, followView: true, onViewError: () => {} }).updateState({});
});

// A tile that covers more than maxVisibleTiles data tiles (below zoom 9 with the defaults)
// used to fail, each one reaching deck's onTileError. As in tilewarm/openlayers and
// tilewarm/leaflet, it now loads empty, and onTileError hears ERR_TOO_MANY_TILES once per
// zoom the view comes to; a request that gave up still fails its tile.
test('tiles too coarse for the cache load empty, reported once per zoom; other tile errors still fail the tile', async () => {
  const failing = new Set();
  const stub = {
    ...cache,
    loadTiles: async ([tile]) => [{
      tile,
      error: failing.has(tile)
        ? Object.assign(new Error('foreground batch request failed: HTTP 500'), { code: 'ERR_HTTP' })
        : Object.assign(new RangeError(`tile ${tile} covers too many data tiles`), { code: 'ERR_TOO_MANY_TILES' }),
    }],
  };
  const reported = [];
  const layer = new (extendTileLayer(TileLayer))({ id: 'homes', cache: stub, followView: false, onTileError: (e) => reported.push(e.code) });
  layer.updateState({});
  /** getTileData for a 5x3 grid at zoom z: what each gave, or the code it failed with. */
  const grid = (z) => Promise.all([...Array(15)].map((_, i) => layer.getTileData({ index: { x: i % 5, y: Math.floor(i / 5), z }, signal: undefined })
    .then((items) => items, (e) => e.code)));
  assert.deepEqual(await grid(7), [...Array(15)].map(() => []));
  assert.deepEqual(reported, ['ERR_TOO_MANY_TILES'], 'once for zoom 7');
  await grid(7);
  assert.deepEqual(reported, ['ERR_TOO_MANY_TILES'], 'not again at the same zoom');
  await grid(6);
  assert.deepEqual(reported, ['ERR_TOO_MANY_TILES', 'ERR_TOO_MANY_TILES'], 'once more at zoom 6');
  failing.add('8/0/0');
  const got = await grid(8);
  assert.equal(got[0], 'ERR_HTTP');
  assert.deepEqual(got.slice(1), [...Array(14)].map(() => []));
});
