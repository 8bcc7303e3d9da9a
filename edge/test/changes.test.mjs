// The edge applies the origin's change feed (issue 19): the worker polls
// GET /v1/changes?follow=false inside ctx.waitUntil (changesPollMs, small here), drops what
// each change covers from its isolate's caches, and refuses Workers Cache API entries stored
// before a change that covers them. Real tilewarm-server, relay and workerd on loopback.
//
// No timed assertions: the bound is structural (a poll that starts after
// POST /v1/invalidate returned sees the change), so the test waits for two completed polls
// after the call and then checks that the old answer is not served.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { post as postAs, shape, sse, startRelay, startServer, startWorkerd, serverAuthArgs } from './support/stack.mjs';
import { SECRET, hsToken, serviceToken } from './support/tokens.mjs';

/** Polls `fn` until it returns true; `poke` (a request) lets the worker start a due poll. */
async function until(fn, what, poke = async () => {}) {
  for (let i = 0; i < 400; i++) {
    if (await fn()) return;
    await poke();
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`gave up waiting for ${what}`);
}

describe('edge worker: the change feed under workerd', () => {
  let server;
  let relay;
  let edge;
  let token;
  let adminToken;
  let originToken;
  const tiles = ['14/2622/5720', '14/2623/5720', '14/2622/5721', '14/2623/5721'];
  const options = { originTimeoutMs: 2000, warmRing: 0, changesPollMs: 50 };

  before(async () => {
    token = await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
    adminToken = await hsToken({ tilewarm_access: 'agent', tilewarm_admin: true }, { exp: 3600 });
    originToken = await serviceToken('agent');
    server = await startServer(await serverAuthArgs(SECRET));
    relay = await startRelay(server.batch, { requireToken: originToken });
    edge = await startWorkerd(relay.url, options, { TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken });
  });

  after(async () => {
    await edge?.stop();
    await relay?.close();
    await server?.stop();
  });

  const post = (body) =>
    postAs(edge.batch, body, { 'content-type': 'application/json', authorization: `Bearer ${token}` });
  const health = () => fetch(`${edge.url}/healthz`).then((r) => r.text());
  const invalidate = async (body) => {
    const r = await postAs(`${server.url}/v1/invalidate`, body, {
      'content-type': 'application/json', authorization: `Bearer ${adminToken}`,
    });
    assert.equal(r.status, 200, JSON.stringify(r.json));
  };
  /** Waits until two polls completed after this call: one of them started after it. */
  const twoPolls = async () => {
    const from = (await edge.stats()).changes.polls;
    await until(async () => (await edge.stats()).changes.polls >= from + 2, 'two polls of the change feed', health);
  };

  it('polls the feed with the edge\'s token, resuming from the last id it saw', async () => {
    await health();
    await twoPolls();
    const polls = relay.polls;
    assert.ok(polls.length >= 2);
    assert.ok(polls.every((p) => p.authorization === `Bearer ${originToken}`));
    assert.ok(polls.at(-1).lastEventId, 'a poll after the first sends Last-Event-ID');
    const s = await edge.stats();
    assert.equal(s.changes.errors, 0, s.changes.lastError);
  });

  it('a tile invalidated at the origin is not served from the isolate or the Cache API after the next poll', async () => {
    const req = { tiles, access: 'registered' };
    const first = await post(req);
    assert.equal(first.status, 200);
    assert.ok(first.json.items.length > 0, 'the tiles hold homes');
    // Written to the Cache API (in waitUntil), and held by the isolate.
    await until(async () => (await edge.stats()).shared.puts >= tiles.length, 'the shared-cache writes');
    assert.equal((await post(req)).cache, 'hit');

    const asked = relay.requests().length;
    const { sharedRefused } = await edge.stats();
    await invalidate({ tiles: [tiles[0]] });
    await twoPolls();
    const s = await edge.stats();
    assert.ok(s.changes.events >= 1, `the change was applied (${JSON.stringify(s.changes)})`);

    const after = await post(req);
    assert.equal(after.status, 200);
    assert.notEqual(after.cache, 'hit', 'the invalidated tile is not answered from a cache');
    const forwarded = relay.requests().slice(asked);
    assert.equal(forwarded.length, 1, 'one origin request');
    assert.deepEqual(forwarded[0].body.tiles, [tiles[0]], 'for the invalidated tile only');
    assert.ok((await edge.stats()).sharedRefused > sharedRefused, 'the Cache API entry stored before the change was refused');
    assert.deepEqual(shape(after.json), shape(first.json));
  });

  it('an invalidated id is asked of the origin again', async () => {
    const id = (await post({ tiles: [tiles[1]], access: 'registered' })).json.items[0].id;
    assert.equal((await post({ ids: [id], access: 'registered' })).cache, 'hit');
    const asked = relay.requests().length;
    await invalidate({ ids: [id] });
    await twoPolls();
    const r = await post({ ids: [id], access: 'registered' });
    assert.equal(r.status, 200);
    assert.notEqual(r.cache, 'hit');
    assert.deepEqual(relay.requests().slice(asked).map((q) => q.body.ids), [[id]]);
  });
});

describe('edge worker: an old answer written to the Cache API after another isolate applied the change', () => {
  // Two isolates sharing one Cache API (two workerd processes, as in shared.test.mjs).
  // A's origin request is answered before a change C, and the answer reaches A only after
  // B applied C; A, which has not polled since (changesPollMs of 10 minutes), writes it to
  // the Cache API. The entry is dated by when A planned the request (src/proxy/change.rs),
  // before B applied C, so B refuses it; dated by when A stored it, B would serve it.
  let server;
  let relay;
  let a;
  let b;
  let token;
  let adminToken;
  const tile = '14/2640/5730';

  before(async () => {
    token = await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
    adminToken = await hsToken({ tilewarm_access: 'agent', tilewarm_admin: true }, { exp: 3600 });
    const originToken = await serviceToken('agent');
    server = await startServer(await serverAuthArgs(SECRET));
    relay = await startRelay(server.batch, { requireToken: originToken });
    const env = { TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken };
    a = await startWorkerd(relay.url, { originTimeoutMs: 5000, warmRing: 0, changesPollMs: 600_000 }, env);
    b = await startWorkerd(relay.url, { originTimeoutMs: 5000, warmRing: 0, changesPollMs: 50 }, env, { sharedCache: a.cacheAddr });
  });

  after(async () => {
    relay?.release?.();
    await b?.stop();
    await a?.stop();
    await relay?.close();
    await server?.stop();
  });

  const post = (edge, body) =>
    postAs(edge.batch, body, { 'content-type': 'application/json', authorization: `Bearer ${token}` });
  const health = (edge) => () => fetch(`${edge.url}/healthz`).then((r) => r.text());

  it('is refused by the isolate that applied the change first', async () => {
    await health(a)(); // each isolate's first poll
    await health(b)();
    const req = { tiles: [tile], access: 'registered' };
    relay.holdAnswers = new Promise((ok) => { relay.release = ok; });
    const pending = post(a, req);
    await until(async () => relay.held === 1, 'the origin\'s answer to A in the relay\'s hands');

    const applied = (await b.stats()).changes.events;
    const r = await postAs(`${server.url}/v1/invalidate`, { tiles: [tile] }, {
      'content-type': 'application/json', authorization: `Bearer ${adminToken}`,
    });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    await until(async () => (await b.stats()).changes.events > applied, 'B applied the change', health(b));

    relay.holdAnswers = null;
    relay.release();
    const first = await pending;
    assert.equal(first.status, 200);
    assert.equal(first.cache, 'miss');
    await until(async () => (await a.stats()).shared.puts >= 1, 'A wrote the answer to the Cache API');
    assert.equal((await a.stats()).changes.polls, 1, 'A has not polled since its first request');

    const asked = relay.requests().length;
    const refused = (await b.stats()).sharedRefused;
    const second = await post(b, req);
    assert.equal(second.status, 200);
    assert.notEqual(second.cache, 'hit', 'B does not answer from the entry A wrote after B applied the change');
    assert.equal(relay.requests().length, asked + 1, 'B asked the origin');
    assert.equal((await b.stats()).sharedRefused, refused + 1, 'the entry was refused');
  });
});

describe('edge worker: a change feed answer over the size cap (4 MiB)', () => {
  // The relay answers the feed itself (relay.changes): positions are ids of 1970, far before
  // the isolate's start, so a new isolate does not replay.
  let server;
  let relay;
  let edge;
  let token;
  let feed = { position: '1000-0', huge: false };
  const tile = '14/2630/5730';

  before(async () => {
    token = await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
    const originToken = await serviceToken('agent');
    server = await startServer(await serverAuthArgs(SECRET));
    relay = await startRelay(server.batch, { requireToken: originToken });
    relay.changes = ({ lastEventId }) => {
      if (lastEventId === undefined) return { body: sse([{ event: 'ready', id: feed.position }]) };
      if (feed.huge && lastEventId === '1000-0') {
        // 5 MiB: a comment line of padding, then events the worker must not take.
        return { body: `: ${'x'.repeat(5 * 1024 * 1024)}\n\n${sse([{ event: 'ready', id: lastEventId }])}` };
      }
      return { body: sse([{ event: 'ready', id: lastEventId }]) };
    };
    edge = await startWorkerd(relay.url, { originTimeoutMs: 2000, warmRing: 0, changesPollMs: 50 }, {
      TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken,
    });
  });

  after(async () => {
    await edge?.stop();
    await relay?.close();
    await server?.stop();
  });

  const post = (body) =>
    postAs(edge.batch, body, { 'content-type': 'application/json', authorization: `Bearer ${token}` });
  const health = () => fetch(`${edge.url}/healthz`).then((r) => r.text());

  it('is taken as a reset: everything dropped, and the feed followed on from its position', async () => {
    const req = { tiles: [tile], access: 'public' };
    assert.equal((await post(req)).status, 200);
    assert.equal((await post(req)).cache, 'hit');
    assert.equal((await edge.stats()).changes.lastId, '1000-0');

    // The origin holds more since 1000-0 than one answer may carry; its position is 2000-0.
    feed = { position: '2000-0', huge: true };
    await until(async () => (await edge.stats()).changes.lastId === '2000-0', 'the feed followed from its position', health);
    const s = await edge.stats();
    assert.equal(s.changes.tooLarge, 1);
    assert.equal(s.changes.errors, 0, s.changes.lastError);
    const after = await post(req);
    assert.equal(after.status, 200);
    assert.equal(after.cache, 'miss', 'the reset dropped what the isolate held');

    // And the next polls resume from there, so a later change is applied.
    const from = relay.polls.length;
    await until(async () => relay.polls.length >= from + 2, 'two more polls', health);
    assert.ok(relay.polls.slice(from).every((p) => p.lastEventId === '2000-0'));
    assert.equal((await edge.stats()).changes.tooLarge, 1);
  });
});

describe('edge worker: a new isolate\'s replay of the change feed', () => {
  // The relay answers the feed itself; no batch request is made. The position is recent,
  // so a new isolate replays from changesLookbackMs before its start.
  const started = [];
  after(async () => {
    for (const { edge, relay } of started) {
      await edge.stop();
      await relay.close();
    }
  });

  /** A worker whose feed `answer(lastEventId, n)` gives (n: the polls with an id so far). */
  async function isolate(answer) {
    const relay = await startRelay('http://127.0.0.1:9/v1/batch');
    const position = `${Date.now()}-0`;
    let n = 0;
    relay.changes = ({ lastEventId }) => {
      if (lastEventId === undefined) return { body: sse([{ event: 'ready', id: position }]) };
      return answer(lastEventId, n++, position);
    };
    const edge = await startWorkerd(relay.url, { changesPollMs: 50, originTimeoutMs: 2000 });
    started.push({ edge, relay });
    const health = () => fetch(`${edge.url}/healthz`).then((r) => r.text());
    return { edge, relay, health };
  }

  it('applies a reset that is one of the changes replayed (an id invalidation below tier agent)', async () => {
    const t = Date.now() - 60_000;
    const tiles = JSON.stringify({ ids: [], tiles: ['14/2624/5721'], classes: [], all: false });
    const { edge, health } = await isolate((lastEventId, n) => {
      if (n === 0) {
        return { body: sse([
          { event: 'ready', id: lastEventId },
          { event: 'reset', id: `${t}-0` },
          { event: 'invalidate', id: `${t + 1}-0`, data: tiles },
        ]) };
      }
      return { body: sse([{ event: 'ready', id: lastEventId }]) };
    });
    await health();
    await until(async () => (await edge.stats()).changes.polls >= 2, 'two polls', health);
    const s = await edge.stats();
    assert.equal(s.changes.events, 2, `the reset and the invalidation were applied: ${JSON.stringify(s.changes)}`);
    assert.equal(s.changes.lastId, `${t + 1}-0`);
  });

  // A lone `gap` without `from` (an origin of before it, or `{}`: before the reasons) is
  // applied as every reset: skipped, Cache API entries fetched before the changes it
  // stands for would be served until their max-age (the Cache API side is tested below).
  for (const data of ['{"reason":"gap"}', '{}']) {
    it(`applies the lone reset ${data} of a replay the origin cannot serve, also when the first try failed`, async () => {
      const { edge, relay, health } = await isolate((lastEventId, n, position) => {
        if (n === 0) return { status: 500, body: 'not now' };
        if (lastEventId === position) return { body: sse([{ event: 'ready', id: lastEventId }]) };
        return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'reset', id: position, data }]) };
      });
      await health();
      await until(async () => (await edge.stats()).changes.polls >= 2, 'two polls', health);
      const s = await edge.stats();
      assert.equal(s.changes.errors, 1, 'the first try failed');
      const withIds = relay.polls.filter((p) => p.lastEventId !== undefined).map((p) => p.lastEventId);
      assert.equal(withIds[0], withIds[1], 'retried from the same id');
      assert.equal(s.changes.events, 1, `the reset was applied: ${JSON.stringify(s.changes)}`);
      assert.equal(s.changes.replaying, false);
      assert.equal(s.changes.replayedFrom, null);
    });
  }

  // tilewarm-server's `from` with Redis is the id just before the first entry kept, whose
  // sequence is often 2^64 - 1.
  for (const seq of ['3', '18446744073709551615']) {
    it(`replays from the \`from\` of a gap when it is later than the id asked, and on from there (seq ${seq})`, async () => {
      const from = `${Date.now() - 60_000}-${seq}`;
      const tiles = JSON.stringify({ ids: [], tiles: ['14/2624/5721'], classes: [], all: false });
      const { edge, relay, health } = await isolate((lastEventId, n, position) => {
        if (lastEventId === from) {
          return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'invalidate', id: position, data: tiles }]) };
        }
        if (lastEventId === position) return { body: sse([{ event: 'ready', id: lastEventId }]) };
        return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'reset', id: position, data: JSON.stringify({ reason: 'gap', from }) }]) };
      });
      await health();
      await until(async () => (await edge.stats()).changes.polls >= 2, 'two polls', health);
      const s = await edge.stats();
      assert.equal(s.changes.replayedFrom, from);
      const withIds = relay.polls.filter((p) => p.lastEventId !== undefined).map((p) => p.lastEventId);
      assert.equal(withIds[1], from, `the replay went on from \`from\` at once: ${withIds}`);
      assert.equal(s.changes.events, 2, `the floor and the invalidation: ${JSON.stringify(s.changes)}`);
      assert.equal(s.changes.errors, 0, s.changes.lastError);
    });
  }

  it('applies a gap whose `from` is no later than the id asked (the backlog bound) as a reset', async () => {
    let at;
    const { edge, relay, health } = await isolate((lastEventId, n, position) => {
      at = position;
      if (lastEventId === position) return { body: sse([{ event: 'ready', id: lastEventId }]) };
      return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'reset', id: position, data: '{"reason":"gap","from":"5-0"}' }]) };
    });
    await health();
    const s = await edge.stats();
    assert.equal(s.changes.events, 1, JSON.stringify(s.changes));
    assert.equal(s.changes.replayedFrom, null);
    const replays = relay.polls.filter((p) => p.lastEventId !== undefined && p.lastEventId !== at);
    assert.equal(replays.length, 1, 'not replayed from `from`');
  });

  // The origin says why it resets (server/src/stream.rs, ResetReason): a lone `reset` for an
  // entry it could not read, or for an id invalidation below tier agent, is a change and is
  // applied, as a `gap` is.
  for (const reason of ['unreadable', 'ids']) {
    it(`applies a lone reset of reason ${reason}`, async () => {
      const change = `${Date.now() - 60_000}-0`;
      const { edge, health } = await isolate((lastEventId, n) => {
        if (n === 0) return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'reset', id: change, data: JSON.stringify({ reason }) }]) };
        return { body: sse([{ event: 'ready', id: lastEventId }]) };
      });
      await health();
      await until(async () => (await edge.stats()).changes.polls >= 2, 'two polls', health);
      const s = await edge.stats();
      assert.equal(s.changes.events, 1, `the reset was applied: ${JSON.stringify(s.changes)}`);
      assert.equal(s.changes.lastId, change);
    });
  }
});

describe('edge worker: Cache API entries after a new isolate\'s replay the origin cannot serve', () => {
  // Isolate A (whose feed position is of 1970: no replay) writes Cache API entries; each
  // new isolate B shares that cache and its feed answers B's replay with a lone `gap`.
  // Skipped, the gap would let B serve every entry A wrote, whatever changed before. One
  // relay (the origin is in the entries' key), whose feed answers B once A is set up (A is
  // sent no request after that, so it does not poll).
  let server;
  let relay;
  let a;
  let token;
  let originToken;
  let fetchedAt;
  const started = [];
  // One tile per question: an isolate that refuses an entry writes a newer one.
  const [t1, t2, t3, t4] = ['14/2634/5726', '14/2635/5726', '14/2634/5727', '14/2635/5727'];
  const env = () => ({ TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: originToken });
  const options = { originTimeoutMs: 5000, warmRing: 0, changesPollMs: 50 };
  const post = (edge, body) =>
    postAs(edge.batch, body, { 'content-type': 'application/json', authorization: `Bearer ${token}` });

  before(async () => {
    token = await hsToken({ tilewarm_access: 'agent' }, { exp: 3600 });
    originToken = await serviceToken('agent');
    server = await startServer(await serverAuthArgs(SECRET));
    relay = await startRelay(server.batch, { requireToken: originToken });
    relay.changes = ({ lastEventId }) => ({ body: sse([{ event: 'ready', id: lastEventId ?? '1000-0' }]) });
    a = await startWorkerd(relay.url, options, env());
    const before = Date.now();
    const r = await post(a, { tiles: [t1, t2, t3, t4], access: 'registered' });
    assert.equal(r.status, 200);
    await until(async () => (await a.stats()).shared.puts >= 4, 'A wrote the entries');
    fetchedAt = { after: before - 1, before: Date.now() + 1 };
  });

  after(async () => {
    for (const edge of started) await edge.stop();
    await a?.stop();
    await relay?.close();
    await server?.stop();
  });

  /** A new isolate B sharing A's Cache API, whose feed `answer(lastEventId, position)` gives. */
  async function isolateB(answer) {
    const position = `${Date.now()}-0`;
    relay.changes = ({ lastEventId }) => {
      if (lastEventId === undefined) return { body: sse([{ event: 'ready', id: position }]) };
      return answer(lastEventId, position);
    };
    const edge = await startWorkerd(relay.url, options, env(), { sharedCache: a.cacheAddr });
    started.push(edge);
    return edge;
  }

  /** B's answer for `tile`, whether the origin was asked, and whether an entry was refused. */
  async function ask(b, tile) {
    const asked = relay.requests().length;
    const refused = (await b.stats()).sharedRefused;
    const r = await post(b, { tiles: [tile], access: 'registered' });
    assert.equal(r.status, 200);
    return {
      cache: r.cache,
      origin: relay.requests().length > asked,
      refused: (await b.stats()).sharedRefused > refused,
    };
  }

  it('a gap without `from` (an older origin) refuses every entry fetched before it', async () => {
    const b = await isolateB((lastEventId, position) => {
      if (lastEventId === position) return { body: sse([{ event: 'ready', id: lastEventId }]) };
      return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'reset', id: position, data: '{"reason":"gap"}' }]) };
    });
    assert.deepEqual(await ask(b, t1), { cache: 'miss', origin: true, refused: true });
  });

  it('a gap whose `from` is after the entries were fetched refuses them', async () => {
    const from = `${fetchedAt.before}-0`;
    const b = await isolateB((lastEventId, position) => {
      if (lastEventId === position || lastEventId === from) return { body: sse([{ event: 'ready', id: lastEventId }]) };
      return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'reset', id: position, data: JSON.stringify({ reason: 'gap', from }) }]) };
    });
    assert.deepEqual(await ask(b, t2), { cache: 'miss', origin: true, refused: true });
    assert.equal((await b.stats()).changes.replayedFrom, from);
  });

  it('a gap whose `from` is before the entries were fetched takes them, unless a change after `from` covers them', async () => {
    const from = `${fetchedAt.after}-0`;
    const change = JSON.stringify({ ids: [], tiles: [t4], classes: [], all: false });
    const b = await isolateB((lastEventId, position) => {
      if (lastEventId === position) return { body: sse([{ event: 'ready', id: lastEventId }]) };
      if (lastEventId === from) {
        return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'invalidate', id: position, data: change }]) };
      }
      return { body: sse([{ event: 'ready', id: lastEventId }, { event: 'reset', id: position, data: JSON.stringify({ reason: 'gap', from }) }]) };
    });
    assert.deepEqual(await ask(b, t3), { cache: 'hit', origin: false, refused: false });
    assert.deepEqual(await ask(b, t4), { cache: 'miss', origin: true, refused: true });
    const s = (await b.stats()).changes;
    assert.equal(s.replayedFrom, from);
    assert.equal(s.events, 2, JSON.stringify(s));
  });
});

describe('edge worker: a refused or failing poll of the change feed waits longer', () => {
  // The relay answers the feed itself; no batch request is made. Positions are ids of 1970,
  // so a new isolate does not replay. changesPollMs is 50 ms: without the waits below,
  // every request 50 ms after the last poll would start another.
  const started = [];
  after(async () => {
    for (const { edge, relay } of started) {
      await edge.stop();
      await relay.close();
    }
  });

  async function isolate(answer) {
    const relay = await startRelay('http://127.0.0.1:9/v1/batch');
    relay.changes = answer;
    const edge = await startWorkerd(relay.url, { changesPollMs: 50, originTimeoutMs: 2000 });
    started.push({ edge, relay });
    const health = () => fetch(`${edge.url}/healthz`).then((r) => r.text());
    return { edge, relay, health };
  }

  /** Requests to the worker (each may start a due poll) for at least `ms`, and at least
   * 10 of them (however long a busy machine takes). */
  async function requestsFor(health, ms) {
    const end = Date.now() + ms;
    let n = 0;
    while (Date.now() < end || n < 10) {
      await health();
      n++;
      await new Promise((r) => setTimeout(r, 20));
    }
    return n;
  }

  it('waits out a 429\'s Retry-After in seconds, at most 60 s, however many requests come', async () => {
    const { edge, relay, health } = await isolate(() => ({ status: 429, headers: { 'retry-after': '3600' }, body: '' }));
    await health(); // a new isolate's first request waits for its first poll
    const s = (await edge.stats()).changes;
    assert.equal(s.errors, 1, JSON.stringify(s));
    assert.equal(s.failing, 429);
    assert.equal(s.waitMs, 60_000, 'Retry-After: 3600 is capped at 60 s');
    await requestsFor(health, 1000);
    assert.equal(relay.polls.length, 1, 'no poll before the Retry-After has passed');
  });

  it('waits out a 503\'s Retry-After given as an HTTP date', async () => {
    const { edge, relay, health } = await isolate(() => ({
      status: 503,
      headers: { 'retry-after': new Date(Date.now() + 30_000).toUTCString() },
      body: '',
    }));
    await health();
    const s = (await edge.stats()).changes;
    assert.equal(s.errors, 1, JSON.stringify(s));
    assert.ok(s.waitMs > 20_000 && s.waitMs <= 30_000, `waits ${s.waitMs} ms for a date 30 s ahead`);
    await requestsFor(health, 500);
    assert.equal(relay.polls.length, 1, 'no poll before the date');
  });

  it('doubles the wait for failures of one kind in a row, starts over for a new kind and after a success', async () => {
    // `answer` for every poll; with `once`, for the next one only, the polls after it held
    // (in flight, answered as a success when the answer is set again): the state its
    // failure left is there to read until the held poll's timeout (originTimeoutMs, 2 s),
    // not only until the next poll's failure 50 ms later.
    let answer = { status: 500, body: 'not now' };
    let once = false;
    const held = [];
    const answerNext = (a, { only = false } = {}) => {
      answer = a;
      once = only;
      for (const release of held.splice(0)) release();
    };
    const { edge, relay, health } = await isolate(({ lastEventId }) => {
      const ready = { body: sse([{ event: 'ready', id: lastEventId ?? '1000-0' }]) };
      if (answer === 'held') return new Promise((ok) => held.push(() => ok(ready)));
      if (answer === 'ok') return ready;
      const a = answer;
      if (once) answer = 'held';
      return a;
    });
    await health();
    // Each stats snapshot is consistent (a poll's outcome is recorded in one step); those
    // taken with no poll in flight are kept, by the failures counted so far.
    const seen = new Map();
    const watch = async () => {
      const c = (await edge.stats()).changes;
      if (!c.inFlight) seen.set(c.errors, c);
      return c;
    };
    await until(async () => (await watch()).errors >= 5, 'five failed polls', health);
    let spaced = 0;
    for (const [errors, c] of seen) {
      assert.equal(c.failing, 500);
      assert.equal(c.failures, errors);
      assert.equal(c.waitMs, 50 * 2 ** (errors - 1), `wait after failure ${errors}: ${JSON.stringify(c)}`);
      // The next poll did not start before that wait had passed (the isolate's own clock).
      const next = seen.get(errors + 1);
      if (next) {
        assert.ok(next.lastPollAt - c.lastPollAt >= c.waitMs, `poll ${errors + 1} started ${next.lastPollAt - c.lastPollAt} ms after poll ${errors}, which set a wait of ${c.waitMs} ms`);
        spaced++;
      }
    }
    assert.ok(spaced >= 2, `saw ${spaced} pairs of polls in a row: ${JSON.stringify([...seen.keys()])}`);
    const five = relay.polls.length;

    // Another kind of failure: its first waits changesPollMs again.
    answerNext({ status: 503, body: 'busy' }, { only: true });
    const before = (await edge.stats()).changes.errors;
    await until(async () => (await edge.stats()).changes.errors > before, 'a 503', health);
    let c = (await edge.stats()).changes;
    assert.equal(c.errors, before + 1, JSON.stringify(c));
    assert.equal(c.failing, 503);
    assert.equal(c.failures, 1);
    assert.equal(c.waitMs, 50);
    assert.ok(relay.polls.length > five);

    // A success: failures forgotten, the next poll after changesPollMs.
    answerNext('ok');
    await until(async () => (await edge.stats()).changes.polls >= 1, 'a poll applied', health);
    c = (await edge.stats()).changes;
    assert.equal(c.failing, null);
    assert.equal(c.failures, 0);
    assert.equal(c.waitMs, 50);
    // And a 503 after it is a first failure again, not the second in a row.
    answerNext({ status: 503, body: 'busy' }, { only: true });
    const errors = c.errors;
    await until(async () => (await edge.stats()).changes.errors > errors, 'a 503 after the success', health);
    c = (await edge.stats()).changes;
    assert.equal(c.errors, errors + 1, JSON.stringify(c));
    assert.equal(c.failures, 1);
    assert.equal(c.waitMs, 50);
    answerNext('ok');
  });
});

describe('the first poll of the change feed never ends (pkg/edge.js under Node)', () => {
  // Under Node, with `fetch` replaced: the first poll's fetch never settles and ignores its
  // signal, standing in for a poll whose request the runtime cancelled (its continuations
  // dropped), which no timeout of its fetches ends. The requests waiting for a new
  // isolate's first poll wait on promises and timers of their own: past the poll's bound
  // they are served as after a failed first poll, and the poll no longer counts as in
  // flight, so the next one due starts. Before, they awaited the poll itself: for ever, and
  // no poll started again.
  const realFetch = globalThis.fetch;
  let feedCalls = 0;
  let batchCalls = 0;

  before(() => {
    globalThis.fetch = async (url) => {
      if (String(url).includes('/v1/changes')) {
        feedCalls++;
        if (feedCalls === 1) return new Promise(() => {});
        return new Response(sse([{ event: 'ready', id: '5-0' }]), { status: 200, headers: { 'content-type': 'text/event-stream' } });
      }
      batchCalls++;
      const body = { tiles: [{ tile: '14/2624/5721', ids: [], ttl: 300 }], items: [], missing: [] };
      return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } });
    };
  });

  after(() => {
    globalThis.fetch = realFetch;
  });

  it('answers the requests waiting for it once its bound is over, and polls again', async () => {
    const { createWorker } = await import('./support/node-worker.mjs');
    const worker = createWorker();
    const env = {
      ORIGIN: 'http://127.0.0.1:9/v1/batch',
      TILEWARM_OPTIONS: JSON.stringify({ originTimeoutMs: 200, changesPollMs: 1000, warmRing: 0, statsPublic: true }),
    };
    const waits = [];
    const ctx = { waitUntil: (p) => waits.push(p) };
    const batch = () => worker.fetch(new Request('http://edge.test/v1/batch', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tiles: ['14/2624/5721'] }),
    }), env, ctx);
    const stats = async () => (await worker.fetch(new Request('http://edge.test/edge/stats'), env, ctx)).json();
    // A guard for the test itself: without the bound these never settle.
    let timer;
    const never = new Promise((ok) => {
      timer = setTimeout(() => ok('still waiting'), 15_000);
    });
    const [a, b] = await Promise.race([Promise.all([batch(), batch()]), never]);
    clearTimeout(timer);
    assert.equal(a?.status, 200, 'the request that started the poll was answered');
    assert.equal(b?.status, 200, 'the request that waited for it was answered');
    assert.equal(feedCalls, 1);
    assert.equal(batchCalls, 2);
    // The next request starts the next poll (due changesPollMs after the lost one's start),
    // which is applied: the feed's position, then the changes after it.
    assert.equal((await batch()).status, 200);
    await waits.at(-1);
    assert.equal(feedCalls, 3);
    const after = (await stats()).changes;
    assert.equal(after.errors, 1);
    assert.match(after.lastError, /the change feed's poll did not finish within 1600 ms/);
    assert.equal(after.inFlight, false);
    assert.equal(after.polls, 1);
    assert.equal(after.lastId, '5-0');
  });
});
