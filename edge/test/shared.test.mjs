// The shared second level of the edge's cache (issue 19): the Workers Cache API, one per
// data centre, read by every isolate there. Two workerd processes (two isolates, each with
// its own in-memory cache) share one Cache API store (edge/cache-service.js, the stand-in
// for a data centre's cache), against tilewarm-server through the recording relay.
//
// Tiles are in their own neighbourhoods of the synthetic city, away from edge.test.mjs's.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { post as postAs, shape, startRelay, startServer, startWorkerd, serverAuthArgs, freePort } from './support/stack.mjs';
import { SECRET, hsToken, serviceToken } from './support/tokens.mjs';

const RANK = { public: 0, registered: 1, verified: 2, agent: 3 };

const block = (x0, y0, n) => {
  const out = [];
  for (let y = y0; y < y0 + n; y++) for (let x = x0; x < x0 + n; x++) out.push(`14/${x}/${y}`);
  return out;
};

/** Polls `fn` until it returns true (the worker's writes run in `waitUntil`, after it answers). */
async function until(fn, what) {
  for (let i = 0; i < 200; i++) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`gave up waiting for ${what}`);
}

/**
 * What the Cache API store at `addr` (edge/cache-service.js) holds under the key with host
 * `host` and path and query `path`, read as workerd's `cache.match` reads it: `GET` with
 * that host. `{ status, headers }`: 200 and the entry's headers, or 504 (a miss).
 */
function cacheEntry(addr, host, path) {
  const [hostname, port] = addr.split(':');
  return new Promise((ok, fail) => {
    const req = http.request({ hostname, port: Number(port), path, method: 'GET', headers: { host } }, (res) => {
      res.resume();
      res.on('end', () => ok({ status: res.statusCode, headers: res.headers }));
    });
    req.on('error', fail);
    req.end();
  });
}

describe('edge worker: the shared cache (Workers Cache API) under workerd', () => {
  let server;
  let relay;
  let a;
  let b;
  let agentToken;
  let originToken;
  const post = (url, body) =>
    postAs(url, body, { 'content-type': 'application/json', authorization: `Bearer ${agentToken}` });
  const options = { originTimeoutMs: 2000, warmRing: 0 };
  const env = () => ({ TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken });

  before(async () => {
    agentToken = await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
    originToken = await serviceToken('agent');
    server = await startServer(await serverAuthArgs(SECRET));
    relay = await startRelay(server.batch, { requireToken: originToken });
    a = await startWorkerd(relay.url, options, env());
    b = await startWorkerd(relay.url, options, env(), { sharedCache: a.cacheAddr });
  });

  after(async () => {
    await b?.stop();
    await a?.stop();
    await relay?.close();
    await server?.stop();
  });

  const direct = async (req) => {
    const r = await post(server.batch, req);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    return r.json;
  };
  const putsDone = async (edge, n) => until(async () => (await edge.stats()).shared.puts >= n, `${n} shared-cache writes`);

  it('a second isolate answers from the shared cache, without asking the origin', async () => {
    const req = { tiles: block(2624, 5716, 4), access: 'registered' };
    const before = relay.requests().length;
    const puts = (await a.stats()).shared.puts;
    const first = await post(a.batch, req);
    assert.equal(first.status, 200);
    assert.equal(first.cache, 'miss');
    assert.equal(relay.requests().length, before + 1);
    assert.ok(first.json.items.length > 100, `the block holds homes (${first.json.items.length})`);
    await putsDone(a, puts + 16);

    const second = await post(b.batch, req);
    assert.equal(second.status, 200);
    assert.equal(second.cache, 'hit');
    assert.equal(relay.requests().length, before + 1, 'the other isolate did not ask the origin');
    assert.deepEqual(shape(second.json), shape(first.json));
    assert.deepEqual(shape(second.json), shape(await direct(req)));
    const s = await b.stats();
    assert.equal(s.sharedFills, 16, JSON.stringify(s));
    assert.equal(s.shared.hits, 16);
    // And now from b's own memory: no shared-cache lookup either.
    const third = await post(b.batch, req);
    assert.equal(third.cache, 'hit');
    assert.equal((await b.stats()).shared.lookups, s.shared.lookups);
  });

  it("writes an entry under its tier's key with the max-age of the shortest ttl it holds and its date", async () => {
    // docs/edge.md, "The shared cache": the key, `Cache-Control: max-age=<the shortest TTL
    // it holds>` (the look-back, 4 h, is longer) and `x-tilewarm-fetched-at`.
    const tile = '14/2632/5716';
    const n = (await a.stats()).shared.puts;
    const asked = Date.now();
    const r = await post(a.batch, { tiles: [tile], access: 'registered' });
    assert.equal(r.status, 200);
    assert.ok(r.json.items.length > 0, 'the tile holds homes');
    await putsDone(a, n + 1);
    const key = (tier) => `/v1/tiles/${tile}?access=${tier}&origin=${encodeURIComponent(relay.url)}`;
    const entry = await cacheEntry(a.cacheAddr, 'tilewarm-edge.internal', key('registered'));
    assert.equal(entry.status, 200, 'written under the documented key');
    const maxAge = /^max-age=(\d+)$/.exec(entry.headers['cache-control'] ?? '');
    assert.ok(maxAge, entry.headers['cache-control']);
    const shortest = Math.min(r.json.tiles[0].ttl, ...r.json.items.map((i) => i.ttl));
    assert.ok(Number(maxAge[1]) <= shortest && Number(maxAge[1]) >= shortest - 5,
      `max-age ${maxAge[1]}, shortest ttl answered ${shortest}`);
    const fetchedAt = Number(entry.headers['x-tilewarm-fetched-at']);
    assert.ok(fetchedAt >= asked - 1000 && fetchedAt <= Date.now(), `x-tilewarm-fetched-at ${fetchedAt}, asked at ${asked}`);
    // Only that tier's key: nothing under another tier's.
    assert.equal((await cacheEntry(a.cacheAddr, 'tilewarm-edge.internal', key('public'))).status, 504);
  });

  it('a finer and a coarser tile are answered from the shared data tiles', async () => {
    const tiles = block(2620, 5720, 4); // the 16 data tiles of 12/655/1430
    const puts = (await a.stats()).shared.puts;
    await post(a.batch, { tiles, access: 'public' });
    await putsDone(a, puts + 16);
    const c = await startWorkerd(relay.url, options, env(), { sharedCache: a.cacheAddr });
    try {
      const before = relay.requests().length;
      const coarse = await post(c.batch, { tiles: ['12/655/1430'], access: 'public' });
      assert.equal(coarse.cache, 'hit');
      const fine = await post(c.batch, { tiles: ['16/10483/22883'], access: 'public' });
      assert.equal(fine.cache, 'hit');
      assert.equal(relay.requests().length, before, 'no origin request');
      assert.deepEqual(shape(coarse.json), shape(await direct({ tiles: ['12/655/1430'], access: 'public' })));
      assert.deepEqual(shape(fine.json), shape(await direct({ tiles: ['16/10483/22883'], access: 'public' })));
    } finally {
      await c.stop();
    }
  });

  it('tiers never cross: each isolate asks the origin at its own tier, whatever the other wrote', async () => {
    // agent first on a, then public on b: b must not take a's agent entries.
    const tiles = block(2616, 5722, 2);
    const n = (await a.stats()).shared.puts;
    await post(a.batch, { tiles, access: 'agent' });
    await putsDone(a, n + 4);
    const before = relay.requests().length;
    const pub = await post(b.batch, { tiles, access: 'public' });
    assert.equal(pub.status, 200);
    assert.equal(pub.cache, 'miss', 'the agent entries are not the public tier\'s');
    assert.equal(relay.requests().length, before + 1);
    assert.equal(relay.requests().at(-1).body.access, 'public');
    for (const it of pub.json.items) assert.equal(it.access, 'public', it.id);
    assert.deepEqual(shape(pub.json), shape(await direct({ tiles, access: 'public' })));

    // public first on a, then agent on b: b must ask for its agent items.
    const tiles2 = block(2628, 5722, 2);
    await post(a.batch, { tiles: tiles2, access: 'public' });
    await putsDone(a, n + 4);
    const before2 = relay.requests().length;
    const agent = await post(b.batch, { tiles: tiles2, access: 'agent' });
    assert.equal(agent.cache, 'miss', 'the public entries do not answer the agent tier');
    assert.equal(relay.requests().length, before2 + 1);
    assert.ok(agent.json.items.some((i) => RANK[i.access] > 0), 'agent items are served to the agent');
    assert.deepEqual(shape(agent.json), shape(await direct({ tiles: tiles2, access: 'agent' })));
    // The key holds the tier: b was never even offered the other tier's entries (the core
    // would refuse them: proxy::tests::shared).
    const s = await b.stats();
    assert.equal(s.sharedRefused, 0, JSON.stringify(s));
  });

  it('a shared cache that does not answer costs a miss, never the answer', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    const c = await startWorkerd(relay.url, { ...options, sharedCacheTimeoutMs: 200 }, env(), { sharedCache: dead });
    try {
      const req = { tiles: block(2618, 5716, 2), access: 'verified' };
      const r = await post(c.batch, req);
      assert.equal(r.status, 200);
      assert.equal(r.cache, 'miss');
      assert.deepEqual(shape(r.json), shape(await direct(req)));
      const again = await post(c.batch, req);
      assert.equal(again.cache, 'hit');
      assert.ok((await c.stats()).shared.errors > 0);
    } finally {
      await c.stop();
    }
  });
});
