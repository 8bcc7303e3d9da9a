// The tilewarm/openlayers test page: real OpenLayers, no base layer (no network), a vector
// layer over the tilewarm source (/batch beside the page).
import 'ol/ol.css';
import Map from 'ol/Map.js';
import View from 'ol/View.js';
import VectorLayer from 'ol/layer/Vector.js';
import VectorSource from 'ol/source/Vector.js';
import Feature from 'ol/Feature.js';
import Point from 'ol/geom/Point.js';
import { tile as tileStrategy } from 'ol/loadingstrategy.js';
import { createXYZ } from 'ol/tilegrid.js';
import { clearUserProjection, fromLonLat, useGeographic } from 'ol/proj.js';
import { Circle, Fill, Stroke, Style } from 'ol/style.js';
import { TileCache } from 'tilewarm';
import { createSource, follow } from 'tilewarm/openlayers';
import { testClock } from '../clock.js';

const params = new URLSearchParams(location.search);
/** The cache's clock (window.__tw.skip moves it on). */
const clock = testClock(() => cache.stats().inFlight > 0);
const cache = await TileCache.create({
  endpoint: new URL('/batch', location.href).href,
  now: clock.now,
  ...(params.has('swr') ? { ttl: { staleWhileRevalidate: Number(params.get('swr')) } } : {}),
  minZoom: 12,
  prefetch: { ring: 1, viewRing: 1, lookaheadMs: 0 },
  // Not what these tests are about: a busy 2-core CI machine answered one request after the
  // default 3 s, and the page reported it (a CI run failed so).
  batch: { timeoutMs: 20_000 },
  access: params.get('access') ?? 'public',
});
const errors = [];
cache.onError((e) => errors.push(e.message));
const source = createSource({ VectorSource, Feature, Point, tileStrategy, createXYZ }, cache, { onError: (e) => errors.push(String(e)) });
const styles = [false, true].map((stale) => new Style({
  image: new Circle({ radius: 4, fill: new Fill({ color: stale ? '#94a3b8' : '#ea580c' }), stroke: new Stroke({ color: '#fff', width: 1 }) }),
}));
const map = new Map({
  target: 'map',
  layers: [new VectorLayer({ source, style: (f) => styles[f.get('stale') ? 1 : 0] })],
  view: new View({ center: fromLonLat([Number(params.get('lon')), Number(params.get('lat'))]), zoom: Number(params.get('zoom')) }),
});
// follow=0: the cache is fed no view: every tile is outside its view.
if (params.get('follow') !== '0') follow(map, source);

/** Features in the source (ids), rendered? and counters. */
function state() {
  const ids = source.getFeatures().map((f) => f.getId());
  const stale = source.getFeatures().filter((f) => f.get('stale')).map((f) => f.getId());
  const shown = {};
  for (const f of source.getFeatures()) shown[f.get('access')] = (shown[f.get('access')] ?? 0) + 1;
  return {
    ids, stale, shown, lonlat: source.getFeatures().map((f) => [f.get('item').lon, f.get('item').lat]),
    loading: source.loading, extent: map.getView().calculateExtent(map.getSize()),
    stats: cache.stats(), errors, zoom: map.getView().getZoom(),
  };
}
/** Ids of features ever held stale. */
const staleSeen = new Set();
for (const e of ['addfeature', 'changefeature']) source.on(e, (ev) => { if (ev.feature.get('stale')) staleSeen.add(ev.feature.getId()); });
let rendered = 0;
map.on('rendercomplete', () => { rendered++; });

// For the tests' own caches, sources and maps (made in page.evaluate).
/** Resolves after `n` animation frames. */
const frames = (n) => new Promise((ok) => { const f = () => (--n ? requestAnimationFrame(f) : ok()); requestAnimationFrame(f); });
/** A new cache of /batch beside the page, with `options` (requests time out after 20 s
 * unless they say otherwise, as the page's own cache: not 3 s on a busy machine). */
const newCache = (options) => TileCache.create({
  endpoint: new URL('/batch', location.href).href, ...options, batch: { timeoutMs: 20_000, ...options?.batch },
});
/** A new tilewarm source of `cache` (createSource given this page's OpenLayers). */
const newSource = (cache, options) => createSource({ VectorSource, Feature, Point, tileStrategy, createXYZ }, cache, options);
/** A map of `layers` and `view` in a new div of `size` (CSS px) on the page (`div`, to remove). */
function newMap({ layers, view, size: [width, height] = [400, 300] }) {
  const div = document.createElement('div');
  div.style.cssText = `width: ${width}px; height: ${height}px`;
  document.body.append(div);
  return { div, map: new Map({ target: div, layers, view }) };
}
/** Waits (10 s at most) until `source` holds features and loads nothing, `cache` fetches
 * nothing; returns how many features it holds. */
async function loaded(source, cache) {
  const end = Date.now() + 10_000;
  while ((source.getFeatures().length === 0 || source.loading || cache.stats().inFlight > 0) && Date.now() < end) await frames(1);
  return source.getFeatures().length;
}
/** Makes `obj[name](...args)` call `hear(...args)` first. */
function spy(obj, name, hear) {
  const f = obj[name].bind(obj);
  obj[name] = (...args) => { hear(...args); return f(...args); };
}
window.__tw = {
  map, cache, source, state, rendered: () => rendered, fromLonLat, skip: clock.skip, staleSeen: () => [...staleSeen],
  ol: {
    Map, View, VectorLayer, VectorSource, Feature, Point, tileStrategy, createXYZ, TileCache, createSource, follow, useGeographic, clearUserProjection,
    frames, newCache, newSource, newMap, loaded, spy,
  },
};
