// A local stand-in for a data centre's HTTP cache: the service workerd sends a worker's
// Cache API calls to (`cacheApiOutbound` in edge/config.capnp). Plain workerd has no cache of
// its own (miniflare, which has one, embeds its own runtime); this keeps the local runtime
// and the tests on the same workerd as production code, with the Cache API's semantics:
//
// - `cache.put(key, response)` arrives as `PUT <key URL>` whose body is the serialised
//   HTTP response (status line, headers, body). It is kept until its `Cache-Control`
//   `s-maxage`/`max-age` runs out; a response with `private`, `no-store`, `no-cache` or a
//   `Set-Cookie` is not kept (as Cloudflare's cache does not), nor one without a max-age
//   (Cloudflare's would keep that for its default edge TTL by status, runtime-apis/cache,
//   "Headers"; the worker always sends a max-age, so the difference is never met).
// - `cache.match(key)` arrives as `GET <key URL>` and is answered with the kept response and
//   `cf-cache-status: HIT`, or `cf-cache-status: MISS`.
// - `cache.delete(key)` arrives as `PURGE <key URL>`: 200 when something was deleted, 404
//   when not.
//
// Memory: at most MAX_BYTES of bodies, least recently used dropped first. One instance of
// this worker serves every edge worker configured to use it (several workerd processes can
// share one with `--external-addr cache=HOST:PORT`), as one data centre's cache serves all
// of its isolates.
const MAX_BYTES = 64 * 1024 * 1024;

/** key → { status, headers: [[name, value]], body: Uint8Array, expires: ms } */
const entries = new Map();
let bytes = 0;
const stats = { puts: 0, kept: 0, hits: 0, misses: 0, purges: 0 };

const decoder = new TextDecoder();

function indexOf(buf, seq, from = 0) {
  outer: for (let i = from; i <= buf.length - seq.length; i++) {
    for (let j = 0; j < seq.length; j++) if (buf[i + j] !== seq[j]) continue outer;
    return i;
  }
  return -1;
}

const CRLF = [13, 10];
const CRLFCRLF = [13, 10, 13, 10];

/** Decodes a chunked body. */
function unchunk(buf) {
  const parts = [];
  let at = 0;
  for (;;) {
    const eol = indexOf(buf, CRLF, at);
    if (eol < 0) throw new Error('truncated chunk size');
    const size = parseInt(decoder.decode(buf.subarray(at, eol)).split(';')[0], 16);
    if (!Number.isFinite(size)) throw new Error('bad chunk size');
    if (size === 0) break;
    parts.push(buf.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Parses a serialised HTTP/1.1 response. */
function parseResponse(buf) {
  const end = indexOf(buf, CRLFCRLF);
  if (end < 0) throw new Error('no end of headers');
  const [statusLine, ...lines] = decoder.decode(buf.subarray(0, end)).split('\r\n');
  const status = Number(statusLine.split(' ')[1]);
  const headers = lines.map((l) => {
    const i = l.indexOf(':');
    return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
  });
  let body = buf.subarray(end + 4);
  if (headers.some(([k, v]) => k === 'transfer-encoding' && v.toLowerCase().includes('chunked'))) {
    body = unchunk(body);
  }
  return {
    status,
    headers: headers.filter(([k]) => k !== 'transfer-encoding' && k !== 'content-length'),
    body: body.slice(),
  };
}

/** How long a response may be kept, in seconds, or 0 when it may not be kept. */
function freshFor(headers) {
  if (headers.some(([k]) => k === 'set-cookie')) return 0;
  const cc = headers.filter(([k]) => k === 'cache-control').map(([, v]) => v.toLowerCase()).join(',');
  const directives = cc.split(',').map((d) => d.trim());
  if (directives.some((d) => d === 'private' || d === 'no-store' || d === 'no-cache')) return 0;
  const age = (name) => {
    const d = directives.find((x) => x.startsWith(`${name}=`));
    return d === undefined ? undefined : Number(d.slice(name.length + 1));
  };
  const s = age('s-maxage') ?? age('max-age');
  return Number.isFinite(s) && s > 0 ? s : 0;
}

function drop(key) {
  const e = entries.get(key);
  if (!e) return false;
  bytes -= e.body.length;
  entries.delete(key);
  return true;
}

export default {
  async fetch(request) {
    const key = request.url;
    const now = Date.now();
    if (request.method === 'PUT') {
      stats.puts++;
      let r;
      try {
        r = parseResponse(new Uint8Array(await request.arrayBuffer()));
      } catch {
        return new Response(null, { status: 413 });
      }
      const ttl = freshFor(r.headers);
      drop(key);
      if (ttl > 0 && r.status === 200 && r.body.length <= MAX_BYTES) {
        entries.set(key, { ...r, expires: now + ttl * 1000 });
        bytes += r.body.length;
        stats.kept++;
        for (const k of entries.keys()) {
          if (bytes <= MAX_BYTES) break;
          drop(k);
        }
      }
      return new Response(null, { status: 204 });
    }
    if (request.method === 'GET') {
      const e = entries.get(key);
      if (!e || e.expires <= now) {
        if (e) drop(key);
        stats.misses++;
        return new Response(null, { status: 504, headers: { 'cf-cache-status': 'MISS' } });
      }
      // Least recently used first: a hit moves the entry to the end.
      entries.delete(key);
      entries.set(key, e);
      stats.hits++;
      const headers = new Headers(e.headers);
      headers.set('cf-cache-status', 'HIT');
      return new Response(e.body, { status: e.status, headers });
    }
    if (request.method === 'PURGE') {
      stats.purges++;
      return new Response(null, { status: drop(key) ? 200 : 404 });
    }
    if (request.method === 'POST' && new URL(key).pathname === '/__stats') {
      return Response.json({ ...stats, entries: entries.size, bytes });
    }
    return new Response(null, { status: 405 });
  },
};
