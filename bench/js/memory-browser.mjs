// Memory per cached item in Chromium (issue 22): the same measure as bench/js/memory.mjs
// (the same items, backend, cache options and views: bench/js/memory-items.mjs), in the
// browser a page runs in. Node 20's V8 is built without pointer compression (8-byte fields),
// Chromium's with it (4-byte fields), so Node overstates what the item objects cost a page.
//
// Each size (25k, 50k) runs in a Chromium of its own (one fresh page: a wasm memory never
// shrinks, and pages of one browser may share a renderer's heap). The page loads pkg/
// unbundled (pkg/tilewarm.js's init, then pkg/api.js), builds the backend, and then the
// DevTools protocol measures V8's used heap (`HeapProfiler.collectGarbage` twice, then
// `Runtime.getHeapUsage`) before the cache is made and after it is filled; the wasm figure
// is the growth of the module's `memory.buffer.byteLength`.
// Needs pkg/ built (make pkg), npm ci in js/test/browser (playwright-core), chromium.
//
// Usage: node bench/js/memory-browser.mjs [--md FILE] [--snapshot FILE] [--pkg DIR]
// (--pkg: another build of the package, served as /pkg/, for a before/after comparison)
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { extname, join, resolve } from 'node:path';
import { SIZES, table } from './memory-items.mjs';
import { browserPath, CHROMIUM_ARGS } from '../../js/test/browser/support.mjs';

const arg = (name) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : undefined; };
// --snapshot FILE: a heap snapshot of the page with the largest size cached (open it in
// DevTools' Memory tab).
const snapshot = arg('snapshot');
const root = resolve(import.meta.dirname, '../..');
const pkg = resolve(arg('pkg') ?? join(root, 'pkg'));
const { chromium } = createRequire(resolve(root, 'js/test/browser/package.json'))('playwright-core');
const PAGE = `<!doctype html><meta charset="utf-8"><title>tilewarm memory</title>
<script type="module">
import init from '/pkg/tilewarm.js';
const wasm = await init({ module_or_path: '/pkg/tilewarm_bg.wasm' });
const { TileCache } = await import('/pkg/api.js');
const { backend, cacheOptions, fill } = await import('/bench/js/memory-items.mjs');
let b, cache;
window.bench = {
  setup(n) { b = backend(n); return b.jsonBytes; },
  wasmBytes: () => wasm.memory.buffer.byteLength,
  async fill() {
    cache = await TileCache.create(cacheOptions(b.fetch));
    await fill(cache);
    await new Promise((r) => setTimeout(r, 50));
    return cache.stats().entries;
  },
};
window.__ready = true;
</script>`;
// Only what the page loads: the package and the shared module.
const SERVED = (path) => path.startsWith('/pkg/') || path === '/bench/js/memory-items.mjs';
const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm' };
const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  try {
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(PAGE);
      return;
    }
    if (!SERVED(path) || path.includes('..')) throw new Error('not served');
    const body = await readFile(path.startsWith('/pkg/') ? join(pkg, path.slice(5)) : join(root, path));
    res.writeHead(200, { 'content-type': TYPES[extname(path)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const base = `http://127.0.0.1:${server.address().port}/`;

async function measure(n) {
  const browser = await chromium.launch({ executablePath: browserPath, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(base);
    await page.waitForFunction(() => window.__ready, null, { timeout: 30_000 })
      .catch((e) => { throw new Error(errors.join('; ') || e.message); });
    const cdp = await page.context().newCDPSession(page);
    const heapUsed = async () => {
      await cdp.send('HeapProfiler.collectGarbage');
      await cdp.send('HeapProfiler.collectGarbage');
      return (await cdp.send('Runtime.getHeapUsage')).usedSize;
    };
    const jsonBytes = await page.evaluate((k) => window.bench.setup(k), n);
    const heap0 = await heapUsed(), mem0 = await page.evaluate(() => window.bench.wasmBytes());
    const entries = await page.evaluate(() => window.bench.fill());
    const heap = await heapUsed() - heap0, wasm = await page.evaluate(() => window.bench.wasmBytes()) - mem0;
    if (errors.length) throw new Error(errors.join('; '));
    if (snapshot && n === SIZES.at(-1)) {
      const chunks = [];
      cdp.on('HeapProfiler.addHeapSnapshotChunk', (c) => chunks.push(c.chunk));
      await cdp.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
      await writeFile(snapshot, chunks.join(''));
    }
    return { entries, heap, wasm, json: jsonBytes / n * entries };
  } finally {
    await browser.close();
  }
}

try {
  const results = [];
  for (const n of SIZES) {
    results.push(await measure(n));
    console.error(`memory-browser: ${n} items: ${JSON.stringify(results.at(-1))}`);
  }
  const md = table(results[0], results[1], 'JS heap held in Chromium');
  process.stdout.write(md);
  if (arg('md')) await writeFile(arg('md'), md);
} finally {
  server.close();
}
