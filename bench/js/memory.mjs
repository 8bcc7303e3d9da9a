// Memory per cached item (issue 22): 50k items cached in a TileCache, the bytes of wasm
// memory and JS heap it holds per item, against the length of each item's JSON.
//
//   node --expose-gc bench/js/memory.mjs [--md FILE]
//   HEAP_SNAPSHOT=FILE node --expose-gc bench/js/memory.mjs --items 50000   (one size, a snapshot)
//
// The items, the backend, the cache's options and the table are bench/js/memory-items.mjs,
// shared with the same measure in Chromium (bench/js/memory-browser.mjs).
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
import { SIZES, backend, cacheOptions, fill, table } from './memory-items.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, '..', '..', 'pkg');
const child = process.argv.indexOf('--items');
if (child < 0) {
  // The parent: one process per size, then the table.
  const [half, full] = SIZES.map((n) => JSON.parse(execFileSync(process.execPath,
    ['--expose-gc', fileURLToPath(import.meta.url), '--items', String(n)], { encoding: 'utf8' })));
  const md = table(half, full);
  process.stdout.write(md);
  const i = process.argv.indexOf('--md');
  if (i > 0) writeFileSync(process.argv[i + 1], md);
  process.exit(0);
}
const { initSync } = await import(join(pkg, 'tilewarm.js'));
const wasm = initSync({ module: readFileSync(join(pkg, 'tilewarm_bg.wasm')) });
const { TileCache } = await import(join(pkg, 'api.js'));
if (typeof gc !== 'function') throw new Error('run with node --expose-gc');

const N = Number(process.argv[child + 1]);
const { fetch, jsonBytes } = backend(N);

gc(); gc();
const heap0 = process.memoryUsage().heapUsed, mem0 = wasm.memory.buffer.byteLength;
const cache = await TileCache.create(cacheOptions(fetch));
await fill(cache);
await new Promise((r) => setTimeout(r, 50));
gc(); gc();
const entries = cache.stats().entries;
if (process.env.DEBUG) console.log(cache.stats());
const heap = process.memoryUsage().heapUsed - heap0, mem = wasm.memory.buffer.byteLength - mem0;
// Where the JS heap goes: HEAP_SNAPSHOT=FILE writes a heap snapshot here (open it in
// Chromium's DevTools, Memory tab), with the cache filled.
if (process.env.HEAP_SNAPSHOT) (await import('node:v8')).writeHeapSnapshot(process.env.HEAP_SNAPSHOT);
// The JSON summed over the items cached (the same N items, each cached once).
process.stdout.write(JSON.stringify({ entries, heap, wasm: mem, json: jsonBytes / N * entries }));
cache.dispose();
