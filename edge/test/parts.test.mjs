// The edge worker under real workerd: answers in parts (src/proxy/tests_in_parts.rs is the
// core's side). A caller's request whose origin answer is over the body limit is asked in
// halves, what fits answered, the rest left out as `response_full`.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { post as postAs, startRelay, startServer, startWorkerd, serverAuthArgs } from './support/stack.mjs';
import { SECRET, hsToken, serviceToken } from './support/tokens.mjs';

let token;
const post = (url, body) => postAs(url, body, { 'content-type': 'application/json', authorization: `Bearer ${token}` });

describe('edge worker: a caller\'s origin answer too large to read', () => {
  let server;
  let relay;
  let edge;

  before(async () => {
    token = await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
    const originToken = await serviceToken('agent');
    server = await startServer(await serverAuthArgs(SECRET));
    relay = await startRelay(server.batch, { requireToken: originToken });
    edge = await startWorkerd(relay.url, { originTimeoutMs: 2000, warmRing: 0, changesPollMs: 0 }, {
      TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken,
    });
  });

  after(async () => {
    await edge?.stop();
    await relay?.close();
    await server?.stop();
  });

  it('asks for the first half at once and answers it, the rest left out as response_full', async () => {
    // An origin (not a tilewarm-server, which fits its answers to 8 MiB) whose answer to
    // more than two tiles is 12 MiB. Before, every try was a 502: the worker could not
    // tell which tile made it so, and the client asked the same again.
    const tiles = ['14/2620/5740', '14/2621/5740', '14/2622/5740', '14/2623/5740'];
    relay.hugeRequest = (body) => body.tiles.length + body.ids.length > 2;
    try {
      const n = relay.requests().length;
      const r = await post(edge.batch, { tiles, access: 'public' });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(relay.requests().slice(n).map((q) => q.body.tiles), [tiles, tiles.slice(0, 2)]);
      assert.deepEqual(r.json.tiles.map((t) => t.tile), tiles.slice(0, 2));
      assert.equal(r.json.error.code, 'response_full');
      assert.deepEqual(r.json.error.tiles, tiles.slice(2));
      assert.match(r.json.error.message, /over the body limit \(8388608 bytes\) and they were asked for in part/);
      // The rest, asked again (as a client does at once), fits.
      const rest = await post(edge.batch, { tiles: tiles.slice(2), access: 'public' });
      assert.equal(rest.status, 200, rest.text);
      assert.deepEqual(rest.json.tiles.map((t) => t.tile), tiles.slice(2));
      assert.equal(rest.json.error, undefined);
    } finally {
      relay.hugeRequest = undefined;
    }
  });

  it('asks in part within one originTimeoutMs in all, then answers the timeout', async (t) => {
    // A slow origin (each answer after 40% of originTimeoutMs) whose answers are all too
    // large. Before, every ask in part had a full originTimeoutMs: 16, 8, 4, 2 and 1 tile
    // asked, five calls and over four timeouts' worth of waiting (the client had given up
    // and asked again long before), then a 502. Now they share one: the third ask (or the
    // second, on a slow machine) is cut off or not sent, and the answer is the timeout.
    const tiles = Array.from({ length: 16 }, (_, i) => `14/${2620 + i}/5741`);
    const cached = '14/2619/5741';
    assert.equal((await post(edge.batch, { tiles: [cached], access: 'public' })).status, 200);
    relay.hugeRequest = () => true;
    relay.hugeDelayMs = 800;
    try {
      for (const part of [false, true]) {
        const n = relay.requests().length;
        const r = await post(edge.batch, { tiles: part ? [cached, ...tiles] : tiles, access: 'public' });
        const asked = relay.requests().slice(n).map((q) => q.body.tiles.length);
        t.diagnostic(`${part ? 'a cached part' : 'nothing cached'}: asks of ${asked}, HTTP ${r.status}: ${r.json.error?.message}`);
        // Two or three (one on a machine too slow to read the first within the timeout).
        assert.ok(asked.length >= 1 && asked.length <= 3, `asks of ${asked}`);
        assert.deepEqual(asked, [16, 8, 4].slice(0, asked.length));
        const { error } = r.json;
        if (part) {
          // What the cache held is served; the rest (timed out, or not asked) is left out
          // as the timeout, which the client backs off from, not as `response_full`.
          assert.equal(r.status, 200, r.text);
          assert.equal(r.cache, 'partial');
          assert.equal(r.originError, 'upstream_timeout');
          assert.deepEqual(r.json.tiles.map((l) => l.tile), [cached]);
          assert.deepEqual([...error.tiles].sort(), [...tiles].sort());
        } else {
          assert.equal(r.status, 504, r.text);
        }
        assert.equal(error.code, 'upstream_timeout');
        assert.match(error.message, /originTimeoutMs \(2000 ms\)/);
        if (asked.length > 1) assert.match(error.message, /answers to \d requests were over the body limit \(8388608 bytes\)/);
      }
    } finally {
      relay.hugeRequest = undefined;
      relay.hugeDelayMs = undefined;
    }
  });
});
