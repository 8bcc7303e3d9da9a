// The edge test stack on loopback: tilewarm-server (the origin), a recording relay between
// workerd and the server (counts and records every origin request the worker makes, and can
// stall or drop them), and workerd running edge/config.capnp against the built pkg/.
//
// Env: TILEWARM_SERVER (the tilewarm-server binary), WORKERD (the workerd binary).
import { spawn } from 'node:child_process';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Waits until `url` answers 2xx (any status with `anyStatus`: a misconfigured worker
 * answers every request 500). */
async function waitForHttp(url, child, log, ms = 30_000, anyStatus = false) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (child.exitCode !== null) throw new Error(`${url}: process exited (${child.exitCode}):\n${log()}`);
    try {
      const r = await fetch(url);
      if (r.ok || anyStatus) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not come up in ${ms} ms:\n${log()}`);
}

function start(bin, args, env = {}) {
  let out = '';
  const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  child.on('error', (e) => (out += `spawn failed: ${e.message}\n`));
  return { child, log: () => out.slice(-4000) };
}

export async function startServer(extraArgs = []) {
  const bin = process.env.TILEWARM_SERVER;
  if (!bin) throw new Error('TILEWARM_SERVER must name the tilewarm-server binary (scripts/test-edge.sh sets it)');
  return onFreePorts(async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // --caller-rate 0: the edge's origin calls all carry its one service token (and the tests'
    // direct calls one loopback address), standing in for many callers, as in the Rust load tools.
    const p = start(bin, ['--listen', `127.0.0.1:${port}`, '--log-level', 'warn', '--synthetic-homes', '20000', '--caller-rate', '0', ...extraArgs]);
    try {
      await waitForHttp(`${url}/healthz`, p.child, p.log);
    } catch (e) {
      await stop(p.child);
      throw e;
    }
    return { url, batch: `${url}/v1/batch`, ...p, stop: () => stop(p.child) };
  });
}

/** `startOnce()`, again on other ports (3 tries at most) while it fails because a port
 * freePort() gave was taken by another test file's process before the bind ("Address
 * already in use"). */
async function onFreePorts(startOnce) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce();
    } catch (e) {
      if (attempt === 3 || !/Address already in use/.test(e?.message ?? '')) throw e;
    }
  }
}

/** tilewarm-server's flags for verifying HS256 tokens signed with `secret`. */
export function serverAuthArgs(secret) {
  return ['--jwt-secret', secret];
}

/** Server-sent events as the origin's change feed writes them: [{ event, id, data }]. */
export function sse(events) {
  return events.map((e) => `event: ${e.event}\nid: ${e.id}\ndata: ${e.data ?? '{}'}\n\n`).join('');
}

/**
 * The recording relay. `mode`: 'pass' (forward to `target`), 'stall' (never answer),
 * 'drop' (close the connection), 'rate_limited' / 'overloaded' (429 with Retry-After: 7,
 * 503 with Retry-After: 3, as the server answers them; `relay.retryAfter` in place of
 * those when set, null for none), 'failing' (500 internal), 'huge' (a 12 MiB answer, `relay.hugeStatus` or 200; a warming
 * request only, when `relay.hugeWarm(tiles)` is true for its tiles; a caller's request only, when
 * `relay.hugeRequest(body)` is true for the origin request's body; each sent after
 * `relay.hugeDelayMs` when set: a slow origin); with
 * `holdAnswers` (a promise) set, a passed-on answer waits for it (`held` counts them). Records { purpose, body, authorization } of each batch request (and in `polls`, each GET of the change feed, passed on)
 * and forwards the `authorization` header. With `requireToken`, it is also the origin's
 * credential check: a request without `Bearer <requireToken>` gets 401 and is not forwarded.
 */
export async function startRelay(target, { requireToken } = {}) {
  const relay = { mode: 'pass', seen: [], polls: [], target, holdAnswers: null, held: 0, retryAfter: undefined };
  const server = createHttpServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks).toString('utf8');
    const authorization = req.headers.authorization;
    if (req.method === 'GET') {
      // The change feed (GET /v1/changes): recorded in `polls` (not `seen`, which holds
      // batch requests only) and passed on.
      relay.polls.push({ lastEventId: req.headers['last-event-id'], authorization });
      if (requireToken !== undefined && authorization !== `Bearer ${requireToken}`) {
        res.writeHead(401, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ error: { code: 'unauthorized', message: 'the origin wants the edge\'s service token' } }));
      }
      // A test's own feed: `relay.changes({ lastEventId })` answers { status, body, headers }
      // (or a promise of them: a poll held) in place of the origin (undefined: passed on).
      const own = await relay.changes?.({ lastEventId: req.headers['last-event-id'] });
      if (own !== undefined) {
        res.on('error', () => {});
        res.writeHead(own.status ?? 200, { 'content-type': 'text/event-stream', ...own.headers });
        return res.end(own.body);
      }
      try {
        const headers = {};
        for (const h of ['authorization', 'last-event-id', 'accept']) if (req.headers[h] !== undefined) headers[h] = req.headers[h];
        const r = await fetch(new URL(req.url, relay.target).href, { headers });
        const text = await r.text();
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'text/plain' });
        return res.end(text);
      } catch {
        return req.socket.destroy();
      }
    }
    relay.seen.push({ purpose: req.headers['x-tilewarm-purpose'] ?? '', body: JSON.parse(body), authorization });
    if (requireToken !== undefined && authorization !== `Bearer ${requireToken}`) {
      res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer error="invalid_token"' });
      return res.end(JSON.stringify({ error: { code: 'unauthorized', message: 'the origin wants the edge\'s service token' } }));
    }
    if (relay.mode === 'stall') return; // the worker's timeout ends it
    // Warming requests only get no answer (`relay.dropWarm`): the connection is cut.
    if (relay.dropWarm && req.headers['x-tilewarm-purpose'] === 'warm') return req.socket.destroy();
    if (relay.failWarm && req.headers['x-tilewarm-purpose'] === 'warm') {
      // Warming requests only fail (`relay.failWarm`): a 503 as an origin that sheds them
      // (with `relay.warmRetryAfter` as its Retry-After), or the status given.
      const status = relay.failWarm === true ? 503 : relay.failWarm;
      const retryAfter = relay.warmRetryAfter ? { 'retry-after': relay.warmRetryAfter } : {};
      res.writeHead(status, { 'content-type': 'application/json', ...retryAfter });
      const code = status === 503 ? 'overloaded' : 'internal';
      return res.end(JSON.stringify({ error: { code, message: 'no warming now' } }));
    }
    if (relay.mode === 'rate_limited' || relay.mode === 'overloaded') {
      // As tilewarm-server answers a caller over its rate (429) or at capacity (503).
      const [status, wait] = relay.mode === 'rate_limited' ? [429, '7'] : [503, '3'];
      const retryAfter = relay.retryAfter === undefined ? wait : relay.retryAfter;
      res.writeHead(status, { 'content-type': 'application/json', ...(retryAfter === null ? {} : { 'retry-after': retryAfter }) });
      return res.end(JSON.stringify({ error: { code: relay.mode, message: `the origin says ${relay.mode}` } }));
    }
    if (relay.mode === 'failing') {
      res.writeHead(500, { 'content-type': 'application/json', 'retry-after': '5' });
      return res.end(JSON.stringify({ error: { code: 'internal', message: 'the origin broke' } }));
    }
    if (relay.mode === 'drop') return req.socket.destroy();
    const warmTiles = req.headers['x-tilewarm-purpose'] === 'warm' ? relay.seen.at(-1).body.tiles : null;
    const asked = req.headers['x-tilewarm-purpose'] === 'request' ? relay.seen.at(-1).body : null;
    if (relay.mode === 'huge' || (warmTiles && relay.hugeWarm?.(warmTiles)) || (asked && relay.hugeRequest?.(asked))) {
      // 12 MiB of JSON whitespace, chunked (no content-length): the worker must stop
      // reading at its limit rather than buffer it.
      res.on('error', () => {});
      if (relay.hugeDelayMs) await new Promise((r) => setTimeout(r, relay.hugeDelayMs));
      if (res.destroyed) return; // the worker gave up waiting
      // With `relay.hugeStatus` (and `relay.retryAfter`) in place of 200 and no Retry-After.
      const retryAfter = relay.retryAfter ? { 'retry-after': relay.retryAfter } : {};
      res.writeHead(relay.hugeStatus ?? 200, { 'content-type': 'application/json', ...retryAfter });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      let sent = 0;
      const pump = () => {
        while (sent < 12 * 1024 * 1024 && !res.destroyed) {
          sent += chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
        if (!res.destroyed) res.end();
      };
      pump();
      return;
    }
    try {
      const headers = { 'content-type': 'application/json' };
      if (authorization !== undefined) headers.authorization = authorization;
      const r = await fetch(relay.target, { method: 'POST', headers, body });
      const text = await r.text();
      if (relay.holdAnswers) {
        // The origin's answer is in hand (`held` counts them) but reaches the worker only
        // once the promise settles: an answer made before a change, arriving after it.
        relay.held++;
        await relay.holdAnswers;
      }
      const out = { 'content-type': r.headers.get('content-type') ?? 'application/json' };
      if (r.headers.get('x-tilewarm-bounds') !== null) out['x-tilewarm-bounds'] = r.headers.get('x-tilewarm-bounds');
      res.writeHead(r.status, out);
      res.end(text);
    } catch {
      // The origin is down: the worker sees the connection fail, as it would without us.
      req.socket.destroy();
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  relay.url = `http://127.0.0.1:${server.address().port}/v1/batch`;
  relay.requests = (purpose = 'request') => relay.seen.filter((s) => s.purpose === purpose);
  relay.close = () => {
    server.closeAllConnections?.();
    return new Promise((ok) => server.close(() => ok()));
  };
  return relay;
}

/**
 * workerd running the edge worker; `env` adds bindings (ORIGIN_TOKEN, JWT_SECRET, JWKS,
 * JWKS_URL). `options` are TILEWARM_OPTIONS over `statsPublic: true` (tests read
 * `/edge/stats` as its operator would; auth.test.mjs checks the default, closed). Its Cache API goes to its own in-memory cache (edge/cache-service.js, on a free
 * port: `cacheAddr`), or to `sharedCache` (another instance's `cacheAddr`), so that two
 * processes share one cache as the isolates of a data centre do. `misconfigured`: the
 * worker is expected to refuse its configuration, so any answer of /healthz means it is up.
 */
export async function startWorkerd(origin, options = {}, env = {}, { sharedCache, misconfigured = false } = {}) {
  return onFreePorts(() => startWorkerdOnce(origin, options, env, sharedCache, misconfigured));
}

async function startWorkerdOnce(origin, options, env, sharedCache, misconfigured) {
  const bin = process.env.WORKERD;
  if (!bin) throw new Error('WORKERD must name the workerd binary (scripts/test-edge.sh sets it)');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const ownCache = `127.0.0.1:${await freePort()}`;
  const cacheAddr = sharedCache ?? ownCache;
  const p = start(bin, [
    'serve', resolve(root, 'edge/config.capnp'),
    '--socket-addr', `http=127.0.0.1:${port}`,
    '--socket-addr', `cache=${ownCache}`,
    '--external-addr', `cache=${cacheAddr}`,
  ], {
    TILEWARM_ORIGIN: origin,
    TILEWARM_OPTIONS: JSON.stringify({ statsPublic: true, ...options }),
    ...env,
  });
  try {
    await waitForHttp(`${url}/healthz`, p.child, p.log, 30_000, misconfigured);
  } catch (e) {
    // A workerd left running keeps the test process alive after the suite.
    await stop(p.child);
    throw e;
  }
  const stats = async () => (await fetch(`${url}/edge/stats`)).json();
  return { url, batch: `${url}/v1/batch`, cacheAddr, stats, ...p, stop: () => stop(p.child) };
}

function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((ok) => {
    child.once('exit', () => ok());
    child.kill('SIGTERM');
  });
}

/** POSTs a batch request; { status, cache, originError, access, wwwAuthenticate, json }. */
export async function post(url, body, headers = { 'content-type': 'application/json' }) {
  const r = await fetch(url, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return {
    status: r.status,
    cache: r.headers.get('x-tilewarm-cache'),
    originError: r.headers.get('x-tilewarm-origin-error'),
    access: r.headers.get('x-tilewarm-access'),
    bounds: r.headers.get('x-tilewarm-bounds'),
    wwwAuthenticate: r.headers.get('www-authenticate'),
    retryAfter: r.headers.get('retry-after'),
    exposed: r.headers.get('access-control-expose-headers'),
    text,
    json,
  };
}

/** A response reduced to what must match: per tile its sorted ids, the sorted items, missing. */
export function shape(resp) {
  const tiles = resp.tiles.map((t) => [t.tile, [...t.ids].sort()]).sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const items = resp.items.map((i) => `${i.id}|${i.access}|${i.class}|${JSON.stringify(i.data)}`).sort();
  return { tiles, items, missing: [...resp.missing].sort() };
}

/**
 * Declares a `size`-byte body and sends none of it: a server that refuses a body by its
 * content-length answers before reading it. Resolves with { status, json }.
 */
export async function postLarge(url, size, { chunked = false } = {}) {
  // The worker answers a body over its limit and closes the connection while Node may
  // still be writing the rest of it: that write can fail (EPIPE, ECONNRESET) before the
  // answer is read, a race of the transport, not the worker's answer. A chunked body is
  // written a chunk at a time, with a pause between chunks for the answer to come first,
  // and a try that still loses it is made again (at most five); any answer, or any other
  // error, is the result.
  for (let left = 5; ; left--) {
    try {
      return await postLargeOnce(url, size, chunked);
    } catch (e) {
      if (left <= 1 || !['EPIPE', 'ECONNRESET'].includes(e.code)) throw e;
    }
  }
}

function postLargeOnce(url, size, chunked) {
  return new Promise((ok, fail) => {
    const headers = { 'content-type': 'application/json' };
    // Without a content-length Node sends the body chunked: the worker cannot refuse it
    // from the headers and must stop reading it at the limit.
    if (!chunked) headers['content-length'] = size;
    let answered = false;
    const req = httpRequest(url, { method: 'POST', headers }, async (res) => {
      answered = true;
      let text = '';
      for await (const c of res) text += c;
      req.destroy();
      ok({ status: res.statusCode, json: JSON.parse(text) });
    });
    req.on('error', (e) => { if (!answered) fail(e); });
    if (!chunked) {
      req.flushHeaders();
      return;
    }
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let sent = 0;
    const pump = () => {
      if (answered) return;
      if (sent >= size) {
        req.end();
        return;
      }
      sent += chunk.length;
      if (req.write(chunk)) setTimeout(pump, 10);
      else req.once('drain', () => setTimeout(pump, 10));
    };
    pump();
  });
}
