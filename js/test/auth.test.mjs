// TileCache with `auth` against a backend that requires bearer tokens the way tilewarm-server
// and the edge do (HS256 verified with jose; no token = public; a bad token 401 with
// WWW-Authenticate; a body `access` above the token's tier 403 `forbidden`; every answer
// reports the tier it was filtered for; with `tierHeader`, the 403 names the token's tier in
// x-tilewarm-access as they do). Refresh on 401, ERR_UNAUTHORIZED, no token in any error or
// log, a 403 naming a lower tier lowering the cache, and a property over random token tiers,
// `access` and sequences.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { jwtVerify } from 'jose';
import { TileCache } from 'tilewarm';
import { startBackend, viewOf, SEATTLE } from './support/backend.mjs';
import { mulberry32 } from './support/mulberry32.mjs';
import { SECRET, TIERS, RANK, hsToken } from '../../edge/test/support/tokens.mjs';

const [, SX, SY] = SEATTLE;
const NO_PREFETCH = { ring: 0, lookaheadMs: 0, viewRing: 0 };
let backend;
/** Every Authorization header the backend saw, and its answers' statuses. */
let seen = [];
/** Whether the 403 names the token's tier in `x-tilewarm-access`, as the server does. */
let tierHeader = false;

function answer(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

before(async () => {
  backend = await startBackend({ perTile: 6 });
  backend.hostile = async (res, _answer, request) => {
    const header = request.headers.authorization;
    let verified = 'public';
    if (header !== undefined) {
      try {
        const { payload } = await jwtVerify(header.replace(/^Bearer /, ''), new TextEncoder().encode(SECRET), {
          algorithms: ['HS256'], requiredClaims: ['exp'],
        });
        verified = payload.tilewarm_access ?? 'public';
      } catch (e) {
        seen.push({ header, status: 401 });
        return answer(res, 401, { error: { code: 'unauthorized', message: `the bearer token is not valid: ${e.code}` } },
          { 'www-authenticate': 'Bearer error="invalid_token"' });
      }
    }
    const asked = request.access ?? 'public';
    if (RANK[asked] > RANK[verified]) {
      seen.push({ header, status: 403 });
      return answer(res, 403, { error: { code: 'forbidden', message: `access "${asked}" is above the tier the credential gives ("${verified}")` } },
        tierHeader ? { 'x-tilewarm-access': verified } : {});
    }
    seen.push({ header, status: 200 });
    answer(res, 200, { ...backend.answer({ ...request, access: asked }), access: asked });
  };
});
after(() => backend.close());

function fresh() {
  backend.requests = [];
  seen = [];
}

async function until(cond, what = 'condition', ms = 10_000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Captures console output and reportError while `fn` runs. */
async function capturingLogs(fn) {
  const lines = [];
  const saved = { error: console.error, warn: console.warn, log: console.log, reportError: globalThis.reportError };
  for (const k of ['error', 'warn', 'log']) console[k] = (...a) => lines.push(a.map(String).join(' '));
  globalThis.reportError = (e) => lines.push(String(e?.stack ?? e));
  try {
    await fn();
  } finally {
    Object.assign(console, { error: saved.error, warn: saved.warn, log: saved.log });
    globalThis.reportError = saved.reportError;
  }
  return lines;
}

test('auth: token() is called for every request and sent as a bearer token', async () => {
  fresh();
  let calls = 0;
  const token = await hsToken({ tilewarm_access: 'agent' });
  const cache = await TileCache.create({
    endpoint: backend.url, access: 'agent', prefetch: NO_PREFETCH,
    auth: { token: async () => { calls++; return token; } },
  });
  cache.setViewport(viewOf(SX, SY));
  await cache.whenComplete();
  cache.setViewport(viewOf(SX + 5, SY));
  await cache.whenComplete();
  assert.equal(backend.requests.length, 2);
  assert.equal(calls, 2, 'one call per request');
  for (const r of backend.requests) assert.equal(r.headers.authorization, `Bearer ${token}`);
  assert.ok(cache.setViewport(viewOf(SX, SY)).items.some((i) => i.access === 'agent'));
  cache.dispose();
});

test('auth: a 401 asks for a fresh token once and retries; the page sees no error', async () => {
  fresh();
  const expired = await hsToken({ tilewarm_access: 'registered' }, { exp: -600 });
  const good = await hsToken({ tilewarm_access: 'registered' });
  const handed = [];
  const cache = await TileCache.create({
    endpoint: backend.url, access: 'registered', prefetch: NO_PREFETCH,
    auth: { token: () => { const t = handed.length === 0 ? expired : good; handed.push(t); return t; } },
  });
  const errors = [];
  cache.onError((e) => errors.push(e));
  cache.setViewport(viewOf(SX, SY));
  await cache.whenComplete();
  assert.deepEqual(seen.map((s) => s.status), [401, 200]);
  assert.deepEqual(handed, [expired, good], 'the second attempt used the refreshed token');
  assert.deepEqual(errors, []);
  cache.dispose();
});

test('auth: a token the server keeps refusing is ERR_UNAUTHORIZED, retried with backoff, and never shown', async () => {
  fresh();
  const bad = await hsToken({ tilewarm_access: 'agent' }, { secret: 'wrong-wrong-wrong-wrong-wrong-wrong-wrong' });
  let calls = 0;
  const errors = [];
  const logs = await capturingLogs(async () => {
    const cache = await TileCache.create({
      endpoint: backend.url, access: 'agent', prefetch: NO_PREFETCH, batch: { retries: 1 },
      auth: { token: () => { calls++; return bad; } },
    });
    cache.onError((e) => errors.push(e));
    cache.setViewport(viewOf(SX, SY));
    await assert.rejects(cache.whenComplete(), (e) => e.code === 'ERR_UNAUTHORIZED');
    cache.dispose();
  });
  assert.equal(errors.length, 2, 'one per attempt');
  assert.deepEqual(errors.map((e) => [e.code, e.status, e.willRetry, e.serverCode]),
    [['ERR_UNAUTHORIZED', 401, true, 'unauthorized'], ['ERR_UNAUTHORIZED', 401, false, 'unauthorized']]);
  assert.equal(calls, 4, 'two attempts, each with one refresh');
  assert.ok(seen.every((s) => s.status === 401));
  const text = [...errors.map((e) => `${e.message} ${JSON.stringify(e)} ${e.stack}`), ...logs].join('\n');
  for (const part of [bad, ...bad.split('.')]) assert.ok(!text.includes(part), 'no part of the token in errors or logs');
});

test('auth: a token() that throws or gives no token is ERR_UNAUTHORIZED without the value', async () => {
  fresh();
  const secretish = 'not a token\r\nx-injected: 1 SECRETVALUE';
  for (const token of [() => { throw new Error('signed out'); }, () => secretish, () => 42, () => '']) {
    const errors = [];
    const cache = await TileCache.create({ endpoint: backend.url, prefetch: NO_PREFETCH, batch: { retries: 0 }, auth: { token } });
    cache.onError((e) => errors.push(e));
    cache.setViewport(viewOf(SX, SY));
    await assert.rejects(cache.whenComplete());
    cache.dispose();
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'ERR_UNAUTHORIZED');
    assert.match(errors[0].message, /auth\.token\(\) (failed: signed out|must give a bearer token)/);
    assert.ok(!errors[0].message.includes('SECRETVALUE'));
  }
  assert.equal(backend.requests.length, 0, 'nothing was sent without a usable token');
  await assert.rejects(TileCache.create({ endpoint: backend.url, auth: { token: 'abc' } }),
    (e) => e.code === 'ERR_INVALID_ARG_TYPE' && /auth must be an object/.test(e.message) && !e.message.includes('abc'));
});

/** A cache at `agent` whose token drops to `public` after a first view: the next request,
 * asked at agent, is a 403. Returns what the page saw. */
async function tokenDropsToPublic() {
  fresh();
  const tokens = { agent: await hsToken({ tilewarm_access: 'agent' }), public: await hsToken({ tilewarm_access: 'public' }) };
  let session = 'agent';
  const cache = await TileCache.create({
    endpoint: backend.url, access: 'agent', prefetch: NO_PREFETCH, batch: { retries: 0 },
    auth: { token: () => tokens[session] },
  });
  const errors = [], heard = [];
  cache.onError((e) => errors.push(e));
  cache.onAccess((access) => heard.push(access));
  const home = viewOf(SX, SY);
  cache.setViewport(home);
  await cache.whenComplete();
  const secret = cache.setViewport(home).items.find((i) => i.access === 'agent');
  assert.ok(secret, 'the first view holds an agent item');
  assert.equal(await cache.get(secret.id), secret);
  session = 'public'; // the subscription ended; the page did not call setAccess
  cache.setViewport(viewOf(SX + 5, SY));
  const complete = await cache.whenComplete().then(() => true, () => false);
  await until(() => cache.stats().inFlight === 0, 'quiet');
  const view = cache.setViewport(home);
  const signIn = (tier) => { session = tier; };
  return { cache, errors, heard, complete, view, secret, signIn, asked: backend.requests.map((r) => r.access) };
}

test('auth: a 403 naming a lower tier lowers the cache: nothing above it in get() or the view', async () => {
  tierHeader = true;
  try {
    const { cache, errors, heard, complete, view, secret, asked } = await tokenDropsToPublic();
    assert.deepEqual(errors, [], 'the refused request is asked again at public, not an error');
    assert.ok(complete, 'the view completes');
    assert.deepEqual(seen.map((s) => s.status).slice(-2), [403, 200]);
    assert.equal(asked.at(-1), 'public', 'the next request goes at public');
    assert.equal(cache.access, 'public');
    assert.deepEqual(heard, ['public'], 'onAccess hears of it');
    assert.ok(view.items.every((i) => i.access === 'public'), 'no agent item in the view');
    assert.equal(await cache.get(secret.id), undefined, 'get() of an agent item: not visible');
    await cache.whenComplete();
    assert.ok(cache.setViewport(viewOf(SX, SY)).complete, 'the view completes at public');
    assert.throws(() => cache.setAccess('agent'), { name: 'RangeError' });
    cache.dispose();
  } finally {
    tierHeader = false;
  }
});

test('auth: after a sign-in, setAccess with newCredential asks above the tier reported for the old token and keeps the cache', async () => {
  tierHeader = true;
  try {
    const { cache, errors, heard, signIn } = await tokenDropsToPublic();
    await cache.whenComplete();
    const kept = cache.setViewport(viewOf(SX, SY)).items;
    assert.ok(kept.length > 0 && kept.every((i) => i.access === 'public'));
    // Still the public token: the old tier cannot be set again, and bad options are refused.
    assert.throws(() => cache.setAccess('agent'), (e) => e.name === 'RangeError' && /newCredential/.test(e.message));
    assert.throws(() => cache.setAccess('agent', { newCredential: 'yes' }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => cache.setAccess('agent', 1), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
    // A misspelt option is refused, not read as no new credential.
    for (const tier of ['agent', 'public']) {
      assert.throws(() => cache.setAccess(tier, { newCredentials: true }), {
        name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE', message: 'newCredentials is not an option; the options are newCredential',
      });
    }
    assert.equal(cache.access, 'public');
    // Said while the token is still public: asked at agent once, refused, back to public
    // (whose lists it still holds: nothing is asked again).
    let before = backend.requests.length;
    cache.setAccess('agent', { newCredential: true });
    assert.equal(cache.access, 'agent');
    await until(() => cache.access === 'public' && cache.stats().inFlight === 0, 'lowered again');
    await cache.whenComplete();
    assert.deepEqual(backend.requests.slice(before).map((r) => r.access), ['agent']);
    assert.deepEqual(seen.slice(-1).map((s) => s.status), [403]);
    assert.deepEqual(errors, []);
    assert.throws(() => cache.setAccess('agent'), { name: 'RangeError' });
    // The sign-in: the token now gives agent.
    signIn('agent');
    before = backend.requests.length;
    cache.setAccess('agent', { newCredential: true });
    assert.equal(cache.access, 'agent');
    const first = cache.setViewport(viewOf(SX, SY));
    assert.ok(kept.every((k) => first.items.some((i) => i.id === k.id)), 'the public items stay while the agent lists load');
    await cache.whenComplete();
    await until(() => cache.stats().inFlight === 0, 'quiet');
    assert.equal(cache.access, 'agent');
    assert.ok(backend.requests.slice(before).every((r) => r.access === 'agent'));
    assert.ok(cache.setViewport(viewOf(SX, SY)).items.some((i) => i.access === 'agent'), 'the agent items are in the view');
    assert.deepEqual(heard, ['public', 'agent', 'public', 'agent']);
    assert.deepEqual(errors, []);
    cache.dispose();
  } finally {
    tierHeader = false;
  }
});

test('auth: a 403 that names no tier keeps the cache at its tier (the page calls setAccess)', async () => {
  const { cache, errors, heard, view } = await tokenDropsToPublic();
  assert.ok(errors.some((e) => e.code === 'ERR_HTTP' && e.status === 403 && e.serverCode === 'forbidden'));
  assert.equal(cache.access, 'agent');
  assert.deepEqual(heard, []);
  assert.ok(view.items.some((i) => i.access === 'agent'), 'what the cache holds is its tier\'s until told');
  cache.dispose();
});

test('auth property: no item above min(token tier, access) is ever in a view', async () => {
  const seed = Number(process.env.AUTH_SEED ?? 20261202);
  const random = mulberry32(seed);
  const tokens = {};
  for (const t of TIERS) tokens[t] = await hsToken({ tilewarm_access: t });
  let sawAgentItems = 0, sawForbidden = 0;
  for (let round = 0; round < 12; round++) {
    fresh();
    const tokenTier = random() < 0.2 ? null : TIERS[Math.floor(random() * 4)];
    let access = TIERS[Math.floor(random() * 4)];
    const cache = await TileCache.create({
      endpoint: backend.url, access, prefetch: NO_PREFETCH, batch: { retries: 0 },
      ...(tokenTier ? { auth: { token: () => tokens[tokenTier] } } : {}),
    });
    const errors = [];
    cache.onError((e) => errors.push(e));
    for (let step = 0; step < 6; step++) {
      const where = `seed ${seed}, round ${round}, step ${step}: token ${tokenTier}, access ${access}`;
      if (random() < 0.3) {
        access = TIERS[Math.floor(random() * 4)];
        cache.setAccess(access);
      }
      const v = cache.setViewport(viewOf(SX + Math.floor(random() * 4), SY + Math.floor(random() * 4)));
      await cache.whenComplete().catch(() => {});
      await until(() => cache.stats().inFlight === 0, 'quiet');
      const limit = Math.min(RANK[access], RANK[tokenTier ?? 'public']);
      for (const items of [v.items, cache.setViewport(viewOf(SX, SY)).items]) {
        for (const i of items) {
          assert.ok(RANK[i.access] <= limit, `${where}: ${i.id} is ${i.access}`);
          if (i.access === 'agent') sawAgentItems++;
        }
      }
      if (RANK[access] > RANK[tokenTier ?? 'public']) {
        assert.ok(errors.some((e) => e.code === 'ERR_HTTP' && e.status === 403 && e.serverCode === 'forbidden'), where);
        sawForbidden++;
      }
    }
    cache.dispose();
  }
  assert.ok(sawAgentItems > 0 && sawForbidden > 0, `the property saw agent items (${sawAgentItems}) and refusals (${sawForbidden})`);
});
