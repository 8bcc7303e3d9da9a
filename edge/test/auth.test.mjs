// Caller authentication at the edge (issue 14), under real workerd: each attack on the
// token as its own test, cache poisoning across tiers, and a property over random token
// tiers, body tiers and request sequences. Three workers share one origin: `hmac` (a
// JWT_SECRET, iss and aud checked), `jwks` (an RSA public key, `kid` k1) and `keyless` (no
// key: every caller public). All three call the origin with their own ORIGIN_TOKEN; the
// relay in front of the origin refuses any other credential and records what it saw.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import {
  VerifiedTokens, MAX_CACHED_TOKEN_CHARS, JWKS_FIRST_RETRY_MS, JWKS_FETCH_TIMEOUT_MS, JWKS_WAIT_MARGIN_MS,
  MAX_JWKS_BYTES, KeysUnavailable, createAuth,
} from '../../js/edge-auth.js';
import { post, shape, startRelay, startServer, startWorkerd, serverAuthArgs } from './support/stack.mjs';
import {
  SECRET, ISSUER, AUDIENCE, TIERS, RANK, hsToken, callerToken, serviceToken, rsaKeys, unsigned,
  tampered, bearer,
} from './support/tokens.mjs';
import { mulberry32 as rng } from '../../js/test/support/mulberry32.mjs';

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
      // /edge/stats closed (the default): read with an admin token (`statsOf`).
      startWorkerd(relay.url, { ...options, jwtIssuer: ISSUER, jwtAudience: AUDIENCE, statsPublic: false }, {
        TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken,
      }),
      startWorkerd(relay.url, options, { TILEWARM_JWKS: JSON.stringify(rsa.jwks), TILEWARM_ORIGIN_TOKEN: originToken }),
      startWorkerd(relay.url, { ...options, statsPublic: false }, { TILEWARM_ORIGIN_TOKEN: originToken }),
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

  /** `hmac`'s /edge/stats, read with a token carrying `tilewarm_admin: true`. */
  const statsOf = async () => {
    const r = await fetch(`${hmac.url}/edge/stats`, { headers: bearer(await callerToken('public', { claims: { tilewarm_admin: true } })) });
    assert.equal(r.status, 200);
    return r.json();
  };

  /** The origin's own answer at `tier` (with an agent service token, body lowered). */
  const direct = async (req) => {
    const r = await post(server.batch, req, bearer(directToken));
    assert.equal(r.status, 200, JSON.stringify(r.json));
    return r.json;
  };

  /** `headers` are refused by `edge` with a 401 that names `why`, asks the origin nothing and
   * does not echo the token. */
  async function refused(edge, headers, why, body = { tiles: ['14/2624/5721'], access: 'public' }, challenge = 'Bearer error="invalid_token"') {
    const n = relay.seen.length;
    const r = await post(edge.batch, body, headers);
    assert.equal(r.status, 401, r.text);
    assert.equal(r.wwwAuthenticate, challenge);
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
      assert.equal(r.access, 'public', 'the verified tier in the tier header: a client follows it down');
      assert.equal(r.wwwAuthenticate, null, 'no token, no challenge');
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
    assert.equal(high.access, 'verified');
    // RFC 6750 3.1: a verified token that lacks the tier asked for (it had none).
    assert.equal(high.wwwAuthenticate, 'Bearer error="insufficient_scope"');
  });

  it('reads a tier claim of null as public, as the server does', async () => {
    const token = await callerToken(null);
    const tile = '14/2630/5731';
    const r = await post(hmac.batch, { tiles: [tile], access: 'public' }, bearer(token));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.access, 'public');
    const high = await post(hmac.batch, { tiles: [tile], access: 'registered' }, bearer(token));
    assert.equal(high.status, 403);
    assert.match(high.json.error.message, /"registered" is above the tier the credential gives \("public"\)/);
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
    // Another scheme is an unsupported method (RFC 6750 3.1): the challenge without an error
    // code, as for no token (it was error="invalid_token", for a bearer token never sent).
    const pub = { tiles: ['14/2624/5721'], access: 'public' };
    for (const authorization of ['Basic YWdlbnQ6YWdlbnQ=', 'token-without-scheme']) {
      for (const edge of [hmac, keyless]) {
        await refused(edge, { 'content-type': 'application/json', authorization }, /must be "Bearer <token>"/, pub, 'Bearer realm="tilewarm"');
      }
    }
    await refused(hmac, bearer(await callerToken('admin')), /"tilewarm_access" claim must be one of/);
  });

  it('answers `Bearer` with no token 400 invalid_request (RFC 6750 3.1), as the server does', async () => {
    // A malformed request, not a bad token: a 401 `invalid_token` (before) has a client
    // fetch a fresh token and send it again. With a key or without; on /edge/stats too.
    const pub = { tiles: ['14/2624/5721'], access: 'public' };
    for (const edge of [hmac, keyless]) {
      for (const authorization of ['Bearer', 'bearer   ']) {
        const n = relay.seen.length;
        const r = await post(edge.batch, pub, { 'content-type': 'application/json', authorization });
        assert.equal(r.status, 400, r.text);
        assert.equal(r.json.error.code, 'bad_request');
        assert.match(r.json.error.message, /"Bearer" with no token/);
        assert.equal(r.wwwAuthenticate, 'Bearer error="invalid_request"');
        assert.equal(relay.seen.length, n, 'no origin request');
      }
    }
    const stats = await fetch(`${hmac.url}/edge/stats`, { headers: { authorization: 'Bearer' } });
    assert.equal(stats.status, 400, await stats.text());
    assert.equal(stats.headers.get('www-authenticate'), 'Bearer error="invalid_request"');
    // The server behind it answers the same.
    const direct = await post(server.batch, pub, { 'content-type': 'application/json', authorization: 'Bearer' });
    assert.equal(direct.status, 400, direct.text);
    assert.equal(direct.wwwAuthenticate, 'Bearer error="invalid_request"');
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

  it('/edge/stats (the cache sizes of every tier) answers only a verified admin token, unless statsPublic', async () => {
    // The agent tier's cache holds something, which an anonymous caller must not count.
    const a = await post(hmac.batch, { tiles: ['14/2620/5721'], access: 'agent' }, bearer(await callerToken('agent')));
    assert.equal(a.status, 200);
    const get = async (edge, headers = {}) => {
      const r = await fetch(`${edge.url}/edge/stats`, { headers });
      return { status: r.status, www: r.headers.get('www-authenticate'), text: await r.text() };
    };
    const closed = (r, status, code, why) => {
      assert.equal(r.status, status, r.text);
      const body = JSON.parse(r.text);
      assert.equal(body.error.code, code);
      assert.match(body.error.message, why);
      assert.ok(!('tiers' in body), 'no counters');
    };
    const anon = await get(hmac);
    closed(anon, 401, 'unauthorized', /tilewarm_admin/);
    // No error code (RFC 6750 3.1: no token was sent), and a parameter, as the scheme
    // needs one: the server's challenge for a request without a token.
    assert.equal(anon.www, 'Bearer realm="tilewarm"');
    const plain = await get(hmac, bearer(await callerToken('agent')));
    closed(plain, 403, 'forbidden', /tilewarm_admin/);
    assert.equal(plain.www, 'Bearer error="insufficient_scope"', 'a verified token without the claim (RFC 6750 3.1)');
    // The claim must be the boolean true, in a token that verifies.
    closed(await get(hmac, bearer(await callerToken('agent', { claims: { tilewarm_admin: 'true' } }))), 403, 'forbidden', /tilewarm_admin/);
    const forged = await callerToken('agent', { claims: { tilewarm_admin: true }, secret: 'forged-forged-forged-forged-forged-forged' });
    closed(await get(hmac, bearer(forged)), 401, 'unauthorized', /not valid/);
    closed(await get(hmac, bearer(tampered(await callerToken('public'), 'agent'))), 401, 'unauthorized', /not valid/);
    // No key: nobody can show the claim.
    closed(await get(keyless), 403, 'forbidden', /verifies no tokens.*statsPublic/);
    const stats = await statsOf();
    assert.ok(stats.tiers.agent.entries > 0, 'the admin reads every tier');
    // Opened by the option (the other edges of these tests): anyone.
    const open = await get(jwks);
    assert.equal(open.status, 200);
    assert.ok('tiers' in JSON.parse(open.text));
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

  // The verified-token cache (js/edge-auth.js, VerifiedTokens): a token that passed is
  // remembered until its exp, by its exact text, with the tier from its verified claims.
  const tokenStats = async (edge) => (edge === hmac ? await statsOf() : await edge.stats()).tokens;
  const payloadOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());

  it('remembers a verified token: the next request with it is not verified again', async () => {
    // Its own jti: a token another test made in the same second would be the same text,
    // and remembered already.
    const token = await callerToken('registered', { claims: { jti: 'remembered-once' } });
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    const before = await tokenStats(hmac);
    assert.equal((await post(hmac.batch, req, bearer(token))).status, 200);
    const first = await tokenStats(hmac);
    assert.equal(first.verified, before.verified + 1);
    assert.equal(first.hits, before.hits);
    const again = await post(hmac.batch, req, bearer(token));
    assert.equal(again.status, 200);
    assert.equal(again.access, 'registered');
    const second = await tokenStats(hmac);
    assert.equal(second.verified, first.verified, 'not verified again');
    assert.equal(second.hits, first.hits + 1, 'answered from the cache');
    // Still only up to its tier.
    assert.equal((await post(hmac.batch, { ...req, access: 'agent' }, bearer(token))).status, 403);
  });

  it('refuses an expired token even when it is remembered', async () => {
    // Valid for 4 to 5 more seconds with the 30 s leeway, remembered, then past it.
    const token = await callerToken('registered', { exp: -26 });
    const { exp } = payloadOf(token);
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    assert.equal((await post(hmac.batch, req, bearer(token))).status, 200);
    const hits = (await tokenStats(hmac)).hits;
    assert.equal((await post(hmac.batch, req, bearer(token))).status, 200);
    assert.equal((await tokenStats(hmac)).hits, hits + 1, 'the token is remembered');
    const expiredAt = (exp + 30) * 1000;
    assert.ok(Date.now() < expiredAt, 'the machine was too slow for this test');
    await new Promise((r) => setTimeout(r, expiredAt - Date.now() + 200));
    await refused(hmac, bearer(token), /expired/, req);
  });

  it('does not take a token whose signature differs by one byte for a remembered one', async () => {
    const token = await callerToken('registered');
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    assert.equal((await post(hmac.batch, req, bearer(token))).status, 200);
    assert.equal((await post(hmac.batch, req, bearer(token))).status, 200);
    const [h, p, sig] = token.split('.');
    // One character in the middle of the signature (all 6 bits significant there).
    const i = 10;
    const other = sig[i] === 'A' ? 'B' : 'A';
    const forged = `${h}.${p}.${sig.slice(0, i)}${other}${sig.slice(i + 1)}`;
    await refused(hmac, bearer(forged), /signature does not match/, req);
    // Nor a payload raised to agent under the remembered token's signature.
    await refused(hmac, bearer(tampered(token, 'agent')), /signature does not match/, { ...req, access: 'agent' });
  });

  it('takes a tier only from verified claims: a refused token is never remembered', async () => {
    const forged = await callerToken('agent', { secret: 'forged-forged-forged-forged-forged-forged' });
    const req = { tiles: ['14/2624/5721'], access: 'agent' };
    const before = await tokenStats(hmac);
    await refused(hmac, bearer(forged), /signature does not match/, req);
    await refused(hmac, bearer(forged), /signature does not match/, req);
    // A token whose tier claim is not a tier passes the signature check but is refused, and
    // is not remembered either.
    const odd = await callerToken('admin');
    await refused(hmac, bearer(odd), /"tilewarm_access" claim must be one of/, req);
    await refused(hmac, bearer(odd), /"tilewarm_access" claim must be one of/, req);
    const after = await tokenStats(hmac);
    assert.equal(after.hits, before.hits, 'no refused token answered from the cache');
  });

  it('sent the origin only its own service token, never a caller\'s', () => {
    assert.ok(relay.seen.length > 10);
    for (const s of relay.seen) assert.equal(s.authorization, `Bearer ${originToken}`);
  });
});

/** A tilewarm-server, a key server answering with `keys(req, res)` and a workerd edge
 * verifying tokens against it (JWKS_URL), with worker `options`; `stop()` ends all three. */
async function jwksStack(keys, options) {
  // Bursts of requests reach the server together once the keys are in: the server's own
  // shedding (a 10 ms queue wait by default) is not what these tests check.
  const server = await startServer([...(await serverAuthArgs(SECRET)), '--max-queue-wait-ms', '5000']);
  const jwksServer = createHttpServer(keys);
  await new Promise((ok) => jwksServer.listen(0, '127.0.0.1', ok));
  const { port } = jwksServer.address();
  const edge = await startWorkerd(server.batch, { warmRing: 0, ...options }, {
    TILEWARM_JWKS_URL: `http://127.0.0.1:${port}/jwks.json`, TILEWARM_ORIGIN_TOKEN: await serviceToken('agent'),
  });
  return {
    edge,
    async stop() {
      await edge.stop();
      await server.stop();
      jwksServer.closeAllConnections?.();
      await new Promise((ok) => jwksServer.close(() => ok()));
    },
  };
}

/** A key server for jwksStack that counts the requests it gets (`asked`) and serves `keys`'
 * set while `up` (after `latencyMs`; `answeredAt`: when it last did); else it answers
 * `status`, after `delayMs`. */
function keyServer(keys, { up, status, delayMs = 0, latencyMs = 0 }) {
  const ks = {
    up,
    asked: 0,
    answeredAt: 0,
    handle(req, res) {
      ks.asked++;
      if (ks.up) {
        const answer = () => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify(keys.jwks));
          ks.answeredAt = Date.now();
        };
        if (latencyMs > 0) setTimeout(answer, latencyMs);
        else answer();
        return;
      }
      const down = () => {
        res.writeHead(status, { 'content-type': 'text/plain' });
        res.end('the key server is down');
      };
      if (delayMs > 0) setTimeout(down, delayMs);
      else down();
    },
  };
  return ks;
}

describe('edge worker: remembered tokens and a JWKS_URL whose keys change', () => {
  let stack, edge, keys, served, fetches = 0;

  before(async () => {
    keys = { k1: await rsaKeys('k1'), k2: await rsaKeys('k2') };
    served = keys.k1.jwks;
    stack = await jwksStack((req, res) => {
      fetches++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(served));
    }, { jwksCacheMaxAgeS: 3 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it('forgets remembered tokens when the key set is fetched again, and refuses a key that left it', async () => {
    const token = await keys.k1.sign({ tilewarm_access: 'registered' });
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    const fetchedAt = Date.now();
    assert.equal((await post(edge.batch, req, bearer(token))).status, 200);
    assert.equal((await post(edge.batch, req, bearer(token))).status, 200);
    assert.equal((await post(edge.batch, req, bearer(token))).status, 200);
    const stats = (await edge.stats()).tokens;
    assert.ok(stats.hits >= 1, `remembered: ${JSON.stringify(stats)}`);
    assert.equal(fetches, 1);
    assert.ok(Date.now() < fetchedAt + 3000, 'the machine was too slow for this test');
    // The key set rotates: k1 leaves. Once the fetched set is stale (jwksCacheMaxAgeS), the
    // next request fetches it again and the remembered k1 token no longer passes.
    served = keys.k2.jwks;
    await new Promise((r) => setTimeout(r, fetchedAt + 3500 - Date.now()));
    const r = await post(edge.batch, req, bearer(token));
    assert.equal(r.status, 401, r.text);
    assert.match(r.json.error.message, /no key matches/);
    assert.equal(fetches, 2);
    // Nor afterwards, with the new set fresh: the cache was forgotten, not kept beside it.
    const again = await post(edge.batch, req, bearer(token));
    assert.equal(again.status, 401, again.text);
    // A token of the new key passes, and is remembered in turn.
    const fresh = await keys.k2.sign({ tilewarm_access: 'registered' });
    assert.equal((await post(edge.batch, req, bearer(fresh))).status, 200);
  });
});

describe('edge worker: a JWKS_URL that does not give usable keys', () => {
  // Each way the key source can fail is the edge's problem (502 upstream_error), never a
  // 401 telling the caller its token is bad.
  let stack, edge, keys, mode = 'ok';

  before(async () => {
    keys = await rsaKeys('k1');
    stack = await jwksStack((req, res) => {
      if (mode === 'error') {
        res.writeHead(500, { 'content-type': 'text/plain' });
        return res.end('the key server is down');
      }
      if (mode === 'redirect' && req.url !== '/moved.json') {
        // Where it points serves the keys: jose does not follow redirects.
        res.writeHead(302, { location: '/moved.json' });
        return res.end();
      }
      if (mode === 'not-json') {
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end('<html>maintenance</html>');
      }
      if (mode === 'not-a-key-set') {
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ keys: 'none today' }));
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(keys.jwks));
    }, { changesPollMs: 0 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it('answers 502 upstream_error for a key server answering 500, a redirect, not JSON or not a key set', async () => {
    const token = await keys.sign({ tilewarm_access: 'registered' });
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    let wait = 0;
    // Retry-After: the failure back-off after each (250 ms, 0.5, 1, 2 s), in whole seconds,
    // at least 1.
    for (const [m, why, retryAfter] of [['error', /200 OK/, '1'], ['redirect', /200 OK/, '1'], ['not-json', /JSON/, '1'], ['not-a-key-set', /malformed/, '2']]) {
      mode = m;
      // After a failure the key server is not asked again before JWKS_FIRST_RETRY_MS,
      // doubled per failure in a row (502 at once meanwhile).
      await new Promise((ok) => setTimeout(ok, wait));
      wait = wait ? wait * 2 : JWKS_FIRST_RETRY_MS + 20;
      const r = await post(edge.batch, req, bearer(token));
      assert.equal(r.status, 502, `${m}: ${r.text}`);
      assert.equal(r.json.error.code, 'upstream_error', m);
      assert.match(r.json.error.message, /JWKS_URL/, m);
      assert.match(r.json.error.message, why, m);
      assert.equal(r.wwwAuthenticate, null, `${m}: not the caller's fault`);
      assert.equal(r.retryAfter, retryAfter, m);
    }
    // Once the keys are served again the same token passes: it was never the token.
    mode = 'ok';
    await new Promise((ok) => setTimeout(ok, wait));
    const r = await post(edge.batch, req, bearer(token));
    assert.equal(r.status, 200, r.text);
  });
});

describe('edge worker: a JWKS_URL whose answer is too large or never ends', () => {
  // The key server's answer is read at most MAX_JWKS_BYTES and within the fetch's timeout:
  // a huge or endless answer is the key server's failure (502 upstream_error with
  // Retry-After), not a body buffered whole in the isolate, nor a 401.
  let stack, edge, keys, mode = 'ok';

  before(async () => {
    keys = await rsaKeys('k1');
    stack = await jwksStack((req, res) => {
      res.on('error', () => {});
      if (mode === 'huge' || mode === 'declared') {
        // A valid key set followed by 4 MiB of JSON whitespace: one that is read whole parses.
        const text = JSON.stringify(keys.jwks);
        const headers = { 'content-type': 'application/json' };
        const size = 4 * 1024 * 1024;
        if (mode === 'declared') headers['content-length'] = String(size);
        res.writeHead(200, headers);
        res.write(text.slice(0, -1));
        const chunk = Buffer.alloc(64 * 1024, 0x20);
        let sent = text.length;
        const pump = () => {
          while (sent + chunk.length < size && !res.destroyed) {
            sent += chunk.length;
            if (!res.write(chunk)) return res.once('drain', pump);
          }
          if (!res.destroyed) res.end(' '.repeat(size - sent - 1) + '}');
        };
        return pump();
      }
      if (mode === 'endless') {
        // The headers and part of the body, then nothing.
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.write('{"keys":[');
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(keys.jwks));
    }, { changesPollMs: 0 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it(`answers 502 upstream_error for an answer over ${MAX_JWKS_BYTES} bytes (sent or declared) and one whose body never ends`, async () => {
    const token = await keys.sign({ tilewarm_access: 'registered' });
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    let wait = 0;
    for (const [m, why] of [
      ['huge', new RegExp(`its answer is more than ${MAX_JWKS_BYTES} bytes, at most ${MAX_JWKS_BYTES} are allowed`)],
      ['declared', new RegExp(`its answer is ${4 * 1024 * 1024} bytes, at most ${MAX_JWKS_BYTES} are allowed`)],
      ['endless', /request timed out/],
    ]) {
      mode = m;
      await new Promise((ok) => setTimeout(ok, wait));
      wait = wait ? wait * 2 : JWKS_FIRST_RETRY_MS + 20;
      const r = await post(edge.batch, req, bearer(token));
      assert.equal(r.status, 502, `${m}: ${r.text.slice(0, 300)}`);
      assert.equal(r.json.error.code, 'upstream_error', m);
      assert.match(r.json.error.message, /the keys at JWKS_URL could not be fetched or used/, m);
      assert.match(r.json.error.message, why, m);
      assert.equal(r.wwwAuthenticate, null, `${m}: not the caller's fault`);
      assert.equal(r.retryAfter, '1', m);
    }
    mode = 'ok';
    await new Promise((ok) => setTimeout(ok, wait));
    const r = await post(edge.batch, req, bearer(token));
    assert.equal(r.status, 200, r.text);
  });
});

describe('edge worker: a JWKS_URL that fails after it gave keys', () => {
  // Stale-if-error: the last key set fetched verifies tokens while the key server fails
  // (within JWKS_STALE_IF_ERROR_MS past its max age), and the failing server is asked again
  // only after JWKS_RETRY_AFTER_FAILURE_MS, not once per request.
  let stack, edge, keys, ks;

  before(async () => {
    keys = await rsaKeys('k1');
    ks = keyServer(keys, { up: true, status: 500 });
    stack = await jwksStack(ks.handle, { changesPollMs: 0, jwksCacheMaxAgeS: 1 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it('verifies with the last key set while the key server fails, asking it again at most every 30 s', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    const first = await post(edge.batch, req, bearer(await keys.sign({ tilewarm_access: 'registered' })));
    assert.equal(first.status, 200, first.text);
    // The set goes stale (1 s) and the key server goes down.
    await new Promise((r) => setTimeout(r, 1200));
    ks.up = false;
    const before = ks.asked;
    for (let i = 0; i < 5; i++) {
      // A new token each time: none is in the verified-token cache.
      const r = await post(edge.batch, req, bearer(await keys.sign({ tilewarm_access: 'registered', n: i })));
      assert.equal(r.status, 200, `token ${i}: ${r.text}`);
    }
    assert.equal(ks.asked - before, 1, 'the failing key server was asked once');
    // A token of a key the last set lacks (a key added since, say) is not refused as the
    // caller's: the set the key server failed to give may hold it. 502, as for the failure.
    const other = await rsaKeys('k9');
    const r = await post(edge.batch, req, bearer(await other.sign({ tilewarm_access: 'registered' })));
    assert.equal(r.status, 502, r.text);
    assert.equal(r.json.error.code, 'upstream_error');
    assert.match(r.json.error.message, /JWKS_URL.*no key of the last key set fetched matches the token's "kid", and the key server failed since/);
    assert.equal(r.wwwAuthenticate, null, 'not the caller\'s fault');
    assert.equal(ks.asked - before, 1, 'and not asked again for it');
  });
});

describe('edge worker: a JWKS_URL under a flood of tokens', () => {
  // The key server is asked at most once per failure backoff, whatever the callers send:
  // before, a key server that had never answered was fetched once per request (jose keeps
  // no failure, and the last-good-set rule needs a set), and a flood of tokens each with a
  // `kid` of its own must not fetch it once per token either.
  let stack, edge, keys, ks;

  before(async () => {
    keys = await rsaKeys('k1');
    ks = keyServer(keys, { up: false, status: 503 });
    stack = await jwksStack(ks.handle, { changesPollMs: 0 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it('asks a key server that never answered once per backoff, not once per request, and uses it once it is up', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    const token = await keys.sign({ tilewarm_access: 'registered' });
    const start = Date.now();
    const statuses = [];
    while (Date.now() - start < 1200 || statuses.length < 20) statuses.push((await post(edge.batch, req, bearer(token))).status);
    const elapsed = Date.now() - start;
    assert.ok(statuses.every((s) => s === 502), `statuses ${statuses}`);
    // Asked at the first request, then not before 250 ms, 500 ms, 1 s, 2 s … have passed
    // after each failure: at most 3 times within 1.75 s, one more per delay a slow machine
    // took longer than that.
    const allowed = 1 + [250, 750, 1750, 3750, 7750, 15750].filter((t) => t < elapsed).length;
    assert.ok(ks.asked <= allowed, `the key server was asked ${ks.asked} times for ${statuses.length} requests in ${elapsed} ms (at most ${allowed})`);
    // Back up: the next request after the retry delay (at most 2 s) asks it, and passes.
    ks.up = true;
    const before = ks.asked;
    let r;
    for (const end = Date.now() + 3000; Date.now() < end;) {
      r = await post(edge.batch, req, bearer(token));
      if (r.status === 200) break;
      assert.equal(r.status, 502, r.text);
      await new Promise((ok) => setTimeout(ok, 100));
    }
    assert.equal(r.status, 200, r.text);
    assert.equal(ks.asked - before, 1);
  });

  it('fetches the keys again at most once per cool-down for tokens whose kid it does not know', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    const before = ks.asked;
    const random = (i) => keys.sign({ tilewarm_access: 'registered', n: i }, { header: { kid: `r${i}-${Math.random()}` } });
    for (let i = 0; i < 20; i++) {
      const r = await post(edge.batch, req, bearer(await random(i)));
      assert.equal(r.status, 401, r.text);
    }
    const many = await Promise.all(Array.from({ length: 20 }, async (_, i) => post(edge.batch, req, bearer(await random(100 + i)))));
    assert.ok(many.every((r) => r.status === 401), many.map((r) => r.status).join());
    // The set was fetched just before (the test above), so it is within the 30 s cool-down.
    assert.equal(ks.asked - before, 0, `the key server was asked ${ks.asked - before} times for 40 unknown kids`);
  });
});

describe('edge worker: a JWKS_URL outage seen by many requests at once', () => {
  // Requests in flight together share one fetch of the keys (js/edge-auth.js, remoteKeys),
  // so one outage they all see is one failure in a row, not one per request (when each
  // asked itself, 10 of them made the retry delay 250 ms × 2^9, capped at 30 s).
  let stack, edge, keys, ks;

  before(async () => {
    keys = await rsaKeys('k1');
    // Slow to fail, so the requests' fetches are all in flight together.
    ks = keyServer(keys, { up: false, status: 503, delayMs: 500 });
    stack = await jwksStack(ks.handle, { changesPollMs: 0 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it('verifies again about the first retry delay after the key server is back, not 30 s', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    const tokens = await Promise.all(Array.from({ length: 10 }, (_, i) => keys.sign({ tilewarm_access: 'registered', n: i })));
    const during = await Promise.all(tokens.map((t) => post(edge.batch, req, bearer(t))));
    assert.ok(during.every((r) => r.status === 502), during.map((r) => r.status).join());
    // One fetch for the 10 (a count of 5 or more failures would make the delay at least 4 s).
    assert.equal(ks.asked, 1, `${ks.asked} of 10 requests asked the key server while it was down`);
    ks.up = true;
    const back = Date.now();
    let r;
    for (const end = back + 4000; Date.now() < end;) {
      r = await post(edge.batch, req, bearer(tokens[0]));
      if (r.status === 200) break;
      assert.equal(r.status, 502, r.text);
      // Every fetch since the outage succeeds: the count stays at the outage's one.
      assert.match(r.json.error.message, /\(1 failure in a row;/);
      await new Promise((ok) => setTimeout(ok, 50));
    }
    const waited = Date.now() - back;
    assert.equal(r.status, 200, `still refused ${waited} ms after the key server came back: ${r.text}`);
    assert.ok(waited < JWKS_FIRST_RETRY_MS + 1500, `verified again only after ${waited} ms (first retry delay ${JWKS_FIRST_RETRY_MS} ms)`);
  });
});

describe('edge worker: bursts of requests that need the JWKS_URL keys', () => {
  // At most one fetch of the keys in flight per isolate (js/edge-auth.js, remoteKeys): on
  // workerd jose shares none between requests, so each request of a burst that needed the
  // keys asked the key server itself (and each new set emptied the verified-token cache).
  // A slow key server (300 ms) keeps the requests of a burst in flight together. A cool-down
  // of 3 s (jwksCooldownS: counted from the fetch's start, it must outlast a burst and the
  // requests after it on a busy machine) and a max age of 6 s, so the test waits past both.
  let stack, edge, keys, ks;
  const req = { tiles: ['14/2624/5721'], access: 'registered' };
  const sleepUntil = (t) => new Promise((ok) => setTimeout(ok, Math.max(0, t - Date.now())));

  before(async () => {
    keys = await rsaKeys('k1');
    ks = keyServer(keys, { up: true, latencyMs: 300 });
    stack = await jwksStack(ks.handle, { changesPollMs: 0, jwksCacheMaxAgeS: 6, jwksCooldownS: 3 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it("fetches the keys once for a new isolate's first burst, every request waiting for that fetch", async () => {
    const tokens = await Promise.all(Array.from({ length: 20 }, (_, i) => keys.sign({ tilewarm_access: 'registered', n: i })));
    const rs = await Promise.all(tokens.map((t) => post(edge.batch, req, bearer(t))));
    assert.ok(rs.every((r) => r.status === 200), rs.map((r) => r.status).join());
    assert.equal(ks.asked, 1, `the key server was asked ${ks.asked} times for 20 requests at once`);
  });

  it('fetches the keys once for N concurrent tokens with unknown kids, past the cool-down', async () => {
    // The set is fresh (6 s) and the cool-down (3 s) over: an unknown kid may ask again.
    await sleepUntil(ks.answeredAt + 3200);
    const before = ks.asked;
    const random = (i) => keys.sign({ tilewarm_access: 'registered', n: i }, { header: { kid: `r${i}-${Math.random()}` } });
    const tokens = await Promise.all(Array.from({ length: 50 }, (_, i) => random(i)));
    const started = Date.now();
    const rs = await Promise.all(tokens.map((t) => post(edge.batch, req, bearer(t))));
    assert.ok(Date.now() - started < 2500, 'the machine was too slow for this test (the set went stale during it)');
    assert.ok(rs.every((r) => r.status === 401), rs.map((r) => r.status).join());
    assert.ok(rs.every((r) => /no key matches/.test(r.json.error.message)), rs[0].text);
    assert.equal(ks.asked - before, 1, `the key server was asked ${ks.asked - before} times for 50 unknown kids at once`);
    // Within the cool-down of that fetch, more unknown kids do not ask; a good token passes.
    const more = await Promise.all(Array.from({ length: 10 }, async (_, i) => post(edge.batch, req, bearer(await random(100 + i)))));
    assert.ok(more.every((r) => r.status === 401), more.map((r) => r.status).join());
    assert.equal(ks.asked - before, 1);
    assert.equal((await post(edge.batch, req, bearer(await keys.sign({ tilewarm_access: 'registered' })))).status, 200);
  });

  it('fetches the keys once for a burst after the set went stale (jwksCacheMaxAgeS)', async () => {
    await sleepUntil(ks.answeredAt + 6200);
    const before = ks.asked;
    const tokens = await Promise.all(Array.from({ length: 20 }, (_, i) => keys.sign({ tilewarm_access: 'registered', n: 200 + i })));
    const rs = await Promise.all(tokens.map((t) => post(edge.batch, req, bearer(t))));
    assert.ok(rs.every((r) => r.status === 200), rs.map((r) => r.status).join());
    assert.equal(ks.asked - before, 1, `the key server was asked ${ks.asked - before} times for 20 requests at once`);
  });
});

describe('edge worker: a JWKS_URL that fails when an unknown kid makes the edge ask again', () => {
  // A fresh set, the cool-down (1 s) over, and the key server down: the token whose kid made
  // the edge ask, and those with unknown kids after it, get 502 (their key may be in the set
  // that could not be fetched), not a 401 telling the caller to drop a good token; tokens
  // the set verifies pass.
  let stack, edge, keys, ks;

  before(async () => {
    keys = await rsaKeys('k1');
    ks = keyServer(keys, { up: true, status: 503 });
    stack = await jwksStack(ks.handle, { changesPollMs: 0, jwksCooldownS: 1 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it('answers 502 for an unknown kid after the fetch it caused failed, and verifies known ones', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    assert.equal((await post(edge.batch, req, bearer(await keys.sign({ tilewarm_access: 'registered' })))).status, 200);
    assert.equal(ks.asked, 1);
    ks.up = false;
    await new Promise((ok) => setTimeout(ok, 1200));
    const rotated = await rsaKeys('k2');
    for (let i = 0; i < 3; i++) {
      const r = await post(edge.batch, req, bearer(await rotated.sign({ tilewarm_access: 'registered', n: i })));
      assert.equal(r.status, 502, `${i}: ${r.text}`);
      assert.equal(r.json.error.code, 'upstream_error');
      assert.match(r.json.error.message, /no key of the last key set fetched matches the token's "kid", and the key server failed since: Expected 200 OK/);
      assert.equal(r.wwwAuthenticate, null);
      // The key server is asked again 30 s after the failure (the cool-down, 1 s, is over
      // sooner): the caller is told so.
      assert.ok(['29', '30'].includes(r.retryAfter), `${i}: Retry-After ${r.retryAfter}`);
    }
    assert.equal(ks.asked, 2, 'asked once, for the first of them');
    const known = await post(edge.batch, req, bearer(await keys.sign({ tilewarm_access: 'registered', n: 9 })));
    assert.equal(known.status, 200, known.text);
  });
});

describe('edge worker: the request fetching the JWKS_URL keys goes away', () => {
  // The requests waiting for another request's fetch of the keys wait on promises of their
  // own, which the fetching request resolves when its fetch ends. Its client leaving does
  // not leave them hanging: they are answered (here by the fetch's own timeout, 5 s: local
  // workerd lets the request run on; were it cancelled, by their own timers, a second later,
  // see the next test), and the next request fetches the keys itself.
  let stack, edge, keys, asked = 0;

  before(async () => {
    keys = await rsaKeys('k1');
    stack = await jwksStack((req, res) => {
      asked++;
      // The first fetch is never answered (its connection closes when workerd gives it up).
      if (asked === 1) return;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(keys.jwks));
    }, { changesPollMs: 0 });
    edge = stack.edge;
  });

  after(() => stack?.stop());

  it('answers the waiting requests within the fetch timeout and a margin, then fetches again', async () => {
    const req = { tiles: ['14/2624/5721'], access: 'registered' };
    const token = await keys.sign({ tilewarm_access: 'registered' });
    const start = Date.now();
    // The first request starts the fetch; its client leaves after 300 ms.
    const first = fetch(edge.batch, {
      method: 'POST', headers: bearer(token), body: JSON.stringify(req), signal: AbortSignal.timeout(300),
    }).then((r) => r.status, (e) => e.name);
    await new Promise((ok) => setTimeout(ok, 100));
    const waiting = await Promise.all(Array.from({ length: 5 }, async (_, i) => post(edge.batch, req, bearer(await keys.sign({ tilewarm_access: 'registered', n: i })))));
    const waited = Date.now() - start;
    assert.equal(await first, 'TimeoutError');
    for (const r of waiting) {
      assert.equal(r.status, 502, r.text);
      assert.match(r.json.error.message, /JWKS_URL could not be fetched or used: (request timed out|the fetch of the keys another request started did not finish)/);
    }
    assert.ok(waited < JWKS_FETCH_TIMEOUT_MS + JWKS_WAIT_MARGIN_MS + 1500, `answered after ${waited} ms`);
    assert.equal(asked, 1, 'the waiting requests did not ask the key server themselves');
    // After the first retry delay (the fetch timed out: one failure), the next one asks.
    await new Promise((ok) => setTimeout(ok, JWKS_FIRST_RETRY_MS + 50));
    const r = await post(edge.batch, req, bearer(token));
    assert.equal(r.status, 200, r.text);
    assert.equal(asked, 2);
  });
});

describe('createAuth with JWKS_URL: a fetch of the keys that never ends (js/edge-auth.js)', () => {
  // Under Node, with `fetch` replaced: the first fetch never settles and ignores its abort
  // signal, as a fetch of a request workerd cancelled (its continuations are dropped).
  it('lets the requests waiting for it give up after the fetch timeout and a margin, and the next one fetch again', async () => {
    const keys = await rsaKeys('k1');
    const realFetch = globalThis.fetch;
    let calls = 0;
    globalThis.fetch = async () => {
      calls++;
      if (calls === 1) return new Promise(() => {});
      return new Response(JSON.stringify(keys.jwks), { status: 200, headers: { 'content-type': 'application/json' } });
    };
    try {
      const auth = createAuth({ JWKS_URL: 'https://keys.example.com/jwks.json' });
      const request = async (n) => new Request('https://edge.example.com/v1/batch', {
        headers: { authorization: `Bearer ${await keys.sign({ tilewarm_access: 'registered', n })}` },
      });
      const start = Date.now();
      auth.tier(await request(0)).catch(() => {});
      const waiting = await Promise.allSettled([1, 2, 3].map(async (n) => auth.tier(await request(n))));
      const waited = Date.now() - start;
      for (const w of waiting) {
        assert.equal(w.status, 'rejected');
        assert.ok(w.reason instanceof KeysUnavailable, String(w.reason));
        assert.match(w.reason.message, new RegExp(`another request started did not finish within ${JWKS_FETCH_TIMEOUT_MS + JWKS_WAIT_MARGIN_MS} ms`));
      }
      const limit = JWKS_FETCH_TIMEOUT_MS + JWKS_WAIT_MARGIN_MS;
      assert.ok(waited >= limit - 100 && waited < limit + 1500, `gave up after ${waited} ms`);
      assert.equal(calls, 1, 'they did not fetch themselves meanwhile');
      // The fetch that never ended is over for the isolate: the next request fetches again.
      assert.equal(await auth.tier(await request(4)), 'registered');
      assert.equal(calls, 2);
    } finally {
      globalThis.fetch = realFetch;
    }
  });
});

describe('createAuth with JWKS_URL: an answer too large (js/edge-auth.js)', () => {
  // Under Node, with `fetch` and `Date.now` replaced. The key server's answer is read at
  // most MAX_JWKS_BYTES; past it, it is the key server's failure (KeysUnavailable: a 502,
  // stale-if-error and the back-off), never the caller's token (401).
  const realFetch = globalThis.fetch, realNow = Date.now;
  let offset = 0, answer, calls = 0;

  before(() => {
    Date.now = () => realNow() + offset;
    globalThis.fetch = async (url, init) => {
      calls++;
      return answer(init);
    };
  });

  after(() => {
    globalThis.fetch = realFetch;
    Date.now = realNow;
  });

  /** A key set's JSON text padded with whitespace to `size` bytes, as one chunk or in 1 KiB
   * chunks (no content-length), or declaring its length. */
  const padded = (jwks, size, { chunked = false, declared = false } = {}) => () => {
    const text = JSON.stringify(jwks);
    const bytes = new TextEncoder().encode(text.slice(0, -1) + ' '.repeat(size - text.length) + '}');
    assert.equal(bytes.byteLength, size);
    const headers = { 'content-type': 'application/json' };
    if (declared) headers['content-length'] = String(size);
    if (!chunked) return new Response(bytes, { status: 200, headers });
    let at = 0;
    const body = new ReadableStream({
      pull(c) {
        if (at >= bytes.byteLength) return c.close();
        c.enqueue(bytes.slice(at, at + 1024));
        at += 1024;
      },
    });
    return new Response(body, { status: 200, headers });
  };
  const request = async (signer, n) => new Request('https://edge.example.com/v1/batch', {
    headers: { authorization: `Bearer ${await signer.sign({ tilewarm_access: 'registered', n })}` },
  });
  const refused = async (auth, req) => {
    const e = await auth.tier(req).then((t) => assert.fail(`verified as ${t}`), (err) => err);
    assert.ok(e instanceof KeysUnavailable, String(e));
    return e;
  };

  it(`refuses an answer over ${MAX_JWKS_BYTES} bytes as the key server's failure, whole, chunked or declared`, async () => {
    const keys = await rsaKeys('k1');
    offset = 0;
    calls = 0;
    const auth = createAuth({ JWKS_URL: 'https://keys.example.com/big.json' }, { jwksCacheMaxAgeS: 60 });
    answer = padded(keys.jwks, MAX_JWKS_BYTES + 1);
    let e = await refused(auth, await request(keys, 0));
    assert.match(e.message, new RegExp(`JWKS_URL could not be fetched or used: its answer is more than ${MAX_JWKS_BYTES} bytes, at most ${MAX_JWKS_BYTES} are allowed`));
    assert.equal(e.retryAfterS, 1, 'the failure back-off (250 ms)');
    offset += 1000;
    answer = padded(keys.jwks, 4 * 1024 * 1024, { chunked: true });
    e = await refused(auth, await request(keys, 1));
    assert.match(e.message, new RegExp(`more than ${MAX_JWKS_BYTES} bytes`));
    offset += 1000;
    answer = padded(keys.jwks, 4 * 1024 * 1024, { declared: true });
    e = await refused(auth, await request(keys, 2));
    assert.match(e.message, new RegExp(`its answer is ${4 * 1024 * 1024} bytes, at most ${MAX_JWKS_BYTES} are allowed`));
    assert.equal(calls, 3);
    // At the limit it is a key set like any other.
    offset += 5000;
    answer = padded(keys.jwks, MAX_JWKS_BYTES, { chunked: true });
    assert.equal(await auth.tier(await request(keys, 3)), 'registered');
    // Once the set is stale, a refetch answered too large leaves the last set verifying
    // (stale-if-error), the key server asked once.
    offset += 61_000;
    answer = padded(keys.jwks, MAX_JWKS_BYTES + 1, { chunked: true });
    assert.equal(await auth.tier(await request(keys, 4)), 'registered');
    assert.equal(await auth.tier(await request(keys, 5)), 'registered');
    assert.equal(calls, 5);
  });
});

describe('createAuth with JWKS_URL: the Retry-After of its 502s (js/edge-auth.js)', () => {
  // Under Node, with `fetch` and `Date.now` replaced (jose and remoteKeys read the clock
  // through Date.now; the tokens' exp is far enough ahead for the minutes moved here). A 502
  // of the key source says, in whole seconds and at least 1, when a fetch of the keys may be
  // tried next for that request: the failure back-off counted from the last failure, and
  // for a token whose kid the fresh set lacks the cool-down counted from the last attempt.
  // Fails when KeysUnavailable carries no wait, or the wait ignores either rule.
  const realFetch = globalThis.fetch, realNow = Date.now;
  let offset = 0, up = true, calls = 0;
  let keys;

  before(async () => {
    keys = await rsaKeys('k1');
    Date.now = () => realNow() + offset;
    globalThis.fetch = async () => {
      calls++;
      if (!up) return new Response('the key server is down', { status: 503 });
      return new Response(JSON.stringify(keys.jwks), { status: 200, headers: { 'content-type': 'application/json' } });
    };
  });

  after(() => {
    globalThis.fetch = realFetch;
    Date.now = realNow;
  });

  const request = async (signer, n) => new Request('https://edge.example.com/v1/batch', {
    headers: { authorization: `Bearer ${await signer.sign({ tilewarm_access: 'registered', n })}` },
  });
  /** The KeysUnavailable `auth.tier(req)` throws. */
  const refused = async (auth, req) => {
    const e = await auth.tier(req).then((t) => assert.fail(`verified as ${t}`), (err) => err);
    assert.ok(e instanceof KeysUnavailable, String(e));
    return e;
  };

  it('with no set to fall back on: the failure back-off left, 250 ms doubling to 30 s', async () => {
    offset = 0; up = false; calls = 0;
    const auth = createAuth({ JWKS_URL: 'https://keys.example.com/a.json' });
    // Each try once the back-off is over fails again: 250 ms, 0.5, 1, 2, 4, 8, 16, 30 s.
    for (const [i, want] of [1, 1, 1, 2, 4, 8, 16, 30, 30].entries()) {
      const e = await refused(auth, await request(keys, i));
      assert.equal(e.retryAfterS, want, `failure ${i + 1}: ${e.message}`);
      assert.equal(calls, i + 1);
      offset += want * 1000;
    }
    // Asked within the back-off: what is left of it (30 s, 12 s ago).
    offset -= 30_000 - 12_000;
    const e = await refused(auth, await request(keys, 99));
    assert.match(e.message, /asked again in/);
    assert.equal(e.retryAfterS, 18);
    assert.equal(calls, 9, 'not asked within the back-off');
  });

  it('for a kid the fresh set lacks after a failed fetch: the later of the cool-down and the failure back-off', async () => {
    offset = 0; up = true; calls = 0;
    const auth = createAuth({ JWKS_URL: 'https://keys.example.com/b.json' }, { jwksCooldownS: 120 });
    assert.equal(await auth.tier(await request(keys, 0)), 'registered');
    assert.equal(calls, 1);
    const rotated = await rsaKeys('k2');
    // Within the cool-down, the set being the key server's last answer: the caller's (401).
    await assert.rejects(auth.tier(await request(rotated, 1)), (e) => !(e instanceof KeysUnavailable));
    // Past the cool-down the unknown kid makes the edge ask, and the key server is down:
    // the next fetch for such a token is the cool-down (120 s) away, after the back-off (30 s).
    offset = 121_000; up = false;
    let e = await refused(auth, await request(rotated, 2));
    assert.match(e.message, /no key of the last key set fetched matches/);
    assert.equal(e.retryAfterS, 120);
    assert.equal(calls, 2);
    // 40 s later: 80 s of the cool-down left, not asked again.
    offset += 40_000;
    e = await refused(auth, await request(rotated, 3));
    assert.equal(e.retryAfterS, 80);
    assert.equal(calls, 2);
    // The set still verifies its own keys meanwhile.
    assert.equal(await auth.tier(await request(keys, 4)), 'registered');
  });

  it('for a stale set whose key server fails: the 30 s until it is asked again', async () => {
    offset = 0; up = true; calls = 0;
    const auth = createAuth({ JWKS_URL: 'https://keys.example.com/c.json' }, { jwksCacheMaxAgeS: 60, jwksCooldownS: 3600 });
    assert.equal(await auth.tier(await request(keys, 0)), 'registered');
    offset = 61_000; up = false;
    // The stale set verifies its own keys (stale-if-error), the failing server asked once.
    assert.equal(await auth.tier(await request(keys, 1)), 'registered');
    assert.equal(calls, 2);
    offset += 5_000;
    // The set is not fresh: no cool-down applies (a refetch is due anyway), only the 30 s
    // back-off after the failure, 5 s ago.
    const e = await refused(auth, await request(await rsaKeys('k3'), 2));
    assert.equal(e.retryAfterS, 25);
    assert.equal(calls, 2);
  });
});

describe('VerifiedTokens (js/edge-auth.js)', () => {
  const keys = {};

  it('keeps a token until jose would call it expired, with the leeway', () => {
    const c = new VerifiedTokens(10, 30);
    assert.equal(c.get('t', keys, 0), undefined);
    c.set('t', keys, 'agent', 1000);
    // jose: expired once exp <= floor(now / 1000) - leeway.
    assert.equal(c.get('t', keys, 1029_999), 'agent');
    assert.equal(c.get('t', keys, 1030_000), undefined);
    assert.equal(c.size, 0, 'an expired entry is dropped');
  });

  it('matches the exact token only, and forgets everything when the keys change', () => {
    const c = new VerifiedTokens(10, 0);
    c.get('x', keys, 0);
    c.set('a.b.c', keys, 'verified', 100);
    assert.equal(c.get('a.b.C', keys, 0), undefined);
    assert.equal(c.get('a.b.c ', keys, 0), undefined);
    assert.equal(c.get('a.b.c', keys, 0), 'verified');
    const other = {};
    assert.equal(c.get('a.b.c', other, 0), undefined);
    assert.equal(c.size, 0);
    // An entry verified with the old keys is not taken after the change.
    c.set('a.b.c', keys, 'verified', 100);
    assert.equal(c.get('a.b.c', other, 0), undefined);
  });

  it('holds at most its size, dropping the least recently used; 0 holds nothing', () => {
    const c = new VerifiedTokens(2, 0);
    c.get('x', keys, 0);
    c.set('a', keys, 'public', 100);
    c.set('b', keys, 'public', 100);
    assert.equal(c.get('a', keys, 0), 'public');
    c.set('c', keys, 'public', 100);
    assert.equal(c.size, 2);
    assert.equal(c.get('b', keys, 0), undefined, 'b was the least recently used');
    assert.equal(c.get('a', keys, 0), 'public');
    assert.equal(c.get('c', keys, 0), 'public');
    const off = new VerifiedTokens(0, 0);
    off.get('x', keys, 0);
    off.set('a', keys, 'public', 100);
    assert.equal(off.size, 0);
    const long = new VerifiedTokens(2, 0);
    long.get('x', keys, 0);
    long.set('t'.repeat(MAX_CACHED_TOKEN_CHARS + 1), keys, 'public', 100);
    assert.equal(long.size, 0, 'a very long token is verified every time');
  });
});
