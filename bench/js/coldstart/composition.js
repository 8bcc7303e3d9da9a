// Cold-start page (b): the same view through the JS composition a page would otherwise use:
// @mapbox/tile-cover for the data tiles in view, lru-cache for items and tile lists, and
// fetch of the same batch endpoint (the package's wire protocol, 16 tiles per request).
import cover from '@mapbox/tile-cover';
import { LRUCache } from 'lru-cache';
import { view, draw, done } from './view.js';

const items = new LRUCache({ max: 50_000, ttl: 300_000 });
const tiles = new LRUCache({ max: 65_536, ttl: 300_000 });
const { west: w, south: s, east: e, north: n } = view;
const polygon = { type: 'Polygon', coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] };
const want = cover.tiles(polygon, { min_zoom: 14, max_zoom: 14 }).map(([x, y, z]) => `${z}/${x}/${y}`);
const endpoint = new URL('/batch', location.href).href;

async function load(batch) {
  const r = await fetch(endpoint, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ tiles: batch, ids: [], access: 'public' }),
  });
  if (!r.ok) throw new Error(`batch: HTTP ${r.status}`);
  const body = await r.json();
  for (const it of body.items) items.set(it.id, it);
  for (const t of body.tiles) tiles.set(t.tile, t.ids, { ttl: t.ttl * 1000 });
}

const missing = want.filter((t) => !tiles.has(t));
const batches = [];
for (let i = 0; i < missing.length; i += 16) batches.push(missing.slice(i, i + 16));
await Promise.all(batches.map(load));
const shown = [];
for (const t of want) for (const id of tiles.get(t) ?? []) { const it = items.get(id); if (it) shown.push(it); }
done(draw(shown));
