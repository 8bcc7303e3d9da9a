// tilewarm/openlayers in headless Chromium with real OpenLayers, on a page built by Vite over
// the package (scripts/test-browser.sh). Checks: after pans and zooms the source holds exactly
// the backend's items of the data tiles in view (nothing twice, nothing left behind from
// earlier views); a one-tile pan after prefetch sends no foreground request (follow() feeds
// the view to the planner); loads aborted by a refresh end (source.loading back to false);
// after source.refresh() the source holds the view's items again; a tier drop takes the
// features above the new tier out of the source at once; follow() gives the cache the zoom
// of the view's resolution, whatever the view's own zoom levels; a disposed source lets go of
// the cache (no tier reload, loads aborted, follow() detached); a disposed map detaches
// follow() and empties its source (nothing fetched for its tiles after), and so does taking
// the layer off the map or replacing the map's layers (put back, it loads them again),
// unless another followed map shows the source; so does hiding the layer (or its group) or
// giving it another source, or zooming the view out of the layer's range (minZoom, maxZoom,
// minResolution, maxResolution), and follow() feeds that view no more until it shows the
// source again; a view too coarse for the cache loads its
// tiles empty and reports once per zoom (no loop of loads and errors every
// frame); a tile whose request gave up is not asked for again on every redraw; a view in
// another world's copy or across the antimeridian keeps its tiles at a move's end; the
// cache's dispose() detaches follow(); after map.setView() follow() feeds the new view while
// it moves and hears the old one no more; a turning view is fed as it turns; a view with no
// centre yet is waited for (follow() does not throw); with a user projection (useGeographic()) follow()
// feeds nothing and says why, once; an item deleted on the server and invalidated, or found
// gone when its tile is fetched again, leaves the source, and no feature of another data
// tile changes; so does one left out of a later answer for a tile loaded outside the cache's
// view (no follow()), and no other tile is changed or loaded again; features loaded outside
// the cache's view turn stale on time, are refetched meanwhile and turn fresh again; a map at
// rest past every ttl reads (so fetches) only the tiles in the view of the source's follow(),
// not those it keeps beside it, and moved back, one changed there (twice) is read once and
// filled with the new data; with no follow(), a map at rest reads only the tiles in what
// OpenLayers last asked the source to show (the view and its render buffer), not the others
// the source still holds, and moved back, one changed there is read once; a tile changed
// beside a followed view is read when the follow() is detached; no console errors.
// Screenshot:
// target/browser-test/openlayers.png.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tileCorner, tileOf, SEATTLE } from '../support/backend.mjs';
import { browserSession, checkDeletedLeave, checkReadsAtRest, checkStaleRefetched, dataTileOf, dist, requestsHolding, until } from './support.mjs';

const [, SX, SY] = SEATTLE;
const [SEATTLE_LON, SEATTLE_LAT] = tileCorner(14, SX + 0.5, SY + 0.5);
const HALF = 20037508.342789244;
const lonLat = (x, y) => [(x / HALF) * 180, (Math.atan(Math.exp((y / HALF) * Math.PI)) * 360) / Math.PI - 90];
/** One z14 data tile in EPSG:3857 metres. */
const TILE_M = (2 * HALF) / 2 ** 14;

describe('tilewarm/openlayers in headless Chromium', { timeout: 180_000 }, () => {
  const session = browserSession();
  const { problems } = session;
  let backend, page;

  before(async () => {
    ({ backend } = session);
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    page = await session.open(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15`);
  });

  /** Waits until the source loaded everything and the map rendered it. */
  function settled(what, p = page) {
    return until(p, () => {
      const s = window.__tw.state();
      if (s.loading || s.stats.inFlight > 0 || window.__tw.rendered() === 0) return false;
      return s;
    }, null, what);
  }

  /** The source holds each item once, every item of the data tiles the view shows, and
   * nothing outside the tiles that touch the view: the result of recomputing from scratch
   * (tiles in view at the zoom of the view and at z14, which the source may still hold). */
  function check(s, access = 'public') {
    assert.equal(new Set(s.ids).size, s.ids.length, 'no item twice');
    const [w, so] = lonLat(s.extent[0], s.extent[1]);
    const [e, n] = lonLat(s.extent[2], s.extent[3]);
    const inView = (lon, lat) => lon >= w && lon <= e && lat >= so && lat <= n;
    const ids = new Set(s.ids);
    // Nothing missing: every backend item in the view is there.
    const want = backend.items.filter((it) => (access === 'agent' || it.access === 'public') && inView(it.lon, it.lat));
    assert.ok(want.length > 0);
    for (const it of want) assert.ok(ids.has(it.id), `item ${it.id} in view is shown`);
    // Nothing left behind: every item held is in a z14 data tile that touches the view or
    // is next to it (the source keeps the tiles of OpenLayers' render buffer, 100 px).
    const [, x0, y0] = tileOf(w, n, 14);
    const [, x1, y1] = tileOf(e, so, 14);
    for (const [lon, lat] of s.lonlat) {
      const [, x, y] = tileOf(lon, lat, 14);
      assert.ok(x >= x0 - 1 && x <= x1 + 1 && y >= y0 - 1 && y <= y1 + 1, `item at ${lon},${lat} is near the view`);
    }
  }

  async function move(fn, arg) {
    const r0 = await page.evaluate(() => window.__tw.rendered());
    await page.evaluate(fn, arg);
    await until(page, (r0) => window.__tw.rendered() > r0, r0, 'a render');
    return settled('after a move');
  }

  const dataTile = (id) => dataTileOf(backend, id);

  /** After `change(arg)` in page `p`, waits until `id` (of data tile `tile`) is in the
   * source no more, and checks that no feature of another data tile changed (`tiles`: the
   * data tile of each id shown before). */
  async function gone(p, tiles, id, tile, change, arg) {
    await p.evaluate(() => {
      const touched = window.__tw.touched = [];
      for (const e of ['addfeature', 'changefeature', 'removefeature']) window.__tw.source.on(e, (ev) => touched.push(ev.feature.getId()));
    });
    await p.evaluate(change, arg);
    await until(p, (id) => !window.__tw.state().ids.includes(id), id, `${id} out of the source`);
    const s = await settled('the features again', p);
    const touched = await p.evaluate(() => window.__tw.touched);
    for (const t of touched) if (tiles.has(t)) assert.equal(tiles.get(t), tile, `feature ${t} changed`);
    return s;
  }

  it('the source holds the items of the view, after pans and zooms', async () => {
    let s = await settled('first features');
    check(s);
    await page.screenshot({ path: join(dist, 'openlayers.png') });
    for (const [dx, dy, z] of [[2, 0, 15], [0, 0, 14], [-3, 1, 15.5], [6, 4, 15]]) {
      s = await move(([dx, dy, z, m]) => {
        const v = window.__tw.map.getView();
        const [cx, cy] = v.getCenter();
        v.setCenter([cx + dx * m, cy - dy * m]);
        v.setZoom(z);
      }, [dx, dy, z, TILE_M]);
      check(s);
    }
    assert.deepEqual(s.errors, []);
  });

  it('a one-tile pan after prefetch sends no foreground request', async () => {
    // A part of the dataset no earlier step came near, so only prefetch can have loaded
    // the tiles the pan reaches.
    const [lon, lat] = tileCorner(14, SX - 7.5, SY - 6.5);
    const p0 = await page.evaluate(() => window.__tw.cache.stats().prefetchRequests);
    await move(([lon, lat]) => window.__tw.map.getView().setCenter(window.__tw.fromLonLat([lon, lat])), [lon, lat]);
    await until(page, (p0) => window.__tw.cache.stats().inFlight === 0 && window.__tw.cache.stats().prefetchRequests > p0, p0, 'prefetch done');
    const fg = (st) => st.requests - st.prefetchRequests;
    const before = await page.evaluate(() => window.__tw.cache.stats());
    const s = await move((m) => {
      const v = window.__tw.map.getView();
      const [cx, cy] = v.getCenter();
      v.setCenter([cx + m, cy]);
    }, TILE_M);
    check(s);
    assert.equal(fg(s.stats), fg(before), 'no foreground request');
  });

  it('loads aborted by a refresh end: source.loading goes back to false', async () => {
    // Answers held 3 s: the loads are out for as long as a busy machine takes to see them.
    backend.delayMs = 3000;
    try {
      const [lon, lat] = tileCorner(14, SX - 4.5, SY + 5.5);
      await page.evaluate(([lon, lat]) => window.__tw.map.getView().setCenter(window.__tw.fromLonLat([lon, lat])), [lon, lat]);
      await until(page, () => window.__tw.source.loading && window.__tw.cache.stats().inFlight > 0, null, 'loads out');
      // The source loads its tiles again: the loads out are aborted.
      await page.evaluate(() => window.__tw.source.refresh());
    } finally {
      backend.delayMs = 0;
    }
    await until(page, () => !window.__tw.source.loading && window.__tw.cache.stats().inFlight === 0, null,
      'source.loading back to false', 10_000);
  });

  it('after source.refresh() the source holds the items of the view again', async () => {
    await settled('features');
    check(await move(() => window.__tw.source.refresh()));
  });

  it('a tier drop takes the features above the new tier out of the source at once', async () => {
    const [lon, lat] = tileCorner(14, SX + 2.5, SY + 1.5);
    await session.withPage(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15&access=agent`, async (p) => {
      let s = await settled('features at agent', p);
      check(s, 'agent');
      assert.ok(s.shown.agent > 0, `agent features: ${JSON.stringify(s.shown)}`);
      const [shown, r0] = await p.evaluate(() => {
        window.__tw.cache.setAccess('public');
        return [window.__tw.state().shown, window.__tw.rendered()];
      });
      assert.equal(shown.agent, undefined, `agent features after the drop: ${JSON.stringify(shown)}`);
      // Loaded again at public: every public item in view, nothing above it.
      await until(p, (r0) => window.__tw.rendered() > r0, r0, 'a render after the drop');
      s = await settled('features at public', p);
      assert.equal(s.shown.agent, undefined);
      check(s);
    });
  });

  it('follow() gives the cache the zoom of the resolution, for a view with its own resolutions', async () => {
    const zooms = await page.evaluate(async ([lon, lat]) => {
      const { View, VectorLayer, follow, newCache, newSource, newMap, spy } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const seen = [];
      spy(cache, 'setViewport', (v) => seen.push(v.zoom));
      const source = newSource(cache);
      // Zoom 2 of this view is 10 m a pixel: 256-px zoom log2(156543.03 / 10) = 13.93.
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center: window.__tw.fromLonLat([lon, lat]), resolutions: [1000, 100, 10, 1], zoom: 2 }) });
      const detach = follow(map, source);
      detach();
      map.setTarget(undefined);
      div.remove();
      cache.dispose();
      return seen;
    }, tileCorner(14, SX + 0.5, SY + 0.5));
    assert.ok(zooms.length >= 1, 'setViewport called');
    assert.ok(Math.abs(zooms[0] - Math.log2(156543.03392804097 / 10)) < 1e-9, `zoom ${zooms[0]}`);
  });

  it('a disposed source lets go of the cache: no tier reload, its loads aborted, its follow() detached', async () => {
    backend.delayMs = 400;
    let r;
    try {
      r = await page.evaluate(async ([lon, lat]) => {
        const { View, VectorLayer, follow, frames, newCache, newSource, newMap, spy } = window.__tw.ol;
        const cache = await newCache({ minZoom: 12, access: 'agent' });
        // What the source asks of the cache: its loads' signals, and the views follow() feeds.
        const signals = [];
        spy(cache, 'loadTiles', (tiles, o) => signals.push(o.signal));
        let views = 0;
        spy(cache, 'setViewport', () => views++);
        const errors = [];
        const source = newSource(cache, { onError: (e) => errors.push(String(e)) });
        let refreshed = 0;
        spy(source, 'refresh', () => refreshed++);
        // Another source on the same cache, not disposed: still told of a tier change.
        const other = newSource(cache);
        let otherRefreshed = 0;
        other.refresh = () => { otherRefreshed++; };
        const layer = new VectorLayer({ source });
        const { div, map } = newMap({ layers: [layer], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
        follow(map, source);
        const end = Date.now() + 10_000;
        while (signals.length === 0 && Date.now() < end) await frames(1);
        const loads = signals.length;
        // The page takes the layer off the map and disposes of its source, loads still out.
        map.removeLayer(layer);
        source.dispose();
        const aborted = signals.filter((s) => s.aborted).length;
        const viewsBefore = views;
        cache.setAccess('public');
        const [cx, cy] = map.getView().getCenter();
        map.getView().setCenter([cx + 5000, cy]);
        await frames(3);
        await new Promise((ok) => setTimeout(ok, 600)); // past the backend's delay
        const out = { loads, aborted, refreshed, otherRefreshed, views: views - viewsBefore, errors };
        map.setTarget(undefined);
        div.remove();
        other.dispose();
        cache.dispose();
        return out;
      }, tileCorner(14, SX - 9.5, SY + 9.5));
    } finally {
      backend.delayMs = 0;
    }
    assert.ok(r.loads > 0, 'loads were out');
    assert.equal(r.aborted, r.loads, 'every load of the disposed source was aborted');
    assert.equal(r.refreshed, 0, 'a tier change reached the disposed source');
    assert.equal(r.otherRefreshed, 1, 'the other source still hears of tier changes');
    assert.equal(r.views, 0, 'follow() of the disposed source fed the cache a view');
    assert.deepEqual(r.errors, []);
  });

  it("a disposed map detaches follow() (the view's listeners too) and its source lets go of its tiles: nothing fetched for them after", async () => {
    const r = await page.evaluate(async ([lon, lat]) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, loaded } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const source = newSource(cache);
      const view = new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 });
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view });
      follow(map, source);
      const features = await loaded(source, cache);
      const listening = () => ['change:center', 'change:resolution', 'change:rotation'].reduce((n, t) => n + (view.getListeners(t)?.length ?? 0), 0);
      const before = listening();
      // The page disposes of the map (not of the layer or the source), then the cache's
      // items change: every tile the source held would be read, and fetched, again.
      map.dispose();
      div.remove();
      await frames(2);
      // (The cache's own view away, below minZoom: nothing to fetch for it.)
      cache.setViewport({ west: -1, south: -1, east: 1, north: 1, zoom: 5 });
      await frames(2);
      const requests = cache.stats().requests;
      cache.invalidate({ all: true });
      view.setCenter(view.getCenter().map((c) => c + 5000));
      await frames(4);
      const out = { features, before, after: listening(), left: source.getFeatures().length, fetched: cache.stats().requests - requests };
      source.dispose();
      cache.dispose();
      return out;
    }, tileCorner(14, SX + 4.5, SY - 9.5));
    assert.ok(r.features > 0, 'the source held features');
    assert.ok(r.before > 0);
    assert.equal(r.after, 0, "follow()'s listeners left on the view");
    assert.equal(r.left, 0, 'features left in the source');
    assert.equal(r.fetched, 0, 'tiles of the disposed map fetched again');
  });

  it('a layer taken off the map empties its source: nothing fetched for its tiles after; put back, it loads them again', async () => {
    const r = await page.evaluate(async ([lon, lat]) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, loaded } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const source = newSource(cache);
      const layer = new VectorLayer({ source });
      const { div, map } = newMap({ layers: [layer], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
      const detach = follow(map, source);
      const features = await loaded(source, cache);
      map.removeLayer(layer);
      await frames(2);
      const left = source.getFeatures().length;
      // The cache's items change (its own view moved below minZoom first: nothing to fetch
      // for it): every tile the source held would be read, and fetched, again.
      detach();
      cache.setViewport({ west: -1, south: -1, east: 1, north: 1, zoom: 5 });
      await frames(2);
      const requests = cache.stats().requests;
      cache.invalidate({ all: true });
      await frames(4);
      const fetched = cache.stats().requests - requests;
      map.addLayer(layer);
      const again = await loaded(source, cache);
      const out = { features, left, fetched, again };
      map.dispose();
      div.remove();
      source.dispose();
      cache.dispose();
      return out;
    }, tileCorner(14, SX + 6.5, SY - 9.5));
    assert.ok(r.features > 0, 'the source held features');
    assert.equal(r.left, 0, 'features left in the source');
    assert.equal(r.fetched, 0, 'tiles of the layer taken off fetched again');
    assert.equal(r.again, r.features, 'put back, the source loads them again');
  });

  it("a map's layers replaced (map.setLayers with a collection, no removelayer) by ones not showing the source empties it", async () => {
    const r = await page.evaluate(async ([lon, lat]) => {
      const { View, VectorLayer, VectorSource, follow, newCache, newSource, newMap, loaded } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const source = newSource(cache);
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
      const detach = follow(map, source);
      const features = await loaded(source, cache);
      const Collection = map.getLayers().constructor;
      map.setLayers(new Collection([new VectorLayer({ source: new VectorSource() })]));
      const left = source.getFeatures().length;
      detach();
      map.dispose();
      div.remove();
      source.dispose();
      cache.dispose();
      return { features, left };
    }, tileCorner(14, SX - 2.5, SY - 9.5));
    assert.ok(r.features > 0, 'the source held features');
    assert.equal(r.left, 0, 'features left in the source');
  });

  it('a layer taken off one of two followed maps that show the source leaves it its tiles (the other map draws them); taken off both, it lets go', async () => {
    const r = await page.evaluate(async ([lon, lat]) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, loaded } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const source = newSource(cache);
      const map = () => {
        const layer = new VectorLayer({ source });
        const { div, map: m } = newMap({ layers: [layer], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
        return { div, layer, map: m, detach: follow(m, source) };
      };
      const [a, b] = [map(), map()];
      const features = await loaded(source, cache);
      a.map.removeLayer(a.layer);
      const left = source.getFeatures().length;
      await frames(2);
      const later = source.getFeatures().length;
      b.map.removeLayer(b.layer);
      const none = source.getFeatures().length;
      for (const m of [a, b]) { m.detach(); m.map.dispose(); m.div.remove(); }
      source.dispose();
      cache.dispose();
      return { features, left, later, none };
    }, tileCorner(14, SX - 6.5, SY - 9.5));
    assert.ok(r.features > 0, 'the source held features');
    assert.equal(r.left, r.features, "the other map's features left the source");
    assert.equal(r.later, r.features);
    assert.equal(r.none, 0, 'taken off both maps: features left in the source');
  });

  it("a layer hidden (its own visibility or its group's) or given another source empties its source and follow() feeds its view no more; shown again, it loads again", async () => {
    const r = await page.evaluate(async ([lon, lat, m]) => {
      const { View, VectorLayer, VectorSource, follow, frames, newCache, newSource, newMap, loaded, spy } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const source = newSource(cache);
      const layer = new VectorLayer({ source });
      const { div, map } = newMap({ layers: [], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
      const Group = map.getLayerGroup().constructor;
      const group = new Group({ layers: [layer] });
      map.addLayer(group);
      let fed = 0;
      spy(cache, 'setViewport', () => { fed += 1; });
      const detach = follow(map, source);
      const out = { features: await loaded(source, cache) };
      const ways = [
        ['layer', () => layer.setVisible(false), () => layer.setVisible(true)],
        ['group', () => group.setVisible(false), () => group.setVisible(true)],
        ['source', () => layer.setSource(new VectorSource()), () => layer.setSource(source)],
      ];
      for (const [way, hide, show] of ways) {
        hide();
        const left = source.getFeatures().length;
        const before = fed;
        // A pan of two data tiles: a followed view is fed to the cache (which fetches its tiles).
        const v = map.getView();
        const [x, y] = v.getCenter();
        v.setCenter([x + 2 * m, y]);
        await frames(4);
        out[way] = { left, fed: fed - before };
        show();
        out[way].again = await loaded(source, cache);
        out[way].fedAgain = fed - before;
      }
      detach();
      map.dispose();
      div.remove();
      source.dispose();
      cache.dispose();
      return out;
    }, [...tileCorner(14, SX - 9.5, SY + 6.5), TILE_M]);
    assert.ok(r.features > 0, 'the source held features');
    for (const way of ['layer', 'group', 'source']) {
      assert.equal(r[way].left, 0, `${way}: features left in the source`);
      assert.equal(r[way].fed, 0, `${way}: the view fed to the cache while nothing shows the source`);
      assert.ok(r[way].again > 0, `${way}: shown again, the source loads its tiles again`);
      assert.ok(r[way].fedAgain > 0, `${way}: shown again, the view is fed again`);
    }
  });

  it("a layer visible but outside its own zoom range (minZoom, maxZoom, minResolution, maxResolution) empties its source and follow() feeds its view no more; back in range, it loads again", async () => {
    // OpenLayers draws nothing of such a layer (nor loads for it). Before, it counted as
    // showing the source: its tiles stayed, and were read and fetched again at rest.
    const r = await page.evaluate(async ([lon, lat, m]) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, loaded, spy } = window.__tw.ol;
      const at = (z) => 156543.03392804097 / 2 ** z; // the resolution of zoom z
      const out = {};
      for (const [name, options, away] of [
        ['minZoom', { minZoom: 14 }, 13.5], ['maxZoom', { maxZoom: 16 }, 16.5],
        ['maxResolution', { maxResolution: at(14) }, 13.5], ['minResolution', { minResolution: at(16) }, 16.5],
      ]) {
        const cache = await newCache({ minZoom: 12 });
        const source = newSource(cache);
        const { div, map } = newMap({ layers: [new VectorLayer({ source, ...options })], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
        let fed = 0;
        spy(cache, 'setViewport', () => { fed += 1; });
        const detach = follow(map, source);
        const features = await loaded(source, cache);
        const v = map.getView();
        v.setZoom(away);
        await frames(4);
        const before = fed;
        // A pan of two data tiles: a followed view is fed to the cache (which fetches its tiles).
        const [x, y] = v.getCenter();
        v.setCenter([x + 2 * m, y]);
        await frames(4);
        out[name] = { features, left: source.getFeatures().length, fed: fed - before };
        v.setZoom(15);
        out[name].again = await loaded(source, cache);
        out[name].fedAgain = fed - before;
        detach();
        map.dispose();
        div.remove();
        source.dispose();
        cache.dispose();
      }
      return out;
    }, [...tileCorner(14, SX - 9.5, SY + 8.5), TILE_M]);
    for (const [name, got] of Object.entries(r)) {
      assert.ok(got.features > 0, `${name}: the source held features`);
      assert.equal(got.left, 0, `${name}: features left in the source out of the layer's range`);
      assert.equal(got.fed, 0, `${name}: the view fed to the cache while the layer is out of its range`);
      assert.ok(got.again > 0, `${name}: back in range, the source loads its tiles again`);
      assert.ok(got.fedAgain > 0, `${name}: back in range, the view is fed again`);
    }
  });

  it('a view too coarse for the cache loads its tiles empty: reported once per zoom, not asked for again every frame', async () => {
    const r = await page.evaluate(async ([lon, lat]) => {
      const { View, VectorLayer, newCache, newSource, newMap, spy } = window.__tw.ol;
      // The README's setup: no minZoom anywhere. At zoom 4 a tile covers 4^10 data tiles,
      // far more than maxVisibleTiles (1024).
      const cache = await newCache();
      let loads = 0;
      spy(cache, 'loadTiles', () => loads++);
      const errors = [];
      const source = newSource(cache, { onError: (e) => errors.push(e.code) });
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 4 }) });
      const wait = (ms) => new Promise((ok) => setTimeout(ok, ms));
      // Until the view's error is reported (10 s at most), then 1.5 s of redraws.
      const reported = async (n) => {
        for (const end = Date.now() + 10_000; errors.length < n && Date.now() < end;) await wait(50);
        await wait(1500);
      };
      await reported(1);
      const at4 = { loads, errors: [...errors], loading: source.loading };
      map.getView().setZoom(5);
      await reported(2);
      const at5 = { loads, errors: [...errors], loading: source.loading };
      map.setTarget(undefined);
      div.remove();
      source.dispose();
      cache.dispose();
      return { at4, at5 };
    }, tileCorner(14, SX + 0.5, SY + 0.5));
    // A 400 x 300 view at zoom 4 and its render buffer: a handful of tiles, each asked once.
    assert.ok(r.at4.loads > 0 && r.at4.loads <= 16, `loadTiles calls at zoom 4: ${r.at4.loads}`);
    assert.deepEqual(r.at4.errors, ['ERR_TOO_MANY_TILES'], 'reported once');
    assert.ok(!r.at4.loading, 'no load left');
    assert.ok(r.at5.loads - r.at4.loads <= 16, `loadTiles calls at zoom 5: ${r.at5.loads - r.at4.loads}`);
    assert.deepEqual(r.at5.errors, ['ERR_TOO_MANY_TILES', 'ERR_TOO_MANY_TILES'], 'reported once more at the new zoom');
  });

  it('a tile whose request gave up stays failed: not asked for again on every redraw', async () => {
    // A page of its own: Chromium logs each 500 as a console error.
    const r = await session.withPage(`openlayers/index.html?lon=${SEATTLE_LON}&lat=${SEATTLE_LAT}&zoom=15`, async (p) => {
      await settled('the page', p);
      backend.mode = 500;
      try {
        return await p.evaluate(async ([lon, lat]) => {
          const { View, VectorLayer, newCache, newSource, newMap, spy } = window.__tw.ol;
          const cache = await newCache({ batch: { retries: 0 }, prefetch: { ring: 0, viewRing: 0 } });
          const asked = [];
          spy(cache, 'loadTiles', (tiles, o) => asked.push(tiles[0]));
          const errors = [];
          const source = newSource(cache, { onError: (e) => errors.push(e.code) });
          const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
          const end = Date.now() + 10_000;
          while (errors.length === 0 && Date.now() < end) await new Promise((ok) => setTimeout(ok, 50));
          await new Promise((ok) => setTimeout(ok, 1500)); // many redraws later
          const out = { asked, errors, loading: source.loading };
          map.setTarget(undefined);
          div.remove();
          source.dispose();
          cache.dispose();
          return out;
        }, tileCorner(14, SX + 8.5, SY - 9.5));
      } finally {
        backend.mode = 'ok';
      }
    }, { ignore: /status of 500/ });
    assert.ok(r.errors.length > 0 && r.errors.every((c) => c === 'ERR_HTTP'), `errors: ${r.errors}`);
    assert.equal(new Set(r.asked).size, r.asked.length, `each tile asked for once: ${r.asked.length} calls for ${new Set(r.asked).size} tiles`);
    assert.ok(!r.loading, 'no load left');
  });

  it('a view in a world copy or across the antimeridian keeps its tiles when a move ends', async () => {
    const [lon, lat] = tileCorner(14, SX - 0.5, SY + 3.5);
    // View centres in EPSG:3857 metres, unwrapped as OpenLayers keeps them after a pan
    // across the antimeridian (x = lon / 180 * HALF for any lon).
    const y = Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI) / 360)) * HALF / Math.PI;
    for (const [name, center] of [['two worlds east', [((lon + 720) / 180) * HALF, y]], ['the antimeridian', [HALF, y]], ['the antimeridian, a world west', [-HALF, y]], ['the antimeridian, a world east', [3 * HALF, y]]]) {
      const r = await page.evaluate(async (center) => {
        const { View, VectorLayer, follow, newCache, newSource, newMap, spy } = window.__tw.ol;
        const cache = await newCache({ minZoom: 12 });
        let loads = 0;
        spy(cache, 'loadTiles', () => loads++);
        const errors = [];
        const source = newSource(cache, { onError: (e) => errors.push(String(e)) });
        const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center, zoom: 15 }) });
        const detach = follow(map, source);
        const idle = () => !source.loading && loads > 0 && cache.stats().inFlight === 0;
        const end = Date.now() + 10_000;
        while (!idle() && Date.now() < end) await new Promise((ok) => setTimeout(ok, 50));
        await new Promise((ok) => setTimeout(ok, 300));
        const before = { features: source.getFeatures().length, loads };
        // A pan of a few metres: the same tiles in view. What the move's end leaves.
        const atEnd = new Promise((ok) => map.once('moveend', () => ok(source.getFeatures().length)));
        const [cx, cy] = map.getView().getCenter();
        map.getView().setCenter([cx + 5, cy]);
        const featuresAtEnd = await atEnd;
        // A frame drawn anew after it (a view with no features would not redraw):
        // OpenLayers asks again for any tile whose extent was dropped.
        source.changed();
        map.renderSync();
        await new Promise((ok) => setTimeout(ok, 500));
        const out = { before, featuresAtEnd, loadsAfter: loads - before.loads, errors };
        detach();
        map.setTarget(undefined);
        div.remove();
        source.dispose();
        cache.dispose();
        return out;
      }, center);
      if (name === 'two worlds east') assert.ok(r.before.features > 0, `${name}: features shown`);
      assert.equal(r.featuresAtEnd, r.before.features, `${name}: features kept at the move's end`);
      assert.equal(r.loadsAfter, 0, `${name}: no tile asked for again`);
      assert.deepEqual(r.errors, []);
    }
  });

  it("the cache's dispose() detaches follow() (and a later one feeds nothing): no view fed to it (ERR_DISPOSED) on every frame", async () => {
    const r = await page.evaluate(async ([lon, lat]) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, spy } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      let views = 0;
      spy(cache, 'setViewport', () => views++);
      const errors = [];
      const source = newSource(cache, { onError: (e) => errors.push(e.code) });
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
      follow(map, source);
      const end = Date.now() + 10_000;
      while ((source.loading || source.getFeatures().length === 0) && Date.now() < end) await frames(1);
      const features = source.getFeatures().length;
      cache.dispose();
      const viewsBefore = views;
      // A slow pan within the tiles in view, a frame at a time.
      for (let i = 0; i < 10; i++) {
        const [cx, cy] = map.getView().getCenter();
        map.getView().setCenter([cx + 2, cy]);
        await frames(1);
      }
      await frames(3);
      // A follow() of the source after that has nothing to feed either.
      follow(map, source)();
      const out = { views: views - viewsBefore, errors, features, kept: source.getFeatures().length };
      map.setTarget(undefined);
      div.remove();
      source.dispose();
      return out;
    }, tileCorner(14, SX + 5.5, SY + 5.5));
    assert.equal(r.views, 0, 'views fed to the disposed cache');
    assert.deepEqual(r.errors, []);
    assert.ok(r.features > 0);
    assert.equal(r.kept, r.features, 'the source keeps what it holds');
  });

  it('follow() follows the view the map has: after map.setView(), a drag feeds the new view, and the old one nothing', async () => {
    const r = await page.evaluate(async ([a, b]) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, spy } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const fed = [];
      spy(cache, 'setViewport', (v) => fed.push(v));
      const source = newSource(cache);
      const old = new View({ center: window.__tw.fromLonLat(a), zoom: 15 });
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: old });
      const detach = follow(map, source);
      await frames(3);
      // The page swaps the view (as apps do to change its projection or constraints).
      const view = new View({ center: window.__tw.fromLonLat(b), zoom: 15 });
      map.setView(view);
      await frames(3);
      // A drag: no moveend until it ends, the view's centre changes every frame.
      const n = fed.length;
      view.beginInteraction();
      for (let i = 1; i <= 5; i++) {
        const [cx, cy] = view.getCenter();
        view.setCenter([cx + 50, cy]);
        await frames(2);
      }
      const duringDrag = fed.slice(n);
      view.endInteraction();
      await frames(3);
      // The old view, off the map, moved: nothing to feed.
      const m = fed.length;
      for (let i = 1; i <= 3; i++) {
        old.setCenter([old.getCenter()[0] + 50, old.getCenter()[1]]);
        await frames(2);
      }
      const fromOld = fed.length - m;
      detach();
      map.setTarget(undefined);
      div.remove();
      source.dispose();
      cache.dispose();
      return { duringDrag, fromOld };
    }, [tileCorner(14, SX + 0.5, SY + 0.5), tileCorner(14, SX + 6.5, SY - 4.5)]);
    assert.ok(r.duringDrag.length > 0, 'views fed while the new view was dragged');
    const [lon] = tileCorner(14, SX + 6.5, SY - 4.5);
    for (const v of r.duringDrag) assert.ok(v.west < lon && v.east > lon, `a view of the new view: ${JSON.stringify(v)}`);
    assert.equal(r.fromOld, 0, 'views fed for the old view');
  });

  it('follow() of a map whose view has no centre yet waits for one (nothing thrown), then feeds it', async () => {
    const r = await page.evaluate(async (a) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, spy } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const fed = [];
      spy(cache, 'setViewport', (v) => fed.push(v));
      const source = newSource(cache);
      // The centre comes later (a geolocation, a saved place): OpenLayers renders nothing until then.
      const view = new View({ zoom: 15 });
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view });
      let thrown = null, detach = () => {};
      try { detach = follow(map, source); } catch (e) { thrown = String(e); }
      await frames(2);
      const before = fed.length;
      view.setCenter(window.__tw.fromLonLat(a));
      await frames(3);
      const after = fed.slice(before);
      detach();
      map.setTarget(undefined);
      div.remove();
      source.dispose();
      cache.dispose();
      return { thrown, before, after };
    }, tileCorner(14, SX + 0.5, SY + 0.5));
    assert.equal(r.thrown, null, 'follow() threw');
    assert.equal(r.before, 0, 'views fed without a centre');
    const [lon] = tileCorner(14, SX + 0.5, SY + 0.5);
    assert.ok(r.after.length > 0 && r.after.every((v) => v.west < lon && v.east > lon), `views of the centre: ${JSON.stringify(r.after)}`);
  });

  it('follow() feeds the view while it rotates: the box of the rotated view, not the one before', async () => {
    const r = await page.evaluate(async (a) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, spy } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const fed = [];
      spy(cache, 'setViewport', (v) => fed.push(v));
      const source = newSource(cache);
      const view = new View({ center: window.__tw.fromLonLat(a), zoom: 15 });
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view, size: [600, 200] });
      const detach = follow(map, source);
      await frames(3);
      // A rotate gesture (no moveend until it ends): a quarter turn makes the wide view tall.
      const n = fed.length;
      view.beginInteraction();
      view.setRotation(Math.PI / 2);
      await frames(3);
      const during = fed.slice(n);
      view.endInteraction();
      const before = fed[n - 1];
      detach();
      map.setTarget(undefined);
      div.remove();
      source.dispose();
      cache.dispose();
      return { before, during };
    }, tileCorner(14, SX + 0.5, SY + 0.5));
    assert.ok(r.during.length > 0, 'views fed while the view rotated');
    const v = r.during.at(-1);
    const wide = (b) => (b.east - b.west) / (b.north - b.south);
    assert.ok(wide(r.before) > 2 && wide(v) < 1, `the rotated view's box: ${JSON.stringify(r)}`);
  });

  it('with a user projection (useGeographic()) follow() feeds nothing (no box at 0°, 0°) and says why, once', async () => {
    await session.withPage(`openlayers/index.html?lon=${SEATTLE_LON}&lat=${SEATTLE_LAT}&zoom=15`, async (p) => {
      await settled('the first map', p);
      const r = await p.evaluate(async ([lon, lat]) => {
        const { View, VectorLayer, follow, useGeographic, clearUserProjection, frames, newCache, newSource, newMap, spy } = window.__tw.ol;
        const cache = await newCache({ minZoom: 12 });
        const fed = [];
        spy(cache, 'setViewport', (v) => fed.push(v));
        const errors = [];
        const source = newSource(cache, { onError: (e) => errors.push([e.code, e.message]) });
        useGeographic();
        // A view in EPSG:3857 (the default), its centre given in degrees.
        const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center: [lon, lat], zoom: 15 }) });
        follow(map, source);
        const end = Date.now() + 10_000;
        while (!map.isRendered?.() && Date.now() < end) await frames(1);
        await frames(10);
        const out = { fed, errors, requests: cache.stats().requests, features: source.getFeatures().length };
        map.setTarget(undefined);
        div.remove();
        clearUserProjection();
        source.dispose();
        cache.dispose();
        return out;
      }, [SEATTLE_LON, SEATTLE_LAT]);
      assert.deepEqual(r.fed, [], 'views fed in degrees read as metres');
      assert.equal(r.requests, 0, 'requests for the tiles of other places');
      // follow() once; the loader (given the user projection) once per tile.
      assert.ok(r.errors.every(([code]) => code === 'ERR_OUT_OF_RANGE'), JSON.stringify(r.errors));
      assert.equal(r.errors.filter(([, m]) => /not a user projection/.test(m)).length, 1, JSON.stringify(r.errors));
    });
  });

  it('a loaded tile whose items changed in the cache is filled again without them; other tiles are not', async () => {
    // A part of the dataset no other step comes near (items are deleted from it).
    const [lon, lat] = tileCorner(14, SX + 9.5, SY + 9.5);
    await session.withPage(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15`, async (p) => {
      const first = await settled('the features', p);
      const tiles = new Map(first.ids.map((id) => [id, dataTile(id)]));
      await checkDeletedLeave(assert, backend, first.ids, 'shown', (...args) => gone(p, tiles, ...args));
    });
  });

  it("a tile loaded outside the cache's view (no follow()) is filled again when an answer changed its items; other tiles are not", async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). No view
    // is fed to the cache: every tile the source loads is outside it. One item of the tile
    // in the middle is served with a ttl of 60 s, the rest with 300 s or more.
    const [lon, lat] = tileCorner(14, SX - 9.5, SY - 3.5);
    const tile = `14/${SX - 10}/${SY - 4}`;
    const a = backend.tileItems(tile, 'public')[0].id;
    backend.byId.get(a).ttl = 60;
    await session.withPage(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15&follow=0`, async (p) => {
      const first = await settled('the features', p);
      assert.ok(first.ids.includes(a), `${a} in the source: ${first.ids}`);
      assert.ok(first.ids.some((id) => dataTile(id) !== tile), 'features of other data tiles');
      const tiles = new Map(first.ids.map((id) => [id, dataTile(id)]));
      // Deleted on the server; past its ttl the page prefetches the tile (a route's tile,
      // say), and the cache wakes for it: the answer leaves the item out.
      backend.remove(a);
      const s = await gone(p, tiles, a, tile, async (tile) => { await window.__tw.skip(61_000); window.__tw.cache.prefetch([tile]); }, tile);
      assert.equal(s.stats.requests - first.stats.requests, 1, 'the prefetch only: the fresh tiles were not loaded again');
      assert.deepEqual(s.errors, []);
    });
  });

  it("a tile loaded outside the cache's view (no follow()) is filled again stale when its items turn stale, refetched meanwhile, and filled again fresh", async () => {
    // No view is fed to the cache: its wake-ups are those of the tiles the source read.
    const [lon, lat] = tileCorner(14, SX + 9.5, SY + 3.5);
    await session.withPage(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15&follow=0&swr=3600`, async (p) => {
      const first = await settled('the features', p);
      assert.ok(first.ids.length > 0);
      assert.deepEqual(first.stale, []);
      // Past the active items' ttl (300 s), within the stale window: the features are stale,
      // read from the cache, and refetched meanwhile (a call arms the cache's timer for the
      // wake-up now due).
      await checkStaleRefetched(assert, p, backend, first, { saw: 'stale features', fresh: 'refetched, fresh features' });
    });
  });

  it('a map at rest reads (so fetches) no tile the source holds out of the view of its follow(); moved back, a tile that changed there is read once and filled with the new data', async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). The
    // source follows the map, but no view reaches the cache: every request is one of the
    // source's reads.
    const [lon, lat] = tileCorner(14, SX - 6.5, SY - 1.5);
    const [ox, oy] = [SX - 7, SY - 2];
    const off = `14/${ox}/${oy}`;
    await session.withPage(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15&follow=0&swr=3600`, async (p) => {
      await p.evaluate(() => {
        const { cache, map, source, ol } = window.__tw;
        cache.setViewport = () => {};
        ol.follow(map, source);
      });
      await settled('the view', p);
      // The item of `off` in its z15 tile at the east and south: the view moved east until
      // its west edge is 10 px past `off`, which keeps that tile (within a quarter of the view).
      // An item in the east half of `off` (the part of it the view shows again below).
      const [mid] = tileCorner(14, ox + 0.5, oy);
      const a = backend.tileItems(off, 'public').filter((it) => it.lon > mid).at(-1).id;
      assert.ok((await p.evaluate(() => window.__tw.state().ids)).includes(a), `${a} held`);
      const [edge] = tileCorner(14, ox + 1, oy);
      const r0 = await p.evaluate(([edge, lat]) => {
        const { map, fromLonLat } = window.__tw;
        const view = map.getView();
        view.setCenter([fromLonLat([edge, lat])[0] + 410 * view.getResolution(), view.getCenter()[1]]);
        return window.__tw.rendered();
      }, [edge, lat]);
      await until(p, (r0) => window.__tw.rendered() > r0, r0, 'a render of the view east');
      const s1 = await settled('the view east', p);
      assert.ok(s1.ids.includes(a), `${a} held out of the view: ${s1.ids}`);
      const [w, so] = lonLat(s1.extent[0], s1.extent[1]);
      const [e, n] = lonLat(s1.extent[2], s1.extent[3]);
      const [, x0, y0] = tileOf(w, n, 14);
      const [, x1, y1] = tileOf(e, so, 14);
      assert.ok(x0 > ox, `${off} out of the view (14/${x0}..${x1}/${y0}..${y1})`);
      // Deleted on the server; past every ttl (within the stale window) the tiles in the
      // view are filled stale, refetched and filled fresh; those out of it are not read.
      await checkReadsAtRest(assert, p, backend, { id: a, off, view: [x0, y0, x1, y1], where: 'in the view' });
      assert.ok((await p.evaluate(() => window.__tw.state().ids)).includes(a), `${a} still held out of the view`);
      // Back 100 px: the view's west edge 90 px into `off`, its render buffer (100 px) short
      // of what follow() let go, so nothing is loaded and only the view's move reads the tiles
      // owed a read: read once (its old features meanwhile), refetched, filled without `a`.
      const n1 = backend.requests.length;
      await p.evaluate(() => {
        const view = window.__tw.map.getView();
        const [x, y] = view.getCenter();
        view.setCenter([x - 100 * view.getResolution(), y]);
      });
      await until(p, (id) => !window.__tw.state().ids.includes(id), a, `${a} out of the source`);
      const s = await settled('the view back', p);
      const again = requestsHolding(backend, n1, off);
      assert.equal(again.length, 1, `${off} requested once: ${JSON.stringify(again.map((r) => r.tiles))}`);
      assert.deepEqual(s.errors, []);
    });
  });

  it('with no follow(), a map at rest reads (so fetches) only the tiles OpenLayers last asked the source to show, not those it holds from earlier views; moved back, a tile that changed there is read once', async () => {
    // A part of the dataset no other step comes near (an item is deleted from it). No view
    // is fed to the cache and nothing prunes the source: it keeps every tile it loaded.
    // Before, with no follow() every tile it held counted as on the screen: at rest each
    // was read, and fetched once stale, wherever the view had left it.
    const [lon, lat] = tileCorner(14, SX + 1.5, SY + 8.5);
    const off = `14/${SX + 1}/${SY + 8}`;
    await session.withPage(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15&follow=0&swr=3600`, async (p) => {
      const first = await settled('the features', p);
      const a = backend.tileItems(off, 'public')[0].id;
      assert.ok(first.ids.includes(a), `${a} held`);
      /** Moves the view `px` CSS pixels east and waits until it is drawn and loaded. */
      const east = async (px) => {
        const r0 = await p.evaluate((px) => {
          const v = window.__tw.map.getView();
          const [x, y] = v.getCenter();
          v.setCenter([x + px * v.getResolution(), y]);
          return window.__tw.rendered();
        }, px);
        await until(p, (r0) => window.__tw.rendered() > r0, r0, 'a render');
        return settled('after a move', p);
      };
      // Two and a half views east (four data tiles): the source still holds `off`.
      const s1 = await east(2000);
      assert.ok(s1.ids.includes(a), `${a} held out of the view`);
      // The data tiles of the view and of OpenLayers' render buffer (100 px) around it.
      const b = 100 * (s1.extent[2] - s1.extent[0]) / 800;
      const [w, so] = lonLat(s1.extent[0] - b, s1.extent[1] - b);
      const [e, n] = lonLat(s1.extent[2] + b, s1.extent[3] + b);
      const [, x0, y0] = tileOf(w, n, 14);
      const [, x1, y1] = tileOf(e, so, 14);
      assert.ok(x0 > SX + 2, `${off} far from the view (14/${x0}..${x1}/${y0}..${y1})`);
      await checkReadsAtRest(assert, p, backend, { id: a, off, view: [x0, y0, x1, y1], where: 'in the view' });
      assert.ok((await p.evaluate(() => window.__tw.state().ids)).includes(a), `${a} still held out of the view`);
      // Back: OpenLayers asks the source for that view again (its tiles still loaded), and
      // the tile owed a read is read once, refetched and filled without `a`.
      const n1 = backend.requests.length;
      await east(-2000);
      await until(p, (id) => !window.__tw.state().ids.includes(id), a, `${a} out of the source`);
      const s = await settled('the view back', p);
      const again = requestsHolding(backend, n1, off);
      assert.equal(again.length, 1, `${off} requested once: ${JSON.stringify(again.map((r) => r.tiles))}`);
      assert.deepEqual(s.errors, []);
    });
  });

  it("follow()'s detach makes the reads owed for its view's sake: a changed tile beside the view is read then, as the source now takes OpenLayers' view with its render buffer", async () => {
    // A tile held 50 px beside the followed view is owed a read when it changes; once the
    // follow() is detached, the source counts what OpenLayers last asked it to show (the
    // view and 100 px around it), and the read is made at once, not at some later change.
    const data = `14/${SX - 5}/${SY - 6}`;
    const r = await page.evaluate(async ([[lon, lat], east, data]) => {
      const { View, VectorLayer, follow, frames, newCache, newSource, newMap, loaded, spy } = window.__tw.ol;
      const cache = await newCache({ minZoom: 12 });
      const source = newSource(cache);
      const { div, map } = newMap({ layers: [new VectorLayer({ source })], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
      const detach = follow(map, source);
      await loaded(source, cache);
      // The view's west edge 50 px east of the data tile's east edge: its eastern z15 tiles
      // stay (within a quarter of the view), off the screen, in OpenLayers' render buffer.
      const view = map.getView();
      const x = window.__tw.fromLonLat([east, lat])[0] + (50 + 200) * view.getResolution();
      let rendered = false;
      map.once('moveend', () => { rendered = true; });
      view.setCenter([x, view.getCenter()[1]]);
      while (!rendered) await frames(1);
      await frames(3);
      await loaded(source, cache);
      const read = [];
      spy(cache, 'loadTiles', (names) => read.push(...names));
      const [, tx, ty] = data.split('/').map(Number);
      const ofData = (name) => { const [hz, hx, hy] = name.split('/').map(Number); return hz === 15 && hx >> 1 === tx && hy >> 1 === ty; };
      cache.invalidate({ tiles: [data] });
      await frames(4);
      const before = read.filter(ofData);
      detach();
      await frames(4);
      const after = read.filter(ofData);
      map.setTarget(undefined);
      div.remove();
      source.dispose();
      cache.dispose();
      return { before, after };
    }, [tileCorner(14, SX - 4.5, SY - 5.5), tileCorner(14, SX - 4, SY - 5.5)[0], data]);
    assert.deepEqual(r.before, [], 'read while beside the followed view');
    assert.ok(r.after.length > 0, `read once detached: ${r.after}`);
  });

  it("a page's addfeature listener that throws leaves no load open: the error is told, the next loads end too", async () => {
    // Before, the load's success() was never called: OpenLayers waited for it for ever
    // (source.loading stayed set, no rendercomplete).
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    await session.withPage(`openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15`, async (p) => {
      const first = await settled('the features', p);
      await p.evaluate(() => window.__tw.source.on('addfeature', () => { throw new Error('a page listener failed'); }));
      const r0 = await p.evaluate(() => window.__tw.rendered());
      await p.evaluate((m) => {
        const v = window.__tw.map.getView();
        const [cx, cy] = v.getCenter();
        v.setCenter([cx + 6 * m, cy]);
      }, TILE_M);
      // The map renders the view east (its loads ended: with a load left open it never
      // does), and the listener's error is told; not the state of before the move, which
      // a busy machine could read settled before the map asked for the new tiles.
      await until(p, (r0) => window.__tw.rendered() > r0, r0, 'a render of the view east');
      await until(p, () => window.__tw.state().errors.length > 0, null, "the listener's error told");
      const s = await settled('the view east', p);
      assert.ok(s.errors.length > 0 && s.errors.every((e) => /a page listener failed/.test(e)), JSON.stringify(s.errors));
      assert.ok(s.ids.some((id) => !first.ids.includes(id)), 'features of the view east');
    });
  });

  it('no console errors', () => {
    assert.deepEqual(problems, []);
  });
});
