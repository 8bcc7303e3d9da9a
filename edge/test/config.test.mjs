// The schemes the edge worker takes for ORIGIN and JWKS_URL: https, or plain http only to a
// loopback host (127.0.0.0/8, ::1, localhost) unless the option allowInsecureOrigin is true;
// anything else is a configuration error (every request a 500 naming the binding). The rule
// itself (js/edge-auth.js, checkedUrl) over many hosts, then the worker under workerd:
// refused, taken on 127.0.0.2 (a loopback address other than 127.0.0.1, an origin and a key
// server listening there), and taken anywhere with the option.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import { generateKeyPair, exportJWK } from 'jose';
import { Misconfigured, Unauthorized, checkedUrl, createAuth, isLoopback } from '../../js/edge-auth.js';
import { post, serverAuthArgs, startServer, startWorkerd } from './support/stack.mjs';
import { SECRET, bearer, ecKeys, rsaKeys, serviceToken } from './support/tokens.mjs';

const ALLOWED = /must be an https URL \(plain http only to a loopback host: 127\.0\.0\.0\/8, ::1, localhost; or to any host with the option allowInsecureOrigin: true\)/;

describe('jwtLeewayS (js/edge-auth.js, createAuth)', () => {
  it("takes 0 to 600 seconds, the server's --jwt-leeway-s range, and names the range otherwise", () => {
    for (const s of [0, 30, 600]) assert.ok(createAuth({ JWT_SECRET: SECRET }, { jwtLeewayS: s }).configured, String(s));
    for (const s of [-1, 601, 1.5, '30']) {
      assert.throws(() => createAuth({ JWT_SECRET: SECRET }, { jwtLeewayS: s }),
        new RegExp(`^Error: jwtLeewayS must be an integer from 0 to 600 seconds, got ${JSON.stringify(s)}$`.replace(/[.]/g, '\\.')), String(s));
    }
  });
});

describe('jwksCooldownS (js/edge-auth.js, createAuth)', () => {
  it('takes 1 to 3600 seconds and names the range otherwise', () => {
    const env = { JWKS_URL: 'https://keys.example.com/jwks.json' };
    for (const s of [1, 30, 3600]) assert.ok(createAuth(env, { jwksCooldownS: s }).configured, String(s));
    for (const s of [0, -1, 3601, 1.5, '30']) {
      assert.throws(() => createAuth(env, { jwksCooldownS: s }),
        new RegExp(`^Error: jwksCooldownS must be an integer from 1 to 3600 seconds, got ${JSON.stringify(s)}$`.replace(/[.]/g, '\\.')), String(s));
    }
  });
});

describe('jwksCacheMaxAgeS (js/edge-auth.js, createAuth)', () => {
  it("takes 1 to 86400 seconds, the server's --jwks-max-age-s range, and names the range otherwise", () => {
    const env = { JWKS_URL: 'https://keys.example.com/jwks.json' };
    for (const s of [1, 600, 86400]) assert.ok(createAuth(env, { jwksCacheMaxAgeS: s }).configured, String(s));
    for (const s of [0, -1, 86401, 1e9, 1.5, '600']) {
      assert.throws(() => createAuth(env, { jwksCacheMaxAgeS: s }),
        new RegExp(`^Error: jwksCacheMaxAgeS must be an integer from 1 to 86400 seconds, got ${JSON.stringify(s)}$`.replace(/[.]/g, '\\.')), String(s));
    }
  });
});

describe('the JWKS binding (js/edge-auth.js, createAuth)', () => {
  const request = (token) => new Request('http://edge.test/v1/batch', { headers: { authorization: `Bearer ${token}` } });

  it('refuses an RSA key no token could be verified with, naming it and what is wrong, as the server does', async () => {
    const rsa = await rsaKeys('k1');
    const n = Buffer.from(rsa.jwk.n, 'base64url');
    const b64 = (bytes) => Buffer.from(bytes).toString('base64url');
    const even = Uint8Array.from(n);
    even[even.length - 1] &= 0xfe;
    for (const [member, value, says] of [
      ['n', b64(n.subarray(0, 128)), 'the modulus (n) is 1024 bits: RSA keys of 2048 to 8192 bits are allowed'],
      ['n', b64(new Uint8Array(1025).fill(0xff)), 'the modulus (n) is 8200 bits'],
      ['n', 'not*base64', 'n and e must be base64url without padding'],
      ['n', `${rsa.jwk.n}=`, 'n and e must be base64url without padding'],
      // 257 with the last symbol's unused bits set (AQE is the encoding): the server's
      // decoder refuses it, so the edge does too.
      ['e', 'AQF', 'n and e must be base64url without padding'],
      ['n', b64([0, ...n]), 'no leading zero'],
      ['n', b64(even), 'the modulus (n) is even'],
      ['e', b64([1]), 'the exponent (e) is 1: an odd number from 3 to 2^33 - 1 is allowed'],
      ['e', b64([1, 0, 0]), 'the exponent (e) is 65536'],
      ['e', b64([2, 0, 0, 0, 1]), 'the exponent (e) is 8589934593'],
      ['e', b64([1, 1, 1, 1, 1, 1]), 'the exponent (e) is 6 octets long'],
    ]) {
      const keys = [rsa.jwk, { ...rsa.jwk, kid: 'broken-1', [member]: value }];
      assert.throws(() => createAuth({ JWKS: JSON.stringify({ keys }) }), (e) => {
        assert.ok(e.message.startsWith('JWKS key 1 (kid "broken-1") (RSA): '), e.message);
        assert.ok(e.message.includes(says), e.message);
        return true;
      }, `${member}: ${says}`);
    }
    // The largest modulus and exponent allowed are taken (as a key: no token is signed here).
    const big = { ...rsa.jwk, n: b64(new Uint8Array(1024).fill(0xff)), e: b64([1, 255, 255, 255, 255]) };
    assert.ok(createAuth({ JWKS: JSON.stringify({ keys: [big] }) }).configured);
  });

  it('refuses a set no token could pass, naming the key: none, a private one, an unknown type, one lacking a member', async () => {
    const rsa = await rsaKeys('k1');
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const ecPrivate = { ...(await exportJWK(privateKey)), kid: 'e1' };
    const { x, y } = ecPrivate;
    for (const [keys, what] of [
      [[], /^JWKS holds no keys: every token would be refused$/],
      [[{ ...rsa.jwk, n: undefined }], /^JWKS key 0 \(kid "k1"\) \(RSA\) lacks "n"$/],
      [[rsa.jwk, ecPrivate], /^JWKS key 1 \(kid "e1"\) is a private key \("d"\): JWKS must hold public keys only$/],
      [[{ kty: 'XX', kid: 'x' }], /^JWKS key 0 \(kid "x"\) has kty "XX": it must be "RSA", "EC" or "OKP"$/],
      [[5], /^JWKS key 0 must be a JSON Web Key object$/],
      [[{ ...rsa.jwk, use: 'enc' }, { kty: 'EC', crv: 'P-521', x, y }], /^JWKS has no key that can verify tokens: /],
    ]) {
      assert.throws(() => createAuth({ JWKS: JSON.stringify({ keys }) }), (e) => {
        assert.match(e.message, what);
        return true;
      }, JSON.stringify(keys).slice(0, 80));
    }
    // A key for encryption beside one for signatures is taken (an identity provider's set).
    const auth = createAuth({ JWKS: JSON.stringify({ keys: [{ ...rsa.jwk, kid: 'enc', use: 'enc' }, rsa.jwk] }) });
    assert.equal(await auth.tier(request(await rsa.sign({ tilewarm_access: 'agent' }))), 'agent');
    // So is one of a type the edge does not verify with (jose's ML-DSA "AKP"), or one lacking
    // a member, beside one that can verify: left aside (RFC 7517, section 5), not the whole
    // set refused, which refused every key of an identity provider that adds a new type.
    const mixed = [{ kty: 'AKP', alg: 'ML-DSA-44', pub: 'AAAA', kid: 'pq' }, { kty: 'XX', kid: 'x' }, { ...rsa.jwk, kid: 'k0', e: undefined }, rsa.jwk];
    const taken = createAuth({ JWKS: JSON.stringify({ keys: mixed }) });
    assert.equal(await taken.tier(request(await rsa.sign({ tilewarm_access: 'agent' }))), 'agent');
  });

  it("is the edge's fault, not the caller's, when its key cannot be imported: Misconfigured, not a 401", async () => {
    // An RSA key no token could verify with is refused at setup (createAuth, like the
    // server at start); an EC key whose point is not on its curve passes that check and
    // fails only when the runtime imports it, for the first token that selects it.
    const rsa = await rsaKeys('k1');
    assert.throws(() => createAuth({ JWKS: JSON.stringify({ keys: [{ ...rsa.jwk, n: 'AAAA' }] }) }),
      /^Error: JWKS key 0 \(kid "k1"\) \(RSA\): n and e must be unsigned big-endian integers/);
    const ec = await ecKeys('k1');
    const token = await ec.sign({ tilewarm_access: 'agent' });
    const auth = createAuth({ JWKS: JSON.stringify({ keys: [ec.offCurve] }) });
    await assert.rejects(auth.tier(request(token)), (e) => {
      assert.ok(e instanceof Misconfigured, `${e?.constructor?.name}: ${e?.message}`);
      assert.match(e.message, /^a key of the JWKS binding cannot verify tokens: /);
      assert.ok(!e.message.includes(token.split('.')[2]), 'no part of the token');
      return true;
    });
    // A token the key set has no key for is still the caller's: a 401.
    const other = await (await rsaKeys('k2')).sign({ tilewarm_access: 'agent' });
    await assert.rejects(createAuth({ JWKS: JSON.stringify(rsa.jwks) }).tier(request(other)), Unauthorized);
  });

  it('makes the worker of pkg/edge.js answer 500 naming the binding, at setup or for a token its key cannot verify', async () => {
    const { createWorker } = await import('./support/node-worker.mjs');
    const rsa = await rsaKeys('k1');
    const ec = await ecKeys('k1');
    const answer = async (keys, token) => {
      const env = { ORIGIN: 'https://api.example.com/v1/batch', JWKS: JSON.stringify({ keys }), TILEWARM_OPTIONS: '{"changesPollMs":0}' };
      const r = await createWorker().fetch(new Request('http://edge.test/v1/batch', {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: '{"tiles":["14/2624/5721"]}',
      }), env, { waitUntil() {} });
      return { status: r.status, json: await r.json() };
    };
    for (const [keys, what] of [
      [[], /^the edge worker is misconfigured: JWKS holds no keys/],
      [[{ ...rsa.jwk, n: 'AAAA' }], /^the edge worker is misconfigured: JWKS key 0 \(kid "k1"\) \(RSA\): n and e must be/],
      [[ec.offCurve], /^the edge worker is misconfigured: a key of the JWKS binding cannot verify tokens: /],
    ]) {
      const r = await answer(keys, await (keys[0]?.kty === 'EC' ? ec : rsa).sign({ tilewarm_access: 'agent' }));
      assert.equal(r.status, 500, JSON.stringify(r.json));
      assert.equal(r.json.error.code, 'internal');
      assert.match(r.json.error.message, what);
    }
  });
});

describe('checkedUrl (js/edge-auth.js)', () => {
  it('takes https anywhere and plain http to loopback hosts only', () => {
    for (const u of [
      'https://api.example.com/v1/batch', 'https://10.0.0.1/v1/batch',
      'http://127.0.0.1:8080/v1/batch', 'http://127.0.0.2/v1/batch', 'http://127.255.255.254/',
      'http://localhost:8080/v1/batch', 'http://LOCALHOST/', 'http://[::1]:8080/v1/batch',
      // Other spellings of loopback addresses, which URL writes in dotted decimal.
      'http://127.1/', 'http://2130706434/', 'http://0x7f000003/',
    ]) {
      assert.equal(checkedUrl('ORIGIN', u).href, new URL(u).href, u);
    }
    for (const u of [
      'http://api.example.com/v1/batch', 'http://128.0.0.1/', 'http://126.255.255.255/', 'http://10.0.0.1/',
      'http://192.168.1.10/', 'http://0.0.0.0/', 'http://127.0.0.1.nip.io/', 'http://localhost.example.com/',
      'http://[::2]/', 'http://[::ffff:127.0.0.1]/', 'http://127.0.0.1@example.com/',
    ]) {
      assert.throws(() => checkedUrl('ORIGIN', u), (e) => {
        assert.match(e.message, /^ORIGIN /, u);
        assert.match(e.message, ALLOWED, u);
        assert.match(e.message, new RegExp(`got http://${new URL(u).host.replace(/[.[\]]/g, '\\$&')}$`), u);
        return true;
      }, u);
    }
  });

  it('takes plain http to any host with allowInsecureOrigin, and never another scheme', () => {
    assert.equal(checkedUrl('JWKS_URL', 'http://keys.example.com/jwks.json', true).host, 'keys.example.com');
    for (const [u, why] of [
      ['ftp://127.0.0.1/x', /got a ftp: URL$/], ['file:///etc/passwd', /got a file: URL$/],
      ['ws://localhost/', /got a ws: URL$/], ['api.example.com/v1/batch', /which is not an absolute URL$/],
    ]) {
      for (const insecure of [false, true]) {
        assert.throws(() => checkedUrl('JWKS_URL', u, insecure), (e) => {
          assert.match(e.message, /^JWKS_URL must be an https URL/);
          assert.match(e.message, why);
          return true;
        }, `${u} ${insecure}`);
      }
    }
    for (const v of [undefined, null, '']) {
      assert.throws(() => checkedUrl('ORIGIN', v), /^Error: ORIGIN is not set: it must be an https URL/);
    }
  });

  it('isLoopback: 127.0.0.0/8, ::1 and localhost as URL writes them', () => {
    for (const h of ['127.0.0.1', '127.0.0.2', '127.9.8.7', 'localhost', '[::1]']) assert.ok(isLoopback(h), h);
    for (const h of ['128.0.0.1', '1.127.0.0', 'localhost.', 'x.localhost', '::1', '[::]', '127.0.0.1.example.com']) {
      assert.ok(!isLoopback(h), h);
    }
  });
});

describe('TILEWARM_OPTIONS (the worker of pkg/edge.js under Node)', () => {
  /** The first request's answer with `options` as the TILEWARM_OPTIONS binding. */
  async function answer(options) {
    const { createWorker } = await import('./support/node-worker.mjs');
    const env = { ORIGIN: 'https://api.example.com/v1/batch', TILEWARM_OPTIONS: options };
    const r = await createWorker().fetch(new Request('http://edge.test/healthz'), env, { waitUntil() {} });
    return { status: r.status, text: await r.text() };
  }

  it('refuses text that is not a JSON object, naming the binding (null and 5 were silently no options)', async () => {
    for (const [options, what] of [
      ['maxItems: 5', /^TILEWARM_OPTIONS is not JSON: /],
      ['null', /^TILEWARM_OPTIONS must be a JSON object of options, got "null"$/],
      ['5', /^TILEWARM_OPTIONS must be a JSON object of options, got "5"$/],
      ['[1]', /^TILEWARM_OPTIONS must be a JSON object of options, got "\[1\]"$/],
      [{ maxItems: 5 }, /^TILEWARM_OPTIONS must be the JSON text of an object of options, got a value of type object$/],
    ]) {
      const r = await answer(options);
      assert.equal(r.status, 500, `${options}: ${r.text}`);
      const { message } = JSON.parse(r.text).error;
      assert.match(message.replace(/^the edge worker is misconfigured: /, ''), what, String(options));
    }
    assert.equal((await answer('{}')).status, 200);
  });

  it('names a bad option as written, in its units, and refuses a timeout of 0', async () => {
    for (const [options, what] of [
      ['{"maxItems":-1}', 'maxItems: invalid value: integer `-1`, expected usize'],
      ['{"splicedHits":"yes"}', 'splicedHits: invalid type: string "yes", expected a boolean'],
      ['{"splitLevels":9}', 'splitLevels must be in 0..=8 and at most tileZoom, got 9'],
      ['{"defaultTtl":0}', 'defaultTtl must be at least 1, got 0'],
      ['{"originTimeoutMs":0}', 'originTimeoutMs must be in 1..=600000 ms, got 0'],
      ['{"sharedCacheTimeoutMs":0}', 'sharedCacheTimeoutMs must be in 1..=600000 ms, got 0'],
    ]) {
      const r = await answer(options);
      assert.equal(r.status, 500, `${options}: ${r.text}`);
      assert.equal(JSON.parse(r.text).error.message, `the edge worker is misconfigured: tilewarm edge options: ${what}`);
    }
  });
});

/** An HTTP server on `host` (a loopback address) answering with `handler`. */
async function listen(host, handler) {
  const server = createHttpServer(handler);
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, host, ok);
  });
  const { port } = server.address();
  return {
    url: `http://${host}:${port}`,
    close() {
      server.closeAllConnections?.();
      return new Promise((ok) => server.close(() => ok()));
    },
  };
}

describe('edge worker: ORIGIN and JWKS_URL schemes under workerd', () => {
  let server, origin, keyServer, keys, originToken;
  const edges = [];
  let originCalls = 0, keyCalls = 0;

  before(async () => {
    server = await startServer(await serverAuthArgs(SECRET));
    originToken = await serviceToken('agent');
    // The origin at 127.0.0.2: a forwarder to tilewarm-server (which listens on 127.0.0.1).
    origin = await listen('127.0.0.2', async (req, res) => {
      originCalls++;
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const r = await fetch(`${server.url}${req.url}`, {
        method: req.method,
        headers: {
          'content-type': 'application/json', accept: req.headers.accept ?? '*/*',
          ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
        },
        body: req.method === 'POST' ? Buffer.concat(chunks) : undefined,
      });
      res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
      res.end(Buffer.from(await r.arrayBuffer()));
    });
    keys = await rsaKeys('k1');
    keyServer = await listen('127.0.0.2', (req, res) => {
      keyCalls++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(keys.jwks));
    });
  });

  after(async () => {
    for (const e of edges) await e.stop();
    await origin?.close();
    await keyServer?.close();
    await server?.stop();
  });

  async function edge(originUrl, options = {}, env = {}, misconfigured = false) {
    const e = await startWorkerd(originUrl, { warmRing: 0, changesPollMs: 0, originTimeoutMs: 1000, ...options },
      { TILEWARM_ORIGIN_TOKEN: originToken, ...env }, { misconfigured });
    edges.push(e);
    return e;
  }

  /** Every route answers 500 internal naming what is wrong. */
  async function refused(e, what) {
    const r = await post(e.batch, { tiles: ['14/2624/5721'] });
    assert.equal(r.status, 500, r.text);
    assert.equal(r.json.error.code, 'internal');
    assert.match(r.json.error.message, /^the edge worker is misconfigured: /);
    assert.match(r.json.error.message, what);
    assert.equal((await fetch(`${e.url}/healthz`)).status, 500, 'healthz says so too');
  }

  it('refuses an http ORIGIN of another host, naming the binding and what is allowed', async () => {
    const e = await edge('http://api.example.com/v1/batch', {}, {}, true);
    await refused(e, /ORIGIN must be an https URL/);
    await refused(e, ALLOWED);
    await refused(e, /got http:\/\/api\.example\.com$/);
  });

  it('refuses an ORIGIN that is not set or not http(s), and an allowInsecureOrigin that is not a boolean', async () => {
    await refused(await edge(undefined, {}, {}, true), /ORIGIN is not set/);
    await refused(await edge('ftp://127.0.0.1/v1/batch', {}, {}, true), /ORIGIN must be an https URL .* got a ftp: URL$/);
    await refused(await edge('http://127.0.0.1:9/v1/batch', { allowInsecureOrigin: 'yes' }, {}, true),
      /allowInsecureOrigin must be true or false, got "yes"/);
  });

  it('refuses an ORIGIN_TOKEN that is no bearer token (whitespace), without echoing it', async () => {
    for (const token of ['   ', `${originToken}\n`, 'two words']) {
      const e = await edge(`${origin.url}/v1/batch`, {}, { TILEWARM_ORIGIN_TOKEN: token }, true);
      await refused(e, /ORIGIN_TOKEN must be a bearer token \(visible ASCII characters, no space\), got \d+ characters with whitespace/);
      const r = await post(e.batch, { tiles: ['14/2624/5721'] });
      assert.ok(!r.text.includes(token.trim() || '   '), 'the token is not in the answer');
    }
  });

  it('takes an http ORIGIN on 127.0.0.2 (loopback) and answers from it', async () => {
    const e = await edge(`${origin.url}/v1/batch`);
    const before = originCalls;
    const r = await post(e.batch, { tiles: ['14/2624/5721'] });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.cache, 'miss');
    assert.ok(r.json.items.length > 0);
    assert.equal(originCalls, before + 1, 'the origin on 127.0.0.2 was asked');
  });

  it('takes an http ORIGIN of another host with allowInsecureOrigin: true', async () => {
    // A port nobody listens on, on an address of the documentation range: the worker is
    // configured (healthz ok) and its request fails at the origin (502/504), not as a
    // misconfiguration (500).
    const e = await edge('http://192.0.2.1:9/v1/batch', { allowInsecureOrigin: true });
    assert.equal((await fetch(`${e.url}/healthz`)).status, 200);
    const r = await post(e.batch, { tiles: ['14/2624/5721'] });
    assert.ok(r.status === 502 || r.status === 504, `${r.status} ${r.text}`);
    assert.match(r.json.error.code, /^upstream_/);
  });

  it('refuses an http JWKS_URL of another host; takes one on 127.0.0.2, and anywhere with allowInsecureOrigin', async () => {
    await refused(await edge(`${origin.url}/v1/batch`, {}, { TILEWARM_JWKS_URL: 'http://keys.example.com/jwks.json' }, true),
      /JWKS_URL must be an https URL .* got http:\/\/keys\.example\.com$/);
    // On 127.0.0.2: the keys are fetched from there and a token signed with them passes.
    const local = await edge(`${origin.url}/v1/batch`, {}, { TILEWARM_JWKS_URL: `${keyServer.url}/jwks.json` });
    const token = await keys.sign({ tilewarm_access: 'registered' });
    const r = await post(local.batch, { tiles: ['14/2624/5721'], access: 'registered' }, bearer(token));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.access, 'registered');
    assert.equal(keyCalls, 1, 'the key server on 127.0.0.2 was asked');
    // Another host with the option: configured (a caller without a token is served).
    const anywhere = await edge(`${origin.url}/v1/batch`, { allowInsecureOrigin: true }, { TILEWARM_JWKS_URL: 'http://keys.example.com/jwks.json' });
    const p = await post(anywhere.batch, { tiles: ['14/2624/5721'] });
    assert.equal(p.status, 200, p.text);
  });
});

describe('edge worker: an ORIGIN that redirects (under workerd)', () => {
  // The worker must not follow a redirect of the origin (nor of its change feed): the
  // request would go, with ORIGIN_TOKEN, to a URL nobody configured, past the rule above.
  // tilewarm-server does not follow its upstream's either.
  let server, target, redirector, originToken;
  const reached = [];
  const edges = [];

  before(async () => {
    server = await startServer(await serverAuthArgs(SECRET));
    originToken = await serviceToken('agent');
    // Where the redirects point: a forwarder to tilewarm-server that would answer items.
    target = await listen('127.0.0.2', async (req, res) => {
      reached.push({ method: req.method, url: req.url, authorization: req.headers.authorization });
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const r = await fetch(`${server.url}${req.url.split('?')[0]}`, {
        method: req.method,
        headers: {
          'content-type': 'application/json', accept: req.headers.accept ?? '*/*',
          authorization: `Bearer ${originToken}`,
        },
        body: req.method === 'POST' ? Buffer.concat(chunks) : undefined,
      });
      res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
      res.end(Buffer.from(await r.arrayBuffer()));
    });
    // The configured ORIGIN: every request answered 307 to the same path on `target`, with
    // a query the worker must not show (a signed URL, say).
    redirector = await listen('127.0.0.2', (req, res) => {
      req.resume();
      res.writeHead(307, { location: `${target.url}${req.url.split('?')[0]}?sig=s3cret` });
      res.end();
    });
  });

  after(async () => {
    for (const e of edges) await e.stop();
    await redirector?.close();
    await target?.close();
    await server?.stop();
  });

  it('fails the batch call (502 naming the redirect and what to do) and the feed poll; nothing reaches the target', async () => {
    const e = await startWorkerd(`${redirector.url}/v1/batch`, { warmRing: 0, changesPollMs: 60_000, originTimeoutMs: 2000 },
      { TILEWARM_ORIGIN_TOKEN: originToken });
    edges.push(e);
    const shown = `${target.url}/v1/batch?…`;
    const r = await post(e.batch, { tiles: ['14/2624/5721'] });
    assert.equal(r.status, 502, `${r.text.slice(0, 200)}; reached: ${JSON.stringify(reached)}`);
    assert.equal(r.json.error.code, 'upstream_error');
    assert.equal(r.json.error.message,
      `the origin could not be reached: it answered HTTP 307, a redirect to ${shown}: redirects are not followed (the edge's ORIGIN_TOKEN would go along); set ORIGIN to the URL that answers`);
    assert.ok(!r.text.includes('s3cret'), 'the query of the Location is not shown');
    // The change feed's first poll (the isolate's first request waits for it) failed alike.
    const s = await e.stats();
    assert.equal(s.changes.errors, 1, `${JSON.stringify(s.changes)}; reached: ${JSON.stringify(reached)}`);
    assert.equal(s.changes.failing, 307);
    assert.equal(s.changes.lastError,
      `the change feed answered HTTP 307, a redirect to ${target.url}/v1/changes?…: redirects are not followed (the edge's ORIGIN_TOKEN would go along); set ORIGIN to the URL that answers`);
    // As any failed call: counted for the core's breaker, and the next call fails the same.
    const again = await post(e.batch, { tiles: ['14/2624/5722'] });
    assert.equal(again.status, 502, again.text.slice(0, 200));
    assert.equal((await e.stats()).originFailures, 2);
    assert.deepEqual(reached, [], 'no request (and no token) went where the redirect pointed');
  });

  it('gives a warming the origin redirects back as failed: nothing reaches the target, nothing is filled', async () => {
    // An origin that answers callers' requests (passed on to tilewarm-server) and redirects
    // warming requests only, so that a miss is served and its warming is what is redirected.
    const warms = [];
    const warmOnly = await listen('127.0.0.2', async (req, res) => {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      if (req.headers['x-tilewarm-purpose'] === 'warm') {
        warms.push(JSON.parse(Buffer.concat(chunks).toString('utf8')).tiles);
        res.writeHead(307, { location: `${target.url}/v1/batch` });
        return res.end();
      }
      const r = await fetch(`${server.url}/v1/batch`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: req.headers.authorization }, body: Buffer.concat(chunks),
      });
      res.writeHead(r.status, { 'content-type': 'application/json' });
      res.end(Buffer.from(await r.arrayBuffer()));
    });
    try {
      const e = await startWorkerd(`${warmOnly.url}/v1/batch`, { warmRing: 1, maxWarmTiles: 2, changesPollMs: 0, originTimeoutMs: 2000 },
        { TILEWARM_ORIGIN_TOKEN: originToken });
      edges.push(e);
      const before = reached.length;
      const r = await post(e.batch, { tiles: ['14/2630/5721'] });
      assert.equal(r.status, 200, r.text.slice(0, 200));
      assert.equal(r.cache, 'miss');
      for (let i = 0; i < 100 && warms.length === 0; i++) await new Promise((ok) => setTimeout(ok, 50));
      assert.equal(warms.length, 1, 'the miss planned a warming request');
      // Followed, the warming would reach the target at once (loopback) and fill the cache.
      await new Promise((ok) => setTimeout(ok, 300));
      assert.deepEqual(reached.slice(before), [], 'no warming request (and no token) went where the redirect pointed');
      const s = await e.stats();
      assert.equal(s.warmFills, 0, JSON.stringify(s));
      assert.equal((await post(e.batch, { tiles: [warms[0][0]] })).cache, 'miss', 'a tile of the redirected warming was not filled');
    } finally {
      await warmOnly.close();
    }
  });
});
