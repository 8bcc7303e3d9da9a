// The table of item objects (js/cache.js `OBJS`): the engine keeps an item's slot, not the
// object, and gives a slot back when the item leaves the cache. These tests churn the
// cache (evictions, replaced items, invalidation, a lower tier, an invalid answer, a
// disposed cache) and check that every item handed out is the one asked for, and that
// objects the cache let go of are collectable (a slot never given back would keep its
// object alive for as long as the page runs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { TileCache } from 'tilewarm';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

const TIERS = ['public', 'registered', 'verified', 'agent'];

/** An in-memory batch endpoint answering ids: item `n<k>` has tier `k % 4` unless told;
 * `version` goes into its data, so a re-fetched item is a new object with new data. */
function backend() {
  const b = { version: 0, invalid: false, answered: 0 };
  b.fetch = async (_url, init) => {
    const req = JSON.parse(init.body);
    b.answered++;
    if (b.invalid) {
      // Well-formed items in an answer the engine refuses (an item of an unknown tier).
      const items = req.ids.map((id) => item(id, b.version));
      items.push({ ...item('bad', b.version), access: 'root' });
      return Response.json({ tiles: [], items, missing: [] });
    }
    return Response.json({ tiles: [], items: req.ids.map((id) => item(id, b.version)), missing: [] });
  };
  return b;
}

function item(id, version) {
  const k = Number(id.slice(1)) || 0;
  return { id, lon: -122.33 + (k % 100) / 1e4, lat: 47.6, class: 'active', access: TIERS[k % 4], data: { id, version } };
}

const make = (b, opts = {}) =>
  TileCache.create({ endpoint: 'http://slots.invalid/v1/batch', fetch: b.fetch, access: 'agent', ...opts });

const idsOf = (from, to) => Array.from({ length: to - from }, (_, i) => `n${from + i}`);

/** Every item handed out is the one asked for, with the data of the answer it came in. */
function checkItems(items, ids, version) {
  items.forEach((it, i) => {
    assert.ok(it, `${ids[i]} was found`);
    assert.equal(it.id, ids[i]);
    assert.deepEqual(it.data, { id: ids[i], version });
  });
}

test('items stay themselves through evictions, replacement, invalidation and a lower tier', async () => {
  const b = backend();
  const cache = await make(b, { maxItems: 64 });
  // Evictions: 640 items through a cache of 64, in batches of 32 (each getMany is one
  // answer); every answer's items are checked, then the last 32 again from the cache.
  for (let from = 0; from < 640; from += 32) {
    const ids = idsOf(from, from + 32);
    checkItems(await cache.getMany(ids), ids, 0);
  }
  const last = idsOf(608, 640);
  const fetched = b.answered;
  checkItems(await cache.getMany(last), last, 0);
  assert.equal(b.answered, fetched, 'the last answer is still cached');
  assert.ok(cache.stats().evictions >= 640 - 64, `evictions: ${cache.stats().evictions}`);

  // Replacement: the same ids answered again with new data (new objects in new slots; the
  // old ones given back and reused by the next answers).
  cache.invalidate({ ids: last });
  b.version = 1;
  checkItems(await cache.getMany(last), last, 1);
  const other = idsOf(1000, 1032);
  checkItems(await cache.getMany(other), other, 1);
  checkItems(await Promise.all(last.map((id) => cache.get(id))), last, 1);

  // A lower tier drops what it may not see; what is left is still itself.
  cache.setAccess('public');
  const visible = other.filter((id) => Number(id.slice(1)) % 4 === 0);
  checkItems(await cache.getMany(visible), visible, 1);
  cache.dispose();
});

test('an answer the engine refuses gives every slot back, and the next answers are right', async () => {
  const b = backend();
  const cache = await make(b, { batch: { retries: 0 } });
  const errors = [];
  cache.onError((e) => errors.push(e));
  b.invalid = true;
  await assert.rejects(cache.getMany(idsOf(0, 8)));
  assert.equal(errors.at(-1).code, 'ERR_INVALID_RESPONSE');
  b.invalid = false;
  const ids = idsOf(0, 40);
  checkItems(await cache.getMany(ids), ids, 0);
  checkItems(await Promise.all(ids.map((id) => cache.get(id))), ids, 0);
  cache.dispose();
});

/** Fills a cache with `n` items and returns weak references to the objects it handed out. */
async function filled(cache, from, n) {
  const ids = idsOf(from, from + n);
  const items = await cache.getMany(ids);
  checkItems(items, ids, 0);
  return items.map((it) => new WeakRef(it));
}

async function collected(refs) {
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 0));
    gc();
  }
  return refs.filter((r) => r.deref() === undefined).length;
}

test('objects of items that left the cache are let go of', async () => {
  const b = backend();
  // Evicted: 200 items through a cache of 50.
  const small = await make(b, { maxItems: 50 });
  const evicted = [];
  for (let from = 0; from < 200; from += 25) evicted.push(...await filled(small, from, 25));
  await filled(small, 200, 50); // pushes the rest of the first 200 out
  assert.equal(await collected(evicted), 200, 'every evicted item can be collected');

  // Invalidated.
  const cache = await make(b);
  const dropped = await filled(cache, 0, 100);
  assert.equal(cache.invalidate({ all: true }), 100);
  assert.equal(await collected(dropped), 100, 'every invalidated item can be collected');

  // Disposed (the engine freed: its slots come back through takeFreed).
  const kept = await filled(cache, 0, 100);
  assert.equal(await collected(kept), 0, 'cached items are kept');
  cache.dispose();
  small.dispose();
  assert.equal(await collected(kept), 100, 'a disposed cache lets go of its items');
});

test('a cache the page drops without dispose() lets go of its items once it is collected', async () => {
  const b = backend();
  let cache = await make(b);
  const kept = await filled(cache, 0, 100);
  assert.equal(await collected(kept), 0, 'cached items are kept');
  cache = null;
  assert.equal(await collected(kept), 100, 'the items of a collected cache are let go of');
});
