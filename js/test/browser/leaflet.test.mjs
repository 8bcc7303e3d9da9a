// tilewarm/leaflet in headless Chromium with real Leaflet, on a page built by Vite over the
// package (scripts/test-browser.sh). Checks: the grid draws exactly the items the backend
// has in each data tile it fully shows; a one-tile pan after prefetch sends no foreground request (the layer feeds the
// view to the planner); no console errors. Screenshot: target/browser-test/leaflet.png.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startBackend, tileCorner, SEATTLE } from '../support/backend.mjs';
import { browserPath, CHROMIUM_ARGS, dist, startPageServer, until } from './support.mjs';

const [, SX, SY] = SEATTLE;

describe('tilewarm/leaflet in headless Chromium', { timeout: 180_000 }, () => {
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
    await page.goto(`${pages.url}leaflet/index.html?lon=${lon}&lat=${lat}&zoom=15`);
    await until(page, () => window.__tw !== undefined, null, 'the page');
  });

  after(async () => {
    await browser?.close();
    pages?.close();
    backend?.close();
  });

  /** Waits until every tile of the grid is drawn and nothing is in flight. */
  function settled(what) {
    return until(page, () => {
      const { layer, cache } = window.__tw;
      const tiles = Object.values(layer._tiles);
      if (!tiles.length || !tiles.every((t) => t.loaded) || cache.stats().inFlight > 0) return false;
      return window.__tw.state();
    }, null, what);
  }

  /** Each data tile (z14) whose grid tiles are all drawn holds exactly the backend's items:
   * nothing drawn twice, nothing left out. (Compared per data tile, not per finer grid
   * tile: an item exactly on a z15 edge belongs to one side by the core's zoom-24 rule,
   * which this test's float formula may not reproduce.) */
  function checkDrawn(s) {
    const groups = new Map();
    for (const [key, n] of Object.entries(s.drawn)) {
      const [x, y, z] = key.split(':').map(Number);
      const d = z - 14;
      if (d < 0) {
        assert.equal(n, backend.tileItems(`${z}/${x}/${y}`, 'public').length, `tile ${z}/${x}/${y}`);
        continue;
      }
      const parent = `14/${x >> d}/${y >> d}`;
      const g = groups.get(parent) ?? { n: 0, tiles: 0 };
      g.n += n;
      g.tiles += 1;
      groups.set(parent, g);
      g.need = 4 ** d;
    }
    let checked = 0;
    for (const [parent, g] of groups) {
      if (g.tiles < g.need) continue;
      assert.equal(g.n, backend.tileItems(parent, 'public').length, `data tile ${parent}`);
      checked++;
    }
    assert.ok(checked > 0, 'some data tile fully drawn');
  }

  it('every tile draws the items the backend has in it, after pans and zooms', async () => {
    let s = await settled('first grid');
    assert.ok(Object.keys(s.drawn).length >= 4);
    assert.ok(Object.values(s.drawn).some((n) => n > 0));
    checkDrawn(s);
    await page.screenshot({ path: join(dist, 'leaflet.png') });
    for (const step of [
      (m) => m.panBy([300, 100], { animate: false }),
      (m) => m.setZoom(14, { animate: false }),
      (m) => m.panBy([-400, -150], { animate: false }),
    ]) {
      await page.evaluate(`(${step.toString()})(window.__tw.map)`);
      s = await settled('after a move');
      checkDrawn(s);
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
    checkDrawn(s);
    assert.equal(fg(s.stats), fg(before), 'no foreground request');
  });

  it('no console errors', () => {
    assert.deepEqual(problems, []);
  });
});
