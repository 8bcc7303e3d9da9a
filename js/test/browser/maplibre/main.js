// The tilewarm/maplibre test page: real maplibre-gl, the package as an app imports it, a
// style with no network (a background), the batch endpoint beside the page (/batch).
import * as maplibregl from 'maplibre-gl';
import 'maplibre-gl/dist/maplibre-gl.css';
// MapLibre's ESM build looks for its worker beside itself; a bundle must point at it.
import workerUrl from 'maplibre-gl/dist/maplibre-gl-worker.mjs?url';
import { TileCache } from 'tilewarm';
import { attach } from 'tilewarm/maplibre';

maplibregl.setWorkerUrl(workerUrl);
const params = new URLSearchParams(location.search);
const map = new maplibregl.Map({
  container: 'map',
  style: { version: 8, sources: {}, layers: [{ id: 'bg', type: 'background', paint: { 'background-color': '#eef2f7' } }] },
  center: [Number(params.get('lon')), Number(params.get('lat'))],
  zoom: Number(params.get('zoom')),
  fadeDuration: 0,
});
const cache = await TileCache.create({
  endpoint: new URL('/batch', location.href).href,
  tileSize: 512,
  minZoom: 11,
  maxVisibleTiles: 64,
  prefetch: { ring: 1, viewRing: 1, lookaheadMs: 0 },
  // Not what these tests are about: a busy 2-core CI machine answered one request after the
  // default 3 s, and the page reported it (a CI run failed so).
  batch: { timeoutMs: 20_000 },
});
const views = [];
let lastItems = [];
const errors = [];
cache.onError((e) => errors.push(e.message));
const detach = attach(map, cache, {
  sourceId: 'items',
  properties: (item) => ({ price: item.data.price }),
  onView: (v) => {
    lastItems = v.items;
    views.push({ n: v.items.length, complete: v.complete, tooWide: v.tooWide });
  },
});
// The same view through setData (no diffs), which must end up the same.
const detachFull = attach(map, cache, { sourceId: 'items-setdata', useUpdateData: false, properties: (item) => ({ price: item.data.price }) });
map.once('load', () => {
  map.addLayer({
    id: 'items', type: 'circle', source: 'items',
    paint: {
      'circle-radius': 5,
      'circle-color': ['case', ['get', 'stale'], '#94a3b8', '#ea580c'],
      'circle-stroke-color': '#fff', 'circle-stroke-width': 1,
    },
  });
});

/** What the page shows: the source's features (through MapLibre's own getData), the view
 * a full recomputation gives (the cache's view right now, read without moving), and counters. */
async function state() {
  const read = async (id) => ((await map.getSource(id)?.getData())?.features ?? []).map((f) => ({
    id: f.properties.id, stale: f.properties.stale, price: f.properties.price,
    lon: f.geometry.coordinates[0], lat: f.geometry.coordinates[1],
  }));
  const features = await read('items');
  const setDataFeatures = await read('items-setdata');
  const b = map.getBounds();
  const vp = { west: b.getWest(), south: b.getSouth(), east: b.getEast(), north: b.getNorth(), zoom: map.getZoom() };
  // A full recomputation: every feature of the last view the adapter was given.
  const full = lastItems.map((it) => ({ id: it.id, stale: it.stale, price: it.data.price, lon: it.lon, lat: it.lat }));
  return { features, setDataFeatures, full, stats: cache.stats(), views: views.slice(-3), errors, vp, pitch: map.getPitch() };
}

window.__tw = { map, cache, detach, detachFull, state, maplibregl, views, attach, lastItems: () => lastItems };
