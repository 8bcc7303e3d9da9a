// Memory per cached item (issue 22): 50k items cached in a TileCache, the bytes of wasm
// memory and JS heap it holds per item, against the length of each item's JSON.
//
//   node --expose-gc bench/js/memory.mjs [--md FILE]
//   HEAP_SNAPSHOT=FILE node --expose-gc bench/js/memory.mjs --items 50000   (one size, a snapshot)
//   bench/js/memory-alloc.sh   (where the wasm memory goes: --alloc-stats --pkg DIR, a
//                               package built with the feature alloc-stats)
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
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SIZES, backend, cacheOptions, fill, table } from './memory-items.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name) => { const i = process.argv.indexOf(name); return i < 0 ? undefined : process.argv[i + 1]; };
const pkg = resolve(arg('--pkg') ?? join(here, '..', '..', 'pkg'));
const child = process.argv.indexOf('--items');
if (child < 0 && process.argv.includes('--alloc-stats')) {
  // The live wasm allocations by size at 50k items (a package built by memory-alloc.sh).
  const n = SIZES[SIZES.length - 1];
  const r = JSON.parse(execFileSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url),
    '--items', String(n), '--pkg', pkg, '--alloc-stats'], { encoding: 'utf8' }));
  process.stdout.write(allocTable(r));
  process.exit(0);
}
if (child < 0) {
  // The parent: one process per size, then the table.
  const [half, full] = SIZES.map((n) => JSON.parse(execFileSync(process.execPath,
    ['--expose-gc', fileURLToPath(import.meta.url), '--items', String(n), '--pkg', pkg], { encoding: 'utf8' })));
  const md = table(half, full);
  process.stdout.write(md);
  const i = process.argv.indexOf('--md');
  if (i > 0) writeFileSync(process.argv[i + 1], md);
  process.exit(0);
}
const { initSync, allocStats, allocAtGrowth } = await import(join(pkg, 'tilewarm.js'));
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
const stats = process.argv.includes('--alloc-stats');
const alloc = stats ? Array.from(allocStats()) : undefined;
const growth = stats ? Array.from(allocAtGrowth()) : undefined;
process.stdout.write(JSON.stringify({ entries, heap, wasm: mem, json: jsonBytes / N * entries, alloc, growth }));
cache.dispose();

/** The live wasm allocations by requested size, each as talc holds it (its chunks are
 * multiples of 16 bytes, with a 4-byte tag: `(size + 4)` rounded up to 16), per item. */
function allocTable({ entries, wasm, alloc, growth }) {
  const chunk = (size) => Math.ceil((size + 4) / 16) * 16;
  const rows = [];
  let held = 0;
  for (let i = 0; alloc[i] !== -1; i += 2) {
    const [size, count] = [alloc[i], alloc[i + 1]];
    rows.push({ size, count, bytes: chunk(size) * count });
  }
  const at = alloc.indexOf(-1);
  const [largeCount, largeBytes] = [alloc[at + 1], alloc[at + 2]];
  rows.sort((a, b) => b.bytes - a.bytes);
  const per = (b) => (b / entries).toFixed(1);
  let md = `| requested size (B) | live allocations | bytes held (talc chunks) | per item |\n| ---: | ---: | ---: | ---: |\n`;
  let rest = 0;
  for (const r of rows) {
    held += r.bytes;
    if (r.bytes / entries >= 0.5) md += `| ${r.size} | ${r.count} | ${r.bytes} | ${per(r.bytes)} |\n`;
    else rest += r.bytes;
  }
  held += largeBytes;
  md += `| other sizes up to 4,096 | | ${rest} | ${per(rest)} |\n`;
  md += `| over 4,096 (${largeCount} allocations, as requested) | | ${largeBytes} | ${per(largeBytes)} |\n`;
  md += `| all live allocations | | ${held} | ${per(held)} |\n`;
  md += `| wasm memory grown | | ${wasm} | ${per(wasm)} |\n`;
  md += `\n${entries} items cached.\n`;
  md += growthTable(entries, alloc, growth);
  return md;
}

/** What was live when the wasm memory last grew (its high-water mark) beyond what is live
 * at the end: the sizes whose counts differ, then the allocation that grew it. */
function growthTable(entries, alloc, growth) {
  const chunk = (size) => Math.ceil((size + 4) / 16) * 16;
  const counts = (a) => {
    const m = new Map();
    let i = 0;
    for (; a[i] !== -1; i += 2) m.set(a[i], a[i + 1]);
    return { m, large: [a[i + 1], a[i + 2]], grew: a[i + 4] };
  };
  const [end, at] = [counts(alloc), counts(growth)];
  const rows = [];
  for (const size of new Set([...end.m.keys(), ...at.m.keys()])) {
    const d = (at.m.get(size) ?? 0) - (end.m.get(size) ?? 0);
    if (d) rows.push({ size, d, bytes: d * chunk(size) });
  }
  rows.sort((a, b) => b.bytes - a.bytes);
  let md = `\nWhen the wasm memory last grew (an allocation of ${at.grew} bytes), live beyond the end:\n\n` +
    `| requested size (B) | allocations more | bytes more | per item |\n| ---: | ---: | ---: | ---: |\n`;
  let sum = 0, rest = 0;
  for (const r of rows) {
    sum += r.bytes;
    if (Math.abs(r.bytes) >= 4096) md += `| ${r.size} | ${r.d} | ${r.bytes} | ${(r.bytes / entries).toFixed(1)} |\n`;
    else rest += r.bytes;
  }
  const large = at.large[1] - end.large[1];
  md += `| other sizes up to 4,096 | | ${rest} | ${(rest / entries).toFixed(1)} |\n`;
  md += `| over 4,096 (${at.large[0] - end.large[0]} allocations more) | | ${large} | ${(large / entries).toFixed(1)} |\n`;
  md += `| all | | ${sum + large} | ${((sum + large) / entries).toFixed(1)} |\n`;
  return md;
}
