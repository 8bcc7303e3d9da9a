// Seeded hostile-origin runs of the edge worker's JavaScript (js/edge.js, js/edge-body.js,
// js/edge-auth.js) under Node, from its source (support/src-worker.mjs: the core's wasm from
// pkg/), with `fetch` and `caches.default` replaced: an origin that answers slowly, in part,
// too large (declared or chunked), malformed, with the wrong content-type, above the tier it
// was asked for, with 4xx/5xx and Retry-After, or never; a change feed answering events
// out of order, garbage, refusals or cut short; a shared cache that fails, is slow
// or never answers; callers of every tier (a token's, lowered or not by the body's
// `access`) sending identical requests at once, to several isolates sharing the cache. Each answer must be one docs/edge.md lists,
// JSON, and never hold an item above the caller's tier; nothing may reject unhandled.
// Each run's seed is in its name, so a failure reproduces (the delays are real, and short).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SECRET, hsToken } from './support/tokens.mjs';
import { mulberry32 } from '../../js/test/support/mulberry32.mjs';

const RANK = { public: 0, registered: 1, verified: 2, agent: 3 };
const TIERS = Object.keys(RANK);

function rng(seed) {
  const next = mulberry32(seed);
  const int = (n) => Math.floor(next() * n);
  return { next, int, pick: (xs) => xs[int(xs.length)], chance: (p) => next() < p };
}

/** The centre of tile z/x/y, in degrees. */
function centre(tile) {
  const [z, x, y] = tile.split('/').map(Number);
  const n = 2 ** z;
  const lon = ((x + 0.5) / n) * 360 - 180;
  const lat = (Math.atan(Math.sinh(Math.PI * (1 - (2 * (y + 0.5)) / n))) * 180) / Math.PI;
  return [lon, lat];
}

const sleep = (ms, signal) => new Promise((ok, no) => {
  const t = setTimeout(ok, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); no(signal.reason); }, { once: true });
});

const TIMEOUT_MS = 80, SHARED_MS = 15;
const ORIGIN_KINDS = ['ok', 'ok', 'above', 'above', 'aboveDeclared', 'slow', 'never', 'partial', 'declaredLarge', 'chunkedLarge',
  'malformed', 'html', 'htmlJson', 'inconsistent', 429, 503, 500, 400, 401, 403, 204];
const SHARED_KINDS = ['ok', 'ok', 'ok', 'throws', 'slow', 'never'];
const MIB = new Uint8Array(1 << 20).fill(32);

/** A hostile origin's answer to batch request `req` (its JSON body), as `kind`. */
async function originAnswer(r, kind, req, signal) {
  const asked = req.access ?? 'public';
  const tiles = req.tiles ?? [], ids = req.ids ?? [];
  // Items of every tier: those above the tier asked for are the origin's fault.
  const items = [], lists = [];
  // `above`: items above the tier asked, in an answer that says it is for that tier;
  // `aboveDeclared`: one that says it is for `agent`.
  const up = kind === 'above' || kind === 'aboveDeclared';
  for (const tile of tiles) {
    const [lon, lat] = centre(tile);
    const list = [];
    for (let k = 0; k < 1 + r.int(3); k++) {
      const access = up ? r.pick(TIERS) : TIERS[r.int(RANK[asked] + 1)];
      const id = `${tile.replaceAll('/', '-')}-${k}-${access}`;
      items.push({ id, lon, lat, class: 'active', access, data: { tier: access } });
      list.push(id);
    }
    lists.push({ tile, ids: list, ttl: 60 });
  }
  for (const id of ids) {
    const access = up ? r.pick(TIERS) : TIERS[r.int(RANK[asked] + 1)];
    if (!items.some((i) => i.id === id)) items.push({ id, lon: 0, lat: 0, class: 'active', access, data: null });
  }
  const body = { access: kind === 'aboveDeclared' ? 'agent' : asked, tiles: lists, items, missing: [] };
  const jsonHeaders = { 'content-type': 'application/json' };
  const text = JSON.stringify(body);
  switch (kind) {
    case 'ok': case 'above': case 'aboveDeclared': return new Response(text, { headers: jsonHeaders });
    case 'slow': await sleep(r.int(3 * TIMEOUT_MS), signal); return new Response(text, { headers: jsonHeaders });
    case 'never': await sleep(1e9, signal); break;
    case 'partial': {
      const bytes = new TextEncoder().encode(text);
      return new Response(new ReadableStream({
        start(c) { c.enqueue(bytes.slice(0, bytes.length >> 1)); },
        pull(c) { c.error(new TypeError('terminated: other side closed')); },
      }), { headers: jsonHeaders });
    }
    case 'declaredLarge':
      return new Response(text, { headers: { ...jsonHeaders, 'content-length': String(9 << 20) } });
    case 'chunkedLarge': {
      let n = 0;
      return new Response(new ReadableStream({
        pull(c) { if (n++ < 10) c.enqueue(MIB); else c.close(); },
      }), { headers: jsonHeaders });
    }
    case 'malformed': return new Response(text.slice(0, text.length - 1 - r.int(10)), { headers: jsonHeaders });
    case 'html': return new Response('<html><body>502 Bad Gateway</body></html>', { status: 200, headers: { 'content-type': 'text/html' } });
    case 'htmlJson': return new Response(text, { headers: { 'content-type': 'text/html' } });
    case 'inconsistent': {
      // A tile list naming an id the answer does not hold, above the tier asked.
      body.tiles[0]?.ids.push('ghost-agent');
      return new Response(JSON.stringify(body), { headers: jsonHeaders });
    }
    case 204: return new Response(null, { status: 204 });
    default: {
      const ra = r.pick([undefined, '1', '0', '-3', 'soon', '999999999', new Date(Date.now() + 5000).toUTCString()]);
      return new Response(JSON.stringify({ error: { code: 'x', message: `origin says ${kind}` } }),
        { status: kind, headers: { ...jsonHeaders, ...(ra === undefined ? {} : { 'retry-after': ra }) } });
    }
  }
  throw new Error('unreachable');
}

/** A hostile change feed's answer to a poll: events (ids backwards or repeated, unknown
 * kinds, bad data), garbage, a refusal, a slow answer or one cut short. */
async function feedAnswer(r, signal) {
  const sse = { 'content-type': 'text/event-stream' };
  const kind = r.pick(['events', 'events', 'garbage', 'slow', 'partial', 500, 429, 401]);
  const ev = () => {
    const id = `${r.int(5)}-${r.int(3)}`;
    const tile = r.pick(BLOCK);
    return r.pick([
      `event: ready\nid: ${id}\ndata: {}\n\n`,
      `event: invalidate\nid: ${id}\ndata: {"tiles":["${tile}"]}\n\n`,
      `event: invalidate\nid: ${id}\ndata: {"tiles":[${r.int(9)}]\n\n`,
      `event: reset\nid: ${id}\ndata: {"reason":"gap","from":"${r.int(9)}-0"}\n\n`,
      `event: expired\ndata: {}\n\n`, `event: what\nid: ${id}\ndata: x\n\n`, `: comment\r\n\r\n`,
    ]);
  };
  switch (kind) {
    case 'events': return new Response(Array.from({ length: r.int(6) }, ev).join(''), { headers: sse });
    case 'garbage': return new Response('<html>\0\r\r\n' + 'x'.repeat(r.int(100)), { headers: { 'content-type': 'text/html' } });
    case 'slow': await sleep(r.int(2 * TIMEOUT_MS), signal); return new Response(ev(), { headers: sse });
    case 'partial': return new Response(new ReadableStream({
      start(c) { c.enqueue(new TextEncoder().encode(ev().slice(0, 10))); },
      pull(c) { c.error(new TypeError('terminated')); },
    }), { headers: sse });
    default: return new Response('{"error":{"code":"x","message":"no"}}', { status: kind, headers: { 'retry-after': r.pick(['1', 'x', '99999']) } });
  }
}

/** A caches.default stand-in: a Map, each call ok, throwing, slow or never answering. */
function hostileCache(r) {
  const store = new Map();
  const act = async () => {
    const kind = r.pick(SHARED_KINDS);
    if (kind === 'throws') throw new Error('cache unavailable');
    if (kind === 'slow') await sleep(r.int(3 * SHARED_MS));
    if (kind === 'never') await new Promise(() => {});
  };
  const cache = {
    store,
    hits: 0,
    async match(key) {
      await act();
      const e = store.get(String(key));
      if (e) cache.hits++;
      return e ? new Response(e.body, { headers: e.headers }) : undefined;
    },
    async put(key, res) {
      await act();
      store.set(String(key), { body: new Uint8Array(await res.arrayBuffer()), headers: [...res.headers] });
    },
    async delete(key) { await act(); return store.delete(String(key)); },
  };
  return cache;
}

const realFetch = globalThis.fetch;
const hadCaches = 'caches' in globalThis;
const realCaches = globalThis.caches;
let unhandled = [];
const onUnhandled = (e) => unhandled.push(e);
let createWorker, tokens;

before(async () => {
  ({ createWorker } = await import('./support/src-worker.mjs'));
  tokens = Object.fromEntries(await Promise.all(TIERS.map(async (t) => [t, await hsToken({ tilewarm_access: t }, { exp: 3600 })])));
  process.on('unhandledRejection', onUnhandled);
});

after(() => {
  globalThis.fetch = realFetch;
  if (hadCaches) globalThis.caches = realCaches; else delete globalThis.caches;
  process.off('unhandledRejection', onUnhandled);
});

const BLOCK = [];
for (let dx = 0; dx < 4; dx++) for (let dy = 0; dy < 4; dy++) BLOCK.push(`14/${2624 + dx * 4}/${5721 + dy * 4}`);

/** A worker's env: its origin is the `fetch` stand-in, tokens are checked, and it neither
 * polls the change feed nor warms; `options` adds to its TILEWARM_OPTIONS. */
function quietEnv(options = {}) {
  return {
    ORIGIN: 'http://127.0.0.1:9/v1/batch', JWT_SECRET: SECRET,
    TILEWARM_OPTIONS: JSON.stringify({ ...options, changesPollMs: 0, warmRing: 0 }),
  };
}

/** One request for tile 14/2624/5721 at `verified`, with a token of that tier, to
 * `worker`: its response, and the promises the worker handed to waitUntil. */
async function askVerified(worker, env) {
  const waits = [];
  const res = await worker.fetch(new Request('http://edge.test/v1/batch', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${tokens.verified}` },
    body: JSON.stringify({ tiles: ['14/2624/5721'], access: 'verified' }),
  }), env, { waitUntil: (p) => waits.push(p) });
  return { res, waits };
}

describe('edge worker (js/edge.js) against a hostile origin and shared cache', () => {
  for (let seed = 1; seed <= 12; seed++) {
    it(`seed ${seed}: every answer is a documented one and holds nothing above the caller's tier`, async () => {
      const r = rng(seed);
      const cache = hostileCache(r);
      globalThis.caches = { default: cache };
      const originCalls = [];
      globalThis.fetch = async (url, init = {}) => {
        const u = String(url);
        if (u.includes('/v1/changes')) return feedAnswer(r, init.signal);
        const req = JSON.parse(init.body);
        const kind = r.pick(ORIGIN_KINDS);
        originCalls.push({ kind, access: req.access });
        return originAnswer(r, kind, req, init.signal);
      };
      // Several isolates of one data centre: one shared cache, caches of their own.
      const workers = Array.from({ length: 4 }, () => createWorker());
      const env = {
        ORIGIN: 'http://127.0.0.1:9/v1/batch',
        JWT_SECRET: SECRET,
        TILEWARM_OPTIONS: JSON.stringify({
          originTimeoutMs: TIMEOUT_MS, warmTimeoutMs: TIMEOUT_MS, sharedCacheTimeoutMs: SHARED_MS,
          changesPollMs: r.pick([0, 50]), warmRing: r.pick([0, 1]),
        }),
      };
      const waits = [];
      const ctx = { waitUntil: (p) => waits.push(p) };
      const seen = [];
      for (let round = 0; round < 30; round++) {
        const tier = r.pick(TIERS);
        const withToken = tier !== 'public' || r.chance(0.5);
        // Mostly at or below the token's tier; now and then above it (a 403).
        const lower = r.chance(0.1) ? undefined : r.chance(0.85) ? TIERS[r.int(RANK[tier] + 1)] : r.pick(TIERS);
        const body = {};
        body.tiles = [...new Set(Array.from({ length: 1 + r.int(4) }, () => r.pick(BLOCK)))];
        if (r.chance(0.2)) body.ids = [`${body.tiles[0].replaceAll('/', '-')}-0-${r.pick(TIERS)}`];
        if (lower) body.access = lower;
        const text = JSON.stringify(body);
        const headers = { 'content-type': r.pick(['application/json', 'text/plain', 'application/json; charset=utf-8']) };
        if (withToken) headers.authorization = `Bearer ${tokens[tier]}`;
        // Identical requests at once.
        const n = 1 + r.int(4);
        const answers = await Promise.all(Array.from({ length: n }, () => r.pick(workers).fetch(
          new Request('http://edge.test/v1/batch', { method: 'POST', headers, body: text }), env, ctx)));
        // A body without `access` asks for `public` (the protocol's default); one above the
        // token's tier is refused.
        const effective = lower ?? 'public';
        for (const res of answers) {
          const what = `seed ${seed} round ${round}: ${tier} asking ${lower ?? '-'} for ${text}: HTTP ${res.status}; origin calls ${originCalls.slice(-6).map((c) => c.kind)}`;
          const got = await res.text();
          let json;
          assert.doesNotThrow(() => { json = JSON.parse(got); }, `${what}: not JSON: ${got.slice(0, 200)}`);
          seen.push(res.status);
          if (lower !== undefined && RANK[lower] > RANK[tier]) {
            assert.equal(res.status, 403, what);
            continue;
          }
          assert.ok([200, 400, 413, 429, 502, 503, 504].includes(res.status), `${what}: ${got.slice(0, 300)}`);
          if (res.status !== 200) {
            assert.equal(typeof json.error?.code, 'string', what);
            if (res.status === 503 || res.status === 429) {
              const ra = Number(res.headers.get('retry-after'));
              assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 3600, `${what}: Retry-After ${res.headers.get('retry-after')}`);
            }
            continue;
          }
          assert.equal(json.access, effective, what);
          const access = res.headers.get('x-tilewarm-access');
          if (access !== null) assert.equal(access, effective, what);
          for (const item of json.items ?? []) {
            assert.ok(RANK[item.access] <= RANK[effective], `${what}: item ${item.id} of ${item.access} answered`);
            assert.ok(!item.id.includes('ghost'), what);
          }
          // Every id a tile list names is among the items (nothing hidden was only listed).
          const ids = new Set((json.items ?? []).map((i) => i.id));
          for (const list of json.tiles ?? []) for (const id of list.ids ?? []) assert.ok(ids.has(id), `${what}: ${id} listed, not sent`);
        }
      }
      // What the worker left running (warming, shared-cache writes, polls) settles, none
      // rejected: each is bounded by a timeout of under 0.3 s here (10 s: a guard, not a bound).
      const guard = new AbortController();
      const settled = await Promise.race([
        Promise.allSettled(waits), sleep(10_000, guard.signal).then(() => 'pending', () => 'pending'),
      ]);
      guard.abort();
      assert.notEqual(settled, 'pending', `seed ${seed}: a waitUntil promise never settled`);
      const rejected = settled.filter((s) => s.status === 'rejected');
      assert.deepEqual(rejected.map((s) => String(s.reason)), [], `seed ${seed}`);
      // Nothing in the shared cache above the tier of its key.
      for (const [key, e] of cache.store) {
        const tier = new URL(key).searchParams.get('access');
        const text = new TextDecoder().decode(e.body);
        for (const t of TIERS) if (RANK[t] > RANK[tier]) assert.ok(!text.includes(`"access":"${t}"`), `shared ${key} holds ${t}: ${text.slice(0, 200)}`);
      }
      assert.deepEqual(unhandled.map(String), [], `seed ${seed}: unhandled rejections`);
      assert.ok(seen.length > 0);
      if (process.env.HOSTILE_VERBOSE) {
        const count = (xs) => JSON.stringify(xs.reduce((m, x) => ({ ...m, [x]: (m[x] ?? 0) + 1 }), {}));
        console.log(`seed ${seed}: answers ${count(seen)}; shared hits ${cache.hits} of ${cache.store.size} entries; origin ${count(originCalls.map((c) => c.kind))}`);
      }
    });
  }
});

// One request for one tile at `verified`, nothing cached, to a fresh isolate whose origin
// answers every call as `kind`: the answer docs/edge.md's table gives for it.
const OUTCOMES = {
  ok: [200], above: [200], aboveDeclared: [502, 'upstream_error'], slow: [504, 'upstream_timeout'], never: [504, 'upstream_timeout'],
  partial: [502, 'upstream_error'], declaredLarge: [502, 'upstream_error'], chunkedLarge: [502, 'upstream_error'],
  malformed: [502, 'upstream_error'], html: [502, 'upstream_error'], inconsistent: [502, 'upstream_error'],
  204: [502, 'upstream_error'], 500: [502, 'upstream_error'], 401: [502, 'upstream_error'], 403: [502, 'upstream_error'],
  400: [400, 'bad_request'], 429: [429, 'rate_limited'], 503: [503, 'overloaded'],
};

describe('edge worker (js/edge.js): each kind of hostile origin answer alone', () => {
  for (const [kind, [status, code]] of Object.entries(OUTCOMES)) {
    it(`an origin answering ${kind}: ${status}${code ? ` ${code}` : ''}`, async () => {
      const r = rng(7);
      delete globalThis.caches;
      let calls = 0;
      globalThis.fetch = async (url, init = {}) => {
        if (String(url).includes('/v1/changes')) throw new Error('no feed here');
        calls++;
        // `slow`: past originTimeoutMs, whatever the draw.
        if (kind === 'slow') await sleep(3 * TIMEOUT_MS, init.signal);
        return originAnswer(r, kind === 'slow' ? 'ok' : Number(kind) || kind, JSON.parse(init.body), init.signal);
      };
      const worker = createWorker();
      const { res, waits } = await askVerified(worker, quietEnv({ originTimeoutMs: TIMEOUT_MS }));
      const json = await res.json();
      assert.equal(res.status, status, JSON.stringify(json));
      assert.equal(calls, 1, 'one origin call');
      if (code) {
        assert.equal(json.error?.code, code, JSON.stringify(json));
        assert.equal(res.headers.get('x-tilewarm-origin-error'), null, 'the error is the answer');
        const ra = res.headers.get('retry-after');
        if (status === 429 || status === 503) assert.ok(Number(ra) >= 1 && Number(ra) <= 3600, `Retry-After ${ra}`);
        else assert.equal(ra, null);
      } else {
        assert.equal(json.access, 'verified');
        assert.ok(json.items.length > 0 || kind === 'above', 'the items asked for');
        for (const item of json.items) assert.ok(RANK[item.access] <= RANK.verified, `${item.id} of ${item.access} answered`);
      }
      await Promise.all(waits);
      assert.deepEqual(unhandled.map(String), []);
    });
  }
});

// A change feed event whose id is not a stream id (`<ms>-<seq>`) is applied, but not taken
// as the position to resume from: one past U+00FF made every later poll's fetch throw (a
// header value must be a ByteString), for ever, so the isolate never saw a change again;
// another would be refused by the origin (400) at every poll.
describe('edge worker (js/edge.js): a change feed id that is not a stream id', () => {
  for (const bad of ['6-🌍', 'six', '']) {
    it(`${JSON.stringify(bad)} is not resumed from: later polls go on from the last stream id`, async () => {
      delete globalThis.caches;
      const asked = [];
      let polls = 0;
      globalThis.fetch = async (url, init = {}) => {
        if (String(url).includes('/v1/changes')) {
          // As fetch does: a header value past U+00FF throws.
          const h = new Headers(init.headers);
          const last = h.get('last-event-id');
          asked.push(last);
          polls++;
          if (last === null) return new Response('event: ready\nid: 5-0\ndata: {}\n\n', { headers: { 'content-type': 'text/event-stream' } });
          if (last === '5-0') return new Response(`event: ready\nid: 5-0\ndata: {}\n\nevent: invalidate\nid: ${bad}\ndata: {"ids":["a"]}\n\n`, { headers: { 'content-type': 'text/event-stream' } });
          return new Response('event: ready\nid: 7-0\ndata: {}\n\n', { headers: { 'content-type': 'text/event-stream' } });
        }
        const req = JSON.parse(init.body);
        return new Response(JSON.stringify({ access: req.access ?? 'public', tiles: req.tiles.map((tile) => ({ tile, ids: [], ttl: 60 })), items: [], missing: [] }),
          { headers: { 'content-type': 'application/json' } });
      };
      const worker = createWorker();
      const env = {
        ORIGIN: 'http://127.0.0.1:9/v1/batch',
        TILEWARM_OPTIONS: JSON.stringify({ originTimeoutMs: TIMEOUT_MS, changesPollMs: 10, warmRing: 0, statsPublic: true }),
      };
      const waits = [];
      const ctx = { waitUntil: (p) => waits.push(p) };
      for (let k = 0; k < 40 && polls < 6; k++) {
        const res = await worker.fetch(new Request('http://edge.test/v1/batch', {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tiles: ['14/2624/5721'] }),
        }), env, ctx);
        assert.equal(res.status, 200);
        await Promise.all(waits.splice(0));
        await sleep(12);
      }
      const stats = (await (await worker.fetch(new Request('http://edge.test/edge/stats'), env, ctx)).json()).changes;
      assert.equal(stats.errors, 0, `${stats.lastError}; asked ${asked.map(String)}`);
      assert.ok(stats.polls >= 3, `${stats.polls} polls; asked ${asked.map(String)}`);
      assert.ok(asked.every((id) => id === null || /^\d+-\d+$/.test(id)), `asked ${asked.map(String)}`);
      assert.equal(stats.lastId, '5-0', 'the last stream id the feed sent');
    });
  }
});

// A shared-cache entry whose date (x-tilewarm-fetched-at) is not a time: far in the future
// (a forged or corrupted entry, a writer's clock far off), not a number, negative. Each
// must be a miss, the tile asked of the origin again: a far future was taken as fetched
// now, fresh with no ttl aged and past every later change, and written back so.
describe('edge worker (js/edge.js): a shared-cache entry dated at no time', () => {
  it('is a miss, refetched; the same entry with its own date is a hit', async () => {
    const r = rng(11);
    const store = new Map();
    globalThis.caches = {
      default: {
        async match(key) {
          const e = store.get(String(key));
          return e ? new Response(e.body, { headers: e.headers }) : undefined;
        },
        async put(key, res) { store.set(String(key), { body: new Uint8Array(await res.arrayBuffer()), headers: [...res.headers] }); },
        async delete(key) { return store.delete(String(key)); },
      },
    };
    let calls = 0;
    globalThis.fetch = async (url, init = {}) => {
      if (String(url).includes('/v1/changes')) throw new Error('no feed here');
      calls++;
      return originAnswer(r, 'ok', JSON.parse(init.body), init.signal);
    };
    const env = quietEnv();
    // A fresh isolate each time (its own cache): what it finds is the shared cache's.
    const ask = async () => {
      const { res, waits } = await askVerified(createWorker(), env);
      assert.equal(res.status, 200);
      await res.json();
      await Promise.all(waits);
    };
    await ask();
    assert.equal(calls, 1);
    assert.equal(store.size, 1, 'the entry was written');
    const [[key, entry]] = [...store];
    const date = (e) => new Map(e.headers).get('x-tilewarm-fetched-at');
    const own = date(entry);
    assert.ok(Number(own) > 0, own);
    for (const bad of ['1e300', String(Date.now() + 3_600_000), 'Infinity', 'NaN', '-5']) {
      store.set(key, { body: entry.body, headers: entry.headers.map(([k, v]) => [k, k === 'x-tilewarm-fetched-at' ? bad : v]) });
      const before = calls;
      await ask();
      assert.equal(calls, before + 1, `dated ${bad}: asked of the origin again`);
      assert.ok(Number(date(store.get(key))) <= Date.now(), `dated ${bad}: written back dated ${date(store.get(key))}`);
    }
    store.set(key, entry);
    const before = calls;
    await ask();
    assert.equal(calls, before, 'its own date: a hit');
  });
});

// An origin answering an HTML page with 200 (a proxy's error page in front of it): the body
// decides, whatever its content-type. Not a protocol answer: 502 upstream_error, nothing
// cached (the next request asks the origin again), nothing written to the shared cache.
describe('edge worker (js/edge.js): an HTML page sent with 200', () => {
  it('is a 502 upstream_error and is not cached', async () => {
    const store = new Map();
    globalThis.caches = {
      default: {
        async match(key) { return store.has(String(key)) ? new Response(store.get(String(key))) : undefined; },
        async put(key, res) { store.set(String(key), await res.text()); },
        async delete(key) { return store.delete(String(key)); },
      },
    };
    let calls = 0;
    globalThis.fetch = async (url) => {
      if (String(url).includes('/v1/changes')) throw new Error('no feed here');
      calls++;
      return new Response('<html><body>200 OK (not really)</body></html>', { status: 200, headers: { 'content-type': 'text/html' } });
    };
    const worker = createWorker();
    const env = quietEnv();
    for (let i = 1; i <= 2; i++) {
      const { res, waits } = await askVerified(worker, env);
      const json = await res.json();
      assert.equal(res.status, 502, JSON.stringify(json));
      assert.equal(json.error?.code, 'upstream_error');
      assert.match(json.error.message, /the origin's answer is invalid/);
      await Promise.all(waits);
      assert.equal(calls, i, 'asked of the origin each time');
    }
    assert.equal(store.size, 0, 'nothing written to the shared cache');
  });
});
