// Warming reads the shared cache (the Workers Cache API) before the origin, as a request
// does: two workerd processes (two isolates) sharing one Cache API store, against
// tilewarm-server through the recording relay (shared.test.mjs sets up the same way).
//
// Tiles are in their own neighbourhood of the synthetic city, away from the other files'.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { post as postAs, startRelay, startServer, startWorkerd, serverAuthArgs } from './support/stack.mjs';
import { SECRET, hsToken, serviceToken } from './support/tokens.mjs';

async function until(fn, what) {
  for (let i = 0; i < 200; i++) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`gave up waiting for ${what}`);
}

describe('edge worker: warming reads the shared cache first', () => {
  let server;
  let relay;
  let a;
  let b;
  let token;

  before(async () => {
    token = await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
    const originToken = await serviceToken('agent');
    server = await startServer(await serverAuthArgs(SECRET));
    relay = await startRelay(server.batch, { requireToken: originToken });
    const options = { originTimeoutMs: 2000, warmRing: 1, changesPollMs: 0 };
    const env = { TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken };
    a = await startWorkerd(relay.url, options, env);
    b = await startWorkerd(relay.url, options, env, { sharedCache: a.cacheAddr });
  });

  after(async () => {
    await b?.stop();
    await a?.stop();
    await relay?.close();
    await server?.stop();
  });

  const post = (url, body) =>
    postAs(url, body, { 'content-type': 'application/json', authorization: `Bearer ${token}` });

  it('a second isolate warms the neighbours another put in the shared cache without the origin', async () => {
    // Before, isolate b's warming asked the origin for the 8 neighbours isolate a had
    // already warmed and written: a paid call for nothing.
    const centre = '14/2640/5700';
    const req = { tiles: [centre], access: 'registered' };
    const warms = () => relay.requests('warm').length;
    assert.equal((await post(a.batch, req)).cache, 'miss');
    // a's answer (1 tile) and its warming (8) written to the shared cache.
    await until(async () => (await a.stats()).shared.puts >= 9, 'a\'s shared-cache writes');
    const warmed = warms();
    const requests = relay.requests().length;
    const r = await post(b.batch, req);
    assert.equal(r.status, 200);
    assert.equal(r.cache, 'hit', 'the centre from the shared cache');
    // b looks up its warming's 8 tiles (after the centre) and takes them.
    await until(async () => (await b.stats()).sharedFills >= 9, 'b\'s warming taken from the shared cache');
    await new Promise((ok) => setTimeout(ok, 200)); // any warming call would be out by now
    assert.equal(warms(), warmed, 'no warming call from b');
    assert.equal(relay.requests().length, requests);
    const ring = [];
    for (const dx of [-1, 0, 1]) for (const dy of [-1, 0, 1]) if (dx || dy) ring.push(`14/${2640 + dx}/${5700 + dy}`);
    const hit = await post(b.batch, { tiles: ring, access: 'registered' });
    assert.equal(hit.cache, 'hit');
    assert.equal(relay.requests().length, requests);
  });
});
