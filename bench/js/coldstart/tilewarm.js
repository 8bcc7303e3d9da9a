// Cold-start page (a): the view through the tilewarm package (its wasm), with its defaults;
// `?lean=1`: prefetch and coalescing off (only the view's data tiles are asked for).
import { TileCache } from 'tilewarm';
import { view, draw, done } from './view.js';

const lean = new URLSearchParams(location.search).has('lean');
const cache = await TileCache.create({
  endpoint: new URL('/batch', location.href).href,
  ...(lean ? { prefetch: { ring: 0, viewRing: 0, lookaheadMs: 0 }, batch: { coalesceLevels: 0 } } : {}),
});
const show = (items, v) => {
  const n = draw(items);
  if (v.complete) done(n);
};
cache.onUpdate(show);
const v = cache.setViewport(view);
show(v.items, v);
