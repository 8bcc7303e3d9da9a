// tilewarm/deckgl in headless Chromium with real deck.gl (WebGL2 on SwiftShader), on a page
// built by Vite over the package (scripts/test-browser.sh). Checks: after pans and zooms the
// visible tiles draw exactly the items the backend has (nothing twice, nothing left over);
// a one-tile pan after prefetch sends no foreground request (the layer feeds deck's view to
// the planner); a tier drop takes the items above the new tier off the screen by the next
// frame; a disposed cache is fed no view; an item deleted on the server and invalidated, or
// found gone when its tile is fetched again, leaves the screen, and no tile of another data
// tile is rendered again; so does one left out of a later answer for a tile outside the
// cache's view (followView: false), and no other tile is rendered or loaded again; tiles
// outside the cache's view are rendered again stale on time, refetched meanwhile and
// rendered again fresh; a map at rest past every ttl reads (so fetches) only the tiles deck
// shows, not those in its tile cache, and panned back, one changed there (twice) is read once
// and rendered with the new data; a hidden layer (visible: false) reads no tile that changed,
// and shown again reads it once and renders the new data; no console errors. Screenshot:
// target/browser-test/deckgl.png.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tileCorner, tileOf, SEATTLE } from '../support/backend.mjs';
import { browserSession, checkDrawn, checkDeletedLeave, checkReadsAtRest, checkStaleRefetched, dist, requestsHolding, until } from './support.mjs';

const [, SX, SY] = SEATTLE;
/** One z14 data tile in degrees of longitude. */
const TILE_LON = 360 / 2 ** 14;

describe('tilewarm/deckgl in headless Chromium', { timeout: 180_000 }, () => {
  const session = browserSession();
  const { problems } = session;
  let backend, page;

  before(async () => {
    ({ backend } = session);
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    page = await session.open(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5`);
  });

  /** Waits until every selected tile is loaded and drawn, only they are visible, and
   * nothing is in flight. */
  function settled(what, p = page) {
    return until(p, () => {
      const s = window.__tw.state();
      if (!s || !s.current || !s.loaded || s.stats.inFlight > 0 || !s.selected.length) return false;
      if (Object.values(s.drawn).some((n) => n < 0)) return false;
      if (s.visible.length !== s.selected.length || s.visible.some((id) => !s.selected.includes(id))) return false;
      return s;
    }, null, what);
  }

  /** The data tile (zoom 14) a deck tile key `x:y:z` lies in (deck's tiles are finer here). */
  const parent = (key) => { const [x, y, z] = key.split(':').map(Number); return `14/${x >> (z - 14)}/${y >> (z - 14)}`; };

  /** After `change(arg)` in page `p`, waits until `id` (of data tile `tile`) is drawn no
   * more, and checks that no tile of another data tile was rendered again. */
  async function gone(p, id, tile, change, arg) {
    await p.evaluate(() => window.__tw.mark());
    await p.evaluate(change, arg);
    await until(p, (id) => !window.__tw.state().ids.includes(id), id, `${id} off the screen`);
    const s = await settled('the tiles again', p);
    checkDrawn(assert, backend, s.drawn);
    for (const key of s.redrawn) assert.equal(parent(key), tile, `tile ${key} rendered again`);
    return s;
  }

  it('the visible tiles draw the items the backend has, after pans and zooms', async () => {
    let s = await settled('first tiles');
    assert.ok(Object.values(s.drawn).some((n) => n > 0));
    checkDrawn(assert, backend, s.drawn);
    await page.screenshot({ path: join(dist, 'deckgl.png') });
    // Each view centred on a z14 tile's centre, so its host tiles (z15 at deck zoom 14.5 and
    // 15.3, z13 at 13.2) all touch the view and the check compares whole data tiles.
    for (const [dx, dy, zoom] of [[2, 0, 14.5], [2, 0, 13.2], [-1, 1, 15.3], [-4, -2, 14.5]]) {
      const [longitude, latitude] = tileCorner(14, SX + dx + 0.5, SY + dy + 0.5);
      await page.evaluate((v) => window.__tw.setView(v), { longitude, latitude, zoom });
      s = await settled('after a move');
      checkDrawn(assert, backend, s.drawn);
    }
    assert.deepEqual(s.errors, []);
  });

  it('a one-tile pan after prefetch sends no foreground request', async () => {
    // A part of the dataset no earlier step came near, so only prefetch can have loaded
    // the tiles the pan reaches.
    const [lon, lat] = tileCorner(14, SX + 7.5, SY + 6.5);
    const p0 = await page.evaluate(() => window.__tw.cache.stats().prefetchRequests);
    await page.evaluate(([longitude, latitude]) => window.__tw.setView({ longitude, latitude, zoom: 14.5 }), [lon, lat]);
    await settled('tiles at 14.5');
    await until(page, (p0) => window.__tw.cache.stats().inFlight === 0 && window.__tw.cache.stats().prefetchRequests > p0, p0, 'prefetch done');
    const fg = (st) => st.requests - st.prefetchRequests;
    const before = await page.evaluate(() => window.__tw.cache.stats());
    await page.evaluate((d) => window.__tw.setView({ longitude: window.__tw.deck.props.viewState.longitude + d }), TILE_LON);
    const s = await settled('after a one-tile pan');
    checkDrawn(assert, backend, s.drawn);
    assert.equal(fg(s.stats), fg(before), 'no foreground request');
  });

  it('a tier drop takes the items above the new tier off the screen by the next frame', async () => {
    const [lon, lat] = tileCorner(14, SX + 2.5, SY + 1.5);
    await session.withPage(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5&access=agent`, async (p) => {
      let s = await settled('tiles at agent', p);
      // A pan first: deck renders a new layer instance per move and hands it the state, so
      // the tier listener belongs to an older instance than the one on screen.
      await p.evaluate((d) => window.__tw.setView({ longitude: window.__tw.deck.props.viewState.longitude + d }), TILE_LON);
      s = await settled('tiles at agent after a pan', p);
      assert.ok(s.shown.agent > 0, `agent items drawn: ${JSON.stringify(s.shown)}`);
      // Two frames: deck updates the layer on the first after the drop.
      const { shown, held } = await p.evaluate(async () => {
        window.__tw.cache.setAccess('public');
        await window.__tw.frames(2);
        return window.__tw.state();
      });
      assert.equal(shown.agent, undefined, `agent items on screen after the drop: ${JSON.stringify(shown)}`);
      assert.equal(held.agent, undefined, `agent items in the layer's tiles after the drop: ${JSON.stringify(held)}`);
      s = await settled('tiles at public', p);
      assert.equal(s.shown.agent, undefined);
      checkDrawn(assert, backend, s.drawn);
      // The same when the layer's cache prop becomes another cache of a lower tier (deck
      // sees a changed prop, not changed data).
      await p.evaluate(async () => { await window.__tw.useCache('agent'); await window.__tw.frames(2); });
      s = await settled('tiles of an agent cache', p);
      assert.ok(s.shown.agent > 0, `agent items drawn: ${JSON.stringify(s.shown)}`);
      const swapped = await p.evaluate(async () => {
        await window.__tw.useCache('public');
        await window.__tw.frames(2);
        return window.__tw.state().shown;
      });
      assert.equal(swapped.agent, undefined, `agent items on screen with a public cache: ${JSON.stringify(swapped)}`);
      s = await settled('tiles of a public cache', p);
      assert.equal(s.shown.agent, undefined);
      checkDrawn(assert, backend, s.drawn);
    });
  });

  it('a tile whose items changed in the cache is drawn again without them; other tiles are not', async () => {
    // A part of the dataset no other step comes near (items are deleted from it).
    const [lon, lat] = tileCorner(14, SX - 8.5, SY - 8.5);
    await session.withPage(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5`, async (p) => {
      // deck's first selection can be for a smaller canvas (the four tiles at the centre,
      // all of one data tile), and settle before the view's own.
      await until(p, () => window.__tw.state()?.selected.length > 4, null, 'the tiles of the whole view selected');
      const first = await settled('the tiles', p);
      await checkDeletedLeave(assert, backend, first.ids, 'drawn', (...args) => gone(p, ...args));
    });
  });

  it("a tile outside the cache's view (followView: false) is drawn again when an answer changed its items; other tiles are not", async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). No view
    // is fed to the cache: every tile deck holds is outside it. One item of the tile in the
    // middle is served with a ttl of 60 s, the rest with 300 s or more.
    const [lon, lat] = tileCorner(14, SX - 9.5, SY + 8.5);
    const tile = `14/${SX - 10}/${SY + 8}`;
    const a = backend.tileItems(tile, 'public')[0].id;
    backend.byId.get(a).ttl = 60;
    await session.withPage(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5&follow=0`, async (p) => {
      // deck's first selection can be for a smaller canvas (the four tiles at the centre,
      // all of one data tile), and settle before the view's own.
      await until(p, () => window.__tw.state()?.selected.length > 4, null, 'the tiles of the whole view selected');
      const first = await settled('the tiles', p);
      assert.ok(first.ids.includes(a), `${a} drawn: ${first.ids}`);
      assert.ok(Object.keys(first.drawn).some((key) => parent(key) !== tile), 'tiles of other data tiles drawn');
      // Deleted on the server; past its ttl the page prefetches the tile (a route's tile,
      // say), and the cache wakes for it: the answer leaves the item out.
      backend.remove(a);
      const s = await gone(p, a, tile, async (tile) => { await window.__tw.skip(61_000); window.__tw.cache.prefetch([tile]); }, tile);
      assert.equal(s.stats.requests - first.stats.requests, 1, 'the prefetch only: the fresh tiles were not loaded again');
      assert.deepEqual(s.errors, []);
    });
  });

  it("a tile outside the cache's view (followView: false) is drawn again stale when its items turn stale, refetched meanwhile, and drawn again fresh", async () => {
    // No view is fed to the cache: its wake-ups are those of the tiles the layer read.
    const [lon, lat] = tileCorner(14, SX + 9.5, SY + 3.5);
    await session.withPage(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5&follow=0&swr=3600`, async (p) => {
      await until(p, () => window.__tw.state()?.selected.length > 4, null, 'the tiles of the whole view selected');
      const first = await settled('the tiles', p);
      assert.ok(first.ids.length > 0);
      assert.deepEqual(await p.evaluate(() => window.__tw.staleSeen()), []);
      // Past the active items' ttl (300 s), within the stale window: the tiles are rendered
      // again with them stale, read from the cache, and refetched meanwhile (a call arms the
      // cache's timer for the wake-up now due).
      // (With whole: every tile rendered: one given its items again has no sublayers until
      // deck's next render.)
      await checkStaleRefetched(assert, p, backend, first, { saw: 'stale items rendered', fresh: 'refetched, rendered fresh', whole: true });
    });
  });

  it("the cache's dispose() stops the layer feeding it views (ERR_DISPOSED on every frame)", async () => {
    const [lon, lat] = tileCorner(14, SX - 3.5, SY + 2.5);
    await session.withPage(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5`, async (p) => {
      await settled('first tiles', p);
      const r = await p.evaluate(async ([lon, lat]) => {
        const { cache, setView, frames, state } = window.__tw;
        let views = 0;
        const setViewport = cache.setViewport.bind(cache);
        cache.setViewport = (v) => { views++; return setViewport(v); };
        const all = state().errors; // the page's array (state() reads the cache: not after dispose)
        const errors = all.length;
        cache.dispose();
        // A slow pan within the tiles in view, a frame at a time.
        for (let i = 1; i <= 10; i++) {
          setView({ longitude: lon + i * 1e-6, latitude: lat });
          await frames(1);
        }
        await frames(3);
        return { views, errors: all.slice(errors) };
      }, [lon, lat]);
      assert.equal(r.views, 0, 'views fed to the disposed cache');
      assert.deepEqual(r.errors, []);
    });
  });

  it("a map at rest reads (so fetches) no tile deck keeps off the screen; panned back, a tile that changed there is read once and drawn with the new data", async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). No view
    // is fed to the cache: every request is one of the layer's reads.
    const [lon, lat] = tileCorner(14, SX - 6.5, SY - 1.5);
    const [ox, oy] = [SX - 7, SY - 2];
    const off = `14/${ox}/${oy}`;
    await session.withPage(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5&follow=0&swr=3600`, async (p) => {
      await until(p, () => window.__tw.state()?.selected.length > 4, null, 'the tiles of the whole view selected');
      const first = await settled('the tiles', p);
      const a = backend.tileItems(off, 'public').at(-1).id;
      assert.ok(first.ids.includes(a), `${a} drawn: ${first.ids}`);
      // 2.5 data tiles east: deck keeps the tiles of the first view in its tile cache.
      await p.evaluate(([lon, lat]) => window.__tw.setView({ longitude: lon, latitude: lat }), [lon + 2.5 * TILE_LON, lat]);
      // (The tiles deck holds, with whether it shows them, once it shows the view east.)
      const w = await until(p, (x0) => {
        const held = window.__tw.tileset().tiles.filter((t) => t.content).map((t) => [t.index, t.isVisible]);
        const vp = window.__tw.deck.layerManager.getLayers().find((l) => l.id === 'homes').context.viewport;
        return held.every(([{ x, z }, seen]) => seen === (x >> (z - 14)) > x0) && { held, bounds: vp.getBounds() };
      }, ox + 1, 'the tiles east');
      await settled('the tiles east', p);
      assert.ok(w.held.some(([{ x, y, z }, seen]) => !seen && parent(`${x}:${y}:${z}`) === off), `a tile of ${off} held off the screen: ${JSON.stringify(w.held)}`);
      const [, x0, y0] = tileOf(w.bounds[0], w.bounds[3], 14);
      const [, x1, y1] = tileOf(w.bounds[2], w.bounds[1], 14);
      // Deleted on the server; past every ttl (within the stale window) the tiles on the
      // screen are drawn stale, refetched and drawn fresh; those off it are not read.
      await checkReadsAtRest(assert, p, backend, { id: a, off, view: [x0, y0, x1, y1], where: 'on the screen' });
      // Back: the tile is read once (its old items shown meanwhile), refetched, drawn without it.
      const n1 = backend.requests.length;
      const back = await p.evaluate(([lon, lat]) => { window.__tw.setView({ longitude: lon, latitude: lat }); return window.__tw.state().stats.requests; }, [lon, lat]);
      // (A tile given its items again has no sublayers until deck's next render.)
      const s = await until(p, ([id, back]) => {
        const s = window.__tw.state();
        return s.current && s.loaded && s.stats.requests > back && s.stats.inFlight === 0 && s.ids.length > 0 &&
          !Object.values(s.drawn).some((n) => n < 0) && !s.ids.includes(id) && s;
      }, [a, back], `${a} off the screen`);
      const again = requestsHolding(backend, n1, off);
      assert.equal(again.length, 1, `${off} requested once: ${JSON.stringify(again.map((r) => r.tiles))}`);
      assert.deepEqual(s.errors, []);
    });
  });

  it('a hidden layer (visible: false) reads no tile that changed; shown again (visible: true), such a tile is read once and drawn with the new data', async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). No view
    // is fed to the cache: every request is one of the layer's reads.
    const [lon, lat] = tileCorner(14, SX + 8.5, SY - 8.5);
    const tile = `14/${SX + 8}/${SY - 9}`;
    await session.withPage(`deckgl/index.html?lon=${lon}&lat=${lat}&zoom=14.5&follow=0`, async (p) => {
      await until(p, () => window.__tw.state()?.selected.length > 4, null, 'the tiles of the whole view selected');
      const first = await settled('the tiles', p);
      const a = backend.tileItems(tile, 'public')[0].id;
      assert.ok(first.ids.includes(a), `${a} drawn: ${first.ids}`);
      await p.evaluate(async () => { window.__tw.setVisible(false); await window.__tw.frames(3); });
      // Deleted on the server and invalidated (as tilewarm/live does) while the layer is hidden.
      backend.remove(a);
      const n0 = backend.requests.length;
      const held = await p.evaluate(async ([tile, id]) => {
        window.__tw.cache.invalidate({ tiles: [tile] });
        await window.__tw.frames(6);
        return window.__tw.tileset().tiles.some((t) => t.content?.some?.((d) => d.id === id));
      }, [tile, a]);
      assert.deepEqual(requestsHolding(backend, n0, tile), [], 'read while hidden');
      assert.ok(held, `${a} still held by its hidden tile`);
      // Shown again: the tiles owed a read are read (once), refetched, drawn without `a`.
      const back = await p.evaluate(() => { window.__tw.setVisible(true); return window.__tw.state().stats.requests; });
      const s = await until(p, ([id, back]) => {
        const s = window.__tw.state();
        return s.current && s.loaded && s.stats.requests > back && s.stats.inFlight === 0 && s.ids.length > 0 &&
          !Object.values(s.drawn).some((n) => n < 0) && !s.ids.includes(id) && s;
      }, [a, back], `${a} off the screen`);
      assert.equal(requestsHolding(backend, n0, tile).length, 1, `${tile} requested once`);
      assert.deepEqual(s.errors, []);
    });
  });

  it('no console errors', () => {
    assert.deepEqual(problems, []);
  });
});
