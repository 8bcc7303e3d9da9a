// The browser tests' fault injector: a loopback HTTP proxy in front of tilewarm-server.
// Each test uses its own session, /s/NAME/..., so tests cannot disturb each other:
//   POST /s/NAME/v1/batch   the batch endpoint, answered per the session's mode:
//                           pass (forward, with the server's x-tilewarm-access), slow (forward after 1500 ms), 500, stall (never
//                           answers), hostile (the next of HOSTILE), auth (forward only with
//                           "Authorization: Bearer good", else 401), tier (well-formed
//                           answers whose items are all of tier "agent"), bounds=W,S,E,N
//                           (forward, declaring that extent in x-tilewarm-bounds), huge
//                           (a 9 MiB body with its content-length), huge-stream (9 MiB
//                           sent in 64 KiB chunks with no length, until the client goes),
//                           partial (the edge's partial answer: the tiles forwarded, the
//                           ids left out and listed in an `error` member, as when the
//                           edge's origin times out), partial=CODE (the same, the `error`
//                           member's code CODE: overloaded, rate_limited... as an edge
//                           shedding load answers), partial-tiles=CODE (a 200 answering
//                           nothing, every tile and id left out in an `error` member of
//                           code CODE), partial-bare (the ids left out, no
//                           `error` member), 503-date (503 with a Retry-After 3 s ahead, as
//                           an HTTP date), bad-lat (forward, the first item's lat set to
//                           95: well-formed JSON the client's checks refuse), bad-lat-once
//                           (bad-lat for one answer, then pass), ttl1 (forward, every
//                           item's ttl set to 1 s: a view at rest turns stale at once),
//                           ids-500 (a request of ids alone, a get's: 500 at once; others
//                           forwarded after 500 ms), credentials (forward; the CORS
//                           answers, the preflight's too, name the page's origin and allow
//                           credentials, so a fetch with credentials "include" may read them)
//   GET  /s/NAME/mode/MODE  sets the mode; GET /s/NAME/log: what the session saw
//                           ({ requests, aborted, auth: [header...], cookies: [header...],
//                           bodies: [...] })
// A request counts as aborted when the client closed it before an answer was sent.
// Usage: node fault-proxy.mjs UPSTREAM_BATCH_URL   (prints "listening PORT")
import http from 'node:http';

const upstream = new URL(process.argv[2]);
const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-headers': 'content-type, authorization',
  'access-control-allow-methods': 'GET, POST, OPTIONS',
  'access-control-expose-headers': 'retry-after, x-tilewarm-bounds, x-tilewarm-access',
};
const ITEM = (over) => ({ id: 'h1', lon: -122.3, lat: 47.6, class: 'active', access: 'public', data: {}, ...over });
// Answers a batch endpoint must never give; the last one is well formed but carries an item
// above the caller's tier, which must never reach the cache.
const HOSTILE = [
  'not json at all',
  '{"tiles": "14/2624/5721"}',
  '['.repeat(100000) + ']'.repeat(100000),
  JSON.stringify({ tiles: [{ tile: '99/1/1', ids: [] }], items: [], missing: [] }),
  JSON.stringify({ tiles: [], items: [ITEM({ lon: 1e308, lat: -1e308 })], missing: [] }),
  JSON.stringify({ tiles: [], items: [ITEM({ access: 'root' })], missing: [] }),
  JSON.stringify({ tiles: [], items: [ITEM({ id: 'x'.repeat(100000) })], missing: [] }),
  '{"tiles":[],"items":[],"missing":[]' + ' '.repeat(10),
];
// A well-formed answer listing, in every requested tile, one item of tier "agent" whatever
// the request's tier: a server that ignores tiers.
function aboveTier(request) {
  const centre = (t) => {
    const [z, x, y] = t.split('/').map(Number);
    const n = 2 ** z;
    const lat = (Math.atan(Math.sinh(Math.PI * (1 - (2 * (y + 0.5)) / n))) * 180) / Math.PI;
    return { lon: ((x + 0.5) / n) * 360 - 180, lat };
  };
  const tiles = request.tiles.map((t, i) => ({ tile: t, ids: [`secret-${i}`] }));
  const items = request.tiles.map((t, i) => ITEM({ id: `secret-${i}`, access: 'agent', ...centre(t) }));
  return { tiles, items, missing: [] };
}
// The edge's partial answer to `request`: its tiles answered by the server, its ids in
// neither `items` nor `missing`, listed in an `error` member of code `code` (none: no
// `error` member at all).
function partial(res, request, code) {
  const leaveOut = (answer) => ({
    ...answer,
    ...(code && {
      error: { code, message: 'injected by fault-proxy', tiles: [], ids: request.ids ?? [] },
    }),
  });
  if (!request.tiles?.length) { send(res, 200, leaveOut({ tiles: [], items: [], missing: [] })); return; }
  forward(res, JSON.stringify({ ...request, ids: [] }), {}, leaveOut);
}
// An answer with its first item's latitude out of range (none to spoil: as it is).
const ttl1 = (answer) => ({ ...answer, items: answer.items.map((it) => ({ ...it, ttl: 1 })) });
const badLat = (answer) => ({ ...answer, items: answer.items.map((it, i) => (i ? it : { ...it, lat: 95 })) });
const sessions = new Map();
const session = (name) => {
  if (!sessions.has(name)) sessions.set(name, { mode: 'pass', requests: 0, aborted: 0, hostile: 0, auth: [], cookies: [], bodies: [] });
  return sessions.get(name);
};
// The CORS headers of an answer: `res.cors` when the session set its own (credentials).
const send = (res, status, body, headers = {}) => {
  res.writeHead(status, { ...(res.cors ?? CORS), 'content-type': 'application/json', ...headers });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
};

const HUGE = 9 * 1024 * 1024;
const HUGE_START = '{"tiles":[],"items":[';
function huge(res, declared) {
  if (declared) {
    send(res, 200, HUGE_START + ' '.repeat(HUGE - HUGE_START.length), { 'content-length': String(HUGE) });
    return;
  }
  res.writeHead(200, { ...CORS, 'content-type': 'application/json' });
  res.on('error', () => {});
  let sent = 0;
  const more = () => {
    while (sent < HUGE && !res.destroyed) {
      const chunk = sent === 0 ? HUGE_START.padEnd(65536) : ' '.repeat(65536);
      sent += chunk.length;
      if (!res.write(chunk)) { res.once('drain', more); return; }
    }
    if (!res.destroyed) res.end();
  };
  more();
}

// `edit`, if given, rewrites a 200's body (parsed) before it is sent on.
function forward(res, text, headers = {}, edit = undefined) {
  const up = http.request(upstream, { method: 'POST', headers: { 'content-type': 'application/json' } }, (u) => {
    const chunks = [];
    u.on('data', (c) => chunks.push(c));
    u.on('end', () => {
      // The tier header as the server sent it (on a 403: the tier the credential gives).
      const tier = u.headers['x-tilewarm-access'];
      const own = tier === undefined ? headers : { 'x-tilewarm-access': tier, ...headers };
      let body = Buffer.concat(chunks).toString();
      if (edit && u.statusCode === 200) body = JSON.stringify(edit(JSON.parse(body)));
      if (!res.destroyed) send(res, u.statusCode, body, own);
    });
  });
  up.on('error', (e) => { if (!res.destroyed) send(res, 502, { error: { code: 'upstream', message: e.message } }); });
  up.end(text);
}

const server = http.createServer((req, res) => {
  const m = req.url.match(/^\/s\/([\w-]+)\/(.*)$/);
  const s = m && session(m[1]);
  if (s?.mode === 'credentials' && req.headers.origin) {
    res.cors = { ...CORS, 'access-control-allow-origin': req.headers.origin, 'access-control-allow-credentials': 'true', vary: 'origin' };
  }
  if (req.method === 'OPTIONS') { res.writeHead(204, res.cors ?? CORS); res.end(); return; }
  if (!m) { send(res, 404, { error: 'use /s/NAME/...' }); return; }
  const rest = m[2];
  if (rest.startsWith('mode/')) { s.mode = rest.slice(5); send(res, 200, s); return; }
  if (rest === 'log') { send(res, 200, s); return; }
  if (rest !== 'v1/batch') { send(res, 404, { error: `no ${rest}` }); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString();
    s.requests += 1;
    s.auth.push(req.headers.authorization ?? null);
    s.cookies.push(req.headers.cookie ?? null);
    try { s.bodies.push(JSON.parse(text)); } catch { s.bodies.push(text); }
    res.on('close', () => { if (!res.writableFinished) s.aborted += 1; });
    if (s.mode.startsWith('bounds=')) { forward(res, text, { 'x-tilewarm-bounds': s.mode.slice(7) }); return; }
    if (s.mode.startsWith('partial-tiles=')) {
      const { tiles = [], ids = [] } = JSON.parse(text);
      const error = { code: s.mode.slice(14), message: 'injected by fault-proxy', tiles, ids };
      send(res, 200, { tiles: [], items: [], missing: [], error });
      return;
    }
    if (s.mode.startsWith('partial=')) { partial(res, JSON.parse(text), s.mode.slice(8)); return; }
    switch (s.mode) {
      case 'pass': case 'credentials': forward(res, text); break;
      case 'slow': setTimeout(() => { if (!res.destroyed) forward(res, text); }, 1500); break;
      case '500': send(res, 500, { error: { code: 'internal', message: 'injected by fault-proxy' } }); break;
      case 'stall': break; // never answers; the client's timeout must abort it
      case 'hostile': send(res, 200, HOSTILE[s.hostile++ % HOSTILE.length]); break;
      case 'tier': send(res, 200, aboveTier(JSON.parse(text))); break;
      case 'huge': huge(res, true); break;
      case 'huge-stream': huge(res, false); break;
      case '503-date':
        send(res, 503, { error: { code: 'overloaded', message: 'injected by fault-proxy' } },
          { 'retry-after': new Date(Date.now() + 3000).toUTCString() });
        break;
      case 'partial': partial(res, JSON.parse(text), 'upstream_timeout'); break;
      case 'partial-bare': partial(res, JSON.parse(text), undefined); break;
      case 'ids-500': {
        const body = JSON.parse(text);
        if (body.ids?.length && !body.tiles?.length) send(res, 500, { error: { code: 'internal', message: 'injected by fault-proxy' } });
        else setTimeout(() => { if (!res.destroyed) forward(res, text); }, 500);
        break;
      }
      case 'bad-lat-once': s.mode = 'pass'; // fall through
      case 'bad-lat': forward(res, text, {}, badLat); break;
      case 'ttl1': forward(res, text, {}, ttl1); break;
      case 'auth':
        if (req.headers.authorization === 'Bearer good') forward(res, text);
        else send(res, 401, { error: { code: 'unauthorized', message: 'bad token' } });
        break;
      default: send(res, 500, { error: `unknown mode ${s.mode}` });
    }
  });
});
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
