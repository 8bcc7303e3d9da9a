// tilewarm/maplibre in headless Chromium (Debian's chromium through playwright-core), with
// real maplibre-gl, on a page built by Vite over the package (scripts/test-browser.sh builds
// it into target/browser-test). The batch endpoint is the Node tests' local backend
// (../support/backend.mjs), reached through the page's own origin (/batch).
//
// Checks: items appear; after pans and zooms the source (read back through MapLibre's getData)
// holds exactly the view's items once each (the diffs match a full recomputation, and so does
// a second source kept by setData); a one-tile pan after prefetch sends no foreground request;
// a pitched or zoomed-out view is tooWide, not an error; a new style (setStyle) holds the
// view's items again, whether it drops the source or declares it empty, and so does a source
// the page removed and added again; properties() naming the promoteId (the item's data spread,
// its own id with it) do not take the id, so items that left the view leave the source; a
// removed map is detached from; no console errors. Screenshots: target/browser-test/*.png.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tileCorner, SEATTLE } from '../support/backend.mjs';
import { browserSession, dist, until } from './support.mjs';

const [, SX, SY] = SEATTLE;

describe('tilewarm/maplibre in headless Chromium', { timeout: 240_000 }, () => {
  const session = browserSession();
  const { problems } = session;
  const viewport = { width: 900, height: 600 };
  let backend, page;

  before(async () => {
    ({ backend } = session);
    // The middle of Seattle's z14 tile, at MapLibre zoom 13.5 (14.5 in 256-px terms).
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    page = await session.open(`maplibre/index.html?lon=${lon}&lat=${lat}&zoom=13.5`, { viewport });
  });

  /** Waits until the map is idle, nothing is in flight, and the source matches the view. */
  async function settled(what, p = page) {
    return until(p, async () => {
      const { map, cache } = window.__tw;
      if (!map.loaded() || cache.stats().inFlight > 0) return false;
      const s = await window.__tw.state();
      const key = (f) => JSON.stringify([f.id, f.stale, f.price, f.lon, f.lat]);
      const a = s.features.map(key).sort(), b = s.full.map(key).sort();
      // The source kept by setData (useUpdateData: false) holds the same.
      const c = s.setDataFeatures.map(key).sort();
      return a.length > 0 && a.join() === b.join() && c.join() === b.join() ? s : false;
    }, null, what);
  }

  function checkOnce(s) {
    const ids = s.features.map((f) => f.id);
    assert.equal(new Set(ids).size, ids.length, 'no feature twice');
  }

  it('items appear, and the source is the view after pans and zooms', async () => {
    let s = await settled('first view');
    checkOnce(s);
    assert.ok(s.features.length >= 3, `${s.features.length} features`);
    await page.screenshot({ path: join(dist, 'maplibre.png') });
    for (const step of [
      (m) => m.panBy([300, 120], { animate: false }),
      (m) => m.zoomTo(14.5, { animate: false }),
      (m) => m.panBy([-500, -200], { animate: false }),
      (m) => m.zoomTo(13, { animate: false }),
    ]) {
      await page.evaluate(`(${step.toString()})(window.__tw.map)`);
      s = await settled('after a move');
      checkOnce(s);
    }
    // Each item once, every one inside the view's data tiles: compare with the backend.
    assert.ok(s.features.every((f) => backend.byId.get(f.id)), 'only items the backend has');
  });

  it('a one-tile pan after prefetch sends no foreground request', async () => {
    await page.evaluate(() => window.__tw.map.jumpTo({ zoom: 13.5 }));
    await settled('view before the pan');
    // Let prefetch finish: nothing in flight for a while.
    await until(page, () => window.__tw.cache.stats().inFlight === 0, null, 'prefetch done');
    await new Promise((r) => setTimeout(r, 500));
    await until(page, () => window.__tw.cache.stats().inFlight === 0, null, 'prefetch done');
    const fg = (st) => st.requests - st.prefetchRequests;
    const before = await page.evaluate(() => window.__tw.cache.stats());
    // One z14 data tile at MapLibre zoom 13.5 is 512 * 2^13.5 / 2^14 px wide.
    const px = 512 * 2 ** 13.5 / 2 ** 14;
    await page.evaluate((px) => window.__tw.map.panBy([px, 0], { animate: false }), px);
    const s = await settled('after a one-tile pan');
    assert.equal(fg(s.stats), fg(before), 'no foreground request');
    assert.ok(s.stats.prefetchTilesUsed > 0);
  });

  it('pitched and zoomed-out views are tooWide, not errors; back in, items again', async () => {
    await page.evaluate(() => window.__tw.map.jumpTo({ zoom: 12.5, pitch: 60 }));
    await new Promise((r) => setTimeout(r, 300));
    await until(page, () => window.__tw.map.loaded(), null, 'pitched map idle');
    await page.screenshot({ path: join(dist, 'maplibre-pitched.png') });
    let s = await page.evaluate(() => window.__tw.state());
    assert.equal(s.pitch, 60);
    // MapLibre zoom 11: about 15 x 10 data tiles in view, over the page's maxVisibleTiles (64).
    await page.evaluate(() => window.__tw.map.jumpTo({ zoom: 11, pitch: 0 }));
    s = await until(page, async () => {
      const s = await window.__tw.state();
      return s.views.at(-1)?.tooWide ? s : false;
    }, null, 'a tooWide view');
    assert.equal(s.views.at(-1).complete, false);
    assert.ok(s.features.length > 0, 'the cached items stay shown');
    await page.evaluate(() => window.__tw.map.jumpTo({ zoom: 13.5, pitch: 0 }));
    s = await settled('back in');
    checkOnce(s);
    assert.deepEqual(s.errors, [], 'no fetch errors');
  });

  it('a new style (setStyle) or a source the page replaced gets the view\'s items: with the source dropped, declared empty, or added again', async () => {
    const seen = [];
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    await session.withPage(`maplibre/index.html?lon=${lon}&lat=${lat}&zoom=13.5`, async (p) => {
      await settled('first view', p);
      const bg = (color) => ({ id: 'bg', type: 'background', paint: { 'background-color': color } });
      const circles = { id: 'items', type: 'circle', source: 'items', paint: { 'circle-radius': 5 } };
      // A basemap switch to a style without the source (MapLibre diffs the styles): the
      // page adds its layer again on 'style.load', as MapLibre's docs show, and finds the source.
      await p.evaluate(([style, layer]) => {
        const { map } = window.__tw;
        map.once('style.load', () => map.addLayer(layer));
        map.setStyle(style);
      }, [{ version: 8, sources: {}, layers: [bg('#dde3ea')] }, circles]);
      let s = await settled('after a style without the source', p);
      assert.ok(s.features.length >= 3, `${s.features.length} features`);
      assert.ok(await p.evaluate(() => window.__tw.map.getLayer('items') !== undefined), 'the page\'s layer was added');
      // A style that declares the sources itself, empty (so its layers can name them):
      // MapLibre's diff empties the source the adapter filled.
      const empty = { type: 'geojson', promoteId: 'id', data: { type: 'FeatureCollection', features: [] } };
      await p.evaluate((style) => window.__tw.map.setStyle(style),
        { version: 8, sources: { items: empty, 'items-setdata': empty }, layers: [bg('#eef2f7'), circles] });
      s = await settled('after a style declaring the sources empty', p);
      assert.ok(s.features.length >= 3, `${s.features.length} features`);
      // The page removes the sources and adds them again itself (to change their options).
      await p.evaluate(([empty, layer]) => {
        const { map } = window.__tw;
        map.removeLayer('items');
        for (const id of ['items', 'items-setdata']) {
          map.removeSource(id);
          map.addSource(id, { ...empty, cluster: false });
        }
        map.addLayer(layer);
      }, [empty, circles]);
      s = await settled('after the page replaced the sources', p);
      assert.ok(s.features.length >= 3, `${s.features.length} features`);
      assert.deepEqual(seen, [], 'no console errors');
    }, { viewport, problems: seen });
  });

  it('properties() that name a feature property as the promoteId do not take the id: items that left the view leave the source', async () => {
    const p = await session.browser.newPage({ viewport });
    try {
      const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
      await p.goto(`${session.pages.url}maplibre/index.html?lon=${lon}&lat=${lat}&zoom=13.5`);
      await until(p, () => window.__tw !== undefined, null, 'the page');
      // The item's data spread into the feature, its own `id` (a listing number) with it.
      await p.evaluate(() => window.__tw.attach(window.__tw.map, window.__tw.cache, {
        sourceId: 'spread', properties: (it) => ({ ...it.data, id: it.data.price }),
      }));
      const spread = (what) => until(p, async () => {
        const { map, cache, lastItems } = window.__tw;
        if (!map.loaded() || cache.stats().inFlight > 0) return false;
        const ids = ((await map.getSource('spread')?.getData())?.features ?? []).map((f) => f.properties.id);
        const want = lastItems().map((it) => it.id);
        return want.length > 0 && ids.length === want.length ? { ids, want } : false;
      }, null, what);
      await settled('first view', p);
      await spread('the spread source');
      // Far enough that every item of the first view leaves it.
      await p.evaluate(() => window.__tw.map.panBy([1400, 900], { animate: false }));
      await settled('after a pan', p);
      const { ids, want } = await spread('the spread source after a pan');
      assert.deepEqual([...ids].sort(), [...want].sort(), 'the source holds the view\'s items, by the item\'s id');
    } finally {
      await p.close();
    }
  });

  it('a removed map is detached from: the cache\'s updates no longer reach it', async () => {
    const seen = [];
    const p = await session.newPage({ viewport, problems: seen });
    try {
      const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
      await p.goto(`${session.pages.url}maplibre/index.html?lon=${lon}&lat=${lat}&zoom=13.5`);
      await until(p, () => window.__tw?.map.loaded() && window.__tw.views.length > 0 && window.__tw.cache.stats().inFlight === 0, null, 'the map');
      const [before, after] = await p.evaluate(() => {
        const { map, cache, views } = window.__tw;
        const n = views.length;
        map.remove();
        cache.invalidate({ all: true }); // onUpdate at once, and a refetch of the view
        return [n, views.length];
      });
      assert.equal(after, before, 'onView heard nothing after the removal');
      await until(p, () => window.__tw.cache.stats().inFlight === 0, null, 'the refetch');
      assert.equal(await p.evaluate(() => window.__tw.views.length), before, 'nor after the refetch');
      assert.deepEqual(seen, [], 'no error from a removed map');
    } finally {
      await p.close();
    }
  });

  it('items replaced in the cache keep their properties where MapLibre draws them (the worker, not only getData)', async () => {
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    await session.withPage(`maplibre/index.html?lon=${lon}&lat=${lat}&zoom=13.5`, async (p) => {
      await settled('first view', p);
      // Count the features sent as updates (an item replaced by a new object, or its stale
      // flag changed): a new credential asks the view's tile lists again, and the public
      // items come back as new objects.
      await p.evaluate(() => {
        const src = window.__tw.map.getSource('items');
        const updateData = src.updateData.bind(src);
        window.__tw.updated = 0;
        src.updateData = (diff, ...rest) => {
          window.__tw.updated += diff.update?.length ?? 0;
          return updateData(diff, ...rest);
        };
        window.__tw.cache.setAccess('agent', { newCredential: true });
      });
      await until(p, () => window.__tw.updated > 0, null, 'features updated');
      await settled('at the new tier', p);
      await new Promise((r) => setTimeout(r, 300)); // the worker's tiles made again
      const drawn = await until(p, () => {
        const { map } = window.__tw;
        if (!map.loaded()) return false;
        const fs = map.querySourceFeatures('items');
        return fs.length > 0 && fs.map((f) => ({ id: f.properties.id, stale: f.properties.stale, price: f.properties.price }));
      }, null, 'drawn features');
      const bad = drawn.filter((f) => typeof f.id !== 'string' || typeof f.stale !== 'boolean' || typeof f.price !== 'number');
      assert.deepEqual(bad.slice(0, 3), [], `${bad.length} of ${drawn.length} drawn features lost their properties`);
    });
  });

  it('no console errors', () => {
    assert.deepEqual(problems, []);
  });
});
