// `scripts/bench.sh coldstart`: cold start in Chromium over a throttled network. Two minimal
// pages show the same map view (coldstart/view.js: 4 x 3 data tiles, its items as dots on a
// canvas): (a) through the tilewarm package (its wasm; with the package's defaults, with the
// wasm preloaded from the HTML, and with prefetch and coalescing off), (b) through the JS
// composition (tile-cover + lru-cache + fetch of the same batch endpoint). Each page
// is one HTML file and one esbuild bundle (minified; page (a) also loads tilewarm_bg.wasm),
// served gzipped by a local server that answers POST /batch from the Node tests' backend
// (js/test/support/backend.mjs). Chromium (playwright-core) gets CDP
// Network.emulateNetworkConditions (1.6 Mbps down, 750 kbps up, 150 ms RTT) and the cache
// disabled, a fresh context per load; the figure is the time from navigation start to the
// page's `complete` mark (set once all items of the view are drawn), runs alternating, plus
// the bytes the server sent per load (response bodies, gzipped, until half a second after
// the mark).
// Needs pkg/ built (make pkg), npm ci here and in js/test/browser (playwright-core), chromium.
//
// Usage: node coldstart.mjs [--runs N] [--md FILE]
import { mkdirSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import esbuild from 'esbuild';
import { startBackend } from '../../js/test/support/backend.mjs';
import { browserPath, CHROMIUM_ARGS } from '../../js/test/browser/support.mjs';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const RUNS = Number(arg('runs', 7));
const md = arg('md');
const PER_TILE = 60; // items per z14 data tile: about 600 public items in the view
const NET = { offline: false, latency: 150, downloadThroughput: 1.6e6 / 8, uploadThroughput: 750e3 / 8 };
const root = resolve(import.meta.dirname, '../..');
const pkgDir = resolve(root, 'pkg');
const out = resolve(root, 'target/bench/coldstart');
const { chromium } = createRequire(resolve(root, 'js/test/browser/package.json'))('playwright-core');
const PAGES = { tilewarm: 'the tilewarm package (wasm)', composition: 'tile-cover + lru-cache + fetch' };
// Loads measured: page (a) with the package's defaults, the same with the wasm preloaded from
// the HTML (preload.html), page (a) lean (?lean=1: prefetch and coalescing off), page (b).
const LOADS = { tilewarm: '/tilewarm/', preload: '/tilewarm/preload.html', lean: '/tilewarm/?lean=1', composition: '/composition/' };
const PRELOAD = '<link rel="preload" href="./tilewarm_bg.wasm" as="fetch" type="application/wasm" crossorigin>';

// Build: one bundle per page, the wasm beside page (a)'s bundle (index.js fetches it by
// `new URL('./tilewarm_bg.wasm', import.meta.url)`).
const files = new Map(); // url path -> { body, gz, type }
const TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript', wasm: 'application/wasm' };
for (const name of Object.keys(PAGES)) {
  const dir = join(out, name);
  mkdirSync(dir, { recursive: true });
  await esbuild.build({
    entryPoints: [resolve(import.meta.dirname, `coldstart/${name}.js`)],
    outfile: join(dir, 'main.js'), bundle: true, minify: true, format: 'esm', target: 'es2022',
    alias: { tilewarm: join(pkgDir, 'index.js') }, logLevel: 'warning',
  });
  const html = readFileSync(resolve(import.meta.dirname, 'coldstart/page.html'), 'utf8').replace('PAGE', name);
  writeFileSync(join(dir, 'index.html'), html);
  const assets = ['index.html', 'main.js'];
  if (name === 'tilewarm') {
    copyFileSync(join(pkgDir, 'tilewarm_bg.wasm'), join(dir, 'tilewarm_bg.wasm'));
    writeFileSync(join(dir, 'preload.html'), html.replace('<style>', `${PRELOAD}\n<style>`));
    assets.push('tilewarm_bg.wasm', 'preload.html');
  }
  for (const f of assets) {
    const body = readFileSync(join(dir, f));
    files.set(`/${name}/${f}`, { body, gz: gzipSync(body), type: TYPES[f.split('.').pop()] });
  }
}
const pageBytes = (name) => [...files].filter(([p]) => p.startsWith(`/${name}/`) && !p.endsWith('preload.html')).reduce((n, [, f]) => n + f.gz.length, 0);

const backend = await startBackend({ perTile: PER_TILE });
// Bytes the server sent (response bodies as sent, gzipped) since the current load began.
let sent = 0;
const send = (req, res, type, body, gz) => {
  const zipped = /\bgzip\b/.test(req.headers['accept-encoding'] ?? '');
  res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store', ...(zipped ? { 'content-encoding': 'gzip' } : {}) });
  const out = zipped ? (gz ?? gzipSync(body)) : body;
  sent += out.length;
  res.end(out);
};
const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (req.method === 'POST' && path === '/batch') {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    let request;
    try { request = JSON.parse(Buffer.concat(chunks)); } catch { res.writeHead(400); res.end(); return; }
    if (process.env.COLDSTART_DEBUG) console.error(`coldstart: batch ${JSON.stringify(request.tiles)} ids ${request.ids?.length ?? 0}`);
    send(req, res, 'application/json', Buffer.from(JSON.stringify(backend.answer(request))));
    return;
  }
  const f = files.get(path.endsWith('/') ? `${path}index.html` : path);
  if (!f) { res.writeHead(404); res.end(); return; }
  send(req, res, f.type, f.body, f.gz);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const base = `http://127.0.0.1:${server.address().port}`;

// The items a complete view shows: the public items inside the view's box.
const { view } = await import('./coldstart/view.js');
const expected = backend.items.filter((it) => it.access === 'public' && it.lon >= view.west && it.lon <= view.east && it.lat >= view.south && it.lat <= view.north).length;

const load = loadavg()[0];
const results = { tilewarm: [], preload: [], lean: [], composition: [] };
const browser = await chromium.launch({ executablePath: browserPath, args: CHROMIUM_ARGS });
try {
  for (let run = 0; run < RUNS; run++) {
    const order = ['tilewarm', 'preload', 'lean', 'composition'];
    for (const name of run % 2 ? order.reverse() : order) {
      const context = await browser.newContext({ viewport: { width: 1000, height: 750 } });
      const page = await context.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      const cdp = await context.newCDPSession(page);
      let requests = 0, batches = 0, t0 = 0, firstBatch = 0;
      cdp.on('Network.requestWillBeSent', (e) => {
        if (!requests++) t0 = e.timestamp;
        if (e.request.url.endsWith('/batch') && !batches++) firstBatch = (e.timestamp - t0) * 1000;
      });
      await cdp.send('Network.enable');
      await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
      await cdp.send('Network.emulateNetworkConditions', NET);
      sent = 0;
      await page.goto(`${base}${LOADS[name]}`, { waitUntil: 'commit' });
      const got = await page.waitForFunction(() => window.__done, null, { timeout: 60_000, polling: 50 })
        .then((h) => h.jsonValue(), (e) => { throw new Error(`${name}: ${errors.join('; ') || e.message}`); });
      // Let the load's last responses finish counting (prefetch may still be running: counted
      // up to here plus half a second, as a user staying on the view would pay for it).
      await new Promise((ok) => setTimeout(ok, 500));
      const bytes = sent;
      await context.close();
      if (errors.length) throw new Error(`${name}: ${errors.join('; ')}`);
      if (got.items !== expected) throw new Error(`${name}: showed ${got.items} items, the view holds ${expected}`);
      results[name].push({ ms: got.ms, firstBatch, items: got.items, bytes, requests, batches });
      console.error(`coldstart: run ${run + 1} ${name}: ${JSON.stringify(results[name].at(-1))}`);
    }
  }
} finally {
  await browser.close();
  server.close();
  await backend.close();
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const m = (name, k) => median(results[name].map((r) => r[k]));
const kb = (b) => `${(b / 1024).toFixed(1)} KB`;
const COLS = ['tilewarm', 'preload', 'lean', 'composition'];
const page = (n) => (n === 'composition' ? 'composition' : 'tilewarm');
const ms0 = (x) => x.toFixed(0);
const rows = [
  ['first complete view, p50 (ms)', ms0, 'ms'],
  ['first complete view, fastest (ms)', ms0, (n) => Math.min(...results[n].map((r) => r.ms))],
  ['first complete view, slowest (ms)', ms0, (n) => Math.max(...results[n].map((r) => r.ms))],
  ['first POST /batch sent, p50 (ms after the page request)', ms0, 'firstBatch'],
  ['bytes sent per load (response bodies, gzipped), p50', kb, 'bytes'],
  ['requests per load, p50', String, 'requests'],
  ['  of them POST /batch, p50', String, 'batches'],
  ['page assets, gzipped (HTML + JS bundle + wasm)', kb, (n) => pageBytes(page(n))],
];
const val = (name, k) => (typeof k === 'function' ? k(name) : m(name, k));
const ratio = (a, k) => (val('composition', k) ? `${(val(a, k) / val('composition', k)).toFixed(2)}x` : '');
const lines = [
  `| cold start, ${expected} items in view | (a) tilewarm, defaults | (a) + wasm preload | (a), prefetch and coalescing off | (b) tile-cover + lru-cache + fetch | (a) / (b) | preload / (b) | off / (b) |`,
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map(([label, fmt, k]) => `| ${label} | ${COLS.map((n) => fmt(val(n, k))).join(' | ')} | ${ratio('tilewarm', k)} | ${ratio('preload', k)} | ${ratio('lean', k)} |`),
  '',
  'Headless Chromium (playwright-core) with CDP `Network.emulateNetworkConditions` at 1.6 Mbps',
  'down, 750 kbps up, 150 ms round trip, the cache disabled and a fresh browser context per load.',
  'Two minimal pages show one map view (1000 x 750 px at zoom 14: 4 x 3 data tiles of zoom 14',
  `around Seattle, ${PER_TILE} items per tile of which the public ones inside the view are drawn as`,
  'dots on a canvas; no map library): (a) through the tilewarm package, with its default options',
  '(prefetch and coalescing to coarser tiles on) and with `prefetch: { ring: 0, viewRing: 0,',
  'lookaheadMs: 0 }, batch: { coalesceLevels: 0 }` (`?lean=1`: only the view\'s tiles are asked',
  'for, as page (b) does), and with defaults from `preload.html`, whose `<head>` has',
  '`<link rel="preload" href="./tilewarm_bg.wasm" as="fetch" type="application/wasm" crossorigin>`',
  '(the wasm download starts with the bundle\'s, not after it has run); (b) through @mapbox/tile-cover + lru-cache + `fetch` of the same batch',
  'endpoint (16 tiles per request). Each page is its HTML and one esbuild bundle (minified; (a)',
  'also loads `tilewarm_bg.wasm`), served gzipped, as is every batch answer, by a local Node server',
  'answering from the Node tests\' backend (js/test/support/backend.mjs). "First complete view" is',
  'the page\'s `complete` mark (`performance.mark`, from navigation start), set once every item',
  'of the view is drawn; each load is checked to draw exactly the public items in the view.',
  '"First POST /batch sent" is when the page, booted (bundle and wasm fetched and compiled), asks',
  'for data. Bytes are the response bodies the server sent (gzipped) up to half a second after',
  `the mark, so prefetch started by then counts. ${RUNS} loads of each, alternating; medians.`,
  `Load average at the start: ${load.toFixed(1)} (a shared machine: read the ratios).`,
  'Reproduce: `scripts/bench.sh coldstart` (bench/js/coldstart.mjs; pages in bench/js/coldstart/).',
];
const text = lines.join('\n') + '\n';
if (md) writeFileSync(md, text);
process.stdout.write(text);
