// What the browser tests share: the built pages' directory, Chromium's flags, a server for
// the pages that forwards /batch to the Node tests' backend, a suite's session (backend, page
// server, Chromium and the pages it opens), polling in the page, and checks on what a map drew
// and what it fetched.
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, resolve } from 'node:path';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';
import { startBackend, tileOf } from '../support/backend.mjs';

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

/**
 * A suite's session, made in its describe(): before its tests the Node backend, the page
 * server and Chromium start (`backend`, `pages`, `browser`); after them all three close.
 * `problems` gathers the console errors and page errors of the pages it opens, for the
 * suite's last test to check.
 */
export function browserSession() {
  const session = {
    problems: [],
    /** A new page, 800 x 600 unless `options` (playwright's) say otherwise, whose console
     * errors (but those matching `ignore`) and page errors go to `problems` (the session's
     * unless given). */
    async newPage({ problems = session.problems, ignore, ...options } = {}) {
      const p = await session.browser.newPage({ viewport: { width: 800, height: 600 }, ...options });
      p.on('console', (m) => { if (m.type() === 'error' && !ignore?.test(m.text())) problems.push(`console: ${m.text()}`); });
      p.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      return p;
    },
    /** Loads `path` (of the built pages) in page `p` and waits for its window.__tw. */
    async load(p, path) {
      await p.goto(`${session.pages.url}${path}`);
      await until(p, () => window.__tw !== undefined, null, 'the page');
    },
    /** A new page (`newPage(options)`) with `path` loaded. */
    async open(path, options) {
      const p = await session.newPage(options);
      await session.load(p, path);
      return p;
    },
    /** `fn(p)` on a new page (`newPage(options)`) with `path` loaded; closes the page after. */
    async withPage(path, fn, options) {
      const p = await session.newPage(options);
      try {
        await session.load(p, path);
        return await fn(p);
      } finally {
        await p.close();
      }
    },
  };
  before(async () => {
    session.backend = await startBackend();
    session.pages = await startPageServer(session.backend);
    session.browser = await chromium.launch({ executablePath: browserPath, args: CHROMIUM_ARGS });
  });
  after(async () => {
    await session.browser?.close();
    session.pages?.close();
    session.backend?.close();
  });
  return session;
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

/** Whether tile "z/x/y" (z <= 14) overlaps the data tiles (zoom 14) x0..x1, y0..y1. */
export function overlaps(tile, x0, y0, x1, y1) {
  const [z, x, y] = tile.split('/').map(Number);
  const k = 2 ** (14 - z);
  return x * k <= x1 && (x + 1) * k > x0 && y * k <= y1 && (y + 1) * k > y0;
}

/** The data tile (zoom 14) "14/x/y" of the backend's item `id`. */
export function dataTileOf(backend, id) {
  const it = backend.byId.get(id);
  return tileOf(it.lon, it.lat, 14).join('/');
}

/**
 * What a map at rest reads: deletes the backend's item `id` of data tile `off` ("14/x/y",
 * which the map holds out of its view), moves the cache's clock in page `p` past every ttl
 * (within the stale window) and waits until the tiles in view (`where` says where, for the
 * messages) are refetched, then changes `off` once more (an invalidation, as tilewarm/live
 * makes), and checks that every tile asked for meanwhile lies in the view (the data tiles
 * x0..x1, y0..y1) and holds no part of `off` (the cache may ask for a coarser tile standing
 * for data tiles it needs).
 */
export async function checkReadsAtRest(assert, p, backend, { id, off, view: [x0, y0, x1, y1], where }) {
  const [, ox, oy] = off.split('/').map(Number);
  backend.remove(id);
  const n0 = backend.requests.length;
  const sent = await p.evaluate(async () => { await window.__tw.skip(301_000); window.__tw.cache.prefetch([]); return window.__tw.state().stats.requests; });
  await until(p, (sent) => window.__tw.state().stats.requests > sent && window.__tw.state().stats.inFlight === 0, sent, `the tiles ${where} refetched`);
  await p.evaluate((tile) => window.__tw.cache.invalidate({ tiles: [tile] }), off);
  await p.evaluate(() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok))));
  await until(p, () => window.__tw.state().stats.inFlight === 0, null, 'nothing in flight');
  const asked = backend.requests.slice(n0).flatMap((r) => r.tiles ?? []);
  assert.ok(asked.length > 0);
  for (const t of asked) assert.ok(overlaps(t, x0, y0, x1, y1) && !overlaps(t, ox, oy, ox, oy),
    `${t} requested: not in the view (14/${x0}..${x1}/${y0}..${y1}) or holding ${off}; requested ${asked}`);
}

/** The backend's requests since its `n`th that ask for a tile holding data tile `tile`
 * ("14/x/y"). */
export function requestsHolding(backend, n, tile) {
  const [, x, y] = tile.split('/').map(Number);
  return backend.requests.slice(n).filter((r) => r.tiles?.some((t) => overlaps(t, x, y, x, y)));
}

/**
 * Items deleted on the server leave the map: two items of `ids` (the first, and the first
 * of another data tile; `what` says how they are on the map, for the message), the first
 * deleted and invalidated by id (as tilewarm/live does: refetched, found gone), the second
 * deleted and found gone when its tile is fetched again (the tile invalidated).
 * `gone(id, tile, change, arg)` runs `change(arg)` in the page, waits until `id` (of data
 * tile `tile`) left the map, checks what else the map did, and returns the page's state.
 */
export async function checkDeletedLeave(assert, backend, ids, what, gone) {
  const tileOfId = (id) => dataTileOf(backend, id);
  const [a, b] = ids.filter((id, i, all) => tileOfId(id) !== tileOfId(all[0]) || i === 0);
  assert.ok(a && b && tileOfId(a) !== tileOfId(b), `two items of two data tiles ${what}: ${ids}`);
  const tileA = tileOfId(a), tileB = tileOfId(b);
  backend.remove(a);
  await gone(a, tileA, (id) => window.__tw.cache.invalidate({ ids: [id] }), a);
  backend.remove(b);
  const s = await gone(b, tileB, (tile) => window.__tw.cache.invalidate({ tiles: [tile] }), tileB);
  assert.deepEqual(s.errors, []);
}

/**
 * Items held outside the cache's view turn stale and fresh again: moves the cache's clock
 * in page `p` past the active items' ttl (300 s; within the stale window, which the page
 * sets), with a call that arms the cache's timer for the wake-up now due; waits until the
 * page saw items stale, then until none is stale, nothing is in flight and the cache made
 * requests since `first` (the page's state before), and, with `whole`, every tile is drawn;
 * checks that only active items were stale and the same items are shown as in `first`,
 * with no error. `saw` and `fresh` name the two waits in their timeout messages.
 */
export async function checkStaleRefetched(assert, p, backend, first, { saw, fresh, whole = false }) {
  await p.evaluate(async () => { await window.__tw.skip(301_000); window.__tw.cache.prefetch([]); });
  await until(p, () => window.__tw.staleSeen().length > 0, null, saw);
  const s = await until(p, ([before, whole]) => {
    const s = window.__tw.state();
    return s.stale.length === 0 && s.stats.inFlight === 0 && s.stats.requests > before && (!whole || !Object.values(s.drawn).some((n) => n < 0)) && s;
  }, [first.stats.requests, whole], fresh);
  const seen = await p.evaluate(() => window.__tw.staleSeen());
  assert.ok(seen.every((id) => backend.byId.get(id).class === 'active'), `only active items stale: ${seen}`);
  assert.deepEqual(new Set(s.ids), new Set(first.ids));
  assert.deepEqual(s.errors, []);
}
