// tilewarm/edge: the caching batch proxy as a Cloudflare Workers / workerd module worker.
// Glue only: the caching logic is the Rust core's `Proxy` (src/proxy.rs), compiled into its
// own wasm (tilewarm_edge_bg.wasm, from src/edge.rs) so the browser package's wasm does not
// carry it. The .wasm is imported as a WebAssembly.Module (wrangler's default rule for
// *.wasm, or a workerd config listing it as a wasm module): workerd forbids compiling wasm
// from bytes at run time.
//
//   import { createWorker } from 'tilewarm/edge';
//   export default createWorker();            // env.ORIGIN: the origin's batch URL
//
// Bindings: ORIGIN (required; the origin's POST /v1/batch URL, never taken from a request),
// ORIGIN_TOKEN (the edge's own bearer token for the origin), JWT_SECRET | JWKS | JWKS_URL (the
// keys callers' tokens are verified with, js/edge-auth.js), TILEWARM_OPTIONS (optional JSON,
// see edge.d.ts). Routes: POST /v1/batch (the protocol), GET /healthz, GET /edge/stats (this
// isolate's counters).
//
// Tiers: the caller's tier is what its verified token says (`public` without one); the body's
// `access` may only lower it (asking for more is a 403 from the core). The core keys its
// caches by that effective tier and forwards it as the origin request's `access`, sent with
// the edge's own ORIGIN_TOKEN, never with the caller's token or claim.
import wasm from './tilewarm_edge_bg.wasm';
import { initSync, EdgeProxy } from './tilewarm_edge.js';
import { createAuth, Unauthorized, KeysUnavailable } from './edge-auth.js';

export { EdgeProxy };

const JSON_TYPE = 'application/json';
const DEFAULTS = { originTimeoutMs: 3000, warmTimeoutMs: 5000 };

let initialised = false;

function cors(headers) {
  headers.set('access-control-allow-origin', '*');
  headers.set('access-control-expose-headers', 'x-tilewarm-cache, x-tilewarm-origin-error, x-tilewarm-access, www-authenticate');
  return headers;
}

function json(status, body, extra = {}) {
  const headers = cors(new Headers({ 'content-type': JSON_TYPE, ...extra }));
  return new Response(body, { status, headers });
}

function error(status, code, message, extra = {}) {
  return json(status, JSON.stringify({ error: { code, message } }), extra);
}

function isJson(ct) {
  const mime = ct.split(';')[0].trim().toLowerCase();
  return mime === JSON_TYPE || mime === 'text/plain' || (mime.startsWith('application/') && mime.endsWith('+json'));
}

/** Copies a wasm `Step` into a plain object and frees it. */
function take(step) {
  const s = {
    handle: step.handle,
    status: step.status,
    body: step.body,
    origin: step.origin,
    cache: step.cache,
    warm: step.warm,
    originError: step.originError,
    access: step.access,
  };
  step.free();
  return s;
}

function respond(s) {
  const extra = {};
  if (s.cache) extra['x-tilewarm-cache'] = s.cache;
  if (s.originError) extra['x-tilewarm-origin-error'] = s.originError;
  if (s.access) extra['x-tilewarm-access'] = s.access;
  return json(s.status, s.body, extra);
}

/** A request to the origin, with the edge's own credential (ORIGIN_TOKEN) when set. */
function originRequest(url, token, body, timeoutMs, purpose) {
  const headers = { 'content-type': JSON_TYPE, accept: JSON_TYPE, 'x-tilewarm-purpose': purpose };
  if (token) headers.authorization = `Bearer ${token}`;
  return fetch(url, {
    method: 'POST',
    headers,
    body,
    signal: AbortSignal.timeout(timeoutMs),
  });
}

class TooLarge extends Error {}

/**
 * Reads a request's or response's body, at most `max` bytes: a declared `content-length`
 * over it is refused before reading, and a chunked body is read as a stream and cancelled
 * once it passes `max`, so no body larger than the limit is ever held in the isolate's
 * memory (128 MB). Throws `TooLarge` naming `what`.
 */
async function readBody(r, max, what) {
  const declared = Number(r.headers.get('content-length'));
  if (declared > max) throw new TooLarge(`${what} is ${declared} bytes, at most ${max} are allowed`);
  if (!r.body) return new Uint8Array(0);
  const reader = r.body.getReader();
  const chunks = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > max) {
      await reader.cancel().catch(() => {});
      throw new TooLarge(`${what} is more than ${max} bytes, at most ${max} are allowed`);
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/**
 * A module worker with its own proxy (one per isolate). `defaults` are options that
 * TILEWARM_OPTIONS overrides.
 */
export function createWorker(defaults = {}) {
  let proxy = null;
  let options = null;
  let auth = null;

  function setup(env) {
    if (proxy) return null;
    try {
      if (!initialised) {
        initSync({ module: wasm });
        initialised = true;
      }
      const fromEnv = env.TILEWARM_OPTIONS ? JSON.parse(env.TILEWARM_OPTIONS) : {};
      options = { ...DEFAULTS, ...defaults, ...fromEnv };
      auth = createAuth(env, options);
      proxy = new EdgeProxy(JSON.stringify(options));
      return null;
    } catch (e) {
      proxy = null;
      auth = null;
      return error(500, 'internal', `the edge worker is misconfigured: ${e?.message ?? e}`);
    }
  }

  async function warm(origin, token, body) {
    try {
      const res = await originRequest(origin, token, body, options.warmTimeoutMs, 'warm');
      const bytes = await readBody(res, proxy.maxBodyBytes, "the origin's answer");
      proxy.warmed(body, res.status, bytes, Date.now());
    } catch {
      // Warming is best effort: a failure leaves the cache as it was.
    }
  }

  async function batch(request, env, ctx) {
    const origin = env.ORIGIN;
    if (typeof origin !== 'string' || !/^https?:\/\//.test(origin)) {
      return error(500, 'internal', 'the edge worker is misconfigured: ORIGIN must be the http(s) URL of the origin\'s batch endpoint');
    }
    const ct = request.headers.get('content-type');
    if (ct !== null && !isJson(ct)) {
      return error(415, 'unsupported_media_type',
        `content-type ${JSON.stringify(ct.slice(0, 64))} is not accepted: send application/json (or text/plain)`);
    }
    let tier;
    try {
      tier = await auth.tier(request);
    } catch (e) {
      if (e instanceof Unauthorized) {
        return error(401, 'unauthorized', e.message, { 'www-authenticate': 'Bearer error="invalid_token"' });
      }
      if (e instanceof KeysUnavailable) return error(502, 'upstream_error', e.message);
      return error(500, 'internal', 'the caller\'s token could not be checked');
    }
    const max = proxy.maxBodyBytes;
    let body;
    try {
      body = await readBody(request, max, 'body');
    } catch (e) {
      if (e instanceof TooLarge) return error(413, 'payload_too_large', e.message);
      return error(400, 'bad_request', `the request body could not be read: ${e?.message ?? e}`);
    }
    const step = take(proxy.begin(body, tier, Date.now()));
    if (!step.origin) return respond(step);

    let done;
    try {
      const res = await originRequest(origin, env.ORIGIN_TOKEN, step.origin, options.originTimeoutMs, 'request');
      const bytes = await readBody(res, max, "the origin's answer");
      done = take(proxy.complete(step.handle, res.status, bytes, Date.now()));
    } catch (e) {
      const timeout = e?.name === 'TimeoutError' || e?.name === 'AbortError';
      done = take(proxy.fail(step.handle, timeout, String(e?.message ?? e), Date.now()));
    } finally {
      proxy.abandon(step.handle);
    }
    if (done.warm) ctx.waitUntil(warm(origin, env.ORIGIN_TOKEN, done.warm));
    return respond(done);
  }

  return {
    async fetch(request, env, ctx) {
      const failed = setup(env);
      if (failed) return failed;
      const { pathname } = new URL(request.url);
      if (pathname === '/v1/batch') {
        if (request.method === 'POST') return batch(request, env, ctx);
        if (request.method === 'OPTIONS') {
          const headers = cors(new Headers({
            'access-control-allow-methods': 'POST, OPTIONS',
            'access-control-allow-headers': 'content-type, authorization',
            'access-control-max-age': '600',
          }));
          return new Response(null, { status: 204, headers });
        }
        return error(405, 'method_not_allowed', '/v1/batch accepts POST (and OPTIONS for CORS preflight)');
      }
      if (pathname === '/healthz' && request.method === 'GET') return new Response('ok\n');
      if (pathname === '/edge/stats' && request.method === 'GET') return json(200, proxy.stats());
      return error(404, 'not_found', 'no such route: the API is POST /v1/batch, GET /healthz, GET /edge/stats');
    },
  };
}

export default createWorker();
