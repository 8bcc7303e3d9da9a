// A local batch endpoint for the tests: speaks the wire protocol over HTTP on 127.0.0.1,
// answering from a small generated dataset around Seattle. Tests can switch it into a
// failure mode, delay it, or inspect what it was asked.
import { createServer } from 'node:http';

/** Web Mercator tile of a point (written independently of the package under test). */
export function tileOf(lon, lat, z) {
  const n = 2 ** z;
  const x = Math.floor(((lon + 180) / 360) * n);
  const r = (lat * Math.PI) / 180;
  const y = Math.floor(((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n);
  return [z, Math.min(n - 1, Math.max(0, x)), Math.min(n - 1, Math.max(0, y))];
}

/** The north-west corner of tile (z, x, y) as [lon, lat]. */
export function tileCorner(z, x, y) {
  const n = 2 ** z;
  const lon = (x / n) * 360 - 180;
  const lat = (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI;
  return [lon, lat];
}

export const SEATTLE = tileOf(-122.3321, 47.6062, 14); // [14, 2624, 5721]

/** A viewport of w x h data tiles (z14) whose north-west corner is tile (x, y). */
export function viewOf(x, y, w = 2, h = 2, zoom = 14.5) {
  const inset = 0.05; // keep off the tile edges
  const [west, north] = tileCorner(14, x + inset, y + inset);
  const [east, south] = tileCorner(14, x + w - inset, y + h - inset);
  return { west, south, east, north, zoom };
}

/** `perTile` items in every z14 tile of a 24 x 24 block around Seattle. */
export function dataset(perTile = 3) {
  const items = [];
  const [, bx, by] = SEATTLE;
  for (let dy = -12; dy < 12; dy++) {
    for (let dx = -12; dx < 12; dx++) {
      for (let k = 0; k < perTile; k++) {
        const f = (k + 0.5) / perTile;
        const [lon, lat] = tileCorner(14, bx + dx + f, by + dy + f);
        const n = items.length;
        items.push({
          id: `h${n}`, lon, lat,
          class: n % 3 === 0 ? 'off_market' : 'active',
          access: n % 7 === 0 ? 'agent' : 'public',
          data: { price: 100000 + n, beds: 1 + (n % 4), note: 'ä ✓' },
        });
      }
    }
  }
  return items;
}

const RANK = { public: 0, registered: 1, verified: 2, agent: 3 };

/**
 * Starts the backend. `b.mode` decides answers: 'ok', a status number (answered with a
 * protocol error body), 'hang' (never answers), 'badjson', 'badshape', or
 * { status: 429, retryAfter: '1' }. `b.delayMs` delays every answer. `b.requests` logs
 * every request body; `b.waitFor(n)` resolves when n requests arrived. `b.hostile`, when
 * set to a function `(res, answer, request)`, writes the response itself from the answer
 * the backend would give (`{ tiles, items, missing }`): for truncated, oversized or
 * subtly wrong bodies. `b.bounds`, when set to a string, is sent as the data's extent
 * (`x-tilewarm-bounds`) with every answer that carries data.
 */
export async function startBackend({ perTile = 3 } = {}) {
  const items = dataset(perTile);
  const byId = new Map(items.map((it) => [it.id, it]));
  const byZoom = new Map();
  const sockets = new Set();
  const b = {
    items, byId, mode: 'ok', delayMs: 0, hostile: null, bounds: null, requests: [], aborted: 0, waiters: [],
    /** Items of a tile (any zoom) visible at `access`. */
    tileItems(tile, access) {
      const z = Number(tile.split('/')[0]);
      let index = byZoom.get(z);
      if (!index) { // items by tile at this zoom, built on first use
        index = new Map();
        for (const it of items) {
          const key = tileOf(it.lon, it.lat, z).join('/');
          if (!index.has(key)) index.set(key, []);
          index.get(key).push(it);
        }
        byZoom.set(z, index);
      }
      return (index.get(tile) ?? []).filter((it) => RANK[it.access] <= RANK[access]);
    },
    /** The protocol's answer to a request body (also for in-process fetches). */
    answer(request) {
      const access = request.access ?? 'public';
      const tiles = [], out = new Map(), missing = [];
      for (const t of request.tiles ?? []) {
        const its = b.tileItems(t, access);
        tiles.push({ tile: t, ids: its.map((it) => it.id), ttl: 300 });
        for (const it of its) out.set(it.id, it);
      }
      for (const id of request.ids ?? []) {
        const it = byId.get(id);
        if (it && RANK[it.access] <= RANK[access]) out.set(id, it); else missing.push(id);
      }
      return { tiles, items: [...out.values()], missing };
    },
    /** Deletes an item, as a server would: later answers leave it out. */
    remove(id) {
      b.items.splice(b.items.indexOf(byId.get(id)), 1);
      byId.delete(id);
      byZoom.clear();
    },
    waitFor(n) {
      if (b.requests.length >= n) return Promise.resolve();
      return new Promise((resolve) => b.waiters.push({ n, resolve }));
    },
  };
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', async () => {
      let parsed;
      try { parsed = JSON.parse(body); } catch { parsed = { raw: body }; }
      parsed.headers = req.headers;
      b.requests.push(parsed);
      for (const w of b.waiters.filter((w) => b.requests.length >= w.n)) w.resolve();
      b.waiters = b.waiters.filter((w) => b.requests.length < w.n);
      const mode = b.mode;
      res.on('close', () => { if (!res.writableFinished) b.aborted++; });
      if (b.delayMs) await new Promise((r) => setTimeout(r, b.delayMs));
      if (mode === 'hang') return;
      if (typeof mode === 'number' || (mode && typeof mode === 'object')) {
        const status = typeof mode === 'number' ? mode : mode.status;
        const headers = { 'content-type': 'application/json' };
        if (mode.retryAfter !== undefined) headers['retry-after'] = mode.retryAfter;
        res.writeHead(status, headers);
        res.end(JSON.stringify({ error: { code: status === 429 ? 'rate_limited' : 'upstream_error', message: `test backend says ${status}` } }));
        return;
      }
      if (mode === 'badjson') { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"tiles": [ oops'); return; }
      if (mode === 'badshape') { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"tiles": 3}'); return; }
      const answer = b.answer(parsed);
      if (b.hostile) { b.hostile(res, answer, parsed); return; }
      const headers = { 'content-type': 'application/json' };
      if (b.bounds !== null) headers['x-tilewarm-bounds'] = b.bounds;
      res.writeHead(200, headers);
      res.end(JSON.stringify(answer));
    });
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  b.url = `http://127.0.0.1:${server.address().port}/v1/batch`;
  b.close = () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); });
  return b;
}
