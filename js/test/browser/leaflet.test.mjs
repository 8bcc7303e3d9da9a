// tilewarm/leaflet in headless Chromium with real Leaflet, on a page built by Vite over the
// package (scripts/test-browser.sh). Checks: the grid draws exactly the items the backend
// has in each data tile it fully shows; a one-tile pan after prefetch sends no foreground request (the layer feeds the
// view to the planner); a tier drop takes the items above the new tier off the screen at
// once; a tile that cannot load or draw fails as a tile, never throwing into Leaflet, and a
// disposed cache is fed no view; on a high-density screen tiles are drawn in device pixels;
// the GridLayer's zoom and bounds options pass; a map in another CRS than EPSG:3857 draws
// nothing (its tiles fail, reported once); zoomed out past maxVisibleTiles, tiles load
// empty and ERR_TOO_MANY_TILES is reported once per zoom; an item deleted on the server and invalidated, or
// found gone when its tile is fetched again, leaves the screen, and no tile of another data
// tile is drawn again; so does one left out of a later answer for a tile drawn outside the
// cache's view (followView: false), and no other tile is drawn or loaded again, and one in a
// copy of the world (longitudes past 180); items that
// turned stale are drawn again stale, outside the cache's view too, where they are refetched
// meanwhile and drawn again fresh; a map at rest past every ttl reads (so fetches) only the
// tiles on the screen, not those Leaflet keeps off it (keepBuffer), and panned back, one changed
// there (twice) is read once and drawn with the new data; no console errors. Screenshot:
// target/browser-test/leaflet.png.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tileCorner, tileOf, SEATTLE } from '../support/backend.mjs';
import { browserSession, checkDrawn, checkDeletedLeave, checkReadsAtRest, checkStaleRefetched, dist, requestsHolding, until } from './support.mjs';

const [, SX, SY] = SEATTLE;

describe('tilewarm/leaflet in headless Chromium', { timeout: 180_000 }, () => {
  const session = browserSession();
  const { problems } = session;
  let backend, page;

  before(async () => {
    ({ backend } = session);
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    page = await session.open(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15`);
  });

  /** Waits until every tile of the grid is drawn and nothing is in flight. */
  function settled(what, p = page) {
    return until(p, () => {
      const { layer, cache } = window.__tw;
      const tiles = Object.values(layer._tiles);
      if (!tiles.length || !tiles.every((t) => t.loaded) || cache.stats().inFlight > 0) return false;
      return window.__tw.state();
    }, null, what);
  }

  /** The data tile (zoom 14) a grid tile key `x:y:15` lies in (the pages draw at zoom 15). */
  const parent = (key) => { const [x, y] = key.split(':').map(Number); return `14/${x >> 1}/${y >> 1}`; };

  /** After `change(arg)` in page `p`, waits until `id` (of data tile `tile`) is drawn no
   * more, and checks that no tile of another data tile was drawn again; returns the state. */
  async function gone(p, id, tile, change, arg) {
    const before = await p.evaluate(() => window.__tw.state());
    await p.evaluate(change, arg);
    await until(p, (id) => !window.__tw.state().ids.includes(id), id, `${id} off the screen`);
    const s = await settled('the grid again', p);
    checkDrawn(assert, backend, s.drawn);
    for (const [key, n] of Object.entries(before.paints)) {
      if (parent(key) !== tile && key in s.paints) assert.equal(s.paints[key], n, `tile ${key} drawn again`);
    }
    return s;
  }

  it('every tile draws the items the backend has in it, after pans and zooms', async () => {
    let s = await settled('first grid');
    assert.ok(Object.keys(s.drawn).length >= 4);
    assert.ok(Object.values(s.drawn).some((n) => n > 0));
    checkDrawn(assert, backend, s.drawn);
    await page.screenshot({ path: join(dist, 'leaflet.png') });
    for (const step of [
      (m) => m.panBy([300, 100], { animate: false }),
      (m) => m.setZoom(14, { animate: false }),
      (m) => m.panBy([-400, -150], { animate: false }),
    ]) {
      await page.evaluate(`(${step.toString()})(window.__tw.map)`);
      s = await settled('after a move');
      checkDrawn(assert, backend, s.drawn);
    }
    assert.deepEqual(s.errors, []);
  });

  it('a one-tile pan after prefetch sends no foreground request', async () => {
    // A part of the dataset no earlier step came near, so only prefetch can have loaded
    // the tiles the pan reaches.
    const [lon, lat] = tileCorner(14, SX + 7.5, SY + 6.5);
    await page.evaluate(([lon, lat]) => window.__tw.map.setView([lat, lon], 15, { animate: false }), [lon, lat]);
    await settled('grid at 15');
    await new Promise((r) => setTimeout(r, 500));
    await until(page, () => window.__tw.cache.stats().inFlight === 0, null, 'prefetch done');
    const fg = (st) => st.requests - st.prefetchRequests;
    const before = await page.evaluate(() => window.__tw.cache.stats());
    // One z14 data tile at Leaflet zoom 15 is 512 px.
    await page.evaluate(() => window.__tw.map.panBy([512, 0], { animate: false }));
    const s = await settled('after a one-tile pan');
    checkDrawn(assert, backend, s.drawn);
    assert.equal(fg(s.stats), fg(before), 'no foreground request');
  });

  it('a tier drop takes the items above the new tier off the screen at once', async () => {
    const [lon, lat] = tileCorner(14, SX + 2.5, SY + 1.5);
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15&access=agent`, async (p) => {
      let s = await settled('the grid at agent', p);
      assert.ok(s.shown.agent > 0, `agent items drawn: ${JSON.stringify(s.shown)}`);
      // In the same task as the drop: nothing above public is on the page any more.
      const shown = await p.evaluate(() => { window.__tw.cache.setAccess('public'); return window.__tw.state().shown; });
      assert.equal(shown.agent, undefined, `agent items on screen after the drop: ${JSON.stringify(shown)}`);
      s = await settled('the grid at public', p);
      assert.equal(s.shown.agent, undefined);
      checkDrawn(assert, backend, s.drawn);
    });
  });

  it('a tile that cannot load (disposed cache) or draw fails as a tile, never throwing into Leaflet; a disposed cache is not followed', async () => {
    const seen = [];
    const [lon, lat] = tileCorner(14, SX - 2.5, SY + 0.5);
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15`, async (p) => {
      await settled('the grid', p);
      // A draw that throws: the tiles it was drawing fail (onError and tileerror).
      await p.evaluate(() => { window.__tw.failDraw = true; window.__tw.map.panBy([700, 0], { animate: false }); });
      await until(p, () => window.__tw.tileErrors.some((e) => e === 'Error: draw failed'), null, 'tileerror of the draw');
      assert.ok(await p.evaluate(() => window.__tw.errors.includes('Error: draw failed')));
      // A disposed cache: loadTiles throws ERR_DISPOSED, which a new tile gets as its error;
      // the layer stops feeding it the view (which would fail on every frame of a move).
      const thrown = await p.evaluate(() => {
        window.__tw.failDraw = false;
        const { cache } = window.__tw;
        window.__tw.views = 0;
        const setViewport = cache.setViewport.bind(cache);
        cache.setViewport = (v) => { window.__tw.views++; return setViewport(v); };
        cache.dispose();
        try { window.__tw.map.panBy([0, 700], { animate: false }); } catch (e) { return String(e); }
        return null;
      });
      assert.equal(thrown, null, 'nothing thrown into Leaflet');
      await until(p, () => window.__tw.tileErrors.some((e) => /disposed/.test(e)), null, 'tileerror of the disposed cache');
      await p.evaluate(async () => {
        for (let i = 0; i < 5; i++) {
          window.__tw.map.panBy([3, 0], { animate: false });
          await new Promise((ok) => requestAnimationFrame(ok));
        }
      });
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(seen, [], 'no unhandled error');
      const after = await p.evaluate(() => ({
        views: window.__tw.views,
        errors: window.__tw.errors.filter((e) => /disposed/.test(e)).length,
        tileErrors: window.__tw.tileErrors.filter((e) => /disposed/.test(e)).length,
      }));
      assert.equal(after.views, 0, 'views fed to the disposed cache');
      assert.equal(after.errors, after.tileErrors, 'ERR_DISPOSED only as the errors of tiles, once each');
    }, { problems: seen });
  });

  it('on a high-density screen the tiles are drawn in device pixels; minZoom, maxZoom and bounds are passed to the GridLayer', async () => {
    const [lon, lat] = tileCorner(14, SX + 3.5, SY - 2.5);
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15`, async (p) => {
      const s = await settled('the grid', p);
      checkDrawn(assert, backend, s.drawn);
      const r = await p.evaluate(() => {
        const out = { ratio: devicePixelRatio, sizes: new Set(), points: 0, painted: 0 };
        for (const c of document.querySelectorAll('canvas.tilewarm-tile')) {
          out.sizes.add(`${c.width}x${c.height} in ${c.style.width}x${c.style.height}`);
          const ctx = c.getContext('2d');
          for (const [x, y] of c.points ?? []) {
            if (x < 0 || y < 0 || x >= 256 || y >= 256) continue;
            out.points++;
            // Each item is a 6 x 6 CSS-pixel square at (x, y): its middle is painted.
            if (ctx.getImageData(Math.floor(x * devicePixelRatio), Math.floor(y * devicePixelRatio), 1, 1).data[3] > 0) out.painted++;
          }
        }
        const { L, createLayer, cache } = window.__tw;
        const bounds = L.latLngBounds([47, -123], [48, -122]);
        const layer = createLayer(L, cache, { minZoom: 13, maxZoom: 17, bounds });
        out.options = { minZoom: layer.options.minZoom, maxZoom: layer.options.maxZoom, bounds: layer.options.bounds === bounds };
        out.sizes = [...out.sizes];
        return out;
      });
      assert.equal(r.ratio, 2);
      assert.deepEqual(r.sizes, ['512x512 in 256pxx256px']);
      assert.ok(r.points > 0);
      assert.equal(r.painted, r.points, 'every item painted where it is, in device pixels');
      assert.deepEqual(r.options, { minZoom: 13, maxZoom: 17, bounds: true });
    }, { deviceScaleFactor: 2 });
  });

  it('a map in another CRS than EPSG:3857 draws nothing: its tiles fail, reported once', async () => {
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    const r = await page.evaluate(async ([lon, lat]) => {
      const { L, createLayer, cache } = window.__tw;
      const div = document.createElement('div');
      div.style.cssText = 'width: 400px; height: 300px';
      document.body.append(div);
      // Leaflet's plate carrée: its tile z/x/y are not Web Mercator tiles.
      const map = L.map(div, { crs: L.CRS.EPSG4326, zoomAnimation: false, fadeAnimation: false }).setView([lat, lon], 14);
      const errors = [];
      let tileErrors = 0;
      const layer = createLayer(L, cache, { followView: false, onError: (e) => errors.push(e.code) });
      layer.on('tileerror', () => { tileErrors++; });
      layer.addTo(map);
      const end = Date.now() + 10_000;
      const tiles = () => Object.values(layer._tiles);
      while ((!tiles().length || !tiles().every((t) => t.loaded)) && Date.now() < end) await new Promise((ok) => setTimeout(ok, 50));
      const out = {
        tiles: tiles().length,
        drawn: tiles().filter((t) => t.el.dataset.items !== undefined).length,
        tileErrors, errors,
      };
      map.remove();
      div.remove();
      return out;
    }, [lon, lat]);
    assert.ok(r.tiles > 0);
    assert.equal(r.drawn, 0, 'tiles drawn with the items of other places');
    assert.equal(r.tileErrors, r.tiles, 'every tile failed');
    assert.deepEqual(r.errors, ['ERR_OUT_OF_RANGE'], 'reported once');
  });

  // Below zoom 9 (the defaults) a tile covers more than maxVisibleTiles data tiles: every
  // tile used to fail and be reported (15 uncaught errors at zoom 7 on an 800x600 page).
  it('zoomed out past maxVisibleTiles, tiles load empty, no tileerror, ERR_TOO_MANY_TILES reported once per zoom', async () => {
    const r = await page.evaluate(async ([lon, lat]) => {
      const { L, createLayer, cache } = window.__tw;
      const div = document.createElement('div');
      div.style.cssText = 'width: 800px; height: 600px';
      document.body.append(div);
      const map = L.map(div, { zoomAnimation: false, fadeAnimation: false }).setView([lat, lon], 7);
      const errors = [];
      let tileErrors = 0, loads = 0;
      const layer = createLayer(L, cache, { followView: false, onError: (e) => errors.push(e.code) });
      layer.on('tileerror', () => { tileErrors++; });
      layer.on('tileload', () => { loads++; });
      layer.addTo(map);
      const tiles = () => Object.values(layer._tiles);
      const settle = async () => {
        const end = Date.now() + 10_000;
        while ((!tiles().length || !tiles().every((t) => t.loaded)) && Date.now() < end) await new Promise((ok) => setTimeout(ok, 50));
      };
      await settle();
      const at7 = { tiles: tiles().length, loads, tileErrors, errors: [...errors] };
      map.setZoom(6);
      await settle();
      const at6 = { tiles: tiles().length, tileErrors, errors: [...errors] };
      map.remove();
      div.remove();
      return { at7, at6 };
    }, tileCorner(14, SX + 0.5, SY + 0.5));
    assert.ok(r.at7.tiles >= 12, `${r.at7.tiles} tiles at zoom 7`);
    assert.equal(r.at7.loads, r.at7.tiles, 'every tile loaded (empty)');
    assert.equal(r.at7.tileErrors, 0);
    assert.deepEqual(r.at7.errors, ['ERR_TOO_MANY_TILES'], 'reported once at zoom 7');
    assert.ok(r.at6.tiles > 0);
    assert.equal(r.at6.tileErrors, 0);
    assert.deepEqual(r.at6.errors, ['ERR_TOO_MANY_TILES', 'ERR_TOO_MANY_TILES'], 'once more at zoom 6');
  });

  it('a drawn tile whose items changed in the cache is drawn again without them; other tiles are not', async () => {
    // A part of the dataset no other step comes near (items are deleted from it).
    const [lon, lat] = tileCorner(14, SX - 7.5, SY - 6.5);
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15`, async (p) => {
      const first = await settled('the grid', p);
      await checkDeletedLeave(assert, backend, first.ids, 'drawn', (...args) => gone(p, ...args));
    });
  });

  it('a drawn tile in a copy of the world (longitudes past 180) is drawn again when its items changed', async () => {
    // A part of the dataset no other step comes near (an item is deleted from it), one
    // world east: Leaflet's tile columns there are past 2^z, the tiles it loads wrapped.
    const [lon, lat] = tileCorner(14, SX - 4.5, SY + 5.5);
    await session.withPage(`leaflet/index.html?lon=${lon + 360}&lat=${lat}&zoom=15`, async (p) => {
      await until(p, () => Object.keys(window.__tw.layer._tiles).every((k) => Number(k.split(':')[0]) >= 2 ** 15) && window.__tw.state().ids.length > 0, null, 'tiles of the copy drawn');
      const first = await settled('the grid', p);
      const a = first.ids[0];
      // Deleted on the server, and invalidated (as tilewarm/live does): refetched, found gone.
      backend.remove(a);
      await p.evaluate((id) => window.__tw.cache.invalidate({ ids: [id] }), a);
      await until(p, (id) => !window.__tw.state().ids.includes(id), a, `${a} off the screen`);
      assert.deepEqual((await settled('the grid again', p)).errors, []);
    });
  });

  it("a tile drawn outside the cache's view (followView: false) is drawn again when an answer changed its items; other tiles are not", async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). No view
    // is fed to the cache: every tile the layer draws is outside it. One item of the tile
    // in the middle is served with a ttl of 60 s, the rest with 300 s or more.
    const [lon, lat] = tileCorner(14, SX - 9.5, SY + 8.5);
    const tile = `14/${SX - 10}/${SY + 8}`;
    const a = backend.tileItems(tile, 'public')[0].id;
    backend.byId.get(a).ttl = 60;
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15&follow=0`, async (p) => {
      const first = await settled('the grid', p);
      assert.ok(first.ids.includes(a), `${a} drawn: ${first.ids}`);
      assert.ok(Object.keys(first.paints).some((key) => parent(key) !== tile), 'tiles of other data tiles drawn');
      // Deleted on the server; past its ttl the page prefetches the tile (a route's tile,
      // say), and the cache wakes for it: the answer leaves the item out.
      backend.remove(a);
      const s = await gone(p, a, tile, async (tile) => { await window.__tw.skip(61_000); window.__tw.cache.prefetch([tile]); }, tile);
      assert.equal(s.stats.requests - first.stats.requests, 1, 'the prefetch only: the fresh tiles were not loaded again');
      assert.deepEqual(s.errors, []);
    });
  });

  it('a drawn tile whose items turned stale is drawn again with them stale', async () => {
    const [lon, lat] = tileCorner(14, SX + 8.5, SY - 8.5);
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15&swr=3600`, async (p) => {
      const first = await settled('the grid', p);
      assert.deepEqual(first.stale, []);
      // Past the active items' ttl (300 s), the refresh of the view's stale items never
      // answered: the tiles show them stale (a call arms the cache's timer for the wake-up
      // now due).
      backend.mode = 'hang';
      try {
        await p.evaluate(async () => { await window.__tw.skip(301_000); window.__tw.cache.prefetch([]); });
        const s = await until(p, () => { const s = window.__tw.state(); return s.stale.length > 0 && s; }, null, 'stale items drawn');
        assert.ok(s.stale.every((id) => backend.byId.get(id).class === 'active'), `only active items stale: ${s.stale}`);
      } finally {
        backend.mode = 'ok';
      }
    });
  });

  it("a tile drawn outside the cache's view (followView: false) is drawn again stale when its items turn stale, refetched meanwhile, and drawn again fresh", async () => {
    // No view is fed to the cache: its wake-ups are those of the tiles the layer read.
    const [lon, lat] = tileCorner(14, SX + 9.5, SY + 3.5);
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15&follow=0&swr=3600`, async (p) => {
      const first = await settled('the grid', p);
      assert.ok(first.ids.length > 0);
      assert.deepEqual(first.stale, []);
      // Past the active items' ttl (300 s), within the stale window: the drawn tiles show
      // them stale, read from the cache, and are refetched meanwhile (a call arms the cache's
      // timer for the wake-up now due).
      await checkStaleRefetched(assert, p, backend, first, { saw: 'stale items drawn', fresh: 'refetched, drawn fresh' });
    });
  });

  it('a map at rest reads (so fetches) no tile it holds off the screen; panned back, a tile that changed there is read once and drawn with the new data', async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). No view
    // is fed to the cache: every request is one of the layer's reads.
    const [lon, lat] = tileCorner(14, SX - 6.5, SY - 1.5);
    const [ox, oy] = [SX - 7, SY - 2];
    const off = `14/${ox}/${oy}`;
    await session.withPage(`leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15&follow=0&swr=3600`, async (p) => {
      await settled('the grid', p);
      // 1.5 data tiles east: Leaflet keeps the tiles of the first view (keepBuffer), those
      // of data tile `off` all off the screen.
      await p.evaluate(() => window.__tw.map.panBy([768, 0], { animate: false }));
      await settled('the grid east', p);
      /** The data tiles of the grid's tiles on the screen and off it (by where they are
       * on the page) and of the view (by its bounds). */
      const where = () => p.evaluate(() => {
        const { map, layer } = window.__tw;
        const box = map.getContainer().getBoundingClientRect();
        const on = [], offScreen = [];
        for (const { el, coords } of Object.values(layer._tiles)) {
          const r = el.getBoundingClientRect();
          const tile = `14/${coords.x >> 1}/${coords.y >> 1}`;
          (r.right > box.left && r.left < box.right && r.bottom > box.top && r.top < box.bottom ? on : offScreen).push(tile);
        }
        const b = map.getBounds();
        return { on, offScreen, west: b.getWest(), east: b.getEast(), south: b.getSouth(), north: b.getNorth() };
      });
      const w = await where();
      assert.ok(w.offScreen.includes(off) && !w.on.includes(off), `data tile ${off} held off the screen only: ${JSON.stringify(w)}`);
      const [, x0, y0] = tileOf(w.west, w.north, 14);
      const [, x1, y1] = tileOf(w.east, w.south, 14);
      // An item in the east half of `off` (its grid tiles that come on the screen below).
      const [mid] = tileCorner(14, ox + 0.5, oy);
      const a = backend.tileItems(off, 'public').filter((it) => it.lon > mid).at(-1).id;
      assert.ok((await p.evaluate(() => window.__tw.state().ids)).includes(a), `${a} drawn (off the screen)`);
      // Deleted on the server; past every ttl (within the stale window) the tiles on the
      // screen are drawn stale, refetched and drawn fresh; those off it are not read.
      await checkReadsAtRest(assert, p, backend, { id: a, off, view: [x0, y0, x1, y1], where: 'on the screen' });
      assert.ok((await p.evaluate(() => window.__tw.state().ids)).includes(a), `${a} still drawn off the screen`);
      // Back, a grid tile's width: the east half of `off` on the screen, and every tile of the
      // view one Leaflet holds, so nothing is loaded and only the map's move reads the tiles
      // owed a read: read once (its old drawing meanwhile), refetched, drawn without `a`.
      const n1 = backend.requests.length;
      const held = await p.evaluate(() => Object.keys(window.__tw.layer._tiles));
      await p.evaluate(() => window.__tw.map.panBy([-256, 0], { animate: false }));
      await until(p, (id) => !window.__tw.state().ids.includes(id), a, `${a} off the screen`);
      await settled('the grid back', p);
      const shown = await p.evaluate(() => Object.keys(window.__tw.layer._tiles));
      assert.deepEqual(shown.filter((k) => !held.includes(k)), [], 'no grid tile loaded on the way back');
      const again = requestsHolding(backend, n1, off);
      assert.equal(again.length, 1, `${off} requested once: ${JSON.stringify(again.map((r) => r.tiles))}`);
      assert.deepEqual((await settled('the grid back', p)).errors, []);
    });
  });

  it('no console errors', () => {
    assert.deepEqual(problems, []);
  });
});
