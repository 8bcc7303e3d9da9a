// The tilewarm/leaflet test page: real Leaflet, no base layer (no network), the tilewarm
// grid layer over the batch endpoint beside the page (/batch).
import * as L from 'leaflet';
import 'leaflet/dist/leaflet.css';
import { TileCache } from 'tilewarm';
import { createLayer } from 'tilewarm/leaflet';
import { testClock } from '../clock.js';

const params = new URLSearchParams(location.search);
const map = L.map('map', { zoomAnimation: false, fadeAnimation: false })
  .setView([Number(params.get('lat')), Number(params.get('lon'))], Number(params.get('zoom')));
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
/** Ids ever drawn stale. */
const staleSeen = new Set();
/** A square per item, its tier and id noted on the canvas (those on screen are read back;
 * a tile drawn again starts its notes afresh: the draws of one drawing run in one task). */
function draw(ctx, item, x, y) {
  if (window.__tw.failDraw) throw new Error('draw failed');
  const c = ctx.canvas;
  if (!c.drawing) {
    c.drawing = true;
    c.paints = (c.paints ?? 0) + 1;
    c.tiers = []; c.points = []; c.ids = []; c.stale = [];
    queueMicrotask(() => { c.drawing = false; });
  }
  c.tiers.push(item.access);
  c.points.push([x, y]);
  c.ids.push(item.id);
  if (item.stale) { c.stale.push(item.id); staleSeen.add(item.id); }
  ctx.fillStyle = item.stale ? '#94a3b8' : '#ea580c';
  ctx.fillRect(x - 3, y - 3, 6, 6);
}
// follow=0: the cache is fed no view (followView: false): every tile is outside its view.
const followView = params.get('follow') !== '0';
const layer = createLayer(L, cache, { draw, followView, onError: (e) => errors.push(String(e)) }).addTo(map);
const tileErrors = [];
layer.on('tileerror', (e) => tileErrors.push(String(e.error)));

/** Items drawn per loaded tile (from the canvases), items of each tier on the page's
 * canvases, and counters. */
function state() {
  const drawn = {};
  const paints = {};
  for (const [key, t] of Object.entries(layer._tiles)) {
    if (t.loaded && t.el.dataset.items !== undefined) drawn[key] = Number(t.el.dataset.items);
    paints[key] = t.el.paints ?? 0;
  }
  const shown = {}, ids = [], stale = [];
  for (const c of document.querySelectorAll('canvas.tilewarm-tile')) {
    // A tile drawn again with no item keeps the notes of its previous drawing.
    if (c.dataset.items === '0') continue;
    for (const tier of c.tiers ?? []) shown[tier] = (shown[tier] ?? 0) + 1;
    ids.push(...(c.ids ?? []));
    stale.push(...(c.stale ?? []));
  }
  return { drawn, paints, shown, ids, stale, stats: cache.stats(), errors, zoom: map.getZoom() };
}
window.__tw = { map, cache, layer, state, L, createLayer, errors, tileErrors, failDraw: false, skip: clock.skip, staleSeen: () => [...staleSeen] };
