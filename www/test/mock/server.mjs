// Development stand-in for tilewarm-server (not shipped, not used by `make test`): serves a
// directory and answers POST /v1/batch with a deterministic synthetic city, so the page can
// be worked on before the real server lands.
//
//   node www/test/mock/server.mjs --listen 127.0.0.1:8090 --www target/www-dev [--origin-latency-ms 80]
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const [host, port] = (args.listen ?? '127.0.0.1:8090').split(':');
const www = args.www ?? 'target/www';
const latency = Number(args['origin-latency-ms'] ?? 80);
const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.jsonl': 'application/x-ndjson', '.wasm': 'application/wasm', '.png': 'image/png' };

function tileBounds(z, x, y) {
  const n = 2 ** z;
  const lon = (x) => (x / n) * 360 - 180;
  const lat = (y) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI;
  return { west: lon(x), east: lon(x + 1), north: lat(y), south: lat(y + 1) };
}
function rng(seed) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}
const tiers = ['public', 'registered', 'verified', 'agent'];
function itemsOf(tile) {
  const [z, x, y] = tile.split('/').map(Number);
  const b = tileBounds(z, x, y);
  const cx = (b.west + b.east) / 2 + 122.3321, cy = (b.north + b.south) / 2 - 47.6062;
  const d = Math.hypot(cx * 67, cy * 111);
  if (d > 22) return [];
  const r = rng(x * 73856093 ^ y * 19349663 ^ z);
  const n = Math.round((120 * 4 ** (14 - z)) / (1 + d / 3));
  const out = [];
  for (let i = 0; i < n; i++) {
    const id = `m${z}-${x}-${y}-${i}`;
    const active = r() < 0.3;
    out.push({ id, lon: b.west + r() * (b.east - b.west), lat: b.south + r() * (b.north - b.south),
      class: active ? 'active' : 'off_market', access: tiers[Math.floor(r() * r() * 4)],
      data: { estimate: Math.round((400 + 900 / (1 + d / 4)) * (0.6 + r()) ) * 1000, beds: 1 + Math.floor(r() * 5), sqft: 600 + Math.floor(r() * 3000) } });
  }
  return out;
}

createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/v1/batch') {
      let body = '';
      for await (const c of req) body += c;
      const q = JSON.parse(body);
      const rank = tiers.indexOf(q.access ?? 'public');
      await new Promise((r) => setTimeout(r, latency));
      const tiles = [], items = [];
      for (const t of q.tiles ?? []) {
        const all = itemsOf(t).filter((it) => tiers.indexOf(it.access) <= rank);
        tiles.push({ tile: t, ids: all.map((i) => i.id) });
        items.push(...all);
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ tiles, items, missing: q.ids ?? [] }));
      return;
    }
    let path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    if (path.endsWith('/')) path += 'index.html';
    const data = await readFile(join(www, path));
    res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' });
    res.end(data);
  } catch (e) {
    res.writeHead(e.code === 'ENOENT' ? 404 : 500, { 'content-type': 'text/plain' });
    res.end(String(e.message));
  }
}).listen(Number(port), host, () => console.log(`mock server on http://${host}:${port}/ serving ${www}`));
