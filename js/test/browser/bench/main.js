// The tilewarm/maplibre benchmark page (js/test/browser/maplibre-bench.mjs drives it): real
// maplibre-gl, `attach` keeping a GeoJSON source in sync while the map pans one data tile per
// animation frame, with diffs (`updateData`, ?mode=diff) or `setData` (?mode=setdata).
import * as maplibregl from 'maplibre-gl';
import 'maplibre-gl/dist/maplibre-gl.css';
import workerUrl from 'maplibre-gl/dist/maplibre-gl-worker.mjs?url';
import { TileCache, tilesForBbox } from 'tilewarm';
import { attach } from 'tilewarm/maplibre';

maplibregl.setWorkerUrl(workerUrl);
const params = new URLSearchParams(location.search);
const center = [Number(params.get('lon')), Number(params.get('lat'))];
const map = new maplibregl.Map({
  container: 'map',
  style: { version: 8, sources: {}, layers: [{ id: 'bg', type: 'background', paint: { 'background-color': '#eef2f7' } }] },
  center, zoom: Number(params.get('zoom')), fadeDuration: 0,
});
const cache = await TileCache.create({
  endpoint: new URL('/batch', location.href).href,
  tileSize: 512, minZoom: 11, maxItems: 1_000_000, maxBytes: 1_000_000_000,
  prefetch: { ring: 0, viewRing: 0, lookaheadMs: 0 },
});
await new Promise((ok) => map.once('load', ok));

/** Per frame: [ms in setViewport, ms from its return to the end of the adapter's source
 * update (attach's `onView` comes right after it), items in the view, source calls]. */
const frames = [];
let t0 = 0, t1 = 0, calls = 0;
const setViewport = cache.setViewport.bind(cache);
cache.setViewport = (v) => { t0 = performance.now(); const r = setViewport(v); t1 = performance.now(); return r; };
attach(map, cache, {
  sourceId: 'items',
  useUpdateData: params.get('mode') === 'diff',
  properties: (item) => ({ price: item.data.price }),
  onView: (v) => {
    if (t0) frames.push([t1 - t0, performance.now() - t1, v.items.length, calls]);
    t0 = 0;
    calls = 0;
  },
});
const src = map.getSource('items');
for (const name of ['setData', 'updateData']) {
  const f = src[name].bind(src);
  src[name] = (...a) => { calls++; return f(...a); };
}
map.addLayer({ id: 'items', type: 'circle', source: 'items', paint: { 'circle-radius': 3, 'circle-color': '#ea580c' } });
let updates = 0;
map.on('sourcedata', (e) => { if (e.sourceId === 'items' && e.sourceDataType === 'content') updates++; });

/** Loads every data tile of the pan's path first, so the pan measures drawing, not fetching. */
async function prefill(dlon) {
  const b = map.getBounds();
  const tiles = tilesForBbox(b.getWest() - 0.01, b.getSouth(), b.getEast() + dlon + 0.01, b.getNorth(), 14);
  const got = await cache.loadTiles(tiles);
  return got.reduce((n, t) => n + (t.items?.length ?? 0), 0);
}

/** Pans one data tile (`step` degrees) per animation frame, east for `span` tiles, back
 * west, and so on for `n` frames: every frame changes the data tiles in view. Returns the
 * per-frame costs, source updates MapLibre finished (its 'content' sourcedata events) and
 * the seconds it took. */
async function pan(n, step, span) {
  await new Promise((ok) => setTimeout(ok, 300));
  frames.length = 0;
  updates = 0;
  const start = performance.now();
  for (let i = 1; i <= n; i++) {
    await new Promise((ok) => requestAnimationFrame(ok));
    const k = i % (2 * span);
    map.jumpTo({ center: [center[0] + step * (k <= span ? k : 2 * span - k), center[1]] });
  }
  await new Promise((ok) => requestAnimationFrame(ok));
  const seconds = (performance.now() - start) / 1000;
  const counted = updates;
  // Let MapLibre finish what it still has queued (not counted).
  await new Promise((ok) => setTimeout(ok, 500));
  return { frames: frames.slice(), updates: counted, seconds };
}

window.__tw = { map, cache, prefill, pan };
