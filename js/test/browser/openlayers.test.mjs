// tilewarm/openlayers in headless Chromium with real OpenLayers, on a page built by Vite over
// the package (scripts/test-browser.sh). Checks: after pans and zooms the source holds exactly
// the backend's items of the data tiles in view (nothing twice, nothing left behind from
// earlier views); a one-tile pan after prefetch sends no foreground request (follow() feeds
// the view to the planner); loads aborted by a refresh end (source.loading back to false);
// after source.refresh() the source holds the view's items again; a tier drop takes the
// features above the new tier out of the source at once; follow() gives the cache the zoom
// of the view's resolution, whatever the view's own zoom levels; a disposed source lets go of
// the cache (no tier reload, loads aborted, follow() detached); no console errors. Screenshot:
// target/browser-test/openlayers.png.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startBackend, tileCorner, tileOf, SEATTLE } from '../support/backend.mjs';
import { browserPath, CHROMIUM_ARGS, dist, startPageServer, until } from './support.mjs';

const [, SX, SY] = SEATTLE;
const HALF = 20037508.342789244;
const lonLat = (x, y) => [(x / HALF) * 180, (Math.atan(Math.exp((y / HALF) * Math.PI)) * 360) / Math.PI - 90];
/** One z14 data tile in EPSG:3857 metres. */
const TILE_M = (2 * HALF) / 2 ** 14;

describe('tilewarm/openlayers in headless Chromium', { timeout: 180_000 }, () => {
  let backend, pages, browser, page;
  const problems = [];

  before(async () => {
    backend = await startBackend();
    pages = await startPageServer(backend);
    browser = await chromium.launch({ executablePath: browserPath, args: CHROMIUM_ARGS });
    page = await browser.newPage({ viewport: { width: 800, height: 600 } });
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
    await page.goto(`${pages.url}openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15`);
    await until(page, () => window.__tw !== undefined, null, 'the page');
  });

  after(async () => {
    await browser?.close();
    pages?.close();
    backend?.close();
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
    backend.delayMs = 400;
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
    const p = await browser.newPage({ viewport: { width: 800, height: 600 } });
    p.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    p.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    try {
      const [lon, lat] = tileCorner(14, SX + 2.5, SY + 1.5);
      await p.goto(`${pages.url}openlayers/index.html?lon=${lon}&lat=${lat}&zoom=15&access=agent`);
      await until(p, () => window.__tw !== undefined, null, 'the page');
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
    } finally {
      await p.close();
    }
  });

  it('follow() gives the cache the zoom of the resolution, for a view with its own resolutions', async () => {
    const zooms = await page.evaluate(async ([lon, lat]) => {
      const { Map, View, VectorLayer, VectorSource, Feature, Point, tileStrategy, createXYZ, TileCache, createSource, follow } = window.__tw.ol;
      const cache = await TileCache.create({ endpoint: new URL('/batch', location.href).href, minZoom: 12 });
      const seen = [];
      const setViewport = cache.setViewport.bind(cache);
      cache.setViewport = (v) => { seen.push(v.zoom); return setViewport(v); };
      const div = document.createElement('div');
      div.style.cssText = 'width: 400px; height: 300px';
      document.body.append(div);
      const source = createSource({ VectorSource, Feature, Point, tileStrategy, createXYZ }, cache);
      // Zoom 2 of this view is 10 m a pixel: 256-px zoom log2(156543.03 / 10) = 13.93.
      const map = new Map({ target: div, layers: [new VectorLayer({ source })],
        view: new View({ center: window.__tw.fromLonLat([lon, lat]), resolutions: [1000, 100, 10, 1], zoom: 2 }) });
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
        const { Map, View, VectorLayer, VectorSource, Feature, Point, tileStrategy, createXYZ, TileCache, createSource, follow } = window.__tw.ol;
        const ol = { VectorSource, Feature, Point, tileStrategy, createXYZ };
        const frames = (n) => new Promise((ok) => { const f = () => (--n ? requestAnimationFrame(f) : ok()); requestAnimationFrame(f); });
        const cache = await TileCache.create({ endpoint: new URL('/batch', location.href).href, minZoom: 12, access: 'agent' });
        // What the source asks of the cache: its loads' signals, and the views follow() feeds.
        const signals = [];
        const loadTiles = cache.loadTiles.bind(cache);
        cache.loadTiles = (tiles, o) => { signals.push(o.signal); return loadTiles(tiles, o); };
        let views = 0;
        const setViewport = cache.setViewport.bind(cache);
        cache.setViewport = (v) => { views++; return setViewport(v); };
        const errors = [];
        const source = createSource(ol, cache, { onError: (e) => errors.push(String(e)) });
        let refreshed = 0;
        const refresh = source.refresh.bind(source);
        source.refresh = () => { refreshed++; refresh(); };
        // Another source on the same cache, not disposed: still told of a tier change.
        const other = createSource(ol, cache);
        let otherRefreshed = 0;
        other.refresh = () => { otherRefreshed++; };
        const div = document.createElement('div');
        div.style.cssText = 'width: 400px; height: 300px';
        document.body.append(div);
        const layer = new VectorLayer({ source });
        const map = new Map({ target: div, layers: [layer], view: new View({ center: window.__tw.fromLonLat([lon, lat]), zoom: 15 }) });
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

  it('no console errors', () => {
    assert.deepEqual(problems, []);
  });
});
