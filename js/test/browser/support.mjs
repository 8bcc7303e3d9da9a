// What the browser tests share: the built pages' directory, Chromium's flags, a server for
// the pages that forwards /batch to the Node tests' backend, and polling in the page.
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, resolve } from 'node:path';

export const root = resolve(import.meta.dirname, '../../..');
export const dist = resolve(root, 'target/browser-test');
export const browserPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Headless Chromium without a GPU: WebGL through ANGLE on SwiftShader (as scripts/demo-test.sh).
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  '--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
];
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.png': 'image/png' };

/** Serves `dist` and forwards POST /batch to the backend. */
export async function startPageServer(backend) {
  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://x');
      if (url.pathname === '/batch') {
        const chunks = [];
        for await (const c of req) chunks.push(c);
        const r = await fetch(backend.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: Buffer.concat(chunks) });
        res.writeHead(r.status, { 'content-type': 'application/json' });
        res.end(Buffer.from(await r.arrayBuffer()));
        return;
      }
      if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
      const file = join(dist, url.pathname.endsWith('/') ? `${url.pathname}index.html` : url.pathname);
      if (!file.startsWith(dist)) throw new Error('outside');
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => server.close() };
}

export async function until(page, fn, arg, what, ms = 30_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await page.evaluate(fn, arg);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}


/**
 * Checks items drawn per host tile (`drawn`: "x:y:z" -> count) against the backend: each
 * data tile (z14) whose host tiles are all drawn holds exactly the backend's public items,
 * so nothing is drawn twice or left out; a host tile coarser than z14 holds exactly its
 * items. (Compared per data tile, not per finer host tile: an item exactly on a finer edge
 * belongs to one side by the core's zoom-24 rule, which a float formula may not reproduce.)
 * Returns how many data tiles (or coarser host tiles) were checked.
 */
export function checkDrawn(assert, backend, drawn) {
  const groups = new Map();
  let checked = 0;
  for (const [key, n] of Object.entries(drawn)) {
    const [x, y, z] = key.split(':').map(Number);
    const d = z - 14;
    if (d < 0) {
      assert.equal(n, backend.tileItems(`${z}/${x}/${y}`, 'public').length, `tile ${z}/${x}/${y}`);
      checked++;
      continue;
    }
    const parent = `14/${x >> d}/${y >> d}`;
    const g = groups.get(parent) ?? { n: 0, tiles: 0, need: 4 ** d };
    g.n += n;
    g.tiles += 1;
    groups.set(parent, g);
  }
  for (const [parent, g] of groups) {
    if (g.tiles < g.need) continue;
    assert.equal(g.n, backend.tileItems(parent, 'public').length, `data tile ${parent}`);
    checked++;
  }
  assert.ok(checked > 0, `some data tile fully drawn: ${Object.keys(drawn).join(' ')}`);
  return checked;
}
