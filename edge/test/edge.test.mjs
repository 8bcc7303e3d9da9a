// The edge worker under real workerd, against tilewarm-server on loopback, with a recording
// relay in between that counts the worker's origin requests (scripts/test-edge.sh).
//
// Tiles are chosen in separate neighbourhoods of the synthetic city (around 14/2624/5721,
// Seattle), at least three data tiles apart, so one test's neighbour warming never touches
// another test's tiles.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { post as postAs, postLarge, shape, startRelay, startServer, startWorkerd, serverAuthArgs } from './support/stack.mjs';
import { SECRET, hsToken, serviceToken } from './support/tokens.mjs';
import { mulberry32 as rng } from '../../js/test/support/mulberry32.mjs';

// Every caller here holds an agent token, so the body's `access` picks the tier (it may
// only lower the token's); authentication itself is tested in auth.test.mjs.
let agentToken;
const post = (url, body, headers = { 'content-type': 'application/json' }) =>
  postAs(url, body, { ...headers, authorization: `Bearer ${agentToken}` });

const block = (x0, y0, n) => {
  const out = [];
  for (let y = y0; y < y0 + n; y++) for (let x = x0; x < x0 + n; x++) out.push(`14/${x}/${y}`);
  return out;
};
const RANK = { public: 0, registered: 1, verified: 2, agent: 3 };
const TIERS = Object.keys(RANK);

/** tilewarm-server (with `serverArgs`), the recording relay and the worker under workerd
 * (with `options` over the defaults here). */
async function stack(serverArgs = [], options = {}) {
  agentToken ??= await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
  const originToken = await serviceToken('agent');
  const server = await startServer([...(await serverAuthArgs(SECRET)), ...serverArgs]);
  const relay = await startRelay(server.batch, { requireToken: originToken });
  const edge = await startWorkerd(relay.url, { originTimeoutMs: 1000, warmTimeoutMs: 2000, ...options }, {
    TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken,
  });
  return { server, relay, edge };
}

/** Stops what `stack` started (as far as it got). */
async function stopStack({ server, relay, edge }) {
  await edge?.stop();
  await relay?.close();
  await server?.stop();
}

/** Polls `fn` every 25 ms, `tries` times at the most, until it returns true; fails naming
 * `what` if it never does. */
async function until(fn, what, tries = 200) {
  for (let i = 0; i < tries && !(await fn()); i++) await new Promise((ok) => setTimeout(ok, 25));
  assert.ok(await fn(), `gave up waiting for ${what}`);
}

describe('edge worker under workerd', () => {
  let server;
  let relay;
  let edge;

  before(async () => {
    ({ server, relay, edge } = await stack());
  });

  after(() => stopStack({ server, relay, edge }));

  const direct = async (req) => {
    const r = await post(server.batch, req);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    return r.json;
  };

  it('answers a repeated 16-tile request from its cache with no origin call', async () => {
    const req = { tiles: block(2618, 5722, 4), access: 'registered' };
    const before = relay.requests().length;
    const first = await post(edge.batch, req);
    assert.equal(first.status, 200);
    assert.equal(first.cache, 'miss');
    assert.equal(relay.requests().length, before + 1);
    assert.deepEqual(relay.requests().at(-1).body.tiles.sort(), [...req.tiles].sort());
    assert.ok(first.json.items.length > 100, `the block holds homes (${first.json.items.length})`);

    const second = await post(edge.batch, req);
    assert.equal(second.status, 200);
    assert.equal(second.cache, 'hit');
    assert.equal(relay.requests().length, before + 1, 'no origin request for the repeat');
    assert.deepEqual(shape(second.json), shape(first.json));
    assert.deepEqual(shape(second.json), shape(await direct(req)));
  });

  it('forwards only the missing tiles and ids on a partial hit', async () => {
    const cached = ['14/2627/5718', '14/2628/5718'];
    const fresh = ['14/2627/5724', '14/2628/5724'];
    const warm = await post(edge.batch, { tiles: cached, access: 'public' });
    assert.equal(warm.cache, 'miss');
    const anId = warm.json.items[0].id;
    const n = relay.requests().length;
    const req = { tiles: [...cached, ...fresh], ids: [anId, 'no-such-home'], access: 'public' };
    const r = await post(edge.batch, req);
    assert.equal(r.status, 200);
    assert.equal(r.cache, 'partial');
    assert.equal(relay.requests().length, n + 1);
    const forwarded = relay.requests().at(-1).body;
    assert.deepEqual(forwarded, { tiles: fresh, ids: ['no-such-home'], access: 'public' });
    assert.deepEqual(shape(r.json), shape(await direct(req)));
  });

  it('never gives a public caller what an agent request brought in', async () => {
    const tile = '14/2624/5721';
    const agentView = await direct({ tiles: [tile], access: 'agent' });
    const above = agentView.items.filter((i) => i.access !== 'public').map((i) => i.id);
    assert.ok(above.length > 0, 'the tile holds homes above public');

    const a = await post(edge.batch, { tiles: [tile], ids: above.slice(0, 3), access: 'agent' });
    assert.equal(a.status, 200);
    assert.ok(a.json.items.some((i) => i.access === 'agent'));

    const n = relay.requests().length;
    const p = await post(edge.batch, { tiles: [tile], ids: above.slice(0, 3), access: 'public' });
    assert.equal(p.status, 200);
    assert.equal(p.cache, 'miss', 'the public tier has its own cache');
    assert.equal(relay.requests().at(-1).body.access, 'public', 'forwarded at the caller\'s tier');
    assert.equal(relay.requests().length, n + 1);
    assert.ok(p.json.items.every((i) => i.access === 'public'));
    assert.deepEqual(p.json.missing.sort(), above.slice(0, 3).sort());
    assert.deepEqual(shape(p.json), shape(await direct({ tiles: [tile], ids: above.slice(0, 3), access: 'public' })));

    // And again, now from the public cache.
    const again = await post(edge.batch, { tiles: [tile], ids: above.slice(0, 3), access: 'public' });
    assert.equal(again.cache, 'hit');
    assert.ok(again.json.items.every((i) => i.access === 'public'));
  });

  it('a random mixed-tier sequence never returns an item above the caller and matches the origin', async () => {
    const pool = [...block(2630, 5716, 3), '15/5261/11433', '16/10522/22866', '13/1315/2858'];
    const everyone = await direct({ tiles: pool.slice(0, 9), access: 'agent' });
    const ids = everyone.items.map((i) => i.id);
    assert.ok(ids.length > 50);
    const seed = Number(process.env.EDGE_SEED ?? 20261123);
    const random = rng(seed);
    const pick = (list, k) => [...new Set(Array.from({ length: k }, () => list[Math.floor(random() * list.length)]))];
    const verdicts = new Set();
    for (let step = 0; step < 40; step++) {
      const access = TIERS[Math.floor(random() * 4)];
      const req = { tiles: pick(pool, 1 + Math.floor(random() * 4)), ids: pick(ids, Math.floor(random() * 4)), access };
      const r = await post(edge.batch, req);
      const where = `seed ${seed}, step ${step}: ${JSON.stringify(req)}`;
      assert.equal(r.status, 200, where);
      verdicts.add(r.cache);
      for (const item of r.json.items) {
        assert.ok(RANK[item.access] <= RANK[access], `${where}: ${item.id} is ${item.access}`);
      }
      assert.deepEqual(shape(r.json), shape(await direct(req)), where);
      if (step % 10 === 9) await new Promise((ok) => setTimeout(ok, 100)); // let warming land
    }
    assert.ok(verdicts.has('hit') && verdicts.has('miss'), `saw ${[...verdicts]}`);
  });

  it('rejects bad requests with the protocol\'s errors and no origin call', async () => {
    const n = relay.requests().length;
    const cases = [
      ['{', 400, 'bad_request', /malformed JSON/],
      ['{"tiles":["14/99999/1"]}', 400, 'bad_request', /tiles\[0\]/],
      ['{"tiles":["14/2624/5721"],"access":"admin"}', 400, 'bad_request', /unknown access tier "admin"/],
      ['{}', 400, 'bad_request', /no tiles and no ids/],
      [JSON.stringify({ tiles: block(2600, 5700, 9) }), 400, 'bad_request', /at most 64/],
    ];
    for (const [body, status, code, message] of cases) {
      const r = await post(edge.batch, body);
      assert.equal(r.status, status, body);
      assert.equal(r.json.error.code, code, body);
      assert.match(r.json.error.message, message);
      assert.equal(r.cache, null);
    }
    // A caller's body is at most what the tile and id limits allow (as the server reads:
    // about 517 KiB), not the 8 MiB an origin answer may take: a valid request padded
    // with 600 KiB of whitespace is refused, and so is one declaring that length, unread.
    const padded = `{"tiles":["14/2624/5721"],"access":"public"${' '.repeat(600 * 1024)}}`;
    const over = await post(edge.batch, padded);
    assert.equal(over.status, 413, over.text.slice(0, 200));
    assert.equal(over.json.error.code, 'payload_too_large');
    assert.match(over.json.error.message, /at most 5\d{5} are allowed/);
    const declared = await postLarge(edge.batch, 600 * 1024);
    assert.equal(declared.status, 413);
    assert.match(declared.json.error.message, /body is 614400 bytes, at most 5\d{5} are allowed/);
    const big = await postLarge(edge.batch, 9 * 1024 * 1024);
    assert.equal(big.status, 413);
    assert.equal(big.json.error.code, 'payload_too_large');
    const chunked = await postLarge(edge.batch, 600 * 1024, { chunked: true });
    assert.equal(chunked.status, 413);
    assert.equal(chunked.json.error.code, 'payload_too_large');
    assert.match(chunked.json.error.message, /more than \d+ bytes/);
    const form = await post(edge.batch, '{}', { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(form.status, 415);
    const get = await fetch(edge.batch);
    assert.equal(get.status, 405);
    assert.equal((await get.json()).error.code, 'method_not_allowed');
    const nowhere = await fetch(`${edge.url}/nope`);
    assert.equal(nowhere.status, 404);
    assert.equal(relay.requests().length, n);
  });

  it('serves cached tiles when the origin stalls, and 504 for what is not cached', async () => {
    const cached = '14/2616/5714';
    const warmUp = await post(edge.batch, { tiles: [cached], access: 'verified' });
    assert.equal(warmUp.status, 200);
    await new Promise((ok) => setTimeout(ok, 200)); // let warming land before stalling
    relay.mode = 'stall';
    try {
      const t0 = Date.now();
      const r = await post(edge.batch, { tiles: [cached, '14/2612/5714'], access: 'verified' });
      assert.ok(Date.now() - t0 < 5000, 'bounded by the origin timeout');
      assert.equal(r.status, 200);
      assert.equal(r.cache, 'partial');
      assert.equal(r.originError, 'upstream_timeout');
      assert.deepEqual(r.json.tiles.map((t) => t.tile), [cached]);
      assert.deepEqual(r.json.tiles[0].ids.sort(), warmUp.json.tiles[0].ids.sort());
      assert.equal(r.json.error.code, 'upstream_timeout');
      // Exactly what is not answered is listed (issue 15): never a silent hole.
      assert.deepEqual(r.json.error.tiles, ['14/2612/5714']);
      assert.deepEqual(r.json.error.ids, []);

      const miss = await post(edge.batch, { tiles: ['14/2612/5718'], access: 'verified' });
      assert.equal(miss.status, 504);
      assert.equal(miss.json.error.code, 'upstream_timeout');
      assert.equal(miss.originError, null, 'an error answer is the error, not a partial one');
      assert.match(miss.json.error.message, /did not answer in time/);

      const hit = await post(edge.batch, { tiles: [cached], access: 'verified' });
      assert.equal(hit.status, 200);
      assert.equal(hit.cache, 'hit');
    } finally {
      relay.mode = 'pass';
    }
  });

  it('refuses an origin answer over the body limit (502) without reading it all', async () => {
    relay.mode = 'huge';
    try {
      const r = await post(edge.batch, { tiles: ['14/2640/5730'], access: 'public' });
      assert.equal(r.status, 502);
      assert.equal(r.json.error.code, 'upstream_error');
      // What was wrong (the answer's size: it was reached) and what is allowed.
      assert.match(r.json.error.message, /^the origin's answer \(HTTP 200\) is too large: \d+ bytes or more, at most 8388608 are allowed$/);
      const seen = Number(/: (\d+) bytes or more/.exec(r.json.error.message)[1]);
      assert.ok(seen > 8388608 && seen < 12 * 1024 * 1024, `read ${seen} bytes, not all 12 MiB`);
    } finally {
      relay.mode = 'pass';
    }
  });

  it('keeps an origin 503\'s status and Retry-After when its body is over the body limit', async () => {
    // Before, the body refused, the answer was a 502 with no Retry-After: a client behind
    // the edge came back at once to an origin at capacity.
    relay.mode = 'huge';
    relay.hugeStatus = 503;
    relay.retryAfter = '9';
    try {
      const r = await post(edge.batch, { tiles: ['14/2640/5734'], access: 'public' });
      assert.equal(r.status, 503, r.text);
      assert.equal(r.json.error.code, 'overloaded');
      assert.match(r.json.error.message, /^the origin is at capacity \(HTTP 503\): the origin's answer \(HTTP 503\) is too large: \d+ bytes or more, at most 8388608 are allowed$/);
      assert.equal(r.retryAfter, '9');
    } finally {
      relay.mode = 'pass';
      relay.hugeStatus = undefined;
      relay.retryAfter = undefined;
    }
  });

  it('passes on the origin\'s 429 and its 503 as a 503 overloaded, each with its Retry-After', async () => {
    const n = relay.requests().length;
    relay.mode = 'rate_limited';
    try {
      const r = await post(edge.batch, { tiles: ['14/2644/5730'], access: 'public' });
      assert.equal(r.status, 429, r.text);
      assert.equal(r.json.error.code, 'rate_limited');
      assert.match(r.json.error.message, /the origin refused the request: the origin says rate_limited/);
      assert.equal(r.retryAfter, '7');
      assert.match(r.exposed, /retry-after/);
      // The server at capacity: a 503 overloaded here too (as the server answers its own
      // origin's 503), not a 502, so a client behind the edge backs off as one in front of
      // the server does.
      relay.mode = 'overloaded';
      const o = await post(edge.batch, { tiles: ['14/2644/5734'], access: 'public' });
      assert.equal(o.status, 503, o.text);
      assert.equal(o.json.error.code, 'overloaded');
      assert.equal(o.json.error.message, 'the origin is at capacity (HTTP 503): the origin says overloaded');
      // The header names the failure behind a partial answer's missing part; this answer
      // is the error itself (it was sent here too).
      assert.equal(o.originError, null);
      assert.equal(o.retryAfter, '3');
      assert.match(o.exposed, /retry-after/);
      // Its Retry-After as the server sends an upstream's: capped at an hour, 1 s when
      // there is none or none that can be read, an HTTP date as the seconds to it.
      const wait = async (retryAfter, tile) => {
        relay.retryAfter = retryAfter;
        const a = await post(edge.batch, { tiles: [tile], access: 'public' });
        assert.equal(a.status, 503, a.text);
        assert.equal(a.json.error.code, 'overloaded');
        return a.retryAfter;
      };
      assert.equal(await wait('86400', '14/2644/5738'), '3600');
      assert.equal(await wait(null, '14/2644/5742'), '1');
      assert.equal(await wait('soon', '14/2644/5746'), '1');
      assert.equal(await wait('0', '14/2644/5750'), '1');
      const date = new Date(Date.now() + 600_000).toUTCString();
      const s = Number(await wait(date, '14/2644/5754'));
      assert.ok(s > 500 && s <= 601, `${date}: ${s} s`);
    } finally {
      relay.mode = 'pass';
      relay.retryAfter = undefined;
    }
    assert.equal(relay.requests().length, n + 7);
    // Not on other answers.
    const ok = await post(edge.batch, { tiles: ['14/2644/5734'], access: 'public' });
    assert.equal(ok.status, 200);
    assert.equal(ok.retryAfter, null);
  });

  it('keeps a 502 for an origin\'s other 5xx, without its Retry-After, and never a Retry-After on a 200', async () => {
    const cached = '14/2648/5730';
    const warmUp = await post(edge.batch, { tiles: [cached], access: 'public' });
    assert.equal(warmUp.status, 200);
    await new Promise((ok) => setTimeout(ok, 200)); // let warming land before failing
    relay.mode = 'failing';
    try {
      const f = await post(edge.batch, { tiles: ['14/2648/5742'], access: 'public' });
      assert.equal(f.status, 502, f.text);
      assert.equal(f.json.error.code, 'upstream_error');
      assert.match(f.json.error.message, /HTTP 500: the origin broke/);
      assert.equal(f.retryAfter, null);
      // A cached part with the origin at capacity: 200 partial naming the origin's
      // refusal, no Retry-After.
      relay.mode = 'overloaded';
      const p = await post(edge.batch, { tiles: [cached, '14/2648/5746'], access: 'public' });
      assert.equal(p.status, 200, p.text);
      assert.equal(p.cache, 'partial');
      assert.equal(p.originError, 'overloaded');
      assert.equal(p.json.error.code, 'overloaded');
      assert.deepEqual(p.json.error.tiles, ['14/2648/5746']);
      assert.equal(p.retryAfter, null);
    } finally {
      relay.mode = 'pass';
    }
  });

  it('serves cached tiles when the origin is down, and 502 for what is not cached', async () => {
    const cached = '14/2616/5714';
    const stats = async () => (await fetch(`${edge.url}/edge/stats`)).json();
    const failuresBefore = (await stats()).originFailures;
    await server.stop();
    const r = await post(edge.batch, { tiles: [cached, '14/2636/5714'], access: 'verified' });
    assert.equal(r.status, 200);
    assert.equal(r.cache, 'partial');
    assert.equal(r.originError, 'upstream_error');
    assert.deepEqual(r.json.tiles.map((t) => t.tile), [cached]);
    assert.deepEqual(r.json.error.tiles, ['14/2636/5714']);
    const miss = await post(edge.batch, { tiles: ['14/2636/5718'], access: 'public' });
    assert.equal(miss.status, 502);
    assert.equal(miss.json.error.code, 'upstream_error');
    assert.match(miss.json.error.message, /origin could not be reached/);
    assert.equal((await stats()).originFailures, failuresBefore + 2);
  });
});

describe('edge worker: the data\'s extent the origin declares (x-tilewarm-bounds)', () => {
  // The server's answers declare it (--bounds); the worker passes it on, hits included.
  const BOX = '-122.6,47.4,-122,47.8';
  let server;
  let relay;
  let edge;

  before(async () => {
    ({ server, relay, edge } = await stack(['--bounds', BOX]));
  });

  after(() => stopStack({ server, relay, edge }));

  it('passes it on with answers from the origin and from its cache, and exposes it', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'public' };
    const miss = await post(edge.batch, req);
    assert.equal(miss.status, 200, miss.text);
    assert.notEqual(miss.cache, 'hit');
    assert.equal(miss.bounds, BOX);
    const hit = await post(edge.batch, req);
    assert.equal(hit.cache, 'hit');
    assert.equal(hit.bounds, BOX);
    const r = await fetch(edge.batch, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agentToken}` },
      body: JSON.stringify(req),
    });
    await r.text();
    assert.match(r.headers.get('access-control-expose-headers'), /x-tilewarm-bounds/);
    // A refusal carries no data, so no extent.
    const bad = await post(edge.batch, '{');
    assert.equal(bad.status, 400);
    assert.equal(bad.bounds, null);
  });
});

describe('edge worker: warming after a hit', () => {
  // Two tiles per warming request: a miss warms two of a tile's eight neighbours, and the
  // next request for the tile, a hit, is planned to warm two more.
  let server;
  let relay;
  let edge;

  before(async () => {
    ({ server, relay, edge } = await stack([], { maxWarmTiles: 2, changesPollMs: 0 }));
  });

  after(() => stopStack({ server, relay, edge }));

  it('sends the warming request the core plans on a hit, and fills the cache with its answer', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'public' };
    const miss = await post(edge.batch, req);
    assert.equal(miss.cache, 'miss');
    await until(async () => (await edge.stats()).warmFills === 1, 'the miss\'s warming answer');
    assert.equal(relay.requests('warm').length, 1);
    const warmed = relay.requests('warm')[0].body.tiles;
    assert.equal(warmed.length, 2);

    const hit = await post(edge.batch, req);
    assert.equal(hit.cache, 'hit');
    assert.equal((await edge.stats()).warmRequests, 2, 'the hit planned a warming request');
    await until(async () => (await edge.stats()).warmFills === 2, 'the hit\'s warming answer');
    const [, second] = relay.requests('warm');
    assert.equal(second.body.tiles.length, 2);
    assert.ok(second.body.tiles.every((t) => !warmed.includes(t) && t !== req.tiles[0]), 'two other neighbours');
    assert.equal(second.body.access, 'public');
  });

  it('does not warm the same neighbours again on every hit while their warming fails', async () => {
    // Before, each hit planned the same warming request again: one origin request per hit.
    // A 500 (a 503 or 429 would put all warming off by its Retry-After, the next test).
    relay.failWarm = 500;
    try {
      const req = { tiles: ['14/2630/5721'], access: 'public' };
      const before = relay.requests('warm').length;
      assert.equal((await post(edge.batch, req)).cache, 'miss');
      await until(async () => relay.requests('warm').length === before + 1, 'the miss\'s warming request');
      const start = Date.now();
      for (let i = 0; i < 30; i++) assert.equal((await post(edge.batch, req)).cache, 'hit');
      await Promise.all(Array.from({ length: 20 }, async () => assert.equal((await post(edge.batch, req)).cache, 'hit')));
      await new Promise((ok) => setTimeout(ok, 200)); // let any warming go out
      assert.ok(Date.now() - start < 4500, 'the machine was too slow for this test (WARM_RETRY_MS is 5 s)');
      // The eight neighbours, two per request, go out once each: four requests, then none
      // before WARM_RETRY_MS, never one per hit.
      const sent = relay.requests('warm').length - before;
      assert.equal(sent, 4, `${sent} warming requests for one miss and 50 hits`);
    } finally {
      relay.failWarm = false;
    }
  });

  // Last here: this isolate warms nothing for an hour after it.
  it('warms nothing while the origin\'s 503 to a warming asks for quiet (its Retry-After)', async () => {
    // Before, the warming went on at its own back-off (the next neighbours at the next hit,
    // other tiles' at once): an origin that asked for quiet got more warming requests.
    relay.failWarm = 503;
    relay.warmRetryAfter = '3600';
    try {
      const req = { tiles: ['14/2636/5721'], access: 'public' };
      const before = relay.requests('warm').length;
      const planned = (await edge.stats()).warmRequests;
      assert.equal((await post(edge.batch, req)).cache, 'miss');
      await until(async () => relay.requests('warm').length === before + 1, 'the miss\'s warming request');
      // Past the 1 s put-off of a 503 whose Retry-After was not read: only the origin's
      // hour keeps the warming off now.
      await new Promise((ok) => setTimeout(ok, 1200));
      for (let i = 0; i < 10; i++) assert.equal((await post(edge.batch, req)).cache, 'hit');
      assert.equal((await post(edge.batch, { tiles: ['14/2640/5721'], access: 'public' })).cache, 'miss');
      await new Promise((ok) => setTimeout(ok, 200)); // let any warming go out
      const sent = relay.requests('warm').length - before;
      assert.equal(sent, 1, `${sent} warming requests after the origin asked for an hour's quiet`);
      assert.equal((await edge.stats()).warmRequests - planned, 1, 'none planned after the 503');
    } finally {
      relay.failWarm = false;
      relay.warmRetryAfter = undefined;
    }
  });
});

describe('edge worker: a warming answer too large to read', () => {
  // Two tiles per warming request, as above, in an isolate of its own (a warming still out
  // when a test ends answers into the next one).
  let server;
  let relay;
  let edge;

  before(async () => {
    ({ server, relay, edge } = await stack([], { maxWarmTiles: 2, changesPollMs: 0 }));
  });

  after(() => stopStack({ server, relay, edge }));

  it('warms the tiles of a warming answer too large to read in smaller groups, and holds the one too large', async () => {
    // One neighbour's answer alone is over the body limit (12 MiB). Before, the worker
    // could not say which tile of the warming made it so, and the same pair was warmed
    // again whole on the retry delays, too large each time; now the pair is split at once,
    // the tile too large warmed alone and then held, its partner cached.
    const centre = '14/2624/5733';
    const dense = '14/2625/5733';
    relay.hugeWarm = (tiles) => tiles.includes(dense);
    try {
      const req = { tiles: [centre], access: 'public' };
      const before = relay.requests('warm').length;
      const sent = () => relay.requests('warm').slice(before).map((r) => r.body.tiles);
      assert.equal((await post(edge.batch, req)).cache, 'miss');
      const alone = () => sent().findIndex((t) => t.length === 1 && t[0] === dense);
      await until(async () => {
        assert.equal((await post(edge.batch, req)).cache, 'hit');
        return alone() >= 0;
      }, 'the tile too large warmed alone');
      const others = new Set(sent().flat());
      await until(async () => {
        await post(edge.batch, req);
        for (const t of sent().flat()) others.add(t);
        return others.size === 8;
      }, 'every neighbour warmed');
      await new Promise((ok) => setTimeout(ok, 200)); // let warming land
      for (let i = 0; i < 10; i++) assert.equal((await post(edge.batch, req)).cache, 'hit');
      await new Promise((ok) => setTimeout(ok, 200)); // let any warming go out
      const withDense = sent().filter((t) => t.includes(dense));
      assert.equal(withDense.length, 2, `warmed in a pair, then alone, then held: ${JSON.stringify(sent())}`);
      // Every other neighbour is cached.
      const ring = [...others].filter((t) => t !== dense);
      assert.equal(ring.length, 7);
      const r = await post(edge.batch, { tiles: ring, access: 'public' });
      assert.equal(r.cache, 'hit');
    } finally {
      relay.hugeWarm = undefined;
    }
  });
});

describe('edge worker: a warming that gets no answer', () => {
  let server;
  let relay;
  let edge;
  let adminToken;

  before(async () => {
    adminToken = await hsToken({ tilewarm_access: 'agent', tilewarm_admin: true }, { exp: 3600 });
    ({ server, relay, edge } = await stack([], { maxWarmTiles: 2, changesPollMs: 50 }));
  });

  after(() => stopStack({ server, relay, edge }));

  // Waits up to 10 s (400 tries).
  const untilLong = (fn, what) => until(fn, what, 400);

  it('gives its planning back: the same tiles warmed again after a change are written', async () => {
    // While a warming of some tiles is out, the core judges every answer for them by the
    // earliest planning still out (src/proxy/change.rs). A warming whose connection failed
    // was never given back, so after a change every later warming of the same tiles was
    // judged by its planning, from before the change, and not written.
    relay.dropWarm = true;
    const req = { tiles: ['14/2636/5721'], access: 'public' };
    try {
      assert.equal((await post(edge.batch, req)).cache, 'miss');
      await untilLong(async () => relay.requests('warm').length === 1, 'the warming request');
    } finally {
      relay.dropWarm = false;
    }
    const dropped = relay.requests('warm')[0].body.tiles;
    // A change reaches the isolate (any change starts a new epoch).
    const epoch = (await edge.stats()).epoch;
    const r = await postAs(`${server.url}/v1/invalidate`, { tiles: ['14/0/0'] }, {
      'content-type': 'application/json', authorization: `Bearer ${adminToken}`,
    });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    await untilLong(async () => {
      await fetch(`${edge.url}/healthz`).then((h) => h.text()); // lets a due poll start
      return (await edge.stats()).epoch > epoch;
    }, 'the change in the isolate');
    // Once the dropped tiles may be tried again (WARM_RETRY_MS, 5 s), a hit warms them
    // again, and this time the answer comes.
    await new Promise((ok) => setTimeout(ok, 5200));
    assert.equal((await post(edge.batch, req)).cache, 'hit');
    await untilLong(async () => relay.requests('warm').length === 2, 'the second warming request');
    assert.deepEqual(relay.requests('warm')[1].body.tiles, dropped, 'the same tiles warmed again');
    await untilLong(async () => (await edge.stats()).warmFills === 1, 'the second warming written');
  });
});

/** Polls `edge` (every 10 ms, 900 times at the most) until 1024 requests wait for the
 * origin, as many as an isolate holds; fails if they never do. */
async function untilTheIsolateIsFull(edge) {
  for (let i = 0; i < 900 && (await edge.stats()).pending < 1024; i++) await new Promise((ok) => setTimeout(ok, 10));
  assert.equal((await edge.stats()).pending, 1024, 'the 1024 requests reached the origin call');
}

describe('edge worker: more requests waiting for the origin than an isolate holds (1024)', () => {
  // The origin stalls; each request waits for it (originTimeoutMs, 10 s here: the 1024
  // requests, sent together by one Node process on a busy machine, must all reach the
  // worker before the first times out). The isolate holds at most 1024 such requests: the next is refused at once, as the server at
  // capacity refuses: 503 overloaded with Retry-After (the origin timeout's seconds).
  let server;
  let relay;
  let edge;

  before(async () => {
    ({ server, relay, edge } = await stack([], {
      originTimeoutMs: 10_000, warmRing: 0, sharedCacheTiles: 0, changesPollMs: 0,
    }));
  });

  after(() => stopStack({ server, relay, edge }));

  it('refuses the next one at once with 503 overloaded and Retry-After, not 500, and does not hold it', async () => {
    relay.mode = 'stall';
    try {
      const req = { tiles: ['14/2700/5800'], access: 'public' };
      const waiting = Array.from({ length: 1024 }, () => post(edge.batch, req));
      await untilTheIsolateIsFull(edge);
      const r = await post(edge.batch, req);
      assert.equal(r.status, 503, r.text);
      assert.equal(r.json.error.code, 'overloaded');
      assert.match(r.json.error.message, /1024 requests waiting for the origin/);
      assert.equal(r.retryAfter, '10');
      assert.equal((await edge.stats()).pending, 1024, 'not held: no origin call');
      const done = await Promise.all(waiting);
      assert.ok(done.every((d) => d.status === 504), `${done.find((d) => d.status !== 504)?.text}`);
    } finally {
      relay.mode = 'pass';
    }
  });
});

describe('edge worker: requests whose clients leave while they wait for the origin', () => {
  // The origin stalls (30 s timeout here). 1024 requests wait for it and their clients all
  // go away: workerd aborts each request's signal (enable_request_signal, edge/config.capnp)
  // and the worker gives their places back at once, so the isolate serves the next live
  // request instead of refusing it (503 overloaded) until their hold time (70 s) is over.
  let server;
  let relay;
  let edge;

  before(async () => {
    ({ server, relay, edge } = await stack([], {
      originTimeoutMs: 30_000, warmRing: 0, sharedCacheTiles: 0, changesPollMs: 0,
    }));
  });

  after(() => stopStack({ server, relay, edge }));

  it('gives their places back when they are aborted, and serves the next request', async () => {
    relay.mode = 'stall';
    const req = { tiles: ['14/2700/5800'], access: 'public' };
    const body = JSON.stringify(req);
    const { hostname, port, pathname } = new URL(edge.batch);
    try {
      // Each on its own connection, which the client then resets (TCP RST): the disconnect
      // workerd sees at once (a quiet close it notices only when it writes the answer).
      const gone = Array.from({ length: 1024 }, () => {
        const s = connect(Number(port), hostname, () => s.write(`POST ${pathname} HTTP/1.1\r\nhost: ${hostname}\r\n`
          + `content-type: application/json\r\nauthorization: Bearer ${agentToken}\r\ncontent-length: ${body.length}\r\n\r\n${body}`));
        s.on('error', () => {});
        return s;
      });
      await untilTheIsolateIsFull(edge);
      for (const s of gone) s.resetAndDestroy();
      // Well within the origin's timeout (30 s), let alone the hold time.
      for (let i = 0; i < 500 && (await edge.stats()).pending > 0; i++) await new Promise((ok) => setTimeout(ok, 20));
      assert.equal((await edge.stats()).pending, 0, 'the places of the requests whose clients left are free');
    } finally {
      relay.mode = 'pass';
    }
    const r = await post(edge.batch, req);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.cache, 'miss');
  });
});
