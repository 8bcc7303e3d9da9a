// What the memory benchmarks share (bench/js/memory.mjs in Node, bench/js/memory-browser.mjs
// in Chromium): the items, the backend that answers the cache's batch requests, the cache's
// options, the views that fill it, and the table. Plain ES module, no Node imports: the
// Chromium page loads it as it is.
export const SIZES = [25_000, 50_000];
const Z = 14, SIDE = 20;
const [X0, Y0] = [2614, 5711];
// N items spread over a SIDE x SIDE block of z14 tiles; the answers are built per request.
const lonOf = (x) => (x / 2 ** Z) * 360 - 180;
const latOf = (y) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / 2 ** Z))) * 180) / Math.PI;
const fx = (i) => X0 + ((i * 7919) % (SIDE * 1000)) / 1000;
const fy = (i) => Y0 + ((i * 104729) % (SIDE * 1000)) / 1000;
function item(i) {
  return { id: `home-${i}`, lon: lonOf(fx(i)), lat: latOf(fy(i)), class: i % 3 ? 'off_market' : 'active', access: 'public', data: { estimate: 300000 + i, beds: 1 + (i % 5) } };
}

/** The backend of N items: a `fetch` for the cache's `fetch` option (it builds each answer
 * per request, from the item numbers per tile) and the items' JSON length summed. */
export function backend(N) {
  const byTile = new Map();
  let json = 0;
  for (let i = 0; i < N; i++) {
    const x = Math.floor(fx(i)), y = Math.floor(fy(i));
    // The data tile and the two above it: the client asks for a coarser tile when all of
    // its data tiles are missing.
    for (let d = 0; d <= 2; d++) {
      const k = `${Z - d}/${x >> d}/${y >> d}`;
      if (!byTile.has(k)) byTile.set(k, []);
      byTile.get(k).push(i);
    }
    json += JSON.stringify(item(i)).length;
  }
  const fetch = async (_url, init) => {
    const req = JSON.parse(init.body);
    const items = [];
    const tiles = req.tiles.map((t) => {
      const ids = (byTile.get(t) || []).map((i) => { items.push(item(i)); return `home-${i}`; });
      return { tile: t, ids };
    });
    return new Response(JSON.stringify({ tiles, items, missing: [] }), { status: 200 });
  };
  return { fetch, jsonBytes: json };
}

/** The cache's options, with the backend's `fetch`. */
export const cacheOptions = (fetch) => ({
  endpoint: 'http://bench.invalid/v1/batch', tileZoom: Z, minZoom: 12, fetch,
  maxItems: 60_000, maxBytes: 64 * 1024 * 1024, prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 },
});

/** Fills the cache: views of 5 x 5 tiles over the block, each loaded before the next. */
export async function fill(cache) {
  for (let y = 0; y < SIDE; y += 5) {
    for (let x = 0; x < SIDE; x += 5) {
      cache.setViewport({ west: lonOf(X0 + x + 0.1), east: lonOf(X0 + x + 4.9), north: latOf(Y0 + y + 0.1), south: latOf(Y0 + y + 4.9), zoom: 14.5 });
      await cache.whenComplete();
    }
  }
}

/** The markdown table from the two sizes' results: each `{ entries, heap, wasm, json }`
 * (bytes held by the cache: JS heap, wasm memory grown, the cached items' JSON);
 * `heapLabel` names the JS heap's row. */
export function table(half, full, heapLabel = 'JS heap held') {
  const per = (r, k) => r[k] / r.entries;
  const marginal = (k) => (full[k] - half[k]) / (full.entries - half.entries);
  const row = (label, k) => `| ${label} | ${per(full, k).toFixed(0)} | ${marginal(k).toFixed(0)} |\n`;
  const json = full.json / full.entries, jsonMore = marginal('json');
  const n = (x) => x.toLocaleString('en-US');
  return `| bytes per item | at ${n(full.entries)} items cached | each item from ${n(half.entries)} to ${n(full.entries)} |\n| --- | ---: | ---: |\n` +
    `| the item's JSON (average) | ${json.toFixed(0)} | ${jsonMore.toFixed(0)} |\n` +
    row(`${heapLabel} (item objects and their data, the cache's tables)`, 'heap') +
    row('wasm memory grown (index, tile lists, LRU; 64 KiB pages)', 'wasm') +
    `| total | ${(per(full, 'heap') + per(full, 'wasm')).toFixed(0)} | ${(marginal('heap') + marginal('wasm')).toFixed(0)} |\n` +
    `| overhead beyond the JSON (total − JSON) | ${(per(full, 'heap') + per(full, 'wasm') - json).toFixed(0)} | ${(marginal('heap') + marginal('wasm') - jsonMore).toFixed(0)} |\n`;
}
