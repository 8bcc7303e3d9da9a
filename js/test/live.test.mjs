// tilewarm/live against a real tilewarm-server (TILEWARM_SERVER, default
// target/debug/tilewarm-server; scripts/test-node.sh builds it) whose origin is the test
// backend (support/backend.mjs), so a test can change an item at the origin, invalidate it
// through POST /v1/invalidate, and watch the page show the new value through the feed.
import { test, before, after, mock } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { SignJWT } from 'jose';
import { TileCache } from 'tilewarm';
import { follow } from 'tilewarm/live';
import { startBackend, viewOf, SEATTLE } from './support/backend.mjs';

const BIN = process.env.TILEWARM_SERVER ?? 'target/debug/tilewarm-server';
const SECRET = 'tilewarm-live-test-secret-0123456789abcdef';
const skip = existsSync(BIN) ? false : `${BIN} is not built (cargo build -p tilewarm-server, or scripts/test-node.sh)`;
const [, SX, SY] = SEATTLE;

let backend;
const servers = [];
before(async () => { backend = await startBackend(); });
after(async () => {
  for (const s of servers) s.child.kill();
  await backend?.close();
});

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
  });
}

async function until(cond, what, ms = 10_000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** tilewarm-server on a free port, answering from the test backend; started again on
 * another when the port was taken between freePort() and its bind (by another test
 * file's process). */
async function startServer(extra = []) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startServerOnce(extra);
    } catch (e) {
      if (attempt === 3 || !/Address already in use/.test(e?.message ?? '')) throw e;
    }
  }
}

async function startServerOnce(extra) {
  const port = await freePort();
  let log = '';
  const child = spawn(BIN, ['--listen', `127.0.0.1:${port}`, '--log-level', 'warn', '--origin', backend.url,
    '--jwt-secret', SECRET, '--caller-rate', '0', '--warmup-ring', '0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  const s = { child, url: `http://127.0.0.1:${port}`, log: () => log };
  servers.push(s);
  const end = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`tilewarm-server exited:\n${log}`);
    try { if ((await fetch(`${s.url}/healthz`)).ok) return s; } catch { /* not up yet */ }
    if (Date.now() > end) throw new Error(`tilewarm-server did not come up:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function adminToken() {
  return new SignJWT({ tilewarm_admin: true, tilewarm_access: 'agent' })
    .setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h')
    .sign(new TextEncoder().encode(SECRET));
}

/** The top tier: the feed sends ids to it only (a lower tier gets an ids event as `reset`). */
const agent = {
  token: () => new SignJWT({ tilewarm_access: 'agent' })
    .setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h')
    .sign(new TextEncoder().encode(SECRET)),
};

async function invalidate(server, what) {
  const r = await fetch(`${server.url}/v1/invalidate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${await adminToken()}` },
    body: JSON.stringify(what),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()).id;
}

/** A fetch whose feed connections the test can cut, and hold from reconnecting. */
function cuttable() {
  const conns = [];
  let gate = Promise.resolve(), open = () => {};
  const f = async (url, init) => {
    if (String(url).includes('/v1/changes')) {
      await gate;
      const c = new AbortController();
      init.signal?.addEventListener('abort', () => c.abort(), { once: true });
      conns.push({ c, headers: init.headers });
      return fetch(url, { ...init, signal: c.signal });
    }
    return fetch(url, init);
  };
  return {
    fetch: f, conns,
    cut() { gate = new Promise((r) => { open = r; }); conns.at(-1).c.abort(); },
    reopen() { open(); },
  };
}

/** A cache on `server` showing the Seattle view, its items (public) once complete. */
async function page(server, fetchFn) {
  const cache = await TileCache.create({ endpoint: `${server.url}/v1/batch`, fetch: fetchFn });
  let shown = new Map();
  cache.onUpdate((items) => { shown = new Map(items.map((it) => [it.id, it.data])); });
  cache.setViewport(viewOf(SX, SY));
  await cache.whenComplete();
  return { cache, shown: () => shown };
}

test('a page following the feed shows the new value after POST /v1/invalidate', { skip }, async () => {
  const server = await startServer();
  const net = cuttable();
  const { cache, shown } = await page(server, net.fetch);
  const id = [...shown().keys()][0];
  assert.ok(id, 'the view shows items');
  const before = shown().get(id).price;
  const events = [];
  const stop = new AbortController();
  const f = follow(cache, `${server.url}/v1/changes`, { auth: agent, signal: stop.signal, fetch: net.fetch, onEvent: (e) => events.push(e), minRetryMs: 20 });
  await until(() => events.some((e) => e.type === 'ready'), 'ready');
  // The first connection invalidated everything held before it; the view is refetched.
  await until(() => shown().get(id)?.price === before, 'the view again');

  // The origin changes; without the invalidation the server and the page keep the old value.
  backend.byId.get(id).data.price = before + 1;
  const streamId = await invalidate(server, { ids: [id] });
  await until(() => shown().get(id)?.price === before + 1, 'the new price on the page');
  const ev = events.find((e) => e.type === 'invalidate');
  assert.equal(ev.id, streamId);
  assert.deepEqual(ev.invalidation.ids, [id]);
  assert.equal(f.lastEventId, streamId);

  // A dropped connection: three changes while it is down, then it resumes after the last id
  // it saw and applies all three, in order (nothing lost).
  net.cut();
  const ids = [...shown().keys()].filter((x) => x !== id).slice(0, 3);
  const missed = [];
  for (const x of ids) {
    backend.byId.get(x).data.price += 1000;
    missed.push(await invalidate(server, { ids: [x] }));
  }
  const want = new Map(ids.map((x) => [x, backend.byId.get(x).data.price]));
  net.reopen();
  await until(() => ids.every((x) => shown().get(x)?.price === want.get(x)), 'the missed changes on the page');
  assert.equal(net.conns.length, 2);
  assert.equal(net.conns[1].headers['last-event-id'], streamId);
  const after = events.filter((e) => e.type === 'invalidate').map((e) => e.id);
  assert.deepEqual(after, [streamId, ...missed]);
  assert.ok(!events.some((e) => e.type === 'reset' && e.id !== events[0].id), 'no reset needed');

  stop.abort();
  await f.done;
  cache.dispose();
});

test('a public page gets an ids change as reset: new values, never the ids', { skip }, async () => {
  const server = await startServer();
  const net = cuttable();
  const { cache, shown } = await page(server, net.fetch);
  const events = [];
  const stop = new AbortController();
  const f = follow(cache, `${server.url}/v1/changes`, { signal: stop.signal, fetch: net.fetch, onEvent: (e) => events.push(e), minRetryMs: 20 });
  await until(() => events.some((e) => e.type === 'ready'), 'ready');
  await until(() => shown().size > 0, 'the view again');
  const id = [...shown().keys()][0];
  backend.byId.get(id).data.price += 3;
  const streamId = await invalidate(server, { ids: [id] });
  await until(() => shown().get(id)?.price === backend.byId.get(id).data.price, 'the new price');
  const ev = events.find((e) => e.id === streamId);
  assert.equal(ev.type, 'reset');
  assert.ok(!JSON.stringify(events).includes(id), 'an id reached a public follower');
  stop.abort();
  await f.done;
  cache.dispose();
});

test('a change of tier reconnects the feed with the new token: a page dropped to public gets no ids', { skip }, async () => {
  const server = await startServer();
  const net = cuttable();
  // The page's credentials: a token of `tier`, for the cache and the feed alike.
  let tier = 'agent';
  const who = {
    token: () => new SignJWT({ tilewarm_access: tier })
      .setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h')
      .sign(new TextEncoder().encode(SECRET)),
  };
  const cache = await TileCache.create({ endpoint: `${server.url}/v1/batch`, fetch: net.fetch, auth: who, access: 'agent' });
  let shown = new Map();
  cache.onUpdate((items) => { shown = new Map(items.map((it) => [it.id, it.data])); });
  cache.setViewport(viewOf(SX, SY));
  await cache.whenComplete();
  const events = [];
  const stop = new AbortController();
  const f = follow(cache, `${server.url}/v1/changes`, { auth: who, signal: stop.signal, fetch: net.fetch, onEvent: (e) => events.push(e), minRetryMs: 20 });
  await until(() => events.some((e) => e.type === 'ready'), 'ready');
  await until(() => shown.size > 0, 'the view again');
  const [a, b] = [...shown.keys()].filter((x) => backend.byId.get(x).access === 'public');
  assert.ok(a && b, 'two public items in view');
  // At agent the feed names ids.
  const first = await invalidate(server, { ids: [a] });
  await until(() => events.some((e) => e.id === first), 'the first change');
  assert.deepEqual(events.find((e) => e.id === first).invalidation.ids, [a]);
  assert.equal(net.conns.length, 1);

  // A logout: the token is public now, and the cache drops to public.
  tier = 'public';
  cache.setAccess('public');
  await until(() => net.conns.length === 2, 'a new connection');
  const auth = net.conns[1].headers.authorization;
  const claims = JSON.parse(Buffer.from(auth.split('.')[1], 'base64url'));
  assert.equal(claims.tilewarm_access, 'public', 'the new connection carries the new token');
  assert.equal(net.conns[1].headers['last-event-id'], first, 'it resumes after the last event');
  assert.ok(net.conns[0].c.signal.aborted, 'the agent connection was closed');
  await until(() => events.filter((e) => e.type === 'ready').length === 2, 'ready again');
  // A change by id now reaches the page as reset, never by name.
  backend.byId.get(b).data.price += 5;
  const second = await invalidate(server, { ids: [b] });
  await until(() => events.some((e) => e.id === second), 'the second change');
  assert.equal(events.find((e) => e.id === second).type, 'reset');
  assert.ok(!JSON.stringify(events.slice(events.findIndex((e) => e.id === first) + 1)).includes(JSON.stringify(b)), 'an id reached the page after its drop to public');
  await until(() => shown.get(b)?.price === backend.byId.get(b).data.price, 'the new price');
  stop.abort();
  await f.done;
  cache.dispose();
});

test('a feed whose token expires reconnects with a fresh one, reporting no error', { skip }, async () => {
  const server = await startServer(['--jwt-leeway-s', '0']);
  const net = cuttable();
  // The first token lives 3 to 4 s (its expiry is counted from a whole second: long enough
  // for a busy machine's first connection), the next ones an hour.
  let asked = 0;
  const who = {
    token: () => new SignJWT({ tilewarm_access: 'agent' })
      .setProtectedHeader({ alg: 'HS256' }).setExpirationTime(asked++ === 0 ? '4s' : '1h')
      .sign(new TextEncoder().encode(SECRET)),
  };
  const { cache, shown } = await page(server, net.fetch);
  const events = [], errors = [];
  const stop = new AbortController();
  const f = follow(cache, `${server.url}/v1/changes`, { auth: who, signal: stop.signal, fetch: net.fetch, onEvent: (e) => events.push(e), onError: (e) => errors.push(e), minRetryMs: 20 });
  await until(() => events.some((e) => e.type === 'ready'), 'ready');
  const readyId = events[0].id;
  await until(() => net.conns.length === 2, 'a connection with a fresh token', 12_000);
  assert.deepEqual(errors, [], 'an expired token is not an error');
  assert.equal(asked, 2, 'the token was asked for again');
  assert.equal(net.conns[1].headers['last-event-id'], readyId, 'it resumes after the last event');
  // The new connection is followed as before: a change by id reaches the page by name.
  await until(() => shown().size > 0, 'the view');
  const [a] = [...shown().keys()];
  const id = await invalidate(server, { ids: [a] });
  await until(() => events.some((e) => e.id === id), 'the change');
  assert.deepEqual(events.find((e) => e.id === id).invalidation.ids, [a]);
  stop.abort();
  await f.done;
  cache.dispose();
});

test('past the retention a reconnect gets reset and invalidates everything', { skip }, async () => {
  const server = await startServer(['--changes-retention', '2']);
  const net = cuttable();
  const { cache, shown } = await page(server, net.fetch);
  const events = [];
  const stop = new AbortController();
  const f = follow(cache, `${server.url}/v1/changes`, { auth: agent, signal: stop.signal, fetch: net.fetch, onEvent: (e) => events.push(e), minRetryMs: 20 });
  await until(() => events.some((e) => e.type === 'ready'), 'ready');
  await until(() => shown().size > 0, 'the view again');
  net.cut();
  // Three changes at the origin, one of them never invalidated by id on the feed the page
  // will see (retention 2 drops the first): only `reset` can bring it.
  const ids = [...shown().keys()].slice(0, 3);
  for (const x of ids) {
    backend.byId.get(x).data.price += 7;
    await invalidate(server, { ids: [x] });
  }
  net.reopen();
  await until(() => events.some((e) => e.type === 'reset' && events.indexOf(e) > 0), 'reset');
  await until(() => ids.every((x) => shown().get(x)?.price === backend.byId.get(x).data.price), 'new values');
  stop.abort();
  await f.done;
  cache.dispose();
});

/** A feed through `fetch` that answers `ready` and then stays open, quiet, until aborted
 * (`quiet`), or fails every connection with 503; counts the connections. */
function fakeFeed(kind) {
  const feed = { connections: 0, aborted: 0 };
  feed.fetch = async (_url, { signal }) => {
    feed.connections++;
    signal.addEventListener('abort', () => feed.aborted++, { once: true });
    if (kind !== 'quiet') return new Response('no', { status: 503 });
    return new Response(new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode('event: ready\nid: 1-0\ndata: {}\n\n'));
        signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  return feed;
}

/** 'done' when `p` settles within `ms`, else 'still following'. */
function within(p, ms) {
  return Promise.race([p.then(() => 'done'), new Promise((ok) => setTimeout(() => ok('still following'), ms))]);
}

test('follow stops when the cache is disposed: on a quiet feed, a failing one, and one disposed before', async () => {
  for (const kind of ['quiet', 'failing']) {
    const cache = await TileCache.create({ endpoint: backend.url });
    const feed = fakeFeed(kind);
    const events = [];
    const f = follow(cache, 'http://feed.test/v1/changes', { fetch: feed.fetch, minRetryMs: 20, maxRetryMs: 40, onEvent: (e) => events.push(e.type), onError: () => {} });
    if (kind === 'quiet') await until(() => events.includes('ready'), 'the ready event');
    else await until(() => feed.connections >= 2, 'a reconnect');
    cache.dispose();
    assert.equal(await within(f.done, 1000), 'done', `${kind} feed: done resolves after dispose`);
    const n = feed.connections;
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(feed.connections, n, `${kind} feed: no reconnect after dispose`);
    if (kind === 'quiet') assert.equal(feed.aborted, 1, 'the open connection is aborted');
  }
  const cache = await TileCache.create({ endpoint: backend.url });
  cache.dispose();
  const feed = fakeFeed('quiet');
  const f = follow(cache, 'http://feed.test/v1/changes', { fetch: feed.fetch });
  assert.equal(await within(f.done, 1000), 'done');
  assert.equal(feed.connections, 0, 'a disposed cache is not followed at all');
});

test('events a connection delivers after a change of tier are neither applied nor reported', async () => {
  const cache = await TileCache.create({ endpoint: backend.url, access: 'agent' });
  const applied = [];
  const invalidate = cache.invalidate.bind(cache);
  cache.invalidate = (what) => { applied.push(what); return invalidate(what); };
  const conns = [];
  // The first connection sends three events in one chunk; the tier changes while the
  // second is reported, so the third (an agent's ids) arrives after the change.
  const feed = async (_url, { headers, signal }) => {
    conns.push(headers);
    const body = conns.length === 1
      ? 'event: ready\nid: 1-0\ndata: {}\n\nevent: invalidate\nid: 2-0\ndata: {"ids":["a"]}\n\nevent: invalidate\nid: 3-0\ndata: {"ids":["agent-only"]}\n\n'
      : 'event: ready\nid: 2-0\ndata: {}\n\n';
    return new Response(new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode(body));
        signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  const events = [];
  const f = follow(cache, 'http://feed.test/v1/changes', {
    fetch: feed, lastEventId: '0-0', minRetryMs: 20,
    onEvent: (e) => { events.push(e); if (e.id === '2-0' && e.type === 'invalidate') cache.setAccess('public'); },
  });
  await until(() => conns.length === 2 && events.filter((e) => e.type === 'ready').length === 2, 'the second connection');
  assert.deepEqual(events.map((e) => `${e.type} ${e.id}`), ['ready 1-0', 'invalidate 2-0', 'ready 2-0']);
  assert.ok(!JSON.stringify(applied).includes('agent-only'), 'an event of the old tier was applied');
  assert.equal(conns[1]['last-event-id'], '2-0', 'resumed after the last event applied');
  assert.equal(f.lastEventId, '2-0');
  cache.dispose();
  await f.done;
});

// A connection that fails and a body that cannot be read reach onError as TileCache's
// network errors do (ERR_NETWORK, the error as its cause): they came as a bare TypeError.
// An unknown event's id, and that of an event with an id alone, is the last event id, as
// an EventSource's is (the spec: every event sets it): the next connection resumes after it.
test('network failures are ERR_NETWORK with their cause; every event id counts, unknown events too', async () => {
  const cache = await TileCache.create({ endpoint: backend.url });
  const conns = [], errors = [], events = [];
  const refused = new TypeError('fetch failed'), cut = new TypeError('terminated');
  const stop = new AbortController();
  const feed = async (_url, { headers, signal }) => {
    conns.push(headers);
    if (conns.length === 1) throw refused;
    if (conns.length === 3) {
      stop.abort();
      throw new Error('not asked');
    }
    return new Response(new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode('event: ready\nid: 1-0\ndata: {}\n\nevent: note\nid: 2-0\ndata: x\n\nid: 3-0\n\n'));
        // The connection drops once the events were read.
        setTimeout(() => c.error(cut), 20);
        signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  const f = follow(cache, 'http://feed.test/v1/changes', {
    fetch: feed, signal: stop.signal, lastEventId: '0-0', minRetryMs: 1, maxRetryMs: 2,
    onEvent: (e) => events.push(`${e.type} ${e.id}`), onError: (e) => errors.push(e),
  });
  await f.done;
  assert.equal(conns.length, 3);
  assert.deepEqual(events, ['ready 1-0'], 'unknown events are not reported');
  assert.deepEqual(errors.map((e) => [e.constructor.name, e.code, e.message, e.cause]), [
    ['Error', 'ERR_NETWORK', 'change feed: network error: fetch failed', refused],
    ['Error', 'ERR_NETWORK', 'change feed: network error: terminated', cut],
  ]);
  assert.equal(conns[2]['last-event-id'], '3-0', 'resumed after the last event id, of an unknown event or an id alone');
  assert.equal(f.lastEventId, '3-0');
  cache.dispose();
});

test('an auth.token() that fails or gives no usable token is ERR_UNAUTHORIZED, as in TileCache, its error the cause', async () => {
  const cache = await TileCache.create({ endpoint: backend.url });
  const errors = [], sent = [];
  const denied = new Error('not signed in');
  const tokens = [() => Promise.reject(denied), () => 'a b', () => undefined];
  const stop = new AbortController();
  let asked = 0;
  const f = follow(cache, 'http://feed.test/v1/changes', {
    auth: { token: () => { const t = tokens[asked++]; if (!t) { stop.abort(); return new Promise(() => {}); } return t(); } },
    fetch: async (_url, { headers }) => { sent.push(headers); throw new Error('not asked'); },
    signal: stop.signal, minRetryMs: 1, maxRetryMs: 2, onError: (e) => errors.push(e),
  });
  await f.done;
  assert.equal(sent.length, 0, 'nothing is sent without a usable token');
  assert.deepEqual(errors.map((e) => [e.constructor.name, e.code, e.message, e.cause]), [
    ['Error', 'ERR_UNAUTHORIZED', 'change feed: auth.token() failed: not signed in', denied],
    ['Error', 'ERR_UNAUTHORIZED', 'change feed: auth.token() must give a bearer token (letters, digits and -._~+/)', undefined],
    ['Error', 'ERR_UNAUTHORIZED', 'change feed: auth.token() must give a bearer token (letters, digits and -._~+/)', undefined],
  ]);
  cache.dispose();
});

/** Lets the work a mocked clock's timers started run (promises, stream reads). */
const settle = async () => { for (let k = 0; k < 8; k++) await new Promise((r) => setImmediate(r)); };

/** Runs `body` with setTimeout and Date mocked, from a fixed start. */
async function withMockClock(body) {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_700_000_000_000 });
  try {
    return await body();
  } finally {
    mock.timers.reset();
  }
}

/** Moves the mocked clock on by `ms` in steps of `step`, letting each step's work run;
 * stops early once `until()` holds. */
async function advance(ms, step, until = () => false) {
  for (let t = 0; t < ms && !until(); t += step) {
    await settle();
    mock.timers.tick(step);
  }
  await settle();
}

// A feed that accepts each connection and ends it at once, after `ready` (a proxy that cuts
// event streams, or a broken server), or after `ready` and `expired`: a `ready` alone used to
// reset the backoff, so each was reconnected to every 0.25-0.5 s for as long as the page
// stayed open (about 160 connections a minute, and an invalidate-all each with no
// lastEventId). Now the backoff starts over only after a connection stayed up for 30 s.
for (const [what, body] of [
  ['closes right after ready', 'event: ready\nid: 1-0\ndata: {}\n\n'],
  ['sends ready then expired', 'event: ready\nid: 1-0\ndata: {}\n\nevent: expired\ndata: {}\n\n'],
]) {
  test(`a feed that ${what} is reconnected to with a growing backoff, not several times a second`, async () => {
    await withMockClock(async () => {
      const cache = await TileCache.create({ endpoint: backend.url });
      const at = [];
      let tokens = 0;
      const feed = async () => {
        at.push(Date.now());
        return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
      };
      const stop = new AbortController();
      const f = follow(cache, 'http://feed.test/v1/changes', {
        fetch: feed, signal: stop.signal, onError: () => {}, auth: { token: () => { tokens++; return 't0k3n'; } },
      });
      await advance(120_000, 50);
      const gaps = at.slice(1).map((t, i) => t - at[i]);
      // 0.5, 1, 2, 4, 8, 16 s, then 30 s, each jittered down to as little as half: with the
      // shortest waits (0.25 ... 8 s, then 15 s) 13 connections start within two minutes,
      // with the longest 8; the bug made about 320.
      assert.ok(at.length >= 5 && at.length <= 13, `${at.length} connections in two minutes; gaps ${gaps}`);
      assert.ok(gaps.slice(-2).every((g) => g >= 15_000), `the last gaps ${gaps.slice(-2)} reach the 30 s cap`);
      assert.equal(tokens, at.length, 'one auth.token() per connection');
      stop.abort();
      await settle();
      await f.done;
      cache.dispose();
    });
  });
}

test('a feed refusing with 429 or 503 and Retry-After is not asked again before it', async () => {
  await withMockClock(async () => {
    const cache = await TileCache.create({ endpoint: backend.url });
    const at = [], errors = [];
    const refusals = [
      ['429', { 'retry-after': '20' }], ['503', { 'retry-after': new Date(Date.now() + 60_000).toUTCString() }],
      ['429', { 'retry-after': '999999' }],
    ];
    const feed = async () => {
      at.push(Date.now());
      const [status, headers] = refusals[Math.min(at.length - 1, refusals.length - 1)];
      return new Response('{"error":{"code":"rate_limited","message":"later"}}', { status: Number(status), headers });
    };
    const stop = new AbortController();
    const f = follow(cache, 'http://feed.test/v1/changes', { fetch: feed, signal: stop.signal, onError: (e) => errors.push(e.message) });
    await advance(2 * 3_600_000, 1000);
    const gaps = at.slice(1).map((t, i) => t - at[i]);
    // 20 s, then the date a minute on (from the second connection, 20 s later: 40 s
    // more), then an hour (the longest honoured) each time.
    assert.ok(gaps[0] >= 20_000 && gaps[0] <= 21_000, `gaps ${gaps}`);
    assert.ok(gaps[1] >= 39_000 && gaps[1] <= 41_000, `gaps ${gaps}`);
    assert.ok(gaps.slice(2).every((g) => g >= 3_600_000 && g <= 3_601_000), `gaps ${gaps}`);
    assert.equal(at.length, 4);
    assert.match(errors[0], /HTTP 429 \(Retry-After: 20 s\)/);
    stop.abort();
    await settle();
    await f.done;
    cache.dispose();
  });
});

// TileCache reports a batch request's 401 as ERR_UNAUTHORIZED (its 403 as ERR_HTTP); the
// feed reported its 401 as ERR_FEED. Now the same code as TileCache's, with the status kept.
test('a feed answering 401 is ERR_UNAUTHORIZED, as TileCache reports one; a 403 stays ERR_FEED; both keep their status', async () => {
  await withMockClock(async () => {
    const cache = await TileCache.create({ endpoint: backend.url });
    const errors = [];
    let n = 0;
    const feed = async () => new Response('{"error":{"code":"unauthorized","message":"no"}}', { status: [401, 403][n++ % 2] });
    const stop = new AbortController();
    const f = follow(cache, 'http://feed.test/v1/changes', { fetch: feed, signal: stop.signal, onError: (e) => errors.push(e) });
    await advance(10_000, 100);
    assert.ok(errors.length >= 2, `${errors.length} errors`);
    assert.deepEqual(errors.slice(0, 2).map((e) => [e.code, e.status, e.message]), [
      ['ERR_UNAUTHORIZED', 401, 'change feed: HTTP 401'],
      ['ERR_FEED', 403, 'change feed: HTTP 403'],
    ]);
    stop.abort();
    await settle();
    await f.done;
    cache.dispose();
  });
});

// A server sends `reset` to a follower below the top tier for every change by id (a busy
// database's, say): each refetched the whole view, one batch request per reset (about 60
// in 3 s at 20 resets a second). Everything is now invalidated at most once a second: the
// first at once, the rest of that second once at its end, so no change is missed.
test('resets in a burst invalidate everything once at once and once at the end of the second', async () => {
  await withMockClock(async () => {
    const cache = await TileCache.create({ endpoint: backend.url });
    const alls = [];
    const invalidate = cache.invalidate.bind(cache);
    cache.invalidate = (what) => { if (what.all) alls.push(Date.now()); return invalidate(what); };
    let sent = 0;
    const feed = async (_url, { signal }) => new Response(new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode('event: ready\nid: 1-0\ndata: {}\n\n'));
        // A reset every 50 ms for 3 s, then one more 5 s later.
        let tick;
        const next = () => {
          sent++;
          c.enqueue(new TextEncoder().encode(`event: reset\nid: ${sent + 1}-0\ndata: {}\n\n`));
          if (sent < 60) tick = setTimeout(next, 50);
        };
        tick = setTimeout(next, 50);
        const last = setTimeout(() => c.enqueue(new TextEncoder().encode('event: reset\nid: 99-0\ndata: {}\n\n')), 8000);
        signal.addEventListener('abort', () => { clearTimeout(tick); clearTimeout(last); c.error(signal.reason); }, { once: true });
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
    const stop = new AbortController();
    const events = [];
    const errors = [];
    const f = follow(cache, 'http://feed.test/v1/changes', { fetch: feed, signal: stop.signal, lastEventId: '1-0', onEvent: (e) => events.push(e.type), onError: (e) => errors.push(e.message) });
    const t0 = Date.now();
    await advance(10_000, 10);
    const at = alls.map((t) => t - t0);
    assert.deepEqual(errors, []);
    assert.equal(events.filter((e) => e === 'reset').length, 61, 'each reported');
    assert.equal(f.lastEventId, '99-0');
    // At 50 ms, then 1.05, 2.05, 3.05 s (the resets of each second once at its end), then 8 s.
    assert.equal(alls.length, 5, `everything invalidated at ${at}`);
    assert.ok(at.slice(1).every((t, i) => t - at[i] >= 1000), `at ${at}`);
    assert.ok(at[3] <= 3100 && at[4] >= 8000 && at[4] <= 8020, `at ${at}`);
    stop.abort();
    await settle();
    await f.done;
    cache.dispose();
  });
});

// The clock set back an hour (a user fixing it, an NTP step) after everything was
// invalidated: a reset then was put off for the hour, the page showing what the server
// said it could not replay.
test('a reset after the clock was set back invalidates everything at once', async () => {
  await withMockClock(async () => {
    const cache = await TileCache.create({ endpoint: backend.url });
    const alls = [];
    const invalidate = cache.invalidate.bind(cache);
    cache.invalidate = (what) => { if (what.all) alls.push(Date.now()); return invalidate(what); };
    let push;
    const feed = async (_url, { signal }) => new Response(new ReadableStream({
      start(c) {
        push = (text) => c.enqueue(new TextEncoder().encode(text));
        push('event: ready\nid: 1-0\ndata: {}\n\n');
        signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
    const stop = new AbortController();
    const f = follow(cache, 'http://feed.test/v1/changes', { fetch: feed, signal: stop.signal });
    await advance(1500, 10);
    assert.equal(alls.length, 1, 'the first ready');
    mock.timers.setTime(Date.now() - 3_600_000);
    push('event: reset\nid: 2-0\ndata: {}\n\n');
    await advance(100, 10);
    assert.equal(alls.length, 2, 'the reset, at once');
    stop.abort();
    await settle();
    await f.done;
    cache.dispose();
  });
});

test('a connection that stayed up 30 s counts as healthy: the next reconnect is after 0.25-0.5 s again', async () => {
  await withMockClock(async () => {
    const cache = await TileCache.create({ endpoint: backend.url });
    const at = [];
    // Four connections cut at once after ready, then one that lasts 31 s, then cut ones again.
    const feed = async (_url, { signal }) => {
      at.push(Date.now());
      const long = at.length === 5;
      return new Response(new ReadableStream({
        start(c) {
          c.enqueue(new TextEncoder().encode('event: ready\nid: 1-0\ndata: {}\n\n'));
          if (!long) { c.close(); return; }
          const t = setTimeout(() => c.close(), 31_000);
          signal.addEventListener('abort', () => { clearTimeout(t); c.error(signal.reason); }, { once: true });
        },
      }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
    };
    const stop = new AbortController();
    const f = follow(cache, 'http://feed.test/v1/changes', { fetch: feed, signal: stop.signal, onError: () => {} });
    await advance(120_000, 10, () => at.length >= 6);
    const gaps = at.slice(1).map((t, i) => t - at[i]);
    assert.equal(at.length, 6, `connections at gaps ${gaps}`);
    // Before the long one the waits grew (0.5, 1, 2, 4 s with jitter: the fourth at least 2 s).
    assert.ok(gaps[3] >= 2000, `gaps ${gaps}`);
    // After it: 31 s up, then 0.25-0.5 s.
    assert.ok(gaps[4] - 31_000 >= 250 && gaps[4] - 31_000 <= 520, `gaps ${gaps}`);
    stop.abort();
    await settle();
    await f.done;
    cache.dispose();
  });
});

test('onDispose: called once at dispose, at once on a disposed cache, not after unsubscribing', async () => {
  const cache = await TileCache.create({ endpoint: backend.url });
  const calls = [];
  cache.onDispose(() => calls.push('a'));
  cache.onDispose(() => calls.push('unsubscribed'))();
  assert.throws(() => cache.onDispose(1), { code: 'ERR_INVALID_ARG_TYPE', message: 'onDispose takes a function, got 1' });
  cache.dispose();
  cache.dispose();
  assert.deepEqual(calls, ['a']);
  cache.onDispose(() => calls.push('late'));
  assert.deepEqual(calls, ['a', 'late']);
});

test('follow checks its arguments', { skip }, async () => {
  assert.throws(() => follow({}, 'http://x/'), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => follow({ invalidate() {}, onDispose() {} }, 'http://x/'), { code: 'ERR_INVALID_ARG_TYPE' });
  const cache = await TileCache.create({ endpoint: 'http://127.0.0.1:9/v1/batch' });
  assert.throws(() => follow(cache, 'not a url'), { code: 'ERR_INVALID_ARG_VALUE' });
  assert.throws(() => follow(cache, 'http://x/', { nope: 1 }), { code: 'ERR_INVALID_ARG_VALUE' });
  assert.throws(() => follow(cache, 'http://x/', { minRetryMs: 0 }), { code: 'ERR_OUT_OF_RANGE' });
  // Options of the wrong type are refused at once, not on every connection or event later.
  for (const [options, code, message] of [
    [null, 'ERR_INVALID_ARG_TYPE', 'options must be an object'],
    [{ onError: 'log' }, 'ERR_INVALID_ARG_TYPE', 'onError must be a function'],
    [{ onEvent: 1 }, 'ERR_INVALID_ARG_TYPE', 'onEvent must be a function'],
    [{ fetch: 'fetch' }, 'ERR_INVALID_ARG_TYPE', 'fetch must be a function'],
    [{ signal: {} }, 'ERR_INVALID_ARG_TYPE', 'signal must be an AbortSignal'],
    [{ lastEventId: 5 }, 'ERR_INVALID_ARG_TYPE', 'lastEventId must be a string'],
    // One that cannot go back as Last-Event-ID: fetch refuses the header (every connection
    // failed, for ever), or the server reads it as none (nothing replayed or invalidated).
    [{ lastEventId: '1-0\r\nx-evil: 1' }, 'ERR_INVALID_ARG_VALUE', 'lastEventId must be an event id of the feed (visible ASCII, not empty), got "1-0\\r\\nx-evil: 1"'],
    [{ lastEventId: '1-\u0100' }, 'ERR_INVALID_ARG_VALUE', 'lastEventId must be an event id of the feed (visible ASCII, not empty), got "1-\u0100"'],
    [{ lastEventId: '1 0' }, 'ERR_INVALID_ARG_VALUE', /^lastEventId must be an event id of the feed/],
    [{ lastEventId: '' }, 'ERR_INVALID_ARG_VALUE', /^lastEventId must be an event id of the feed/],
    [{ lastEventId: 'x'.repeat(100) + '\n' }, 'ERR_INVALID_ARG_VALUE', /got a string of 101 characters that is not one$/],
    [{ headers: 'x' }, 'ERR_INVALID_ARG_TYPE', /^headers must be an object of valid header names and values/],
    [{ headers: { 'a b': '1' } }, 'ERR_INVALID_ARG_TYPE', /^headers must be an object of valid header names and values/],
    [{ minRetryMs: '500' }, 'ERR_INVALID_ARG_TYPE', /^minRetryMs and maxRetryMs must be numbers of ms.*, got string and 30000$/],
    // Past setTimeout's longest delay a wait fires at once: a tight reconnect loop.
    [{ maxRetryMs: Infinity }, 'ERR_OUT_OF_RANGE', /<= 2147483647, got 500 and Infinity$/],
  ]) {
    assert.throws(() => follow(cache, 'http://x/', options), (e) => {
      assert.equal(e.code, code, String(message));
      if (message instanceof RegExp) assert.match(e.message, message);
      else assert.equal(e.message, message);
      return true;
    });
  }
  // A Headers, as TileCache takes it: its entries are sent (a spread of one has none).
  const sent = [], stop = new AbortController();
  const following = follow(cache, 'http://x/', {
    headers: new Headers({ 'x-api-key': 'k' }), signal: stop.signal,
    fetch: async (url, init) => { sent.push(init.headers); stop.abort(); throw new Error('offline'); },
  });
  await following.done;
  assert.equal(sent[0]['x-api-key'], 'k');
  // Invalidating a class through the cache (what a feed event with classes does).
  assert.equal(cache.invalidate({ classes: ['sold'] }), 0);
  assert.throws(() => cache.invalidate({ classes: 'sold' }), { code: 'ERR_INVALID_ARG_TYPE' });
  cache.dispose();
});

test('an event past 1 Mi characters is dropped as it arrives, not kept whole, and the feed goes on', async () => {
  const cache = await TileCache.create({ endpoint: backend.url });
  const applied = [];
  const invalidate = cache.invalidate.bind(cache);
  cache.invalidate = (what) => { applied.push(what); return invalidate(what); };
  const enc = (s) => new TextEncoder().encode(s);
  // One data line of 4 Mi characters, sent 64 Ki at a time, then an event that fits.
  const CHUNK = 'x'.repeat(64 * 1024), CHUNKS = 64;
  let pulled = 0, atError;
  const feed = async (_url, { signal }) => {
    let at = 'head';
    return new Response(new ReadableStream({
      pull(c) {
        if (at === 'head') {
          c.enqueue(enc('event: ready\nid: 1-0\ndata: {}\n\nevent: invalidate\nid: 2-0\ndata: '));
          at = 'long';
        } else if (at === 'long' && pulled < CHUNKS) {
          pulled++;
          c.enqueue(enc(CHUNK));
        } else if (at === 'long') {
          c.enqueue(enc('\n\nevent: invalidate\nid: 3-0\ndata: {"ids":["a"]}\n\n'));
          at = 'open';
        } else {
          return new Promise((ok) => signal.addEventListener('abort', () => { c.error(signal.reason); ok(); }, { once: true }));
        }
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  const events = [], errors = [];
  const f = follow(cache, 'http://feed.test/v1/changes', {
    fetch: feed,
    lastEventId: '0-0',
    onEvent: (e) => events.push(e),
    onError: (e) => { errors.push(e); atError ??= pulled; },
  });
  await until(() => events.some((e) => e.id === '3-0'), 'the event after the long one');
  assert.equal(errors.length, 1, String(errors));
  assert.equal(errors[0].code, 'ERR_BAD_EVENT');
  assert.match(errors[0].message, /longer than 1048576 characters/);
  // Reported when the line passed the limit (16 chunks), not at its end (64).
  assert.ok(atError <= 17, `reported after ${atError} chunks of 64 Ki`);
  assert.deepEqual(events.map((e) => `${e.type} ${e.id}`), ['ready 1-0', 'invalidate 2-0', 'invalidate 3-0']);
  assert.deepEqual(events[1].invalidation, { all: true }, 'an invalidate that cannot be read drops everything');
  assert.deepEqual(applied.at(-1).ids, ['a']);
  assert.equal(f.lastEventId, '3-0');
  cache.dispose();
  await f.done;
});

// A `\r\n` split across two chunks is one line end: the `\n` opening the second chunk is
// not an empty line (which would end the event before its data, dropping the change).
test('a CRLF split across chunks ends one line, not the event', async () => {
  const cache = await TileCache.create({ endpoint: backend.url });
  const applied = [];
  const invalidate = cache.invalidate.bind(cache);
  cache.invalidate = (what) => { applied.push(what); return invalidate(what); };
  const chunks = ['event: ready\r\nid: 1-0\r\ndata: {}\r\n\r\n', 'event: invalidate\r', '\nid: 2-0\r', '\ndata: {"ids":["a"]}\r', '\n\r', '\n'];
  const feed = async (_url, { signal }) => new Response(new ReadableStream({
    start(c) {
      for (const k of chunks) c.enqueue(new TextEncoder().encode(k));
      signal.addEventListener('abort', () => c.error(signal.reason), { once: true });
    },
  }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  const events = [], errors = [];
  const stop = new AbortController();
  const f = follow(cache, 'http://feed.test/v1/changes', {
    fetch: feed, signal: stop.signal, lastEventId: '0-0', onEvent: (e) => events.push(`${e.type} ${e.id}`), onError: (e) => errors.push(e.message),
  });
  await until(() => events.length >= 2, 'two events');
  await settle();
  assert.deepEqual(events, ['ready 1-0', 'invalidate 2-0']);
  assert.deepEqual(errors, []);
  assert.deepEqual(applied.map((w) => [w.all, w.ids]), [[false, ['a']]], 'the change by id, nothing else');
  stop.abort();
  await f.done;
  cache.dispose();
});
