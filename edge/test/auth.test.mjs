// Caller authentication at the edge (issue 14), under real workerd: each attack on the
// token as its own test, cache poisoning across tiers, and a property over random token
// tiers, body tiers and request sequences. Three workers share one origin: `hmac` (a
// JWT_SECRET, iss and aud checked), `jwks` (an RSA public key, `kid` k1) and `keyless` (no
// key: every caller public). All three call the origin with their own ORIGIN_TOKEN; the
// relay in front of the origin refuses any other credential and records what it saw.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { post, shape, startRelay, startServer, startWorkerd, serverAuthArgs } from './support/stack.mjs';
import {
  SECRET, ISSUER, AUDIENCE, TIERS, RANK, hsToken, callerToken, serviceToken, rsaKeys, unsigned,
  tampered, bearer,
} from './support/tokens.mjs';

/** A small seeded PRNG (mulberry32), so a failing sequence can be replayed. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('edge worker: caller authentication', () => {
  let server, relay, hmac, jwks, keyless, originToken, rsa, directToken;

  before(async () => {
    server = await startServer(await serverAuthArgs(SECRET));
    originToken = await serviceToken('agent');
    directToken = await serviceToken('agent');
    relay = await startRelay(server.batch, { requireToken: originToken });
    rsa = await rsaKeys('k1');
    const options = { originTimeoutMs: 2000, warmRing: 0 };
    const started = await Promise.allSettled([
      startWorkerd(relay.url, { ...options, jwtIssuer: ISSUER, jwtAudience: AUDIENCE }, {
        TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken,
      }),
      startWorkerd(relay.url, options, { TILEWARM_JWKS: JSON.stringify(rsa.jwks), TILEWARM_ORIGIN_TOKEN: originToken }),
      startWorkerd(relay.url, options, { TILEWARM_ORIGIN_TOKEN: originToken }),
    ]);
    [hmac, jwks, keyless] = started.map((s) => (s.status === 'fulfilled' ? s.value : undefined));
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) throw failed.reason;
  });

  after(async () => {
    await Promise.all([hmac?.stop(), jwks?.stop(), keyless?.stop()]);
    await relay?.close();
    await server?.stop();
  });

  /** The origin's own answer at `tier` (with an agent service token, body lowered). */
  const direct = async (req) => {
    const r = await post(server.batch, req, bearer(directToken));
    assert.equal(r.status, 200, JSON.stringify(r.json));
    return r.json;
  };

  /** `headers` are refused by `edge` with a 401 that names `why`, asks the origin nothing and
   * does not echo the token. */
  async function refused(edge, headers, why, body = { tiles: ['14/2624/5721'], access: 'public' }) {
    const n = relay.seen.length;
    const r = await post(edge.batch, body, headers);
    assert.equal(r.status, 401, r.text);
    assert.equal(r.wwwAuthenticate, 'Bearer error="invalid_token"');
    assert.equal(r.json.error.code, 'unauthorized');
    assert.match(r.json.error.message, why);
    assert.equal(r.access, null);
    const token = (headers.authorization ?? '').replace(/^Bearer /, '');
    if (token.length > 8) {
      assert.ok(!r.text.includes(token), 'the answer does not echo the token');
      for (const part of token.split('.').filter((p) => p.length > 8)) assert.ok(!r.text.includes(part));
    }
    assert.equal(relay.seen.length, n, 'no origin request for a refused caller');
  }

  it('answers a caller without a token as public, and 403s one asking for more', async () => {
    const tile = '14/2624/5721';
    const pub = await post(hmac.batch, { tiles: [tile], access: 'public' });
    assert.equal(pub.status, 200);
    assert.equal(pub.access, 'public');
    assert.equal(pub.json.access, 'public');
    assert.ok(pub.json.items.length > 0 && pub.json.items.every((i) => i.access === 'public'));
    const n = relay.seen.length;
    for (const access of ['registered', 'verified', 'agent']) {
      const r = await post(hmac.batch, { tiles: [tile], access });
      assert.equal(r.status, 403, r.text);
      assert.equal(r.json.error.code, 'forbidden');
      assert.match(r.json.error.message, new RegExp(`"${access}" is above .*"public"`));
    }
    assert.equal(relay.seen.length, n);
  });

  it('serves a verified token at its tier, and at a lower one when the body asks', async () => {
    const tile = '14/2630/5730';
    const token = await callerToken('verified');
    const v = await post(hmac.batch, { tiles: [tile], access: 'verified' }, bearer(token));
    assert.equal(v.status, 200, v.text);
    assert.equal(v.access, 'verified');
    assert.equal(v.json.access, 'verified');
    assert.deepEqual(shape(v.json), shape(await direct({ tiles: [tile], access: 'verified' })));
    assert.ok(v.json.items.some((i) => i.access === 'verified'));
    const last = relay.requests().at(-1);
    assert.equal(last.body.access, 'verified');
    assert.equal(last.authorization, `Bearer ${originToken}`, 'the edge\'s own credential, not the caller\'s');

    const low = await post(hmac.batch, { tiles: [tile], access: 'registered' }, bearer(token));
    assert.equal(low.status, 200);
    assert.equal(low.access, 'registered');
    assert.ok(low.json.items.every((i) => RANK[i.access] <= 1));
    assert.equal(relay.requests().at(-1).body.access, 'registered');

    const high = await post(hmac.batch, { tiles: [tile], access: 'agent' }, bearer(token));
    assert.equal(high.status, 403);
    assert.equal(high.json.error.code, 'forbidden');
    assert.match(high.json.error.message, /"agent" is above the tier the credential gives \("verified"\)/);
  });

  it('accepts RS256 tokens from the JWKS, the key chosen by kid', async () => {
    const token = await rsa.sign({ tilewarm_access: 'agent' });
    const r = await post(jwks.batch, { tiles: ['14/2636/5736'], access: 'agent' }, bearer(token));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.access, 'agent');
  });

  it('refuses alg:none', async () => {
    await refused(hmac, bearer(unsigned({ tilewarm_access: 'agent', iss: ISSUER, aud: AUDIENCE })), /not allowed|malformed/);
    await refused(jwks, bearer(unsigned({ tilewarm_access: 'agent' })), /not allowed|malformed/);
  });

  it('refuses HS/RS key confusion (the RSA public key used as an HMAC secret)', async () => {
    const claims = { tilewarm_access: 'agent' };
    for (const secret of [rsa.spki, JSON.stringify(rsa.jwk), rsa.jwk.n]) {
      const forged = await hsToken(claims, { secret, header: { kid: 'k1' } });
      await refused(jwks, bearer(forged), /algorithm is not allowed/);
    }
    // And an RS256 token at the HMAC worker.
    await refused(hmac, bearer(await rsa.sign({ ...claims, iss: ISSUER, aud: AUDIENCE })), /algorithm is not allowed/);
  });

  it('refuses a tampered payload', async () => {
    const good = await callerToken('public');
    await refused(hmac, bearer(tampered(good, 'agent')), /signature does not match/, { tiles: ['14/2624/5721'], access: 'agent' });
    const rs = await rsa.sign({ tilewarm_access: 'registered' });
    await refused(jwks, bearer(tampered(rs, 'agent')), /signature does not match/);
  });

  it('refuses an expired token, and accepts one within the leeway', async () => {
    await refused(hmac, bearer(await callerToken('agent', { exp: -120 })), /expired/);
    const r = await post(hmac.batch, { tiles: ['14/2624/5721'], access: 'agent' }, bearer(await callerToken('agent', { exp: -10 })));
    assert.equal(r.status, 200, r.text);
  });

  it('refuses a token without exp', async () => {
    await refused(hmac, bearer(await callerToken('agent', { exp: null })), /exp claim/);
  });

  it('refuses a token not valid yet (nbf in the future)', async () => {
    const nbf = Math.floor(Date.now() / 1000) + 120;
    await refused(hmac, bearer(await callerToken('agent', { claims: { nbf } })), /nbf claim/);
  });

  it('refuses the wrong issuer and the wrong audience, and missing ones', async () => {
    await refused(hmac, bearer(await callerToken('agent', { claims: { iss: 'https://evil.test' } })), /iss claim/);
    await refused(hmac, bearer(await callerToken('agent', { claims: { aud: 'someone-else' } })), /aud claim/);
    // Missing ones are refused too when configured.
    await refused(hmac, bearer(await hsToken({ tilewarm_access: 'agent', aud: AUDIENCE })), /iss claim/);
    await refused(hmac, bearer(await hsToken({ tilewarm_access: 'agent', iss: ISSUER })), /aud claim/);
  });

  it('refuses a token signed with another secret', async () => {
    const forged = await callerToken('agent', { secret: 'not-the-secret-not-the-secret-not-the-secret' });
    await refused(hmac, bearer(forged), /signature does not match/);
  });

  it('refuses an unknown kid, and a known kid signed by another key', async () => {
    const other = await rsaKeys('k2');
    await refused(jwks, bearer(await other.sign({ tilewarm_access: 'agent' })), /no key matches/);
    const liar = await rsaKeys('k1');
    await refused(jwks, bearer(await liar.sign({ tilewarm_access: 'agent' })), /signature does not match/);
  });

  it('refuses an oversized token before parsing it', async () => {
    await refused(hmac, bearer('a'.repeat(9000)), /longer than 8192 bytes/);
    const big = await callerToken('agent', { claims: { pad: 'x'.repeat(9000) } });
    await refused(hmac, bearer(big), /longer than 8192 bytes/);
  });

  it('refuses garbage, other schemes and an unknown tier claim', async () => {
    await refused(hmac, bearer('not-a-jwt'), /malformed/);
    await refused(hmac, { 'content-type': 'application/json', authorization: 'Basic YWdlbnQ6YWdlbnQ=' }, /must be "Bearer <token>"/);
    await refused(hmac, bearer(await callerToken('admin')), /"tilewarm_access" claim must be one of/);
  });

  it('refuses any token at an edge with no key configured (every caller is public there)', async () => {
    await refused(keyless, bearer(await callerToken('agent')), /verifies no tokens/);
    const anon = await post(keyless.batch, { tiles: ['14/2624/5721'], access: 'agent' });
    assert.equal(anon.status, 403);
    const pub = await post(keyless.batch, { tiles: ['14/2624/5721'], access: 'public' });
    assert.equal(pub.status, 200);
    assert.equal(pub.access, 'public');
  });

  it('cache poisoning: a forged tier (body, header, bad token) never fills or reads a higher cache', async () => {
    const tile = '14/2622/5719';
    const statsOf = async () => (await fetch(`${hmac.url}/edge/stats`)).json();
    const before = await statsOf();
    const n = relay.seen.length;
    const forged = [
      [{ 'content-type': 'application/json', 'x-tilewarm-access': 'agent' }, 403],
      [bearer(await callerToken('agent', { secret: 'forged-forged-forged-forged-forged-forged' })), 401],
      [bearer(tampered(await callerToken('public'), 'agent')), 401],
    ];
    for (const [headers, status] of forged) {
      const r = await post(hmac.batch, { tiles: [tile], access: 'agent' }, headers);
      assert.equal(r.status, status, r.text);
    }
    const stats = await statsOf();
    assert.equal(relay.seen.length, n, 'no origin request');
    assert.deepEqual(stats.tiers, before.tiers, 'no cache changed');
    // A real agent request afterwards is a miss: nothing was stored for it.
    const agent = await post(hmac.batch, { tiles: [tile], access: 'agent' }, bearer(await callerToken('agent')));
    assert.equal(agent.cache, 'miss');
  });

  it('cache poisoning: an anonymous caller after an agent gets only public items, from the origin', async () => {
    const tiles = ['14/2618/5722', '14/2619/5722', '14/2618/5723', '14/2619/5723'];
    const a = await post(hmac.batch, { tiles, access: 'agent' }, bearer(await callerToken('agent')));
    assert.equal(a.status, 200);
    assert.ok(a.json.items.some((i) => i.access !== 'public'), 'the block holds homes above public');
    const n = relay.requests().length;
    const p = await post(hmac.batch, { tiles, access: 'public' });
    assert.equal(p.status, 200);
    assert.equal(p.cache, 'miss', 'the public tier has its own cache');
    assert.equal(relay.requests().length, n + 1);
    assert.equal(relay.requests().at(-1).body.access, 'public');
    assert.ok(p.json.items.every((i) => i.access === 'public'));
    assert.deepEqual(shape(p.json), shape(await direct({ tiles, access: 'public' })));
  });

  it('cache poisoning: an agent after an anonymous caller gets the agent answer, not the public one', async () => {
    const tiles = ['14/2620/5722', '14/2621/5722', '14/2620/5723', '14/2621/5723'];
    const p = await post(hmac.batch, { tiles, access: 'public' });
    assert.equal(p.status, 200);
    const a = await post(hmac.batch, { tiles, access: 'agent' }, bearer(await callerToken('agent')));
    assert.equal(a.status, 200);
    assert.equal(a.cache, 'miss', 'the agent tier has its own cache');
    assert.equal(a.access, 'agent');
    assert.deepEqual(shape(a.json), shape(await direct({ tiles, access: 'agent' })));
    assert.ok(a.json.items.some((i) => i.access !== 'public'), 'the block holds homes above public');
  });

  it('property: no item above min(token tier, body tier) is served, over random sequences', async () => {
    const seed = Number(process.env.EDGE_SEED ?? 20261202);
    const random = rng(seed);
    const pool = ['14/2626/5716', '14/2627/5716', '14/2626/5717', '15/5254/11434', '13/1313/2858'];
    const everyone = await direct({ tiles: pool.slice(0, 3), access: 'agent' });
    const ids = everyone.items.map((i) => i.id);
    assert.ok(ids.length > 20 && everyone.items.some((i) => i.access === 'agent'), 'the pool holds homes of every tier');
    const pick = (list, k) => [...new Set(Array.from({ length: k }, () => list[Math.floor(random() * list.length)]))];
    const tokens = {};
    for (const t of TIERS) tokens[t] = await callerToken(t);
    const seen = { 200: 0, 401: 0, 403: 0 };
    for (let step = 0; step < 60; step++) {
      const roll = random();
      // No token (public), a good token at a random tier, or a forged one claiming agent.
      const token = roll < 0.2 ? null : roll < 0.3 ? 'forged' : TIERS[Math.floor(random() * 4)];
      const access = TIERS[Math.floor(random() * 4)];
      const req = { tiles: pick(pool, 1 + Math.floor(random() * 3)), ids: pick(ids, Math.floor(random() * 4)), access };
      const headers = token === null ? undefined
        : token === 'forged' ? bearer(tampered(tokens.public, 'agent')) : bearer(tokens[token]);
      const r = await post(hmac.batch, req, headers);
      const where = `seed ${seed}, step ${step}: token ${token}, ${JSON.stringify(req)}`;
      seen[r.status] = (seen[r.status] ?? 0) + 1;
      const verified = token === null ? 'public' : token;
      if (token === 'forged') {
        assert.equal(r.status, 401, where);
        continue;
      }
      if (RANK[access] > RANK[verified]) {
        assert.equal(r.status, 403, where);
        continue;
      }
      assert.equal(r.status, 200, `${where}: ${r.text}`);
      assert.equal(r.access, access, where);
      for (const item of r.json.items) {
        assert.ok(RANK[item.access] <= RANK[access], `${where}: ${item.id} is ${item.access}`);
      }
      assert.deepEqual(shape(r.json), shape(await direct(req)), where);
    }
    assert.ok(seen[200] > 10 && seen[401] > 0 && seen[403] > 0, JSON.stringify(seen));
  });

  it('sent the origin only its own service token, never a caller\'s', () => {
    assert.ok(relay.seen.length > 10);
    for (const s of relay.seen) assert.equal(s.authorization, `Bearer ${originToken}`);
  });
});
