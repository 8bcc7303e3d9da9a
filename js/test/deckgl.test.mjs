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
