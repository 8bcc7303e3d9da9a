// Memory per cached item (issue 22): 50k items cached in a TileCache, the bytes of wasm
// memory and JS heap it holds per item, against the length of each item's JSON.
//
//   node --expose-gc bench/js/memory.mjs [--md FILE]
//
// The wasm memory is the module's linear memory (it grows in 64 KiB pages and never
// shrinks, so its growth is an upper bound); the JS heap is V8's `heapUsed` after a full
// GC, before the cache was made and after it was filled (the item objects the cache hands
// out are part of it: they are what a page renders).
//
// Part of what a cache of 50k items holds does not grow with the items: the package's
// compiled code and the fetch machinery the first answer loads (about 2 MB of JS heap, 42
// bytes an item at 50k). So each size runs in a process of its own (a wasm memory never
// shrinks), at 25k and at 50k items, and the table also gives what each further item
// costs: the difference between the two, per item.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, '..', '..', 'pkg');
const SIZES = [25_000, 50_000];
const child = process.argv.indexOf('--items');
if (child < 0) {
  // The parent: one process per size, then the table.
  const [half, full] = SIZES.map((n) => JSON.parse(execFileSync(process.execPath,
    ['--expose-gc', fileURLToPath(import.meta.url), '--items', String(n)], { encoding: 'utf8' })));
  const per = (r, k) => r[k] / r.entries;
  const marginal = (k) => (full[k] - half[k]) / (full.entries - half.entries);
  const row = (label, k) => `| ${label} | ${per(full, k).toFixed(0)} | ${marginal(k).toFixed(0)} |\n`;
  const json = full.json / full.entries, jsonMore = marginal('json');
  const md = `| bytes per item | at ${full.entries.toLocaleString('en-US')} items cached | each item from ${half.entries.toLocaleString('en-US')} to ${full.entries.toLocaleString('en-US')} |\n| --- | ---: | ---: |\n` +
    `| the item's JSON (average) | ${json.toFixed(0)} | ${jsonMore.toFixed(0)} |\n` +
    row('JS heap held (item objects and their data, the cache\'s tables)', 'heap') +
    row('wasm memory grown (index, tile lists, LRU; 64 KiB pages)', 'wasm') +
    `| total | ${(per(full, 'heap') + per(full, 'wasm')).toFixed(0)} | ${(marginal('heap') + marginal('wasm')).toFixed(0)} |\n` +
    `| overhead beyond the JSON (total − JSON) | ${(per(full, 'heap') + per(full, 'wasm') - json).toFixed(0)} | ${(marginal('heap') + marginal('wasm') - jsonMore).toFixed(0)} |\n`;
  process.stdout.write(md);
  const i = process.argv.indexOf('--md');
  if (i > 0) writeFileSync(process.argv[i + 1], md);
  process.exit(0);
}
const { initSync } = await import(join(pkg, 'tilewarm.js'));
const wasm = initSync({ module: readFileSync(join(pkg, 'tilewarm_bg.wasm')) });
const { TileCache } = await import(join(pkg, 'api.js'));
if (typeof gc !== 'function') throw new Error('run with node --expose-gc');

const N = Number(process.argv[child + 1]), Z = 14, SIDE = 20;
const [X0, Y0] = [2614, 5711];
// N items spread over a SIDE x SIDE block of z14 tiles; the answers are built per request.
const lonOf = (x) => (x / 2 ** Z) * 360 - 180;
const latOf = (y) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / 2 ** Z))) * 180) / Math.PI;
function item(i) {
  const x = X0 + ((i * 7919) % (SIDE * 1000)) / 1000, y = Y0 + ((i * 104729) % (SIDE * 1000)) / 1000;
  return { id: `home-${i}`, lon: lonOf(x), lat: latOf(y), class: i % 3 ? 'off_market' : 'active', access: 'public', data: { estimate: 300000 + i, beds: 1 + (i % 5) } };
}
const byTile = new Map();
for (let i = 0; i < N; i++) {
  const it = item(i);
  const x = Math.floor(X0 + ((i * 7919) % (SIDE * 1000)) / 1000), y = Math.floor(Y0 + ((i * 104729) % (SIDE * 1000)) / 1000);
  // The data tile and the two above it: the client asks for a coarser tile when all of
  // its data tiles are missing.
  for (let d = 0; d <= 2; d++) {
    const k = `${Z - d}/${x >> d}/${y >> d}`;
    if (!byTile.has(k)) byTile.set(k, []);
    byTile.get(k).push(i);
  }
}
const jsonBytes = (() => { let s = 0; for (let i = 0; i < N; i++) s += JSON.stringify(item(i)).length; return s; })();
const fetch = async (_url, init) => {
  const req = JSON.parse(init.body);
  const items = [];
  const tiles = req.tiles.map((t) => {
    const ids = (byTile.get(t) || []).map((i) => { items.push(item(i)); return `home-${i}`; });
    return { tile: t, ids };
  });
  return new Response(JSON.stringify({ tiles, items, missing: [] }), { status: 200 });
};

gc(); gc();
const heap0 = process.memoryUsage().heapUsed, mem0 = wasm.memory.buffer.byteLength;
const cache = await TileCache.create({
  endpoint: 'http://bench.invalid/v1/batch', tileZoom: Z, minZoom: 12, fetch,
  maxItems: 60_000, maxBytes: 64 * 1024 * 1024, prefetch: { ring: 0, lookaheadMs: 0, viewRing: 0 },
});
// Views of 5 x 5 tiles over the block, each loaded before the next.
for (let y = 0; y < SIDE; y += 5) {
  for (let x = 0; x < SIDE; x += 5) {
    cache.setViewport({ west: lonOf(X0 + x + 0.1), east: lonOf(X0 + x + 4.9), north: latOf(Y0 + y + 0.1), south: latOf(Y0 + y + 4.9), zoom: 14.5 });
    await cache.whenComplete();
  }
}
await new Promise((r) => setTimeout(r, 50));
gc(); gc();
const entries = cache.stats().entries;
if (process.env.DEBUG) console.log(cache.stats());
const heap = process.memoryUsage().heapUsed - heap0, mem = wasm.memory.buffer.byteLength - mem0;
// The JSON summed over the items cached (the same N items, each cached once).
process.stdout.write(JSON.stringify({ entries, heap, wasm: mem, json: jsonBytes / N * entries }));
cache.dispose();
