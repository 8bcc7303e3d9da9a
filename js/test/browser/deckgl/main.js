// The tilewarm/deckgl test page: real deck.gl (WebGL2), no base map (no network), the tilewarm
// TileLayer over the batch endpoint beside the page (/batch), dots by ScatterplotLayer.
import { Deck } from '@deck.gl/core';
import { TileLayer } from '@deck.gl/geo-layers';
import { ScatterplotLayer } from '@deck.gl/layers';
import { TileCache } from 'tilewarm';
import { extendTileLayer } from 'tilewarm/deckgl';
import { testClock } from '../clock.js';

const params = new URLSearchParams(location.search);
const errors = [];
/** The caches' clock (window.__tw.skip moves it on; it waits for the layer's cache). */
const clock = testClock(() => cache.stats().inFlight > 0);
/** A cache at `access` (the layer's `cache` prop; useCache swaps it). */
async function newCache(access) {
  const c = await TileCache.create({
    endpoint: new URL('/batch', location.href).href,
    now: clock.now,
    ...(params.has('swr') ? { ttl: { staleWhileRevalidate: Number(params.get('swr')) } } : {}),
    minZoom: 12,
    prefetch: { ring: 1, viewRing: 1, lookaheadMs: 0 },
    // Not what these tests are about: a busy 2-core CI machine answered one request after the
    // default 3 s, and the page reported it (a CI run failed so).
    batch: { timeoutMs: 20_000 },
    access,
  });
  c.onError((e) => errors.push(e.message));
  return c;
}
let cache = await newCache(params.get('access') ?? 'public');
/** Ids of items ever rendered stale. */
const staleSeen = new Set();
const TilewarmTileLayer = extendTileLayer(TileLayer);
/** The layer's `visible` prop (setVisible changes it). */
let visible = true;

function layer() {
  return new TilewarmTileLayer({
    id: 'homes',
    cache,
    visible,
    // follow=0: the cache is fed no view: every tile is outside its view.
    followView: params.get('follow') !== '0',
    minZoom: 12,
    maxZoom: 16,
    onTileError: (e) => errors.push(String(e)),
    onViewError: (e) => errors.push(String(e)),
    renderSubLayers: (props) => (props.data?.forEach?.((d) => { if (d.stale) staleSeen.add(d.id); }), new ScatterplotLayer({
      ...props,
      getPosition: (d) => [d.lon, d.lat],
      getFillColor: (d) => (d.stale ? [148, 163, 184] : [234, 88, 12]),
      getLineColor: [255, 255, 255],
      stroked: true,
      lineWidthMinPixels: 1,
      radiusUnits: 'pixels',
      getRadius: 4,
    })),
  });
}

let viewState = { longitude: Number(params.get('lon')), latitude: Number(params.get('lat')), zoom: Number(params.get('zoom')) };
const deck = new Deck({
  parent: document.getElementById('map'),
  viewState,
  controller: true,
  onViewStateChange: ({ viewState: v }) => { viewState = v; deck.setProps({ viewState }); },
  layers: [layer()],
});

/** Moves the view (a new layer instance each time, as a deck.gl app renders). */
function setView(v) {
  viewState = { ...viewState, ...v };
  deck.setProps({ viewState, layers: [layer()] });
}

/** Renders the layer with its `visible` prop `v`. */
function setVisible(v) {
  visible = v;
  deck.setProps({ layers: [layer()] });
}

/** Renders the layer with a new cache at `access`. */
async function useCache(access) {
  cache = await newCache(access);
  window.__tw.cache = cache;
  deck.setProps({ layers: [layer()] });
}

/** The layer as deck holds it: its tileset. */
function tileset() {
  return deck.layerManager?.getLayers().find((l) => l.id === 'homes')?.state?.tileset;
}

/** Items drawn per visible tile (the ScatterplotLayers deck renders), items by tier in
 * what the layer renders for every tile it holds (`held`: visible or not), and counters. */
function state() {
  const ts = tileset();
  if (!ts) return null;
  const drawn = {}, shown = {}, held = {}, ids = [], stale = [], redrawn = [];
  const selected = ts.selectedTiles.map((t) => t.id);
  for (const t of ts.tiles) {
    for (const l of t.layers ?? []) for (const d of l.props.data ?? []) held[d.access] = (held[d.access] ?? 0) + 1;
    // What deck draws: the sublayers of the visible tiles (loaded or placeholders).
    if (t.isVisible) {
      for (const l of t.layers ?? []) for (const d of l.props.data ?? []) shown[d.access] = (shown[d.access] ?? 0) + 1;
    }
    if (!t.isVisible || !t.isLoaded) continue;
    const subs = (t.layers ?? []).filter((l) => l.isLoaded !== false);
    const key = `${t.index.x}:${t.index.y}:${t.index.z}`;
    drawn[key] = subs.length ? subs[0].props.data.length : -1;
    for (const d of subs[0]?.props.data ?? []) ids.push(d.id);
    // (The flag as the items have it now: a read of the cache sets it on the shared objects.)
    for (const d of subs[0]?.props.data ?? []) if (d.stale) stale.push(d.id);
    // Sublayers made since mark() (the tile's items were rendered again).
    if (t.layers && !t.layers.marked) redrawn.push(key);
  }
  // The view the layer last updated for is the one asked for (setProps applies on a frame).
  const vp = deck.layerManager.getLayers().find((l) => l.id === 'homes').context.viewport;
  const current = Math.abs(vp.zoom - viewState.zoom) < 1e-9 && Math.abs(vp.longitude - viewState.longitude) < 1e-9
    && Math.abs(vp.latitude - viewState.latitude) < 1e-9;
  return {
    current, drawn, shown, held, ids, stale, redrawn, selected, visible: ts.tiles.filter((t) => t.isVisible).map((t) => t.id),
    loaded: ts.selectedTiles.every((t) => t.isLoaded), stats: cache.stats(), errors, zoom: viewState.zoom,
  };
}
/** Resolves after `n` animation frames (deck updates and draws on a frame). */
const frames = (n) => new Promise((ok) => { const f = () => (--n ? requestAnimationFrame(f) : ok()); requestAnimationFrame(f); });
/** Marks the sublayers the tiles have now (see state().redrawn). */
function mark() {
  for (const t of tileset().tiles) if (t.layers) t.layers.marked = true;
}
window.__tw = { deck, cache, setView, setVisible, useCache, state, tileset, frames, mark, skip: clock.skip, staleSeen: () => [...staleSeen] };
